//! Identity: DID documents and (later in the pipeline) resolution behind a cache.

pub mod doc;
