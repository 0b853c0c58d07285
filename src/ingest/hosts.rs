//! Upstream hosts (PDSes) the relay subscribes to: their live state, and the registry of them.

use crate::store::{HostRow, HostStatus};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Where a host's cursor can safely be persisted: the highest seq read, held back to just
/// below the lowest seq still waiting for its DID's identity.
#[derive(Default)]
struct CursorTrack {
    last: i64,
    /// seq → (copies in flight, hash of the event's DID).
    inflight: BTreeMap<u64, (u32, u64)>,
    /// (seq, DID hash) of events finished above the resume point: a reconnect resumes from
    /// below them and the host sends them again, and those copies must not count twice.
    done_above: std::collections::BTreeSet<(u64, u64)>,
    /// The highest seq the current connection has delivered (its resume cursor at first):
    /// the host still resends every event above it that was read before the reconnect.
    session_high: i64,
}

/// Finished events remembered above the resume point, per host (16 bytes each).
const MAX_DONE_ABOVE: usize = 100_000;

impl CursorTrack {
    fn safe(&self) -> i64 {
        match self.inflight.keys().next() {
            Some(&lowest) => (lowest as i64 - 1).min(self.last),
            None => self.last,
        }
    }

    /// Forgets finished events that no replay reaches: at or below the point a reconnect would
    /// resume from, and already passed by the current connection.
    fn prune(&mut self) {
        let safe = self.safe().min(self.session_high).max(0) as u64;
        while self.done_above.first().is_some_and(|&(s, _)| s <= safe)
            || self.done_above.len() > MAX_DONE_ABOVE
        {
            self.done_above.pop_first();
        }
    }
}

/// One upstream host's live state, shared by its connection thread, the pipeline, the flusher
/// and the API. Each piece of state has one writer: the connection thread owns `connected`,
/// `running` and `events_received`; the pipeline the cursor and account count; the crawler and
/// admin routes the status, limit and `kill`.
pub struct HostHandle {
    id: i64,
    hostname: String,
    no_tls: bool,
    trusted: bool,
    status: Mutex<HostStatus>,
    account_count: AtomicI64,
    account_limit: AtomicI64,
    cursor: Mutex<CursorTrack>,
    /// Ask the connection thread to stop (kill, block, shutdown).
    kill: AtomicBool,
    connected: AtomicBool,
    /// A connection thread is running for this host.
    running: AtomicBool,
    events_received: AtomicU64,
    /// `rlay_events_accepted_total{pds}` and indigo's `events_received_counter{pds}`, made
    /// once (after the metrics recorder is installed) so the per-event path does not build the
    /// label each time. [`HostHandle::make_counters`] makes them before the host's thread
    /// starts, so that thread allocates nothing long-lived of its own.
    accepted: std::sync::OnceLock<metrics::Counter>,
    received: std::sync::OnceLock<metrics::Counter>,
    /// (cursor, account count) last written to the store.
    persisted: Mutex<(i64, i64)>,
    /// A handle on the open connection's socket, so it can be closed from outside a blocked
    /// read (kill, block, and the stall watchdog).
    socket: Mutex<Option<TcpStream>>,
    /// When the connection last delivered a complete message (unix ms).
    last_message_ms: AtomicI64,
    /// Events of this host held in the identity gate, and identity lookups they have asked for.
    held: AtomicI64,
    lookups: AtomicI64,
    /// Events of this host queued for the validation threads.
    queued: AtomicI64,
    /// The host thread's wait for its events in flight to fall (see `room`).
    room: super::room::Room,
    /// When the current (or last) connection was made, unix ms; 0: never.
    connected_at_ms: AtomicI64,
    /// Cut short the connection thread's wait before its next attempt (discovery saw the host
    /// active elsewhere).
    wake: AtomicBool,
    rate: super::host_rate::HostRate,
}

impl HostHandle {
    /// Counts an event from this host that went out on the firehose.
    pub fn count_accepted(&self) {
        self.accepted_counter().increment(1);
    }

    fn accepted_counter(&self) -> &metrics::Counter {
        self.accepted.get_or_init(
            || metrics::counter!("rlay_events_accepted_total", "pds" => self.hostname.clone()),
        )
    }

    /// `events_received_counter{pds}` (indigo's name).
    pub fn received_counter(&self) -> &metrics::Counter {
        self.received.get_or_init(
            || metrics::counter!("events_received_counter", "pds" => self.hostname.clone()),
        )
    }

    /// Makes the per-host counters now, on the calling thread.
    pub fn make_counters(&self) {
        self.accepted_counter();
        self.received_counter();
    }

    pub fn from_row(r: &HostRow) -> HostHandle {
        HostHandle {
            id: r.id,
            hostname: r.hostname.clone(),
            no_tls: r.no_tls,
            trusted: r.trusted,
            status: Mutex::new(r.status),
            account_count: AtomicI64::new(r.account_count),
            account_limit: AtomicI64::new(r.account_limit),
            cursor: Mutex::new(CursorTrack {
                last: r.last_seq.max(0),
                ..CursorTrack::default()
            }),
            kill: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            running: AtomicBool::new(false),
            events_received: AtomicU64::new(0),
            accepted: std::sync::OnceLock::new(),
            received: std::sync::OnceLock::new(),
            persisted: Mutex::new((r.last_seq, r.account_count)),
            socket: Mutex::new(None),
            last_message_ms: AtomicI64::new(0),
            held: AtomicI64::new(0),
            lookups: AtomicI64::new(0),
            queued: AtomicI64::new(0),
            room: super::room::Room::new(),
            connected_at_ms: AtomicI64::new(0),
            wake: AtomicBool::new(false),
            rate: Default::default(),
        }
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Connect with `ws://` (dev mode hosts).
    pub fn no_tls(&self) -> bool {
        self.no_tls
    }

    pub fn trusted(&self) -> bool {
        self.trusted
    }

    pub fn account_count(&self) -> i64 {
        self.account_count.load(Ordering::Relaxed)
    }

    /// An account came (+1) or went (-1, e.g. deleted or migrated away).
    pub fn add_accounts(&self, delta: i64) {
        self.account_count.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn account_limit(&self) -> i64 {
        self.account_limit.load(Ordering::Relaxed)
    }

    /// Sets the account limit; returns the old one.
    pub fn set_account_limit(&self, limit: i64) -> i64 {
        self.account_limit.swap(limit, Ordering::Relaxed)
    }

    /// A connection to the host is open.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub(crate) fn set_connected(&self, on: bool) {
        if on {
            self.connected_at_ms
                .store(crate::util::now_ms(), Ordering::Relaxed);
        }
        self.connected.store(on, Ordering::SeqCst);
    }

    /// When the current (or last) connection was made, unix ms; 0 if never.
    pub fn connected_at_ms(&self) -> i64 {
        self.connected_at_ms.load(Ordering::Relaxed)
    }

    /// Asks the connection thread to try again now rather than after its backoff.
    pub(crate) fn wake(&self) {
        self.wake.store(true, Ordering::Relaxed);
    }

    /// Whether a wake-up was asked for (and clears it).
    pub(crate) fn take_wake(&self) -> bool {
        self.wake.swap(false, Ordering::Relaxed)
    }

    /// A connection thread exists for this host (connected or backing off).
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Claims the host for a new connection thread; false if one is already running.
    pub(crate) fn claim_thread(&self) -> bool {
        if self.running.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.kill.store(false, Ordering::SeqCst);
        true
    }

    /// The connection thread is ending.
    pub(crate) fn release_thread(&self) {
        self.connected.store(false, Ordering::SeqCst);
        self.running.store(false, Ordering::SeqCst);
    }

    /// Asks the connection thread to drop its connection and stop; closes the socket at once,
    /// so a read that is blocked (or fed one byte at a time) ends now.
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
        self.room.wake();
        self.drop_connection();
    }

    /// Closes the open connection's socket from outside its thread; the thread reconnects as
    /// after any disconnect (unless killed).
    pub fn drop_connection(&self) {
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The connection thread's socket, for `cut`; `None` when the connection ends.
    pub(crate) fn attach_socket(&self, s: Option<TcpStream>) {
        *self.socket.lock().unwrap_or_else(PoisonError::into_inner) = s;
        self.touch();
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed).max(0) as usize
    }

    pub(crate) fn add_held(&self, delta: i64) {
        self.held.fetch_add(delta, Ordering::SeqCst);
        if delta < 0 {
            self.room.freed(|| self.in_flight() as i64);
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed).max(0) as usize
    }

    pub(crate) fn add_queued(&self, delta: i64) {
        self.queued.fetch_add(delta, Ordering::SeqCst);
        if delta < 0 {
            self.room.freed(|| self.in_flight() as i64);
        }
    }

    /// Events of this host queued for validation or held in the gate.
    pub(crate) fn in_flight(&self) -> usize {
        (self.held.load(Ordering::SeqCst) + self.queued.load(Ordering::SeqCst)).max(0) as usize
    }

    /// On the host thread: sleeps until some of its events in flight have finished (or it is
    /// killed, or a short timeout passes).
    pub(crate) fn wait_for_room(&self) {
        self.room.wait(|| self.in_flight() as i64);
    }

    pub(crate) fn lookups(&self) -> usize {
        self.lookups.load(Ordering::Relaxed).max(0) as usize
    }

    pub(crate) fn add_lookups(&self, delta: i64) {
        self.lookups.fetch_add(delta, Ordering::Relaxed);
    }

    /// A complete message arrived.
    pub(crate) fn touch(&self) {
        self.last_message_ms
            .store(crate::util::now_ms(), Ordering::Relaxed);
    }

    /// How long since the connection last delivered a complete message.
    pub(crate) fn silent(&self) -> std::time::Duration {
        let ms = crate::util::now_ms() - self.last_message_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(ms.max(0) as u64)
    }

    pub(crate) fn killed(&self) -> bool {
        self.kill.load(Ordering::Relaxed)
    }

    pub fn events_received(&self) -> u64 {
        self.events_received.load(Ordering::Relaxed)
    }

    /// Takes a rate sample (the coverage thread, once a second).
    pub(crate) fn sample_rate(&self, now_ms: i64) {
        self.rate.sample(now_ms, self.events_received());
    }

    /// Events per second over about the last minute.
    pub fn events_per_sec(&self, now_ms: i64) -> f64 {
        self.rate.per_sec(now_ms, self.events_received())
    }

    /// Events received since midnight UTC (or the relay's start).
    pub fn events_today(&self, now_ms: i64) -> u64 {
        self.rate.today(now_ms, self.events_received())
    }

    /// When the last complete message arrived (unix ms); 0: never.
    pub fn last_message_ms(&self) -> i64 {
        self.last_message_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn count_received(&self) {
        self.events_received.fetch_add(1, Ordering::Relaxed);
    }

    /// (cursor, account count) as last written to the store.
    pub(crate) fn persisted(&self) -> (i64, i64) {
        *self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_persisted(&self, cursor: Option<i64>, count: Option<i64>) {
        let mut p = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cursor {
            p.0 = c;
        }
        if let Some(n) = count {
            p.1 = n;
        }
    }

    pub fn status(&self) -> HostStatus {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_status(&self, s: HostStatus) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = s;
    }

    /// An event with this upstream seq (for the DID with this hash) is being processed.
    /// Returns false, changing nothing, if that very event is still in flight: a reconnect
    /// resumes from before events waiting for their identity, so the host sends them again.
    pub fn begin(&self, seq: u64, did_hash: u64) -> bool {
        let mut c = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        c.session_high = c.session_high.max(seq as i64);
        if c.done_above.contains(&(seq, did_hash)) {
            return false;
        }
        let e = c.inflight.entry(seq).or_insert((0, did_hash));
        if e.0 > 0 && e.1 == did_hash {
            return false;
        }
        e.0 += 1;
        c.last = c.last.max(seq as i64);
        true
    }

    /// Processing of `seq` finished (accepted, dropped or ignored).
    pub fn end(&self, seq: u64) {
        let mut c = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((n, hash)) = c.inflight.get_mut(&seq) {
            *n -= 1;
            let hash = *hash;
            if *n == 0 {
                c.inflight.remove(&seq);
                // An event can be resent when one below it is still in flight (a reconnect
                // resumes below both), or when it began before the current connection, which
                // resumed below it and has not resent it yet. The common case (neither) costs
                // no set insert.
                if c.inflight.keys().next().is_some_and(|&low| low < seq)
                    || seq as i64 > c.session_high
                {
                    c.done_above.insert((seq, hash));
                }
            }
        }
        c.prune();
    }

    /// The cursor to persist and to resume from.
    pub fn safe_cursor(&self) -> i64 {
        self.cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .safe()
    }

    /// The cursor a new connection resumes from; the host resends everything above it, and
    /// copies of events already in flight or finished are recognised.
    pub(crate) fn resume_cursor(&self) -> i64 {
        let mut c = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        let cursor = c.safe();
        c.session_high = cursor;
        cursor
    }

    /// Resumes from before every event still in flight (after a session died mid-event, those
    /// events may never finish, and would pin the cursor).
    pub(crate) fn rewind_cursor(&self) {
        let mut c = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&lowest) = c.inflight.keys().next() {
            c.last = c.last.min(lowest as i64 - 1);
        }
        c.inflight.clear();
    }

    /// Forgets the cursor (after the upstream said our cursor is in its future).
    pub fn reset_cursor(&self) {
        let mut c = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        c.last = 0;
        c.session_high = 0;
        c.inflight.clear();
        // A host that lost its history numbers its events again from 1.
        c.done_above.clear();
    }

    pub fn has_capacity(&self) -> bool {
        self.account_count.load(Ordering::Relaxed) < self.account_limit.load(Ordering::Relaxed)
    }
}

/// All known hosts, by id and by hostname.
#[derive(Default)]
pub struct Hosts {
    by_id: RwLock<HashMap<i64, Arc<HostHandle>>>,
    by_name: RwLock<HashMap<String, i64>>,
}

impl Hosts {
    pub fn insert(&self, h: Arc<HostHandle>) {
        self.by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(h.hostname.clone(), h.id);
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(h.id, h);
    }

    pub fn get(&self, id: i64) -> Option<Arc<HostHandle>> {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn by_name(&self, hostname: &str) -> Option<Arc<HostHandle>> {
        let id = *self
            .by_name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)?;
        self.get(id)
    }

    pub fn all(&self) -> Vec<Arc<HostHandle>> {
        let mut v: Vec<Arc<HostHandle>> = self
            .by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|h| h.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostHandle {
        HostHandle::from_row(&HostRow {
            id: 1,
            hostname: "pds.example".into(),
            status: HostStatus::Active,
            last_seq: 0,
            account_count: 0,
            account_limit: 10,
            trusted: false,
            no_tls: false,
            created_at: 0,
            updated_at: 0,
        })
    }

    #[test]
    fn a_replayed_event_in_flight_or_finished_above_the_cursor_is_refused() {
        let h = host();
        assert!(h.begin(10, 7)); // waits for its identity
        assert!(h.begin(11, 8));
        h.end(11); // finished inline, but the cursor stays below 10
        assert_eq!(h.safe_cursor(), 9);
        // The connection drops; the host resends from 10.
        assert!(!h.begin(10, 7), "still in flight");
        assert!(!h.begin(11, 8), "already finished");
        assert!(h.begin(12, 9), "new");
        h.end(12);
        h.end(10);
        assert_eq!(h.safe_cursor(), 12);
        // Below the cursor nothing is remembered (a replay there cannot happen).
        assert!(h.begin(13, 8));
        h.end(13);
        // A host that lost its history reuses seqs.
        h.reset_cursor();
        assert!(h.begin(11, 8));
    }

    #[test]
    fn an_event_that_finishes_between_a_reconnect_and_its_resend_is_refused() {
        let h = host();
        assert!(h.begin(5, 1)); // waits for the store
        assert!(h.begin(6, 2));
        h.end(6);
        assert_eq!(h.resume_cursor(), 4, "the new connection resumes below 5");
        h.end(5); // finishes before the host resends it
        assert!(!h.begin(5, 1), "resent after it finished");
        assert!(!h.begin(6, 2), "resent after it finished");
        assert!(h.begin(7, 3), "new");
        h.end(7);
        assert_eq!(h.safe_cursor(), 7);
        // Passed by this connection and below the cursor: forgotten.
        assert!(h.cursor.lock().unwrap().done_above.is_empty());
    }
}
