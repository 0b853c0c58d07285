//! DID resolution behind a cache, on a few resolver threads.
//!
//! The resolver only resolves: callers ask for a DID with a channel to be told on, and a
//! resolver thread sends `Resolved` there when the lookup finishes (at once when cached). No
//! caller code runs on resolver threads. Concurrent requests for one DID share one lookup.
//! Results are cached for 24 hours; failures for a short time, so a flapping PLC does not get
//! hammered.

use super::doc::{self, Identity};
use crate::util::sharded::{Sharded, lock, read, write};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Resolution {
    Found(Arc<Identity>),
    /// 404 / not registered.
    NotFound,
    /// 410 from the PLC directory: the account is deleted.
    Tombstoned,
    /// Network or document error (retried after the negative TTL).
    Failed(Arc<str>),
}

impl Resolution {
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Resolution::Found(i) => Some(i),
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Resolution::Found(_) => "found",
            Resolution::NotFound => "not_found",
            Resolution::Tombstoned => "tombstoned",
            Resolution::Failed(_) => "error",
        }
    }
}

/// Where DID documents come from (HTTP in production, a fixed map in tests).
pub trait Fetch: Send + Sync {
    fn fetch(&self, did: &str) -> Resolution;
}

/// PLC directory and did:web over HTTP.
pub struct HttpFetch {
    plc: ureq::Agent,
    web: ureq::Agent,
    plc_host: String,
    insecure: bool,
}

impl HttpFetch {
    pub fn new(plc_host: &str, insecure: bool) -> HttpFetch {
        HttpFetch {
            // The PLC host is configured by the operator, so it may be private (tests, mirrors).
            plc: crate::util::net::http_agent(true, Duration::from_secs(10)),
            web: crate::util::net::http_agent(insecure, Duration::from_secs(10)),
            plc_host: plc_host.trim_end_matches('/').to_owned(),
            insecure,
        }
    }

    fn get(&self, agent: &ureq::Agent, did: &str, url: &str) -> Resolution {
        let resp = agent
            .get(url)
            .header("Accept", "application/did+ld+json,application/json")
            .call();
        let mut r = match resp {
            Ok(r) => r,
            Err(e) => return Resolution::Failed(format!("{url}: {e}").into()),
        };
        match r.status().as_u16() {
            200 => {}
            404 => return Resolution::NotFound,
            410 => return Resolution::Tombstoned,
            s => return Resolution::Failed(format!("{url}: HTTP {s}").into()),
        }
        let body = match r.body_mut().with_config().limit(256 << 10).read_to_vec() {
            Ok(b) => b,
            Err(e) => return Resolution::Failed(format!("{url}: {e}").into()),
        };
        let json: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(j) => j,
            Err(e) => return Resolution::Failed(format!("{url}: not JSON: {e}").into()),
        };
        match doc::parse(did, &json) {
            Ok(i) => Resolution::Found(Arc::new(i)),
            Err(e) => Resolution::Failed(format!("{url}: {e}").into()),
        }
    }
}

impl Fetch for HttpFetch {
    fn fetch(&self, did: &str) -> Resolution {
        if did.starts_with("did:plc:") {
            return self.get(&self.plc, did, &format!("{}/{did}", self.plc_host));
        }
        if let Some(id) = did.strip_prefix("did:web:") {
            if id.contains(':') {
                return Resolution::Failed("did:web with a path is not supported".into());
            }
            let host = id.replace("%3A", ":").replace("%3a", ":");
            let scheme = if self.insecure && host.starts_with("localhost") {
                "http"
            } else {
                "https"
            };
            return self.get(
                &self.web,
                did,
                &format!("{scheme}://{host}/.well-known/did.json"),
            );
        }
        Resolution::Failed("unsupported DID method (only did:plc and did:web)".into())
    }
}

/// A fixed directory (tests, scenario runner).
#[derive(Default)]
pub struct StaticFetch {
    pub(crate) docs: RwLock<HashMap<String, Resolution>>,
}

impl StaticFetch {
    /// Sets what a DID resolves to.
    pub fn insert(&self, did: &str, res: Resolution) {
        write(&self.docs).insert(did.to_owned(), res);
    }
}

impl Fetch for StaticFetch {
    fn fetch(&self, did: &str) -> Resolution {
        read(&self.docs)
            .get(did)
            .cloned()
            .unwrap_or(Resolution::NotFound)
    }
}

struct Entry {
    res: Resolution,
    expires: Instant,
}

/// A finished lookup, as sent to whoever asked.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub(crate) did: String,
    pub(crate) res: Resolution,
}

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub(crate) threads: usize,
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Duration,
    /// Cached identities kept at most (whole shards are trimmed beyond it).
    pub(crate) capacity: usize,
}

impl ResolverConfig {
    /// The defaults with `threads` lookup threads.
    pub fn with_threads(threads: usize) -> ResolverConfig {
        ResolverConfig {
            threads,
            ..ResolverConfig::default()
        }
    }
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            threads: 4,
            ttl: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(120),
            capacity: 5_000_000,
        }
    }
}

pub struct Resolver {
    cache: Sharded<RwLock<HashMap<String, Entry>>>,
    /// Lookups under way, and who to tell when each finishes.
    inflight: Mutex<HashMap<String, Vec<Sender<Resolved>>>>,
    tx: Sender<String>,
    fetch: Arc<dyn Fetch>,
    cfg: ResolverConfig,
}

impl Resolver {
    pub fn start(fetch: Arc<dyn Fetch>, cfg: ResolverConfig) -> std::io::Result<Arc<Resolver>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let r = Arc::new(Resolver {
            cache: Sharded::new(|| RwLock::new(HashMap::new())),
            inflight: Mutex::new(HashMap::new()),
            tx,
            fetch,
            cfg,
        });
        for i in 0..r.cfg.threads.max(1) {
            let me = Arc::downgrade(&r);
            let rx: Receiver<String> = rx.clone();
            std::thread::Builder::new()
                .name(format!("resolver-{i}"))
                .stack_size(2 << 20)
                .spawn(move || {
                    while let Ok(did) = rx.recv() {
                        let Some(me) = me.upgrade() else { return };
                        me.run_one(&did);
                    }
                })?;
        }
        Ok(r)
    }

    fn run_one(&self, did: &str) {
        let t = Instant::now();
        let res = crate::util::isolate::isolate(
            "resolver",
            || format!("resolving {did}"),
            || self.fetch.fetch(did),
        )
        .unwrap_or_else(|| Resolution::Failed("the lookup panicked".into()));
        metrics::histogram!("atproto_identity_resolve_did_duration_seconds")
            .record(t.elapsed().as_secs_f64());
        metrics::counter!("atproto_identity_resolve_did", "status" => res.label()).increment(1);
        if let Resolution::Failed(why) = &res {
            log::debug!("identity: resolving {did} failed: {why}");
        }
        self.insert(did, res.clone());
        let waiters = lock(&self.inflight).remove(did).unwrap_or_default();
        for w in waiters {
            let _ = w.send(Resolved {
                did: did.to_owned(),
                res: res.clone(),
            });
        }
    }

    /// A fresh cached result, if any (counted as a cache hit or miss).
    pub fn cached(&self, did: &str) -> Option<Resolution> {
        let res = self.cached_hit(did);
        if res.is_none() {
            count_cache(false);
        }
        res
    }

    /// A fresh cached result, counted as a hit if there is one; a miss is left to the lookup
    /// that follows (`request`), so it is counted once.
    pub fn cached_hit(&self, did: &str) -> Option<Resolution> {
        let res = self.peek(did);
        if res.is_some() {
            count_cache(true);
        }
        res
    }

    /// Caches a result (also how tests and the scenario runner seed identities).
    pub fn insert(&self, did: &str, res: Resolution) {
        let ttl = match res {
            Resolution::Found(_) => self.cfg.ttl,
            _ => self.cfg.negative_ttl,
        };
        let per_shard = self.cfg.capacity / crate::util::sharded::SHARDS;
        let mut shard = write(self.cache.of(did));
        if shard.len() >= per_shard {
            let now = Instant::now();
            shard.retain(|_, e| e.expires > now);
            if shard.len() >= per_shard {
                shard.clear();
            }
        }
        shard.insert(
            did.to_owned(),
            Entry {
                res,
                expires: Instant::now() + ttl,
            },
        );
    }

    /// The DID whose cached document declares `handle` (lower-case), if any. A scan of the
    /// cache: for an operator's lookup, not for the event path.
    pub fn find_handle(&self, handle: &str) -> Option<String> {
        let now = Instant::now();
        self.cache.iter().find_map(|shard| {
            read(shard).iter().find_map(|(did, e)| {
                let found = e.expires > now
                    && e.res.identity().and_then(|i| i.handle.as_deref()) == Some(handle);
                found.then(|| did.clone())
            })
        })
    }

    /// The cached identity of a DID, without counting a cache hit or miss (operator reads).
    pub fn peek(&self, did: &str) -> Option<Resolution> {
        read(self.cache.of(did))
            .get(did)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.res.clone())
    }

    /// Forgets a DID (on `#identity`, and before a refresh-and-retry).
    pub fn purge(&self, did: &str) {
        write(self.cache.of(did)).remove(did);
    }

    /// Asks for the DID's resolution, to be sent to `reply` (at once if cached). Without a
    /// reply the lookup only warms the cache.
    pub fn request(&self, did: &str, reply: Option<&Sender<Resolved>>) {
        if let Some(res) = self.cached(did) {
            if let Some(r) = reply {
                let _ = r.send(Resolved {
                    did: did.to_owned(),
                    res,
                });
            }
            return;
        }
        let mut inflight = lock(&self.inflight);
        match inflight.get_mut(did) {
            Some(v) => {
                metrics::counter!("atproto_directory_identity_requests_coalesced").increment(1);
                v.extend(reply.cloned());
            }
            None => {
                inflight.insert(did.to_owned(), reply.cloned().into_iter().collect());
                drop(inflight);
                let _ = self.tx.send(did.to_owned());
            }
        }
    }

    pub fn pending(&self) -> usize {
        lock(&self.inflight).len()
    }
}

/// Counts an identity cache hit or miss (indigo's metric names).
fn count_cache(hit: bool) {
    let hits = crate::telemetry::once!(
        metrics::counter!("atproto_directory_identity_cache_hits"),
        metrics::Counter
    );
    let misses = crate::telemetry::once!(
        metrics::counter!("atproto_directory_identity_cache_misses"),
        metrics::Counter
    );
    if hit { hits } else { misses }.increment(1);
}
