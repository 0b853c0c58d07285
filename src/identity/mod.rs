//! Identity: DID documents and their resolution behind a cache.

pub mod doc;
pub mod resolver;

pub use doc::Identity;
pub use resolver::{Fetch, HttpFetch, Resolution, Resolved, Resolver, ResolverConfig, StaticFetch};
