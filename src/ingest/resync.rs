//! Making throttled accounts whole. While an account is `throttled` (its host is over its
//! account limit) its commits are dropped, so when it is let in again the network has missed
//! them. For each account that leaves `throttled` this fetches its current signed commit from
//! its PDS (`getLatestCommit`, then the commit block by `getBlocks`), verifies it exactly like a
//! `#sync` from the host, stores the new state and emits the `#sync`: consumers then know to
//! fetch that repo again.
//!
//! Work is queued per host and served round-robin at a bounded rate per host, on two threads of
//! its own, so a slow PDS costs only its own accounts. A place freed on a full host (a deleted
//! account) lets in its oldest throttled account here too, off the host's reading thread.

use super::hosts::{HostHandle, Hosts};
use super::pipeline::Pipeline;
use crate::identity::Resolution;
use crate::proto::car::{Car, write_car};
use crate::proto::cid::Cid;
use crate::proto::frame::SyncEvent;
use crate::store::Store;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Accounts waiting in all.
const MAX_QUEUED: usize = 100_000;
const THREADS: usize = 2;
/// Largest `getBlocks` answer read (one commit block is a few hundred bytes).
const MAX_BLOCKS_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct ResyncConfig {
    /// Accounts fetched per second per host.
    pub(crate) per_host_rate: f64,
    pub(crate) allow_insecure: bool,
}

#[derive(Default)]
struct Queues {
    /// By host id: DIDs to make whole, and host ids with a freed place.
    dids: BTreeMap<i64, VecDeque<String>>,
    freed: VecDeque<i64>,
    queued: HashSet<String>,
    /// When each host may be asked again.
    next: BTreeMap<i64, Instant>,
    /// Round-robin position: the host served last.
    last: i64,
}

pub struct Resync {
    cfg: ResyncConfig,
    hosts: Arc<Hosts>,
    store: Arc<dyn Store>,
    q: Mutex<Queues>,
    cv: Condvar,
    http: ureq::Agent,
}

enum Work {
    Did(Arc<HostHandle>, String),
    Freed(i64),
}

impl Resync {
    pub fn new(cfg: ResyncConfig, hosts: Arc<Hosts>, store: Arc<dyn Store>) -> Resync {
        Resync {
            store,
            http: crate::util::net::http_agent(cfg.allow_insecure, Duration::from_secs(10)),
            cfg,
            hosts,
            q: Mutex::new(Queues::default()),
            cv: Condvar::new(),
        }
    }

    pub fn spawn(
        self: &Arc<Self>,
        pipeline: Weak<Pipeline>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        for i in 0..THREADS {
            let me = self.clone();
            let p = pipeline.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("resync-{i}"))
                .stack_size(2 << 20)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(w) = me.next_work() else { continue };
                        let Some(p) = p.upgrade() else { return };
                        crate::util::isolate::isolate(
                            "resync",
                            || "making a throttled account whole".to_owned(),
                            || me.work(&p, w),
                        );
                    }
                })?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an account that just left `throttled`.
    pub fn account(&self, host_id: i64, did: &str) {
        let mut q = self.lock();
        if q.queued.contains(did) {
            return;
        }
        if q.queued.len() >= MAX_QUEUED {
            drop(q);
            metrics::counter!("rlay_resyncs_total", "result" => "queue_full").increment(1);
            log::warn!(
                "resync: {MAX_QUEUED} accounts already waiting; {did} will not get a #sync (it resyncs at its next commit's chain break)"
            );
            return;
        }
        q.queued.insert(did.to_owned());
        q.dids.entry(host_id).or_default().push_back(did.to_owned());
        drop(q);
        self.cv.notify_one();
    }

    /// A host has room for one more account (one of its accounts was deleted).
    pub fn freed(&self, host_id: i64) {
        let mut q = self.lock();
        if q.freed.len() < MAX_QUEUED {
            q.freed.push_back(host_id);
        }
        drop(q);
        self.cv.notify_one();
    }

    /// Accounts waiting for their `#sync`.
    pub fn queued(&self) -> usize {
        self.lock().queued.len()
    }

    /// The next job whose host may be asked now, round-robin over hosts; waits up to a
    /// moment if none is due.
    fn next_work(&self) -> Option<Work> {
        let mut q = self.lock();
        if let Some(h) = q.freed.pop_front() {
            return Some(Work::Freed(h));
        }
        let now = Instant::now();
        let start = q.last;
        let due = q
            .dids
            .range(start + 1..)
            .chain(q.dids.range(..=start))
            .map(|(h, _)| *h)
            .find(|h| q.next.get(h).is_none_or(|t| *t <= now));
        let Some(host_id) = due else {
            let _ = self
                .cv
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner);
            return None;
        };
        let did = q.dids.get_mut(&host_id)?.pop_front()?;
        if q.dids.get(&host_id).is_some_and(VecDeque::is_empty) {
            q.dids.remove(&host_id);
        }
        q.queued.remove(&did);
        q.last = host_id;
        let gap = Duration::from_secs_f64(1.0 / self.cfg.per_host_rate.max(0.01));
        q.next.insert(host_id, now + gap);
        q.next.retain(|_, t| *t > now);
        drop(q);
        let host = self.hosts.get(host_id)?;
        Some(Work::Did(host, did))
    }

    fn work(&self, p: &Pipeline, w: Work) {
        match w {
            Work::Freed(host_id) => {
                if let Some(h) = self.hosts.get(host_id)
                    && h.has_capacity()
                {
                    match p.release_throttled(&h, 1, &*self.store) {
                        Ok(n) if n > 0 => log::info!(
                            "resync: a place freed on {}; let in its oldest throttled account",
                            h.hostname()
                        ),
                        Ok(_) => {}
                        Err(e) => log::warn!(
                            "resync: could not list the throttled accounts of {} ({e}); they stay throttled until its limit changes",
                            h.hostname()
                        ),
                    }
                }
            }
            Work::Did(host, did) => {
                let result = match self.make_whole(p, &host, &did) {
                    Ok(true) => "synced",
                    Ok(false) => "current",
                    Err(e) => {
                        log::info!(
                            "resync: could not make {did} whole from {}: {e}; it resyncs at its next commit",
                            host.hostname()
                        );
                        "failed"
                    }
                };
                metrics::counter!("rlay_resyncs_total", "result" => result).increment(1);
            }
        }
    }

    /// Fetches, verifies and emits the account's current commit as a `#sync`. `Ok(false)`: the
    /// relay already had that commit.
    fn make_whole(&self, p: &Pipeline, host: &Arc<HostHandle>, did: &str) -> Result<bool, String> {
        let base = format!(
            "{}://{}/xrpc",
            if host.no_tls() { "http" } else { "https" },
            host.hostname()
        );
        let did_q = crate::util::percent_encode(did);
        let latest: serde_json::Value = self
            .get(&format!(
                "{base}/com.atproto.sync.getLatestCommit?did={did_q}"
            ))?
            .read_json()
            .map_err(|e| format!("getLatestCommit: {e}"))?;
        let (Some(cid), Some(rev)) = (latest["cid"].as_str(), latest["rev"].as_str()) else {
            return Err("getLatestCommit gave no cid and rev".into());
        };
        let commit: Cid = cid
            .parse()
            .map_err(|_| format!("getLatestCommit gave a bad cid {cid:?}"))?;
        let bytes = self
            .get(&format!(
                "{base}/com.atproto.sync.getBlocks?did={did_q}&cids={}",
                crate::util::percent_encode(cid)
            ))?
            .with_config()
            .limit(MAX_BLOCKS_BYTES)
            .read_to_vec()
            .map_err(|e| format!("getBlocks: {e}"))?;
        let car = Car::parse(&bytes).map_err(|e| format!("getBlocks: {e}"))?;
        let block = car
            .get(&commit)
            .ok_or("getBlocks did not return the commit block")?;
        let event = SyncEvent {
            seq: 0,
            did: did.to_owned(),
            blocks: bytes::Bytes::from(write_car(&[commit], [(commit, block)])),
            rev: rev.to_owned(),
            time: crate::logging::timestamp(),
        };
        let res = self.identity(p, did)?;
        p.resync(host, did, event, &res)
    }

    fn get(&self, url: &str) -> Result<ureq::Body, String> {
        let r = self.http.get(url).call().map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        Ok(r.into_body())
    }

    fn identity(&self, p: &Pipeline, did: &str) -> Result<Resolution, String> {
        if let Some(r) = p.resolver().cached(did) {
            return Ok(r);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        p.resolver().request(did, Some(&tx));
        rx.recv_timeout(Duration::from_secs(30))
            .map(|r| r.res)
            .map_err(|_| "its identity did not resolve in 30s".to_owned())
    }
}
