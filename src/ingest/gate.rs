//! The identity gate: events whose DID's identity is not cached wait here, per DID and in
//! order, until the resolver reports the DID's resolution.
//!
//! One owner per DID: each gate worker thread owns the queues of the DIDs that hash to it and
//! receives two kinds of message, `Wait` (an event to hold) and `Resolved` (a lookup finished).
//! On `Resolved` it processes that DID's queue in order with the fresh identity. The resolver
//! only resolves; validation threads never wait; nothing here lives in the account slots.
//!
//! Order: a validation thread must not process a DID's event while earlier events of that DID
//! are still held, even in the gate's channel. So the count of held events per DID is kept
//! beside the queues (`Held`), raised by the sender *before* it sends and lowered by the worker
//! only after it has processed the event: a count of zero means nothing of that DID is held
//! anywhere. The same count bounds each DID's queue.

use super::hosts::HostHandle;
use super::pipeline::{Pipeline, Processed};
use crate::identity::Resolved;
use crate::proto::frame::Event;
use crate::util::sharded::{Sharded, lock};
use crossbeam_channel::{Receiver, Sender, select};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

/// An event waiting for its DID's identity (or being processed).
pub(crate) struct Pending {
    pub(crate) host: Arc<HostHandle>,
    pub(crate) seq: u64,
    pub(crate) event: Event,
    /// 1 once the identity has been refreshed for this event (signature or host mismatch).
    pub(crate) attempt: u8,
}

struct Wait {
    did: String,
    item: Pending,
    /// A retry goes back in front of the DID's later events.
    front: bool,
}

/// Held events per DID; an entry exists only while its count is above zero.
#[derive(Default)]
struct HeldEntry {
    count: u32,
    /// The DID's queue filled up and that was counted (reset when it drains), so a long
    /// pause counts once.
    overflowed: bool,
}

/// What a validation thread learns when it offers an event of a DID.
pub(crate) enum Join {
    /// Nothing of this DID is held: process it now (or hold it, if its identity is unknown).
    Clear,
    /// Earlier events of this DID are held; this one has been counted and must be held too.
    Behind,
    /// Earlier events are held and the DID's queue, or the host's share, is full. Host threads
    /// wait for room before queueing (`is_full`), so this happens only when two hosts send
    /// events of one DID at once: hold it anyway.
    Full,
}

/// Events one host may have held at once (its share of the gate's memory).
pub(crate) const MAX_HELD_PER_HOST: usize = 20_000;
/// Events one host may have in flight (queued for validation or held) while none of them waits
/// for an identity lookup: reading further ahead of verification only costs memory (fresh
/// pages for every frame read, cold caches when it is verified) and buys no throughput. The
/// larger share above is for riding out lookups.
pub(crate) const MAX_AHEAD_PER_HOST: usize = 256;
/// Identity lookups one host's events may have under way at once, so a host flooding the
/// relay with unknown DIDs cannot queue its lookups ahead of every other host's.
pub(crate) const MAX_LOOKUPS_PER_HOST: usize = 16;

pub(crate) struct Gate {
    held: Sharded<Mutex<HashMap<String, HeldEntry>>>,
    workers: Vec<Sender<Wait>>,
    max_per_did: u32,
}

impl Gate {
    /// The gate, and its workers to start once the pipeline they serve exists.
    pub(crate) fn new(threads: usize, max_per_did: usize) -> (Gate, GateWorkers) {
        let (workers, receivers) = (0..threads.max(1))
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let gate = Gate {
            held: Sharded::new(|| Mutex::new(HashMap::new())),
            workers,
            max_per_did: max_per_did.min(u32::MAX as usize) as u32,
        };
        (gate, GateWorkers { receivers })
    }

    /// Counts the event in if earlier events of its DID are held (so it must queue behind
    /// them), unless the DID's queue or the host's share is full.
    pub(crate) fn join(&self, did: &str, host: &HostHandle) -> Join {
        let mut held = lock(self.held.of(did));
        match held.get_mut(did) {
            None => Join::Clear,
            Some(e) if e.count >= self.max_per_did || !self.has_room(host) => {
                if !std::mem::replace(&mut e.overflowed, true) {
                    metrics::counter!("rlay_did_queue_full_total").increment(1);
                }
                Join::Full
            }
            Some(e) => {
                e.count += 1;
                host.add_held(1);
                crate::telemetry::once!(
                    metrics::histogram!("rlay_did_queue_depth"),
                    metrics::Histogram
                )
                .record(f64::from(e.count));
                Join::Behind
            }
        }
    }

    /// Whether an event of `did` from `host` would have to wait for room (its DID's queue or
    /// the host's share is full). Host threads ask before handing the event to validation, so
    /// the wait is theirs. The host's events still queued for validation count as held: they
    /// may all join this DID's queue, and so the bounds are never passed.
    pub(crate) fn is_full(&self, did: &str, host: &HostHandle) -> bool {
        let queued = host.queued();
        host.held() + queued >= MAX_HELD_PER_HOST
            || lock(self.held.of(did))
                .get(did)
                .is_some_and(|e| e.count as usize + queued >= self.max_per_did as usize)
    }

    /// Whether the host is as far ahead of verification as it may read while none of its
    /// events waits for a lookup (`MAX_AHEAD_PER_HOST`).
    pub(crate) fn is_ahead(&self, host: &HostHandle) -> bool {
        host.lookups() == 0 && host.in_flight() >= MAX_AHEAD_PER_HOST
    }

    /// Whether the host may have one more event held.
    pub(crate) fn has_room(&self, host: &HostHandle) -> bool {
        host.held() < MAX_HELD_PER_HOST
    }

    /// Holds an event until its DID resolves. `counted`: `join` already counted it.
    pub(crate) fn hold(&self, did: &str, item: Pending, counted: bool, front: bool) {
        if !counted {
            lock(self.held.of(did))
                .entry(did.to_owned())
                .or_default()
                .count += 1;
            item.host.add_held(1);
        }
        crate::telemetry::once!(
            metrics::counter!("rlay_events_awaiting_identity_total"),
            metrics::Counter
        )
        .increment(1);
        let w = (crate::util::did_hash(did) % self.workers.len() as u64) as usize;
        let wait = Wait {
            did: did.to_owned(),
            item,
            front,
        };
        if let Err(e) = self.workers[w].send(wait) {
            // The worker is gone (shutdown): the event is lost with the process anyway, but its
            // host cursor must not wait for it.
            let wait = e.into_inner();
            self.release(&wait.did, &wait.item.host);
            wait.item.host.end(wait.item.seq);
        }
    }

    /// One held event of `did` (from `host`) has been processed.
    fn release(&self, did: &str, host: &HostHandle) {
        host.add_held(-1);
        let mut held = lock(self.held.of(did));
        if let Some(e) = held.get_mut(did) {
            e.count = e.count.saturating_sub(1);
            if e.count == 0 {
                held.remove(did);
            }
        }
    }

    /// DIDs with events held.
    pub(crate) fn dids_held(&self) -> usize {
        self.held.iter().map(|s| lock(s).len()).sum()
    }
}

/// The gate's threads, not yet started.
pub(crate) struct GateWorkers {
    receivers: Vec<Receiver<Wait>>,
}

impl GateWorkers {
    /// Starts one thread per queue partition, processing released events through `pipeline`.
    pub(crate) fn spawn(self, pipeline: Weak<Pipeline>) -> std::io::Result<()> {
        for (i, rx) in self.receivers.into_iter().enumerate() {
            let p = pipeline.clone();
            std::thread::Builder::new()
                .name(format!("identity-gate-{i}"))
                .stack_size(2 << 20)
                .spawn(move || Worker::new(p).run(rx))?;
        }
        Ok(())
    }
}

/// One gate thread: the queues of its DIDs.
struct Worker {
    pipeline: Weak<Pipeline>,
    queues: HashMap<String, VecDeque<Pending>>,
    /// DIDs whose lookup is under way, and the host whose event asked for it.
    asked: HashMap<String, Arc<HostHandle>>,
    /// DIDs waiting for their host's lookups to drop below the per-host bound, in order.
    deferred: VecDeque<(String, Arc<HostHandle>)>,
    resolved_tx: Sender<Resolved>,
    resolved_rx: Receiver<Resolved>,
}

impl Worker {
    fn new(pipeline: Weak<Pipeline>) -> Worker {
        let (resolved_tx, resolved_rx) = crossbeam_channel::unbounded();
        Worker {
            pipeline,
            queues: HashMap::new(),
            asked: HashMap::new(),
            deferred: VecDeque::new(),
            resolved_tx,
            resolved_rx,
        }
    }

    fn run(mut self, waits: Receiver<Wait>) {
        let retry = std::time::Duration::from_millis(20);
        let sweep_every = std::time::Duration::from_millis(250);
        let mut swept = std::time::Instant::now();
        loop {
            select! {
                recv(waits) -> m => {
                    let Ok(w) = m else { return };
                    let Some(p) = self.pipeline.upgrade() else { return };
                    self.hold(&p, w);
                }
                recv(self.resolved_rx) -> m => {
                    let Ok(r) = m else { return };
                    let Some(p) = self.pipeline.upgrade() else { return };
                    self.release(&p, r);
                }
                default(retry) => {}
            }
            if swept.elapsed() >= sweep_every {
                swept = std::time::Instant::now();
                if let Some(p) = self.pipeline.upgrade() {
                    self.discard_killed(&p);
                }
            }
            if !self.deferred.is_empty() {
                let Some(p) = self.pipeline.upgrade() else {
                    return;
                };
                self.ask_deferred(&p);
            }
        }
    }

    /// Asks for a DID's lookup on behalf of `host`'s event, or defers it while the host has
    /// its share of lookups under way.
    fn ask(&mut self, p: &Pipeline, did: String, host: Arc<HostHandle>) {
        if host.lookups() >= MAX_LOOKUPS_PER_HOST {
            metrics::counter!("rlay_identity_lookups_deferred_total").increment(1);
            self.deferred.push_back((did, host));
            return;
        }
        host.add_lookups(1);
        p.resolver().request(&did, Some(&self.resolved_tx));
        self.asked.insert(did, host);
    }

    /// Asks for deferred lookups whose hosts have room again, keeping each host's order.
    fn ask_deferred(&mut self, p: &Pipeline) {
        let mut still = VecDeque::new();
        while let Some((did, host)) = self.deferred.pop_front() {
            if host.lookups() < MAX_LOOKUPS_PER_HOST
                && !still
                    .iter()
                    .any(|(_, h): &(String, Arc<HostHandle>)| Arc::ptr_eq(h, &host))
            {
                host.add_lookups(1);
                p.resolver().request(&did, Some(&self.resolved_tx));
                self.asked.insert(did, host);
            } else {
                still.push_back((did, host));
            }
        }
        self.deferred = still;
    }

    /// Drops the held events of hosts whose connection was blocked or killed: they are not
    /// processed, so their hosts resume from before them, and a blocked host's backlog stops
    /// costing lookups and memory at once.
    fn discard_killed(&mut self, p: &Pipeline) {
        let mut discarded = 0u64;
        self.queues.retain(|did, q| {
            q.retain(|item| {
                if !item.host.killed() {
                    return true;
                }
                item.host.rewind_cursor();
                p.gate().release(did, &item.host);
                discarded += 1;
                false
            });
            !q.is_empty()
        });
        // Deferred lookups of DIDs with nothing left to wait for are not needed any more.
        let queues = &self.queues;
        self.deferred.retain(|(did, _)| queues.contains_key(did));
        if discarded > 0 {
            metrics::counter!("rlay_gate_events_discarded_total").increment(discarded);
        }
    }

    fn hold(&mut self, p: &Pipeline, w: Wait) {
        if w.item.host.killed() {
            w.item.host.rewind_cursor();
            p.gate().release(&w.did, &w.item.host);
            metrics::counter!("rlay_gate_events_discarded_total").increment(1);
            return;
        }
        let q = self.queues.entry(w.did.clone()).or_default();
        let first = q.is_empty();
        let host = w.item.host.clone();
        if w.front {
            q.push_front(w.item);
        } else {
            q.push_back(w.item);
        }
        // A DID with a queue already has its lookup under way (or deferred); so may one whose
        // queue was discarded, and its answer will serve this queue.
        if first && !self.asked.contains_key(&w.did) {
            match p.resolver().cached_hit(&w.did) {
                // Held only behind earlier events, now done, and its identity is known: run
                // the queue now. Asking would send a `Resolved` round this thread's own
                // channel, and meanwhile count a lookup for the host (which lifts its
                // read-ahead bound) or defer behind its real lookups.
                Some(res) => self.release(p, Resolved { did: w.did, res }),
                None => self.ask(p, w.did, host),
            }
        }
    }

    /// Processes the DID's queue in order with its resolution. A retry (the identity may be
    /// stale) puts the event back in front and asks for a fresh lookup.
    fn release(&mut self, p: &Pipeline, r: Resolved) {
        if let Some(h) = self.asked.remove(&r.did) {
            h.add_lookups(-1);
        }
        let Some(mut q) = self.queues.remove(&r.did) else {
            return;
        };
        while let Some(item) = q.pop_front() {
            let (host, seq) = (item.host.clone(), item.seq);
            let done = crate::util::isolate::isolate(
                "identity-gate",
                || {
                    format!(
                        "processing seq {seq} from {} for {}",
                        host.hostname(),
                        r.did
                    )
                },
                || p.process(item, &r.did, &r.res),
            );
            match done.unwrap_or_else(|| {
                // The event is lost with the panic; its host's cursor must not wait for it.
                host.end(seq);
                Processed::Done
            }) {
                Processed::Done => p.gate().release(&r.did, &host),
                Processed::Retry(item) => {
                    p.resolver().purge(&r.did);
                    let asker = item.host.clone();
                    q.push_front(*item);
                    self.queues.insert(r.did.clone(), q);
                    self.ask(p, r.did.clone(), asker);
                    return;
                }
            }
        }
    }
}
