//! Strict DAG-CBOR (DRISL): a validating reader, a canonical writer and a generic value type.

pub mod decode;
pub mod encode;
pub mod json;
pub mod value;

pub use decode::{CborError, Kind, MAX_DEPTH, MAX_ITEMS, MapKeys, Reader, key_cmp};
pub use encode::Writer;
pub use value::Value;
