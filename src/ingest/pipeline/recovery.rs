//! Crash recovery: the log beyond what stored account state covers is re-applied to account
//! state, and the identity/account events it holds are remembered, so that when hosts replay
//! from their (older) stored cursors the replays are recognised as already seen.

use super::Pipeline;
use crate::ingest::accounts::{ACTIVE, SUSPENDED, TAKENDOWN, THROTTLED};
use crate::proto::frame::Event;
use crate::proto::verify::RepoState;
use crate::stream::eventlog::EventLog;
use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;

/// What recovery learned about accounts the store does not (yet) hold.
#[derive(Default)]
pub(super) struct Recovered {
    pub(super) repos: HashMap<String, RepoState>,
    pub(super) upstream: HashMap<String, String>,
    pub(super) seen: HashSet<String>,
}

pub(super) fn seen_key(kind: &str, did: &str, time: &str) -> String {
    format!("{kind}|{did}|{time}")
}

impl Pipeline {
    /// After a crash: re-applies the effects of logged events beyond `after` (what stored state
    /// covers) so that the upstream replays of those events are recognised as already seen.
    /// Returns how many events were re-applied.
    pub fn recover(&self, log: &EventLog, after: u64) -> std::io::Result<usize> {
        let mut reader = log.reader(after);
        let mut n = 0;
        while let Some(f) = reader.next_frame()? {
            let Ok(ev) = crate::proto::frame::decode(&f.bytes) else {
                continue;
            };
            n += 1;
            match &ev {
                Event::Commit(c) => {
                    self.recover_repo(&c.repo, &c.blocks, &c.rev);
                    // The index writer may not have written the last events before the crash;
                    // adding pairs again is harmless.
                    if let Some(o) = &self.observer {
                        o.commit(&c.repo, &c.ops, &[]);
                    }
                }
                Event::Sync(s) => self.recover_repo(&s.did, &s.blocks, &s.rev),
                Event::Identity(i) => {
                    self.recovered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .seen
                        .insert(seen_key("i", &i.did, &i.time));
                }
                Event::Account(a) => {
                    let mut rec = self
                        .recovered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    rec.seen.insert(seen_key("a", &a.did, &a.time));
                    if a.status.as_deref() == Some("deleted")
                        && let Some(o) = &self.observer
                    {
                        o.account_deleted(&a.did);
                    }
                    // Relay-local statuses say nothing about the upstream one.
                    let upstream = match a.status.as_deref() {
                        _ if a.active => Some(ACTIVE.to_owned()),
                        Some(TAKENDOWN | SUSPENDED | THROTTLED) => None,
                        Some(s) => Some(s.to_owned()),
                        None => Some("inactive".to_owned()),
                    };
                    drop(rec);
                    if let Some(u) = upstream {
                        let known =
                            self.accounts
                                .with(&a.did, |slot| match slot.account.as_mut() {
                                    Some(acct) => {
                                        if acct.upstream != u {
                                            acct.upstream = u.clone();
                                            slot.dirty = true;
                                        }
                                        true
                                    }
                                    None => false,
                                });
                        if matches!(known, Ok(false)) {
                            self.recovered
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .upstream
                                .insert(a.did.clone(), u);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(n)
    }

    fn recover_repo(&self, did: &str, blocks: &[u8], rev: &str) {
        let Ok(car) = crate::proto::car::Car::parse(blocks) else {
            return;
        };
        let Some(root) = car.roots.first().copied() else {
            return;
        };
        let Some(sc) = car
            .get(&root)
            .and_then(|b| crate::proto::commit::SignedCommit::decode(b).ok())
        else {
            return;
        };
        let state = RepoState {
            rev: rev.to_owned(),
            commit: root,
            data: sc.commit.data,
        };
        let known = self.accounts.with(did, |slot| match slot.account.as_mut() {
            Some(a) => {
                if a.repo.as_ref().is_none_or(|r| r.rev.as_str() < rev) {
                    a.repo = Some(state.clone());
                    slot.dirty = true;
                }
                true
            }
            None => false,
        });
        if matches!(known, Ok(false)) {
            self.recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .repos
                .insert(did.to_owned(), state);
        }
    }
}
