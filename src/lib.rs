//! rlay: an AT Protocol relay.
//!
//! The protocol core (pure, no I/O) lives in `cbor`, `cid`, `car`, `crypto`, `commit`, `mst`,
//! `syntax`, `frame` and `verify`. See ARCHITECTURE.md for the threads and data flow.

pub mod car;
pub mod cbor;
pub mod cid;
pub mod cli;
pub mod commit;
pub mod config;
pub mod crypto;
pub mod frame;
pub mod gauges;
pub mod http;
pub mod identity;
pub mod index;
pub mod ingest;
pub mod logging;
pub mod mst;
pub mod net;
pub mod procstat;
pub mod relay;
pub mod repo;
pub mod sim;
pub mod store;
pub mod stream;
pub mod syntax;
pub mod verify;
