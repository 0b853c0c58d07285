//! What happens to each upstream event: identity, host authority, account status, full
//! verification, account state, and emission to the sequencer.
//!
//! No unverified event leaves the relay, and no host thread waits for DID resolution. Host
//! threads hand each event to its DID's validation thread (`validators`). When the DID's
//! identity is cached that thread verifies it at once. Otherwise the event waits in the
//! identity gate (`gate`), in its DID's bounded queue, and a gate thread processes it once the
//! resolver reports the DID; later events of that DID queue behind it, so order is kept. A
//! signature failure or a host mismatch refreshes the identity once and retries.
//!
//! This code runs on validation threads (cached identities), gate threads (released events)
//! and API threads (takedowns); they meet only in the account shards.
//!
//! State changes and the matching emission happen under the account's shard lock, so the store
//! flusher never sees state whose event has not reached the sequencer.

mod local_status;
mod make_whole;
mod recovery;
mod store_wait;

use super::accounts::{ACTIVE, Account, Accounts, Slot, THROTTLED};
use super::gate::{Gate, Join, Pending};
use super::hosts::{HostHandle, Hosts};
use super::validators::{MAX_QUEUED_PER_HOST, Validators};
use crate::identity::{Resolution, Resolver};
use crate::proto::frame::{AccountEvent, Event, IdentityEvent};
use crate::proto::syntax::{is_normalized_did, is_valid_did};
use crate::proto::verify::RepoState;
use crate::proto::verify::{Chain, Options, verify_commit, verify_sync};
use crate::stream::sequencer::{Outgoing, Sequencer};
use crate::util::Hidden;
use bytes::Bytes;
use recovery::{Recovered, seen_key};
use std::sync::{Arc, Mutex, PoisonError};
use store_wait::StoreWait;

/// How many gate threads process events released by identity lookups.
const GATE_THREADS: usize = 2;
/// Validation threads unless configured: enough to keep 2–4 cores busy while some wait on the
/// store for an account not in memory.
pub const DEFAULT_VERIFY_THREADS: u16 = 4;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub(crate) lenient: bool,
    /// zlay's behaviour: forward unverified on an identity cache miss.
    pub(crate) optimistic: bool,
    /// Events a DID may have waiting for its identity before its host is paused.
    pub(crate) max_pending_per_did: usize,
    /// Threads that verify events (see `validators`).
    pub(crate) verify_threads: usize,
}

impl PipelineConfig {
    /// `lenient`: indigo's lenient sync validation; `optimistic`: zlay's unverified forwarding.
    pub fn new(lenient: bool, optimistic: bool) -> PipelineConfig {
        PipelineConfig {
            lenient,
            optimistic,
            ..PipelineConfig::default()
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            lenient: false,
            optimistic: false,
            max_pending_per_did: 1000,
            verify_threads: usize::from(DEFAULT_VERIFY_THREADS),
        }
    }
}

/// Told about accepted changes (the collection index listens). Calls happen before the event
/// is handed to the sequencer, so once an event's seq is published its change is already queued
/// and a `barrier` covers it: the flusher's recorded log position never runs ahead of what the
/// observer has written (crash recovery replays from that position).
pub trait Observer: Send + Sync {
    /// An accepted commit: its ops, and the collections it deleted the last record of.
    fn commit(&self, did: &str, ops: &[crate::proto::frame::RepoOp], emptied: &[String]);
    fn account_deleted(&self, did: &str);
    /// Returns once every change reported so far is written (false if that took too long).
    fn barrier(&self) -> bool;
}

pub struct Pipeline {
    accounts: Accounts,
    /// Crash recovery: repo state of accounts first seen after the last flush, and the
    /// identity/account events already in the log, so their upstream replays are not re-emitted.
    recovered: Mutex<Recovered>,
    resolver: Arc<Resolver>,
    gate: Gate,
    validators: Validators,
    sequencer: Sequencer,
    hosts: Arc<Hosts>,
    hidden: Arc<Hidden>,
    cfg: PipelineConfig,
    observer: Option<Arc<dyn Observer>>,
    store_wait: StoreWait,
    /// Makes accounts whole when they leave `throttled` (set once at start-up).
    resync: std::sync::OnceLock<Arc<crate::ingest::resync::Resync>>,
}

/// What became of an event handed to `process`.
pub(crate) enum Processed {
    Done,
    /// Refresh the identity and process this item again.
    Retry(Box<Pending>),
}

enum Outcome {
    /// Sequenced (or already in the log): goes out on the firehose.
    Accepted,
    /// A duplicate or replay: nothing to do, nothing wrong.
    Ignored,
    /// Refused, for this reason (a metric label).
    Dropped(&'static str),
    /// Not processed: the store was unavailable and the host's connection went away meanwhile,
    /// or the relay is shutting down. The host resumes from before it.
    Abandoned,
    /// Refresh the identity and process this item again.
    Retry(Box<Pending>),
}

/// What applying a verified event to the account found.
enum Apply {
    Emitted(bool),
    /// Someone changed the state since it was read: verify again against this.
    Changed(Option<RepoState>),
    Missing,
}

fn dropped(reason: &'static str) -> Outcome {
    Outcome::Dropped(reason)
}

/// An event handed to the sequencer (`Some(true)`) is accepted; anything else means the relay
/// could not take it now, and its host must resume from before it.
fn sent(emitted: Option<bool>) -> Outcome {
    if emitted == Some(true) {
        Outcome::Accepted
    } else {
        Outcome::Abandoned
    }
}

/// Per-host counts, so an operator can see which PDS sends what gets refused. The label set is
/// bounded by the host table (and the reasons by this file).
fn count_dropped(host: &HostHandle, reason: &'static str) {
    metrics::counter!("rlay_events_dropped_total", "reason" => reason, "pds" => host.hostname().to_owned())
        .increment(1);
}

impl Pipeline {
    /// The pipeline and its identity gate threads.
    pub fn new(
        accounts: Accounts,
        resolver: Arc<Resolver>,
        sequencer: Sequencer,
        hosts: Arc<Hosts>,
        hidden: Arc<Hidden>,
        cfg: PipelineConfig,
        observer: Option<Arc<dyn Observer>>,
    ) -> std::io::Result<Arc<Pipeline>> {
        let (gate, workers) = Gate::new(GATE_THREADS, cfg.max_pending_per_did);
        let (validators, validator_threads) = Validators::new(cfg.verify_threads);
        let p = Arc::new(Pipeline {
            accounts,
            recovered: Mutex::default(),
            resolver,
            gate,
            validators,
            sequencer,
            hosts,
            hidden,
            cfg,
            observer,
            store_wait: StoreWait::default(),
            resync: std::sync::OnceLock::new(),
        });
        workers.spawn(Arc::downgrade(&p))?;
        validator_threads.spawn(Arc::downgrade(&p))?;
        Ok(p)
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Where accounts leaving `throttled` are queued to be made whole.
    pub fn set_resync(&self, r: Arc<crate::ingest::resync::Resync>) {
        let _ = self.resync.set(r);
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    pub(super) fn validators(&self) -> &Validators {
        &self.validators
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn hosts(&self) -> &Arc<Hosts> {
        &self.hosts
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.as_ref()
    }

    /// Waits until every event emitted so far is durable in the log; returns the last seq.
    pub fn barrier(&self, timeout: std::time::Duration) -> Option<u64> {
        self.sequencer.barrier(timeout)
    }

    /// Nothing is being looked up or waiting for an identity (tests wait for this).
    pub fn is_idle(&self) -> bool {
        self.resolver.pending() == 0 && self.gate.dids_held() == 0 && self.validators.busy() == 0
    }

    /// Entry point for host threads: the frame (a repo event of `did`, checked by
    /// `frame::peek`) goes to its DID's validation thread, which decodes it.
    pub fn submit(&self, host: &Arc<HostHandle>, seq: u64, did: &str, frame: &Bytes) {
        let hash = crate::util::did_hash(did);
        if !host.begin(seq, hash) {
            metrics::counter!("rlay_events_ignored_total", "reason" => "replayed_in_flight")
                .increment(1);
            return;
        }
        if !is_valid_did(did) || !is_normalized_did(did) {
            count_dropped(host, "bad_did");
            host.end(seq);
            return;
        }
        if !self.wait_for_room(host, did) {
            // The connection is going away: resume later from before this event.
            host.rewind_cursor();
            return;
        }
        self.validators.send(hash, host.clone(), seq, frame.clone());
    }

    /// On a validation thread: a frame a host thread passed on. A body that does not match
    /// its lexicon costs that frame.
    pub(super) fn accept(&self, host: Arc<HostHandle>, seq: u64, frame: &Bytes) {
        let event = match crate::proto::frame::decode(frame) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!("rlay_bad_frames_total", "reason" => "schema").increment(1);
                log::debug!("upstream {}: dropping a frame: {e}", host.hostname());
                host.end(seq);
                return;
            }
        };
        let Some(did) = event.did().map(str::to_owned) else {
            host.end(seq);
            return;
        };
        // Identity and status changes are rare and decide who is authoritative for the account,
        // so they always get a fresh DID document: a stale cache would, for example, accept a
        // deactivation from the account's old host during a migration.
        if matches!(event, Event::Identity(_) | Event::Account(_)) {
            self.resolver.purge(&did);
        }
        let item = Pending {
            host,
            seq,
            event,
            attempt: 0,
        };
        self.dispatch(item, &did);
    }

    /// On a validation thread: processes the event now (identity cached) or holds it in the
    /// gate. Never waits: a full DID queue or host share was already waited out by the host
    /// thread in `submit`.
    fn dispatch(&self, item: Pending, did: &str) {
        match self.gate.join(did, &item.host) {
            // Behind earlier events of the DID that wait for its identity.
            Join::Behind => self.gate.hold(did, item, true, false),
            Join::Full => self.gate.hold(did, item, false, false),
            Join::Clear => {
                if let Some(res) = self.resolver.cached(did) {
                    if let Processed::Retry(item) = self.process(item, did, &res) {
                        self.resolver.purge(did);
                        self.gate.hold(did, *item, false, true);
                    }
                } else if self.cfg.optimistic
                    && matches!(item.event, Event::Commit(_) | Event::Sync(_))
                {
                    self.passthrough(item, did);
                    self.resolver.request(did, None);
                } else {
                    self.gate.hold(did, item, false, false);
                }
            }
        }
    }

    /// On the host thread, before it hands an event over: waits while the host has its share
    /// queued for validation, or while the event's DID queue or the host's share of the gate
    /// is full, or while it is as far ahead of verification as it may read. The host stops
    /// reading, TCP pushes back on the PDS, and overload costs latency, never a valid event.
    /// Returns false if the connection went away meanwhile.
    fn wait_for_room(&self, host: &HostHandle, did: &str) -> bool {
        let mut paused = false;
        loop {
            let gate_full = self.gate.is_full(did, host);
            let ahead = self.gate.is_ahead(host);
            if !gate_full && host.queued() < MAX_QUEUED_PER_HOST && !ahead {
                return true;
            }
            if host.killed() {
                return false;
            }
            if ahead {
                // Verification is behind this host: normal at full load; a steady rate says
                // the relay needs more CPU.
                metrics::counter!("rlay_host_read_ahead_waits_total", "pds" => host.hostname().to_owned())
                    .increment(1);
            }
            if gate_full && !std::mem::replace(&mut paused, true) {
                metrics::counter!("rlay_host_backpressure_total", "pds" => host.hostname().to_owned())
                    .increment(1);
                log::debug!(
                    "ingest: {} paused: its events waiting for identities are at their bound ({did} waiting)",
                    host.hostname()
                );
            }
            host.wait_for_room();
        }
    }

    /// Runs one event through verification and account state with its DID's resolution, on a
    /// validation thread (cached identity) or a gate thread (released by a lookup).
    pub(crate) fn process(&self, item: Pending, did: &str, res: &Resolution) -> Processed {
        let (host, seq) = (item.host.clone(), item.seq);
        match self.process_event(item, did, res) {
            Outcome::Retry(item) => return Processed::Retry(item),
            Outcome::Accepted => host.count_accepted(),
            Outcome::Dropped(reason) => count_dropped(&host, reason),
            Outcome::Abandoned => host.rewind_cursor(),
            Outcome::Ignored => {}
        }
        host.end(seq);
        Processed::Done
    }

    /// Runs `f` on the DID's account slot, waiting through a store outage (see `store_wait`).
    /// `None`: the host's connection went away while waiting; the event was not processed.
    fn with_account<R>(
        &self,
        host: &HostHandle,
        did: &str,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        let mut attempts = 0;
        let r = self.accounts.with_or_wait(
            did,
            |e| {
                attempts += 1;
                self.store_wait.wait(host, did, e, attempts)
            },
            f,
        );
        self.store_wait.recovered(attempts);
        r.ok()
    }

    /// Creates the account on first sight from its own PDS, or moves it on a verified migration.
    fn ensure_account<'s>(
        &self,
        slot: &'s mut Slot,
        host: &HostHandle,
        did: &str,
    ) -> &'s mut Account {
        let acct = slot.account.get_or_insert_with(|| {
            // A host's count is the accounts it has let in: throttled ones wait outside it.
            let local = if host.has_capacity() {
                host.add_accounts(1);
                ACTIVE
            } else {
                THROTTLED
            };
            metrics::counter!("relay_new_users_discovered").increment(1);
            slot.dirty = true;
            let mut rec = self
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Account {
                uid: self.accounts.new_uid(),
                did: did.to_owned(),
                host_id: host.id(),
                local: local.to_owned(),
                upstream: rec
                    .upstream
                    .remove(did)
                    .unwrap_or_else(|| ACTIVE.to_owned()),
                repo: rec.repos.remove(did),
                created_at: crate::util::now_ms(),
            }
        });
        if acct.host_id != host.id() {
            log::info!(
                "ingest: {did} migrated to {} (verified against its DID document)",
                host.hostname()
            );
            if acct.local != THROTTLED {
                if let Some(old) = self.hosts.get(acct.host_id) {
                    old.add_accounts(-1);
                }
                host.add_accounts(1);
            }
            acct.host_id = host.id();
            slot.dirty = true;
            metrics::counter!("rlay_account_migrations_total").increment(1);
        }
        acct
    }

    fn process_event(&self, item: Pending, did: &str, res: &Resolution) -> Outcome {
        let ident = res.identity();
        let host_ok = ident.and_then(|i| i.pds_host()).as_deref() == Some(item.host.hostname());
        let replay_key = match &item.event {
            Event::Identity(e) => Some(seen_key("i", did, &e.time)),
            Event::Account(e) => Some(seen_key("a", did, &e.time)),
            _ => None,
        };
        if let Some(k) = replay_key
            && self
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .seen
                .remove(&k)
        {
            metrics::counter!("rlay_events_ignored_total", "reason" => "already_logged")
                .increment(1);
            return Outcome::Ignored;
        }
        match &item.event {
            Event::Identity(e) => {
                if ident.is_none() {
                    return dropped("identity_unresolved");
                }
                // The handle passes only when the DID document declares it and the event came
                // from the account's own PDS.
                let declared = ident.and_then(|i| i.handle.clone());
                let handle = e
                    .handle
                    .as_ref()
                    .map(|h| h.to_ascii_lowercase())
                    .filter(|h| host_ok && Some(h) == declared.as_ref());
                let Some(out) = Outgoing::new(&Event::Identity(IdentityEvent {
                    seq: 0,
                    did: did.to_owned(),
                    time: e.time.clone(),
                    handle,
                })) else {
                    return dropped("unencodable");
                };
                let emitted = self.with_account(&item.host, did, |slot| {
                    if host_ok {
                        self.ensure_account(slot, &item.host, did);
                    }
                    self.sequencer.send(out)
                });
                sent(emitted)
            }
            Event::Account(e) => {
                if !host_ok {
                    if item.attempt == 0 && ident.is_some() {
                        return Outcome::Retry(Box::new(Pending { attempt: 1, ..item }));
                    }
                    // A deleted (tombstoned) DID can still report its deletion from its own host; a DID
                    // that resolves to another host cannot.
                    let from_own_host = ident.is_none()
                        && match self.with_account(&item.host, did, |s| {
                            s.account
                                .as_ref()
                                .is_some_and(|a| a.host_id == item.host.id())
                        }) {
                            Some(own) => own,
                            None => return Outcome::Abandoned,
                        };
                    if !from_own_host {
                        return dropped("wrong_host");
                    }
                }
                let upstream = if e.active {
                    ACTIVE.to_owned()
                } else {
                    e.status.clone().unwrap_or_else(|| "inactive".into())
                };
                let time = e.time.clone();
                let deleted = upstream == "deleted";
                let r = self.with_account(&item.host, did, |slot| {
                    if host_ok {
                        self.ensure_account(slot, &item.host, did);
                    }
                    let a = slot.account.as_mut()?;
                    if a.upstream != upstream {
                        // A deleted account no longer counts against its host's limit (indigo
                        // counts it forever, so busy hosts need manual limit raises).
                        let delta = match (a.upstream == "deleted", deleted) {
                            _ if a.local == THROTTLED => 0,
                            (false, true) => -1,
                            (true, false) => 1,
                            _ => 0,
                        };
                        if delta != 0
                            && let Some(h) = self.hosts.get(a.host_id)
                        {
                            h.add_accounts(delta);
                            // A deletion on a full host frees a place for a throttled account.
                            if delta < 0
                                && h.has_capacity()
                                && h.account_count() + 1 >= h.account_limit()
                                && let Some(r) = self.resync.get()
                            {
                                r.freed(h.id());
                            }
                        }
                        a.upstream = upstream;
                        slot.dirty = true;
                    }
                    let (active, status) = a.combined();
                    // Told before the event is sequenced: see `Observer`.
                    if deleted && let Some(o) = &self.observer {
                        o.account_deleted(did);
                    }
                    Some(self.sequencer.emit(&Event::Account(AccountEvent {
                        seq: 0,
                        did: did.to_owned(),
                        time,
                        active,
                        status,
                    })))
                });
                match r {
                    Some(None) => dropped("unknown_account"),
                    Some(Some(emitted)) => sent(Some(emitted)),
                    None => Outcome::Abandoned,
                }
            }
            Event::Commit(_) | Event::Sync(_) => self.process_repo_event(item, did, res, host_ok),
            _ => Outcome::Ignored,
        }
    }

    fn process_repo_event(
        &self,
        item: Pending,
        did: &str,
        res: &Resolution,
        host_ok: bool,
    ) -> Outcome {
        let ident = match res {
            Resolution::Found(i) => i.clone(),
            Resolution::Tombstoned => return dropped("account_deleted"),
            _ => return dropped("identity_unresolved"),
        };
        if !host_ok {
            if item.attempt == 0 {
                return Outcome::Retry(Box::new(Pending { attempt: 1, ..item }));
            }
            log::debug!(
                "ingest: {did} is not hosted on {}; dropping its event",
                item.host.hostname()
            );
            return dropped("wrong_host");
        }
        let Some(key) = ident.key.clone() else {
            return dropped("no_signing_key");
        };
        let state = self.with_account(&item.host, did, |slot| {
            let a = self.ensure_account(slot, &item.host, did);
            (a.repo.clone(), a.is_active())
        });
        let Some((mut stored, active)) = state else {
            return Outcome::Abandoned;
        };
        if !active {
            return dropped("inactive_account");
        }
        let opts = Options {
            lenient: self.cfg.lenient,
            now_us: crate::proto::verify::now_us(),
        };
        // Encoded once it verifies, outside the account lock; sent under it if it applies.
        let mut out = None;
        // Verify against the state read, then apply only if nobody changed it meanwhile.
        for _ in 0..3 {
            let verdict = match &item.event {
                Event::Commit(c) => verify_commit(c, &key, stored.as_ref(), &opts),
                Event::Sync(s) => verify_sync(s, &key, stored.as_ref(), &opts),
                _ => return Outcome::Ignored,
            };
            let acc = match verdict {
                Ok(a) => a,
                Err(e) if e.is_stale() => {
                    metrics::counter!("rlay_events_ignored_total", "reason" => "stale_rev")
                        .increment(1);
                    return Outcome::Ignored;
                }
                Err(e) if e.is_signature() && item.attempt == 0 => {
                    return Outcome::Retry(Box::new(Pending { attempt: 1, ..item }));
                }
                Err(e) => {
                    log::debug!(
                        "ingest: dropping {} for {did} from {}: {e}",
                        item.event.type_name(),
                        item.host.hostname()
                    );
                    metrics::counter!("rlay_validation_failures_total", "rule" => e.rule())
                        .increment(1);
                    return dropped("invalid");
                }
            };
            if out.is_none() {
                out = Outgoing::new(&item.event);
                if out.is_none() {
                    return dropped("unencodable");
                }
            }
            let applied = self.with_account(&item.host, did, |slot| {
                let Some(a) = slot.account.as_mut() else {
                    return Apply::Missing;
                };
                if a.repo != stored {
                    return Apply::Changed(a.repo.clone());
                }
                a.repo = Some(acc.state.clone());
                slot.dirty = true;
                if let (Event::Commit(c), Some(o)) = (&item.event, &self.observer) {
                    o.commit(did, &c.ops, &acc.emptied);
                }
                Apply::Emitted(out.take().is_some_and(|o| self.sequencer.send(o)))
            });
            match applied {
                Some(Apply::Emitted(true)) => {
                    if acc.chain == Chain::Broken {
                        metrics::counter!("rlay_chain_breaks_total").increment(1);
                    }
                    return Outcome::Accepted;
                }
                Some(Apply::Emitted(false)) | None => return Outcome::Abandoned,
                Some(Apply::Changed(now)) => stored = now,
                Some(Apply::Missing) => return dropped("unknown_account"),
            }
        }
        dropped("concurrent_update")
    }

    /// Optimistic mode on a cache miss: forward without verification (zlay's behaviour), unless
    /// the relay itself has the account down.
    fn passthrough(&self, item: Pending, did: &str) {
        let r = self.with_account(&item.host, did, |slot| {
            if slot.account.as_ref().is_some_and(|a| a.local != ACTIVE) {
                return false;
            }
            // Unverified, so no tree to judge emptied collections by: additions only.
            if let (Event::Commit(c), Some(o)) = (&item.event, &self.observer) {
                o.commit(did, &c.ops, &[]);
            }
            self.sequencer.emit(&item.event)
        });
        match r {
            Some(true) => {
                metrics::counter!("rlay_events_unverified_total").increment(1);
                item.host.count_accepted();
            }
            Some(false) => {}
            None => item.host.rewind_cursor(),
        }
        item.host.end(item.seq);
    }
}
