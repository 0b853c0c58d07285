//! Host discovery: every `RELAY_DISCOVERY_INTERVAL`, page `listHosts` of the bootstrap relay
//! and of every sibling, add the hosts they carry that we do not, re-probe at once those we
//! gave up on that they see active, and compare each host's upstream seq with ours (lag).
//!
//! Hosts found here pass the same checks as an admin requestCrawl (hostname, bans,
//! `describeServer`) but do not use the public new-hosts-per-day allowance. A host whose check
//! fails is retried on a doubling backoff, so a list full of dead hosts costs little.

use super::crawl::{Crawler, parse_hostname};
use super::hosts::Hosts;
use crate::store::HostStatus;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `listHosts` pages read from one relay per pass (1,000 hosts each).
const MAX_PAGES: usize = 200;
/// describeServer checks under way at once during a pass.
const CHECK_THREADS: usize = 8;
/// Hosts exported with their own lag gauge (the worst ones).
const LAG_GAUGES: usize = 10;

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The bootstrap relay first, then the siblings.
    pub(crate) sources: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) allow_insecure: bool,
}

/// One host as another relay lists it.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    hostname: String,
    seq: i64,
    active: bool,
    /// Active or idle there: worth adding here.
    addable: bool,
}

/// What the last pass over one source found.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    pub url: String,
    pub last_pass: Option<String>,
    pub hosts_listed: usize,
    pub hosts_added: usize,
    pub error: Option<String>,
}

impl SourceReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.url, "last_pass": self.last_pass, "hosts_listed": self.hosts_listed,
            "hosts_added": self.hosts_added, "error": self.error,
        })
    }
}

/// Another relay's view of one host.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamView {
    pub seq: i64,
    pub active: bool,
}

#[derive(Debug, Default)]
struct Report {
    sources: Vec<SourceReport>,
    /// By hostname: the highest seq any source lists, active if any source says so.
    upstream: HashMap<String, UpstreamView>,
    passes: u64,
    added: u64,
    /// Hosts active elsewhere but not connected here, at the last pass.
    missing: Vec<String>,
    /// (hostname, events behind), worst first.
    worst_lag: Vec<(String, i64)>,
}

/// A summary for `/status` and the admin route.
#[derive(Debug, Clone)]
pub struct DiscoveryStatus {
    pub interval_secs: u64,
    pub passes: u64,
    pub hosts_added: u64,
    pub sources: Vec<SourceReport>,
    pub hosts_missing: usize,
    pub missing_sample: Vec<String>,
    pub worst_lag: Vec<serde_json::Value>,
}

impl DiscoveryStatus {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "interval_secs": self.interval_secs, "passes": self.passes,
            "hosts_added": self.hosts_added,
            "sources": self.sources.iter().map(SourceReport::to_json).collect::<Vec<_>>(),
            "hosts_missing": self.hosts_missing, "missing_sample": self.missing_sample,
            "worst_lag": self.worst_lag,
        })
    }
}

pub struct Discovery {
    crawler: Arc<Crawler>,
    hosts: Arc<Hosts>,
    cfg: DiscoveryConfig,
    report: Mutex<Report>,
    /// (a pass was asked for, its condvar)
    wake: (Mutex<bool>, Condvar),
    /// Hosts whose check failed: (when, failures in a row).
    failed: Mutex<HashMap<String, (Instant, u32)>>,
    http: ureq::Agent,
}

impl Discovery {
    pub fn new(crawler: Arc<Crawler>, hosts: Arc<Hosts>, cfg: DiscoveryConfig) -> Discovery {
        Discovery {
            report: Mutex::new(Report {
                sources: cfg
                    .sources
                    .iter()
                    .map(|u| SourceReport {
                        url: u.clone(),
                        ..SourceReport::default()
                    })
                    .collect(),
                ..Report::default()
            }),
            crawler,
            hosts,
            cfg,
            wake: (Mutex::new(false), Condvar::new()),
            failed: Mutex::new(HashMap::new()),
            http: crate::util::net::http_agent(true, Duration::from_secs(30)),
        }
    }

    /// Runs a pass at once, then one every interval, until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        if self.cfg.sources.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("discovery".into())
            .stack_size(2 << 20)
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    crate::util::isolate::isolate(
                        "discovery",
                        || "a discovery pass".to_owned(),
                        || me.pass(&stop),
                    );
                    me.wait(me.cfg.interval, &stop);
                }
            })?;
        Ok(())
    }

    /// Asks for a pass now (admin).
    pub fn run_now(&self) {
        *self.wake.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.1.notify_all();
    }

    fn wait(&self, d: Duration, stop: &AtomicBool) {
        let until = Instant::now() + d;
        let mut asked = self.wake.0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*asked && !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let step = (until - now).min(Duration::from_millis(200));
            asked = self
                .wake
                .1
                .wait_timeout(asked, step)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *asked = false;
    }

    /// Another relay's view of a host, from the last pass.
    pub fn upstream_view(&self, hostname: &str) -> Option<UpstreamView> {
        self.lock().upstream.get(hostname).copied()
    }

    /// Hostnames other relays see active, from the last pass.
    pub fn active_elsewhere(&self) -> Vec<String> {
        self.lock()
            .upstream
            .iter()
            .filter(|(_, v)| v.active)
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub fn status(&self) -> DiscoveryStatus {
        let r = self.lock();
        DiscoveryStatus {
            interval_secs: self.cfg.interval.as_secs(),
            passes: r.passes,
            hosts_added: r.added,
            sources: r.sources.clone(),
            hosts_missing: r.missing.len(),
            missing_sample: r.missing.iter().take(20).cloned().collect(),
            worst_lag: r
                .worst_lag
                .iter()
                .map(|(h, n)| serde_json::json!({"hostname": h, "events_behind": n}))
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pass(&self, stop: &AtomicBool) {
        let mut merged: HashMap<String, UpstreamView> = HashMap::new();
        let mut reports = Vec::new();
        for url in &self.cfg.sources {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut rep = SourceReport {
                url: url.clone(),
                last_pass: Some(crate::logging::timestamp()),
                ..SourceReport::default()
            };
            match self.list_hosts(url) {
                Ok(listed) => {
                    rep.hosts_listed = listed.len();
                    for l in &listed {
                        let v = merged.entry(l.hostname.clone()).or_default();
                        v.seq = v.seq.max(l.seq);
                        v.active |= l.active;
                    }
                    rep.hosts_added = self.add_new(url, &listed, stop);
                }
                Err(e) => {
                    log::warn!(
                        "discovery: listHosts of {url} failed: {e}; will retry at the next pass"
                    );
                    metrics::counter!("rlay_discovery_failures_total").increment(1);
                    rep.error = Some(e);
                }
            }
            reports.push(rep);
        }
        self.revive_offline(&merged);
        let (missing, worst) = self.compare(&merged);
        let mut r = self.lock();
        r.passes += 1;
        r.added += reports.iter().map(|s| s.hosts_added as u64).sum::<u64>();
        // A source that failed keeps its last view of the network.
        if reports.iter().all(|s| s.error.is_none()) || r.upstream.is_empty() {
            r.upstream = merged;
        }
        r.sources = reports;
        r.missing = missing;
        r.worst_lag = worst;
    }

    /// Every host of a relay's `listHosts`, paged.
    fn list_hosts(&self, relay: &str) -> Result<Vec<Listed>, String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = format!("{relay}/xrpc/com.atproto.sync.listHosts?limit=1000");
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
            let mut r = self
                .http
                .get(&url)
                .call()
                .map_err(|e| format!("{url}: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("{url}: HTTP {}", r.status()));
            }
            let body: serde_json::Value = r
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_json()
                .map_err(|e| format!("{url}: {e}"))?;
            let page = body["hosts"].as_array().map_or(&[][..], Vec::as_slice);
            for h in page {
                let (Some(name), Some(seq)) = (h["hostname"].as_str(), h["seq"].as_i64()) else {
                    continue;
                };
                let status = h["status"].as_str().unwrap_or("active");
                out.push(Listed {
                    hostname: name.to_ascii_lowercase(),
                    seq,
                    active: status == "active",
                    addable: matches!(status, "active" | "idle"),
                });
            }
            // Cursors are host ids; anything else ends the listing rather than go in a URL.
            cursor = body["cursor"]
                .as_str()
                .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_owned);
            if cursor.is_none() || page.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Adds the listed hosts we do not know (active or idle, with a seq, acceptable name, not
    /// banned, `describeServer` answering); returns how many were added.
    fn add_new(&self, source: &str, listed: &[Listed], stop: &AtomicBool) -> usize {
        let now = Instant::now();
        let candidates: Vec<(String, bool)> = {
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            listed
                .iter()
                .filter(|l| l.addable && l.seq > 0)
                .filter_map(|l| parse_hostname(&l.hostname, false, self.cfg.allow_insecure).ok())
                .filter(|(h, _)| !self.crawler.is_known(h) && !self.crawler.is_banned_domain(h))
                .filter(|(h, _)| {
                    failed.get(h).is_none_or(|&(at, n)| {
                        let wait = self
                            .cfg
                            .interval
                            .checked_mul(1u32 << n.min(8))
                            .unwrap_or(Duration::MAX);
                        now.duration_since(at) >= wait.min(Duration::from_secs(86_400))
                    })
                })
                .collect()
        };
        if candidates.is_empty() {
            return 0;
        }
        let next = Mutex::new(candidates.iter());
        let added = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..CHECK_THREADS.min(candidates.len()) {
                let _ = std::thread::Builder::new()
                    .name("discovery check".into())
                    .stack_size(2 << 20)
                    .spawn_scoped(s, || {
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            let Some((h, no_tls)) =
                                next.lock().unwrap_or_else(PoisonError::into_inner).next()
                            else {
                                return;
                            };
                            self.try_add(source, h, *no_tls, &added);
                        }
                    });
            }
        });
        added.into_inner()
    }

    fn try_add(
        &self,
        source: &str,
        hostname: &str,
        no_tls: bool,
        added: &std::sync::atomic::AtomicUsize,
    ) {
        match self.crawler.check_and_add(hostname, no_tls, true) {
            Ok(_) => {
                log::info!("discovery: added {hostname} (listed by {source})");
                metrics::counter!("rlay_discovery_hosts_added_total").increment(1);
                added.fetch_add(1, Ordering::Relaxed);
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(hostname);
            }
            Err(e) => {
                metrics::counter!("rlay_discovery_checks_failed_total", "reason" => e.label())
                    .increment(1);
                let mut f = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                let n = f.get(hostname).map_or(0, |&(_, n)| n + 1);
                if n == 0 {
                    log::info!(
                        "discovery: not adding {hostname} (listed by {source}): {e}; retrying on a backoff"
                    );
                }
                f.insert(hostname.to_owned(), (Instant::now(), n));
            }
        }
    }

    /// Hosts we marked offline that another relay sees active: probe them now.
    fn revive_offline(&self, merged: &HashMap<String, UpstreamView>) {
        for h in self.hosts.all() {
            if h.status() == HostStatus::Offline
                && merged.get(h.hostname()).is_some_and(|v| v.active)
            {
                log::info!(
                    "discovery: {} is offline here but active elsewhere; re-probing it now",
                    h.hostname()
                );
                self.crawler.revive(&h);
            }
        }
    }

    /// Per-host lag behind the other relays' view, and the hosts active there but not
    /// connected here. Exports the gauges.
    fn compare(&self, merged: &HashMap<String, UpstreamView>) -> (Vec<String>, Vec<(String, i64)>) {
        let mut missing = Vec::new();
        let mut lags = Vec::new();
        for (name, v) in merged {
            let here = self.hosts.by_name(name);
            if v.active && v.seq > 0 && !here.as_ref().is_some_and(|h| h.connected()) {
                missing.push(name.clone());
            }
            if let Some(h) = here {
                let behind = (v.seq - h.safe_cursor()).max(0);
                metrics::histogram!("rlay_host_lag_events_distribution").record(behind as f64);
                lags.push((name.clone(), behind));
            }
        }
        missing.sort();
        lags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lags.truncate(LAG_GAUGES);
        let previous = std::mem::take(&mut self.lock().worst_lag);
        for (name, _) in &previous {
            if !lags.iter().any(|(n, _)| n == name) {
                metrics::gauge!("rlay_host_lag_events", "pds" => name.clone()).set(0.0);
            }
        }
        for (name, n) in &lags {
            metrics::gauge!("rlay_host_lag_events", "pds" => name.clone()).set(*n as f64);
        }
        metrics::gauge!("rlay_hosts_missing").set(missing.len() as f64);
        (missing, lags)
    }
}
