//! Jetstream v1 (`GET /subscribe`): the relay's verified, sequenced events as filtered JSON,
//! compatible with Jetstream v1 clients, from the same ring and disk log as the firehose.
//!
//! `time_us` is the relay's own: assigned once by the sequencer, stored in the log with the
//! event (a commit with N ops owns N consecutive values), so a replay shows exactly the values
//! the live stream showed. Each frame becomes JSON once (and zstd once) whoever reads it.

pub mod consumer;
pub mod encode;
pub mod params;

pub use consumer::Jetstream;
