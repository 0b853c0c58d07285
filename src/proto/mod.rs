//! The AT Protocol core: pure functions over bytes, no I/O, no threads, no clock except what a
//! caller passes in. Nothing here imports anything outside `proto`, so the core can be tested,
//! fuzzed and benchmarked alone.

pub mod car;
pub mod cbor;
pub mod cid;
pub mod commit;
pub mod crypto;
pub mod frame;
pub mod mst;
pub mod scalar_inverse;
pub mod secp256k1;
pub mod syntax;
pub mod verify;
