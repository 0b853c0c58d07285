//! A simulated atproto network on loopback: a PLC directory and PDS hosts whose accounts have
//! real keys and real MST repos, emitting real signed commits (and identity, account and sync
//! events), with switchable faults. Used by tests, benchmarks and `rlay sim`.
//!
//! Every valid event a host emits is recorded in a ledger, so end-to-end tests can check that a
//! relay delivered each one exactly once.

mod actions;
pub mod admin;
mod endpoints;
pub mod fault;
pub mod host;
pub mod hostile;
mod pacing;
pub mod plc;
pub mod repo;
pub mod server;
pub mod traffic;

use crate::proto::cid::Cid;
use crate::proto::crypto::{Curve, PrivateKey};
use crate::proto::frame::{AccountEvent, Event, IdentityEvent};
use crate::sim::repo::{Repo, RepoError, Write};
use host::Host;
use pacing::Traffic;
use plc::Plc;
use serde_json::json;
use std::collections::HashMap;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Deactivated,
    Takendown,
    Deleted,
}

impl Status {
    /// `(active, status)` as `#account` and `getRepoStatus` report it.
    pub fn wire(self) -> (bool, Option<&'static str>) {
        match self {
            Status::Active => (true, None),
            Status::Deactivated => (false, Some("deactivated")),
            Status::Takendown => (false, Some("takendown")),
            Status::Deleted => (false, Some("deleted")),
        }
    }
}

pub struct SimAccount {
    pub(crate) did: String,
    pub(crate) handle: String,
    pub(crate) host: usize,
    pub(crate) repo: Repo,
    pub(crate) status: Status,
    /// Paths of records that exist (for deletes and updates).
    pub(crate) paths: Vec<String>,
    pub(crate) curve: Curve,
    pub(crate) key_version: u32,
    last_rkey_us: u64,
}

impl SimAccount {
    pub fn did(&self) -> &str {
        &self.did
    }

    /// The account's repository as the PDS holds it.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// A fresh record key (a TID), strictly increasing for this account.
    pub fn next_rkey(&mut self) -> String {
        let now = u64::try_from(crate::proto::verify::now_us()).unwrap_or(0);
        self.last_rkey_us = now.max(self.last_rkey_us + 1);
        crate::proto::syntax::tid_from_parts(self.last_rkey_us, 7)
    }
}

/// When a recorded event was emitted, and when its host first wrote its frame to a subscriber
/// (`None` if no subscriber got it, or it went out on replay before recording began).
#[derive(Debug, Clone, Copy)]
pub struct EmitTimes {
    pub emitted: Instant,
    pub written: Option<Instant>,
}

/// One valid event a host emitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerEntry {
    pub host: usize,
    pub did: String,
    pub kind: &'static str,
    /// Commit CID for `#commit`, rev for `#sync`, `time` for `#identity`/`#account`.
    pub key: String,
}

impl LedgerEntry {
    /// The same key computed from an event (e.g. one read back from a relay).
    pub fn key_of(e: &Event) -> Option<(String, &'static str, String)> {
        Some(match e {
            Event::Commit(c) => (c.repo.clone(), "#commit", c.commit.to_string()),
            Event::Sync(s) => (s.did.clone(), "#sync", s.rev.clone()),
            Event::Identity(i) => (i.did.clone(), "#identity", i.time.clone()),
            Event::Account(a) => (a.did.clone(), "#account", a.time.clone()),
            _ => return None,
        })
    }
}

/// Something to emit, decided by the generator.
pub enum Planned {
    Valid(usize, Event),
    Defect(usize, Event),
    RepeatLast(usize),
    Restart(usize),
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub hosts: usize,
    pub accounts_per_host: usize,
    /// Address for the PLC directory (`127.0.0.1:0` for any port).
    pub plc_listen: String,
    /// First host port (hosts get P, P+1, ...); 0 for any free ports.
    pub first_port: u16,
    /// Every n-th account gets a p256 key (the rest k256).
    pub p256_every: usize,
    /// Records each account starts with.
    pub initial_records: usize,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hosts: 1,
            accounts_per_host: 1,
            plc_listen: "127.0.0.1:0".into(),
            first_port: 0,
            p256_every: 5,
            initial_records: 3,
            seed: 1,
        }
    }
}

/// A valid event's emission: when, and its (host, host seq), by ledger key.
pub(crate) type Emitted = (Instant, usize, u64);

pub struct World {
    pub(crate) plc: Arc<Plc>,
    pub(crate) plc_url: String,
    pub(crate) hosts: Vec<Arc<Host>>,
    accounts: RwLock<Vec<Arc<Mutex<SimAccount>>>>,
    by_did: RwLock<HashMap<String, usize>>,
    ledger: Mutex<Vec<LedgerEntry>>,
    /// When each valid event was emitted (benchmarks measuring latency switch it on), while
    /// recording.
    pub(crate) emit_clock: Mutex<Option<HashMap<String, Emitted>>>,
    clock_us: AtomicI64,
    next_account: AtomicU64,
    seed: u64,
    initial_records: usize,
}

fn lock(a: &Mutex<SimAccount>) -> MutexGuard<'_, SimAccount> {
    a.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("repo: {0}")]
    Repo(#[from] RepoError),
    #[error("account {0} is not active")]
    Inactive(String),
}

/// A did:plc identifier derived from a seed string.
pub fn plc_did(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(seed.as_bytes());
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = d
        .iter()
        .take(24)
        .map(|b| alphabet[(b % 32) as usize] as char)
        .collect();
    format!("did:plc:{id}")
}

impl World {
    pub fn plc(&self) -> &Arc<Plc> {
        &self.plc
    }

    /// The PLC directory's URL (what a relay's `RELAY_PLC_HOST` should be).
    pub fn plc_url(&self) -> &str {
        &self.plc_url
    }

    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Starts recording when each valid event is emitted, and when its frame reaches a
    /// subscriber's socket (latency benchmarks).
    pub fn record_emit_times(&self) {
        for h in &self.hosts {
            h.record_wire_times();
        }
        *self
            .emit_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(HashMap::new());
    }

    /// When the valid event with this ledger key was emitted (once recording is on); forgets it.
    pub fn take_emit_time(&self, key: &str) -> Option<Instant> {
        self.take_emit_times(key).map(|t| t.emitted)
    }

    /// When the valid event with this ledger key was emitted and when its host first wrote it
    /// to a subscriber (once recording is on); forgets both.
    pub fn take_emit_times(&self, key: &str) -> Option<EmitTimes> {
        let (emitted, host, seq) = self
            .emit_clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(|m| m.remove(key))?;
        let written = self.hosts.get(host).and_then(|h| h.take_wire_time(seq));
        Some(EmitTimes { emitted, written })
    }

    /// A unique, increasing `time` value (microsecond precision).
    pub fn time_now(&self) -> String {
        let now = crate::proto::verify::now_us();
        let prev = self.clock_us.fetch_max(now, Ordering::SeqCst);
        let us = if prev >= now {
            self.clock_us.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            now
        };
        crate::logging::format_datetime_us(us)
    }

    pub fn account_count(&self) -> usize {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn account(&self, i: usize) -> Option<Arc<Mutex<SimAccount>>> {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
    }

    pub fn index_of(&self, did: &str) -> Option<usize> {
        self.by_did
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(did)
            .copied()
    }

    fn account_by_did(&self, did: &str) -> Result<Arc<Mutex<SimAccount>>, SimError> {
        self.index_of(did)
            .and_then(|i| self.account(i))
            .ok_or_else(|| SimError::UnknownAccount(did.to_owned()))
    }

    /// DIDs of every account, in creation order.
    pub fn dids(&self) -> Vec<String> {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|a| lock(a).did.clone())
            .collect()
    }

    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn emit(&self, p: Planned) {
        match p {
            Planned::Valid(h, e) => {
                // Record before publishing so a fast reader never sees an event the ledger lacks.
                let Some((did, kind, key)) = LedgerEntry::key_of(&e) else {
                    self.hosts[h].publish(e);
                    return;
                };
                let at = Instant::now();
                self.ledger
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(LedgerEntry {
                        host: h,
                        did,
                        kind,
                        key: key.clone(),
                    });
                // The clock entry holds the lock across the publish, so a fast reader that
                // takes it finds the host seq.
                let mut clock = self
                    .emit_clock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let seq = self.hosts[h].publish(e);
                if let Some(c) = clock.as_mut() {
                    c.insert(key, (at, h, seq));
                }
            }
            Planned::Defect(h, e) => {
                self.hosts[h].publish(e);
            }
            Planned::RepeatLast(h) => self.hosts[h].repeat_last(),
            Planned::Restart(h) => self.hosts[h].restart(),
        }
    }

    fn document(&self, a: &SimAccount) -> serde_json::Value {
        plc::did_document(
            &a.did,
            &a.handle,
            &a.repo.key().public(),
            &self.hosts[a.host].url(),
        )
    }

    /// Creates an account on `host`: registers it with the PLC, then emits `#identity`,
    /// `#account` (active) and its first `#commit`, as a PDS does.
    pub fn create_account(&self, host: usize, curve: Option<Curve>) -> Result<String, SimError> {
        let n = self.next_account.fetch_add(1, Ordering::SeqCst);
        let did = plc_did(&format!("rlay-sim-{}-{n}", self.seed));
        let curve = curve.unwrap_or(Curve::K256);
        let key = PrivateKey::from_seed(curve, did.as_bytes());
        let mut acct = SimAccount {
            did: did.clone(),
            handle: format!("u{n}.h{host}.test"),
            host,
            repo: Repo::new(&did, key),
            status: Status::Active,
            paths: Vec::new(),
            curve,
            key_version: 0,
            last_rkey_us: 0,
        };
        self.plc.set(&did, self.document(&acct));
        let mut events = vec![
            Planned::Valid(
                host,
                Event::Identity(IdentityEvent {
                    seq: 0,
                    did: did.clone(),
                    time: self.time_now(),
                    handle: Some(acct.handle.clone()),
                }),
            ),
            Planned::Valid(
                host,
                Event::Account(AccountEvent {
                    seq: 0,
                    did: did.clone(),
                    time: self.time_now(),
                    active: true,
                    status: None,
                }),
            ),
        ];
        let mut writes = vec![Write::Create {
            path: "app.bsky.actor.profile/self".into(),
            record: traffic::profile(&acct.handle, 0),
        }];
        for i in 0..self.initial_records() {
            let rkey = acct.next_rkey();
            writes.push(Write::Create {
                path: format!("app.bsky.feed.post/{rkey}"),
                record: traffic::post(&format!("hello {i}"), &self.time_now()),
            });
        }
        acct.paths
            .extend(writes.iter().map(|w| w.path().to_owned()));
        let c = acct.repo.commit(&writes, &self.time_now())?;
        events.push(Planned::Valid(host, Event::Commit(c)));
        {
            let mut list = self
                .accounts
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            list.push(Arc::new(Mutex::new(acct)));
            self.by_did
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(did.clone(), list.len() - 1);
        }
        for e in events {
            self.emit(e);
        }
        Ok(did)
    }

    fn initial_records(&self) -> usize {
        self.initial_records
    }
}

/// A running simulated network.
pub struct Sim {
    pub(crate) world: Arc<World>,
    traffic: Option<Traffic>,
}

impl Sim {
    /// Binds the PLC and every host, creates the accounts, and starts serving.
    pub fn start(cfg: &SimConfig) -> io::Result<Sim> {
        let (plc_listener, plc_addr) = {
            let l = std::net::TcpListener::bind(&cfg.plc_listen)?;
            let a = l.local_addr()?;
            (l, a)
        };
        let mut hosts = Vec::with_capacity(cfg.hosts);
        let mut listeners = Vec::with_capacity(cfg.hosts);
        for i in 0..cfg.hosts {
            let port = if cfg.first_port == 0 {
                0
            } else {
                cfg.first_port.saturating_add(i as u16)
            };
            let (l, addr) = server::bind(port)?;
            hosts.push(Arc::new(Host::new(addr)));
            listeners.push(l);
        }
        let plc = Arc::new(Plc::default());
        plc.serve(plc_listener)?;
        let world = Arc::new(World {
            plc,
            plc_url: format!("http://{plc_addr}"),
            hosts,
            accounts: RwLock::new(Vec::new()),
            by_did: RwLock::new(HashMap::new()),
            ledger: Mutex::new(Vec::new()),
            emit_clock: Mutex::new(None),
            clock_us: AtomicI64::new(0),
            next_account: AtomicU64::new(0),
            seed: cfg.seed,
            initial_records: cfg.initial_records,
        });
        for (i, l) in listeners.into_iter().enumerate() {
            let w = world.clone();
            server::serve(
                l,
                format!("sim-host-{i}"),
                Arc::new(move |s, head, _| w.handle_host(i, s, head)),
            )?;
        }
        for h in 0..cfg.hosts {
            for a in 0..cfg.accounts_per_host {
                let n = h * cfg.accounts_per_host + a;
                let curve = if cfg.p256_every > 0 && n % cfg.p256_every == cfg.p256_every - 1 {
                    Curve::P256
                } else {
                    Curve::K256
                };
                world
                    .create_account(h, Some(curve))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
        Ok(Sim {
            world,
            traffic: None,
        })
    }

    /// The simulated network's state and its accounts' actions.
    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    pub fn hostnames(&self) -> Vec<String> {
        self.world
            .hosts
            .iter()
            .map(|h| h.hostname.clone())
            .collect()
    }

    /// Starts random traffic at `rate` events/s. With `prefill` > 0 that many events are
    /// generated (signed) before emission starts, so emission is not limited by signing.
    pub fn start_traffic(&mut self, rate: f64, prefill: usize) {
        self.start_traffic_limited(rate, prefill, None);
    }

    /// Like [`Sim::start_traffic`], stopping after `limit` planned actions (benchmarks).
    pub fn start_traffic_limited(&mut self, rate: f64, prefill: usize, limit: Option<usize>) {
        self.stop_traffic();
        self.traffic = Some(Traffic::start(self.world.clone(), rate, prefill, limit));
    }

    /// Actions generated and waiting to be emitted.
    pub fn queued(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| {
            t.queue.lock().unwrap_or_else(PoisonError::into_inner).len()
        })
    }

    pub fn stop_traffic(&mut self) {
        if let Some(t) = self.traffic.take() {
            t.stop();
        }
    }

    /// Gives `fraction` of the hosts each fault kind (different kinds start at different hosts
    /// so they spread out). Event faults hit every 10th event of a host, connection faults every
    /// connection after 100 frames, restarts every 300 events.
    pub fn apply_faults(&self, specs: &[(fault::FaultKind, f64)]) -> Vec<(String, &'static str)> {
        let n = self.world.hosts.len();
        let mut out = Vec::new();
        for (k, (kind, frac)) in specs.iter().enumerate() {
            let count = ((*frac * n as f64).round() as usize).min(n);
            let every = match kind {
                fault::FaultKind::Restart => 300,
                k if k.is_connection_level() => 100,
                _ => 10,
            };
            for j in 0..count {
                let h = &self.world.hosts[(j + k * 7) % n];
                h.set_fault(Some((*kind, every)));
                out.push((h.hostname.clone(), kind.name()));
            }
        }
        out
    }

    /// Events emitted by the traffic engine so far.
    pub fn emitted(&self) -> u64 {
        self.traffic
            .as_ref()
            .map_or(0, |t| t.emitted.load(Ordering::Relaxed))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop_traffic();
        for h in &self.world.hosts {
            h.shutdown.store(true, Ordering::Relaxed);
            h.restart();
        }
    }
}
