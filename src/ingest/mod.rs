//! The input half of the relay: host connections → validation → account state → sequencer.

pub mod accounts;
pub mod crawl;
pub mod crawl_queue;
pub mod dialer;
pub mod discovery;
pub mod flusher;
pub mod gate;
pub mod host_rate;
pub mod hosts;
pub mod pipeline;
mod rate;
pub mod resync;
pub(crate) mod room;
pub mod upstream;
mod validators;
mod watchdog;
