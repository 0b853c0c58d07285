//! The relay's own account statuses: takedowns, suspensions and throttling, each announced with
//! an `#account` event.

use super::Pipeline;
use crate::ingest::accounts::{ACTIVE, THROTTLED};
use crate::proto::frame::{AccountEvent, Event};

impl Pipeline {
    /// The relay's own takedown (or suspension): emits `#account` and hides the account's
    /// events from replay. Returns false for an unknown account.
    pub fn take_down(&self, did: &str, status: &str) -> bool {
        let ok = self.set_local_status(did, status, |_| true);
        if ok {
            self.hidden.hide(did);
        }
        ok
    }

    /// Reverses a takedown: emits `#account` with the combined status.
    pub fn reverse_take_down(&self, did: &str) -> bool {
        let ok = self.set_local_status(did, ACTIVE, |_| true);
        if ok {
            self.hidden.unhide(did);
        }
        ok
    }

    /// Lifts a host-limit throttle from an account, emitting its new status, and queues it to
    /// be made whole (its commits while throttled never went out).
    pub fn unthrottle(&self, did: &str) -> bool {
        let mut host_id = None;
        let ok = self.set_local_status(did, ACTIVE, |a| {
            host_id = Some(a.host_id);
            a.local == THROTTLED
        });
        if let (true, Some(h)) = (ok, host_id) {
            if let Some(host) = self.hosts.get(h) {
                host.add_accounts(1);
            }
            if let Some(r) = self.resync.get() {
                r.account(h, did);
            }
        }
        ok
    }

    /// Sets the relay's own status of a known account that passes `from`, and emits
    /// `#account` with the combined status, under the account's lock.
    fn set_local_status(
        &self,
        did: &str,
        to: &str,
        mut from: impl FnMut(&crate::ingest::accounts::Account) -> bool,
    ) -> bool {
        let r = self.accounts.with(did, |slot| {
            let Some(a) = slot.account.as_mut().filter(|a| from(a)) else {
                return false;
            };
            a.local = to.to_owned();
            slot.dirty = true;
            let (active, status) = a.combined();
            self.sequencer.emit(&Event::Account(AccountEvent {
                seq: 0,
                did: did.to_owned(),
                time: crate::logging::timestamp(),
                active,
                status,
            }))
        });
        matches!(r, Ok(true))
    }
}
