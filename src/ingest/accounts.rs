//! Account state, served from memory and written behind in batches.
//!
//! Each DID has a slot (sharded by DID hash) with the account as stored and a dirty flag for
//! the flusher. A DID not in memory is loaded from the store on first sight. (Events waiting
//! for a DID's identity live in the identity gate, not here.)
//!
//! Memory is bounded: past its capacity a shard evicts slots that the store already holds
//! exactly (not dirty, not being flushed), least recently used first
//! (a CLOCK approximation: one "used since the last sweep" bit per slot). Without this the map
//! would grow with every DID ever seen, including made-up DIDs from a hostile host.

use crate::proto::cid::Cid;
use crate::proto::verify::RepoState;
use crate::store::{AccountRow, Store, StoreError};
use crate::util::now_ms;
use crate::util::sharded::{Sharded, lock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

pub const ACTIVE: &str = "active";
pub const TAKENDOWN: &str = "takendown";
pub const SUSPENDED: &str = "suspended";
pub const THROTTLED: &str = "throttled";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub(crate) uid: i64,
    pub(crate) did: String,
    pub(crate) host_id: i64,
    /// The relay's own status: active, takendown, suspended or throttled (host over its limit).
    pub(crate) local: String,
    /// The last status the account's PDS announced (`inactive` when it gave no reason).
    pub(crate) upstream: String,
    pub(crate) repo: Option<RepoState>,
    pub(crate) created_at: i64,
}

impl Account {
    /// Whether `#commit`/`#sync` may flow.
    pub fn is_active(&self) -> bool {
        self.local == ACTIVE && self.upstream == ACTIVE
    }

    /// `(active, status)` as emitted and reported: the relay's own reason first, then the PDS's.
    pub fn combined(&self) -> (bool, Option<String>) {
        if self.local != ACTIVE {
            return (false, Some(self.local.clone()));
        }
        if self.upstream != ACTIVE {
            return (
                false,
                (self.upstream != "inactive").then(|| self.upstream.clone()),
            );
        }
        (true, None)
    }

    pub fn to_row(&self) -> AccountRow {
        AccountRow {
            uid: self.uid,
            did: self.did.clone(),
            host_id: self.host_id,
            status: self.local.clone(),
            upstream_status: self.upstream.clone(),
            rev: self.repo.as_ref().map(|r| r.rev.clone()),
            commit_cid: self.repo.as_ref().map(|r| r.commit.to_string()),
            data_cid: self.repo.as_ref().map(|r| r.data.to_string()),
            created_at: self.created_at,
            updated_at: 0,
        }
    }

    pub fn from_row(r: AccountRow) -> Account {
        let repo = match (
            r.rev,
            r.commit_cid.and_then(|c| c.parse::<Cid>().ok()),
            r.data_cid.and_then(|c| c.parse::<Cid>().ok()),
        ) {
            (Some(rev), Some(commit), Some(data)) => Some(RepoState { rev, commit, data }),
            _ => None,
        };
        Account {
            uid: r.uid,
            did: r.did,
            host_id: r.host_id,
            local: r.status,
            upstream: r.upstream_status,
            repo,
            created_at: r.created_at,
        }
    }
}

/// One DID's entry: the account (or the knowledge that there is none) and whether it changed
/// since the flusher last took it.
pub struct Slot {
    pub(crate) account: Option<Account>,
    pub(crate) dirty: bool,
    /// Taken by the flusher and not yet confirmed written: the store may still be behind.
    flushing: bool,
    /// Used since the last eviction sweep.
    recent: bool,
}

impl Slot {
    fn loaded(account: Option<Account>) -> Slot {
        Slot {
            account,
            dirty: false,
            flushing: false,
            recent: true,
        }
    }

    /// Whether dropping it loses nothing: the store has exactly this state.
    fn evictable(&self) -> bool {
        !self.dirty && !self.flushing
    }
}

/// Eviction counters per shard, by DID hash: a load done outside the shard lock is stale if
/// its DID's counter moved meanwhile (its slot may have been changed, flushed and evicted).
const EVICTION_BUCKETS: usize = 64;

fn bucket(did: &str) -> usize {
    ((crate::util::did_hash(did) >> 32) % EVICTION_BUCKETS as u64) as usize
}

struct Shard {
    map: HashMap<String, Slot>,
    evictions: [u64; EVICTION_BUCKETS],
    /// Sweep when the map grows past this. Kept above what the last sweep could not evict, so
    /// a shard full of dirty slots is not rescanned on every insert.
    sweep_at: usize,
}

impl Shard {
    /// Evicts clean slots unused since the last sweep, then, if that was not enough, clean
    /// slots regardless, down to 90% of `cap`.
    fn sweep(&mut self, cap: usize) {
        let target = cap - cap / 10;
        let evictions = &mut self.evictions;
        self.map.retain(|did, s| {
            let keep = s.recent || !s.evictable();
            s.recent = false;
            if !keep {
                evictions[bucket(did)] += 1;
            }
            keep
        });
        if self.map.len() > target {
            let mut excess = self.map.len() - target;
            self.map.retain(|did, s| {
                if excess > 0 && s.evictable() {
                    excess -= 1;
                    evictions[bucket(did)] += 1;
                    return false;
                }
                true
            });
        }
        self.sweep_at = cap.max(self.map.len() + cap / 10 + 1);
    }
}

pub struct Accounts {
    shards: Sharded<Mutex<Shard>>,
    /// Slots per shard before a sweep.
    shard_cap: usize,
    store: Arc<dyn Store>,
    next_uid: AtomicI64,
}

impl Accounts {
    /// `capacity`: accounts to keep in memory (spread over the shards; at least one each).
    pub fn new(store: Arc<dyn Store>, capacity: usize) -> Result<Accounts, StoreError> {
        let max = store.max_account_uid()?;
        let shard_cap = (capacity / crate::util::sharded::SHARDS).max(1);
        Ok(Accounts {
            shards: Sharded::new(|| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    evictions: [0; EVICTION_BUCKETS],
                    sweep_at: shard_cap,
                })
            }),
            shard_cap,
            store,
            next_uid: AtomicI64::new(max + 1),
        })
    }

    fn shard(&self, did: &str) -> std::sync::MutexGuard<'_, Shard> {
        lock(self.shards.of(did))
    }

    pub fn new_uid(&self) -> i64 {
        self.next_uid.fetch_add(1, Ordering::SeqCst)
    }

    /// Runs `f` on the DID's slot under its shard lock (loading it from the store if needed).
    pub fn with<R>(&self, did: &str, f: impl FnOnce(&mut Slot) -> R) -> Result<R, StoreError> {
        self.with_or_wait(did, |_| false, f)
    }

    /// Like `with`, but when loading fails, `wait(&error)` decides: true (after waiting) to try
    /// again, false to give up with the error. The store is never called under a shard lock, so
    /// a slow or absent database stalls only the DIDs being loaded, not their whole shard.
    pub fn with_or_wait<R>(
        &self,
        did: &str,
        mut wait: impl FnMut(&StoreError) -> bool,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Result<R, StoreError> {
        let b = bucket(did);
        let mut loaded: Option<(u64, Option<Account>)> = None;
        loop {
            let mut shard = self.shard(did);
            if !shard.map.contains_key(did) {
                match loaded.take() {
                    Some((generation, account)) if shard.evictions[b] == generation => {
                        if shard.map.len() >= shard.sweep_at {
                            shard.sweep(self.shard_cap);
                        }
                        shard.map.insert(did.to_owned(), Slot::loaded(account));
                    }
                    _ => {
                        let generation = shard.evictions[b];
                        drop(shard);
                        match self.store.account_by_did(did) {
                            Ok(row) => loaded = Some((generation, row.map(Account::from_row))),
                            Err(e) if wait(&e) => {}
                            Err(e) => return Err(e),
                        }
                        continue;
                    }
                }
            }
            if let Some(slot) = shard.map.get_mut(did) {
                slot.recent = true;
                return Ok(f(slot));
            }
        }
    }

    /// The account as held in memory, without loading it: `None` when it is not in memory.
    pub fn peek(&self, did: &str) -> Option<Option<Account>> {
        self.shard(did).map.get(did).map(|s| s.account.clone())
    }

    /// The current account for reads (API): memory first, else the store; never caches.
    pub fn lookup(&self, did: &str) -> Result<Option<Account>, StoreError> {
        match self.peek(did) {
            Some(a) => Ok(a),
            None => Ok(self.store.account_by_did(did)?.map(Account::from_row)),
        }
    }

    /// Many accounts at once for reads (API): memory first, the rest in batched store queries.
    /// DIDs with no account are absent from the map.
    pub fn lookup_many(&self, dids: &[String]) -> Result<HashMap<String, Account>, StoreError> {
        let mut out = HashMap::with_capacity(dids.len());
        let mut missing = Vec::new();
        for d in dids {
            match self.peek(d) {
                Some(Some(a)) => {
                    out.insert(d.clone(), a);
                }
                Some(None) => {}
                None => missing.push(d.clone()),
            }
        }
        for row in self.store.accounts_by_dids(&missing)? {
            out.insert(row.did.clone(), Account::from_row(row));
        }
        Ok(out)
    }

    /// A copy of the account, if it exists.
    pub fn get(&self, did: &str) -> Result<Option<Account>, StoreError> {
        self.with(did, |s| s.account.clone())
    }

    /// Rows of every changed account (clearing their dirty flags). The slots stay in memory
    /// until `flushed` or `mark_dirty` says how the write went.
    pub fn take_dirty(&self) -> Vec<AccountRow> {
        let mut out = Vec::new();
        let now = now_ms();
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            for slot in s.map.values_mut() {
                if slot.dirty {
                    slot.dirty = false;
                    if let Some(a) = &slot.account {
                        slot.flushing = true;
                        let mut row = a.to_row();
                        row.updated_at = now;
                        out.push(row);
                    }
                }
            }
        }
        out
    }

    /// Marks accounts dirty again (their batch failed to commit).
    pub fn mark_dirty(&self, dids: &[String]) {
        for d in dids {
            if let Some(s) = self.shard(d).map.get_mut(d) {
                s.dirty = true;
                s.flushing = false;
            }
        }
    }

    /// The store now holds these accounts as taken: they may be evicted. Shards over capacity
    /// are swept now, since new accounts arrive dirty and could not be evicted when inserted.
    pub fn flushed(&self, dids: &[String]) {
        for d in dids {
            if let Some(s) = self.shard(d).map.get_mut(d) {
                s.flushing = false;
            }
        }
        for shard in self.shards.iter() {
            let mut s = lock(shard);
            if s.map.len() > self.shard_cap {
                s.sweep(self.shard_cap);
            }
        }
    }

    /// Copies of in-memory accounts matching `pred` (they may be newer than the store).
    pub fn find_in_memory(&self, pred: impl Fn(&Account) -> bool) -> Vec<Account> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = lock(shard);
            out.extend(
                s.map
                    .values()
                    .filter_map(|slot| slot.account.as_ref())
                    .filter(|a| pred(a))
                    .cloned(),
            );
        }
        out
    }

    /// Accounts held in memory.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
