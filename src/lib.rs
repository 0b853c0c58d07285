//! rlay: an AT Protocol relay.
//!
//! `proto` is the protocol core (pure, no I/O); `util` holds the few helpers every layer shares.
//! The relay's layers follow the data: `ingest` (host threads, validation, account state) →
//! `stream` (sequencer, disk log, ring, firehose consumers); `identity`, `store` and `index`
//! serve them; `http` and `telemetry` face operators and consumers; `relay` wires it all.
//! See ARCHITECTURE.md for the threads and the rules between modules.

pub mod alerts;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod http;
pub mod identity;
pub mod index;
pub mod ingest;
pub mod jetstream;
pub mod logging;
pub mod proto;
pub mod relay;
pub mod sim;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod util;
