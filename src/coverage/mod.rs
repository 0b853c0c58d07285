//! How much of the network the relay carries, watched by one thread once a second: which hosts
//! should be connected and are, the event rate over the last hour, the readiness verdict
//! (`/xrpc/_ready`), and the alert checks that follow from them.

pub mod rates;
pub mod readiness;

use crate::alerts::Alerts;
use crate::ingest::discovery::Discovery;
use crate::ingest::hosts::Hosts;
use crate::store::{HostStatus, Store};
use crate::stream::firehose::Hub;
use rates::RateHistory;
use readiness::{Inputs, Readiness, Reason, Rules};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An offline host still counts as one that should be connected if it was this recently.
const RECENTLY_CONNECTED_MS: i64 = 6 * 3600 * 1000;
/// A connected host is "silent" after this long without a message, or twenty times its usual
/// gap between events if that is longer.
const SILENT_MIN_MS: i64 = 10 * 60 * 1000;
/// The store is pinged this often (a readiness input).
const PING_EVERY: Duration = Duration::from_secs(5);

/// The hosts, counted for `/status` and readiness.
#[derive(Debug, Clone, Default)]
pub struct HostSummary {
    pub known: u64,
    pub by_status: BTreeMap<&'static str, u64>,
    pub connected: u64,
    /// Hosts that should be connected: not banned, and active here, active at another relay,
    /// or offline but connected within the last six hours.
    pub expected: u64,
    pub expected_connected: u64,
    pub coverage: f64,
    pub silent: u64,
    pub silent_sample: Vec<String>,
}

impl HostSummary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "known": self.known, "by_status": self.by_status, "connected": self.connected,
            "expected": self.expected, "expected_connected": self.expected_connected,
            "coverage": (self.coverage * 1000.0).round() / 1000.0,
            "silent": self.silent, "silent_sample": self.silent_sample,
        })
    }
}

#[derive(Default)]
struct Latest {
    reasons: Vec<Reason>,
    hosts: HostSummary,
    rates: RateHistory,
}

pub struct Coverage {
    hosts: Arc<Hosts>,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    discovery: Option<Arc<Discovery>>,
    alerts: Option<Arc<Alerts>>,
    latest: Mutex<Latest>,
    readiness: Mutex<Readiness>,
}

impl Coverage {
    pub fn new(
        hosts: Arc<Hosts>,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        discovery: Option<Arc<Discovery>>,
        alerts: Option<Arc<Alerts>>,
        rules: Rules,
    ) -> Coverage {
        Coverage {
            hosts,
            hub,
            store,
            discovery,
            alerts,
            latest: Mutex::new(Latest::default()),
            readiness: Mutex::new(Readiness::new(rules, Instant::now())),
        }
    }

    pub fn spawn(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("coverage".into())
            .stack_size(2 << 20)
            .spawn(move || {
                let mut store_error = None;
                let mut pinged: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    if pinged.is_none_or(|t| t.elapsed() >= PING_EVERY) {
                        pinged = Some(Instant::now());
                        store_error = me.store.ping().err().map(|e| e.to_string());
                    }
                    crate::util::isolate::isolate(
                        "coverage",
                        || "evaluating coverage".to_owned(),
                        || me.tick(store_error.clone()),
                    );
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })?;
        Ok(())
    }

    fn tick(&self, store_error: Option<String>) {
        let now_ms = crate::util::now_ms();
        let head = self.hub.ring.head();
        let hosts = self.summarise(now_ms);
        let inputs = Inputs {
            expected: hosts.expected,
            expected_connected: hosts.expected_connected,
            connected: hosts.connected,
            head_seq: head,
            log_error: self.hub.log.write_error(),
            store_error,
        };
        let reasons = self
            .readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(Instant::now(), &inputs);
        metrics::gauge!("rlay_ready").set(if reasons.is_empty() { 1.0 } else { 0.0 });
        metrics::gauge!("rlay_coverage_ratio").set(hosts.coverage);
        metrics::gauge!("rlay_hosts_expected").set(hosts.expected as f64);
        metrics::gauge!("rlay_hosts_silent").set(hosts.silent as f64);
        {
            let mut l = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            l.rates.sample(now_ms, head);
            l.hosts = hosts;
            l.reasons = reasons.clone();
        }
        if let Some(a) = &self.alerts {
            a.check(&reasons);
        }
    }

    fn summarise(&self, now_ms: i64) -> HostSummary {
        let elsewhere: HashSet<String> = self
            .discovery
            .as_ref()
            .map(|d| d.active_elsewhere().into_iter().collect())
            .unwrap_or_default();
        let mut s = HostSummary::default();
        for h in self.hosts.all() {
            h.sample_rate(now_ms);
            let status = h.status();
            s.known += 1;
            *s.by_status.entry(status.as_str()).or_default() += 1;
            let connected = h.connected();
            s.connected += u64::from(connected);
            let expected = status != HostStatus::Banned
                && (status == HostStatus::Active
                    || elsewhere.contains(h.hostname())
                    || (status == HostStatus::Offline
                        && now_ms - h.connected_at_ms() < RECENTLY_CONNECTED_MS));
            if expected {
                s.expected += 1;
                s.expected_connected += u64::from(connected);
            }
            if connected {
                let session_ms = (now_ms - h.connected_at_ms()).max(0);
                let usual_gap = session_ms / (h.events_received().max(1) as i64);
                let silent_ms = h.silent().as_millis() as i64;
                if silent_ms > SILENT_MIN_MS.max(usual_gap.saturating_mul(20)) {
                    s.silent += 1;
                    if s.silent_sample.len() < 20 {
                        s.silent_sample.push(h.hostname().to_owned());
                    }
                }
            }
        }
        s.coverage = if s.expected == 0 {
            1.0
        } else {
            s.expected_connected as f64 / s.expected as f64
        };
        s
    }

    /// Why the relay is not ready (empty: ready), as of the last evaluation.
    pub fn reasons(&self) -> Vec<Reason> {
        self.lock().reasons.clone()
    }

    pub fn hosts(&self) -> HostSummary {
        self.lock().hosts.clone()
    }

    /// Events/s over the last minute, five minutes and hour.
    pub fn rates(&self) -> [Option<f64>; 3] {
        let head = self.hub.ring.head();
        let now = crate::util::now_ms();
        let l = self.lock();
        [60_000, 300_000, 3_600_000].map(|w| l.rates.rate(now, head, w))
    }

    /// Events/s per 10 s step over the last hour, oldest first: `(unix ms, events/s)`.
    pub fn series(&self) -> Vec<(i64, f64)> {
        self.lock().rates.series()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
