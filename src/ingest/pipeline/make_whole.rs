//! Letting throttled accounts in again, and the `#sync` that makes each one whole (the fetching
//! is `ingest::resync`'s; verifying and applying it is the pipeline's, as for any `#sync`).

use super::{Outcome, Pipeline};
use crate::identity::Resolution;
use crate::ingest::accounts::THROTTLED;
use crate::ingest::gate::Pending;
use crate::ingest::hosts::HostHandle;
use crate::proto::frame::{Event, SyncEvent};
use crate::store::{Store, StoreError};
use std::sync::Arc;

impl Pipeline {
    /// Lets in up to `room` of the host's throttled accounts, oldest first (each emits its
    /// `#account` and is queued to be made whole). Returns how many.
    pub fn release_throttled(
        &self,
        host: &HostHandle,
        room: i64,
        store: &dyn Store,
    ) -> Result<i64, StoreError> {
        if room <= 0 {
            return Ok(0);
        }
        // The store's, plus any not flushed yet.
        let mut candidates: Vec<(i64, String)> = self
            .accounts
            .find_in_memory(|a| a.host_id == host.id() && a.local == THROTTLED)
            .into_iter()
            .map(|a| (a.uid, a.did))
            .collect();
        let mut after = 0;
        loop {
            let rows = store.list_accounts_by_status(THROTTLED, Some(host.id()), after, 1000)?;
            let Some(l) = rows.last() else { break };
            after = l.uid;
            candidates.extend(rows.into_iter().map(|r| (r.uid, r.did)));
            if candidates.len() as i64 >= room.saturating_add(1000) {
                break;
            }
        }
        candidates.sort();
        candidates.dedup();
        let mut released = 0;
        for (_, did) in candidates {
            if released >= room {
                break;
            }
            if self.unthrottle(&did) {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Verifies and applies an account's current commit, fetched from its PDS, as a `#sync`
    /// from that host. `Ok(true)`: emitted; `Ok(false)`: the relay already had it.
    pub(crate) fn resync(
        &self,
        host: &Arc<HostHandle>,
        did: &str,
        event: SyncEvent,
        res: &Resolution,
    ) -> Result<bool, String> {
        let item = Pending {
            host: host.clone(),
            seq: 0,
            event: Event::Sync(event),
            // No identity refresh and retry: the fetch is retried as a whole instead.
            attempt: 1,
        };
        match self.process_event(item, did, res) {
            Outcome::Accepted => Ok(true),
            Outcome::Ignored => Ok(false),
            Outcome::Dropped(reason) => Err(format!("its commit was refused ({reason})")),
            Outcome::Abandoned => Err("the store did not answer".into()),
            Outcome::Retry(_) => Err("its identity did not match".into()),
        }
    }
}
