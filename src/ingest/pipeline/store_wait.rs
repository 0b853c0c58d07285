//! What the ingest path does while the account store does not answer: wait and retry, never
//! drop. An event whose account cannot be loaded is not processed, so its host's cursor must
//! not pass it; the thread carrying it (a validation or gate thread, whose queue then
//! pauses the hosts feeding it) waits here, which stops reading from the PDS until the store
//! is back. Overload by a database outage thus costs latency, not events.

use super::HostHandle;
use crate::store::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether the store is currently failing, so an outage is logged once when it starts and once
/// when it ends, however many events wait through it.
#[derive(Default)]
pub(super) struct StoreWait {
    down: AtomicBool,
}

impl StoreWait {
    /// Called after the `attempt`-th failed load (from 1) of `did` for `host`: sleeps and returns
    /// true to retry, or false when the host's connection is being torn down (it will resume
    /// from before this event).
    pub(super) fn wait(&self, host: &HostHandle, did: &str, e: &StoreError, attempt: u32) -> bool {
        if host.killed() {
            return false;
        }
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!(
                "ingest: the account store is not answering ({e}); loading {did} for {} failed, so ingestion pauses (nothing is dropped) and retries until it answers. Check the database.",
                host.hostname()
            );
        }
        metrics::counter!("rlay_store_retries_total").increment(1);
        let backoff = Duration::from_millis(50u64 << attempt.min(6)).min(MAX_BACKOFF);
        std::thread::sleep(backoff);
        true
    }

    /// A load succeeded after `attempts` failures.
    pub(super) fn recovered(&self, attempts: u32) {
        if attempts > 0 && self.down.swap(false, Ordering::Relaxed) {
            log::info!("ingest: the account store answers again; ingestion resumes");
        }
    }
}
