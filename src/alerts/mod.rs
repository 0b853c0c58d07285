//! Alerts for the operator: the relay stopped (or started again) carrying the network, hosts
//! near their account limit, a big host gone offline. Sent to `RELAY_ALERT_WEBHOOK_URL`, kept
//! in memory for `/admin/alerts/list`, and remembered in the store so a restart does not send
//! them all again.
//!
//! `check` runs on the coverage thread, never on the pipeline or an API worker; delivery is on
//! the webhook's own thread.

pub mod webhook;

use crate::coverage::readiness::Reason;
use crate::ingest::hosts::Hosts;
use crate::store::{Batch, HostAlertRow, HostStatus, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use webhook::Webhook;

/// `relay_meta` key of the last readiness verdict alerted on.
const READY_KEY: &str = "alert_ready";
const RECENT: usize = 200;
/// Hosts listed in one account-limit message.
const HOSTS_PER_MESSAGE: usize = 50;

#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub(crate) webhook_url: Option<String>,
    pub(crate) every: Duration,
    pub(crate) limit_threshold: f64,
    pub(crate) repeat: Duration,
    pub(crate) offline_accounts: i64,
    /// Readiness is not judged for this long after start (it needs its grace period), so no
    /// "ready again" is sent for a verdict that has not been reached yet.
    pub(crate) settle: Duration,
}

#[derive(Debug, Clone)]
pub struct Recent {
    pub at: String,
    pub kind: &'static str,
    pub text: String,
}

impl Recent {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"at": self.at, "kind": self.kind, "text": self.text})
    }
}

struct State {
    hosts: HashMap<i64, HostAlertRow>,
    /// The verdict last alerted on: true = ready.
    ready: bool,
    last_check: Option<Instant>,
    recent: VecDeque<Recent>,
}

pub struct Alerts {
    cfg: AlertConfig,
    store: Arc<dyn Store>,
    hosts: Arc<Hosts>,
    webhook: Option<Webhook>,
    started: Instant,
    state: Mutex<State>,
}

impl Alerts {
    /// Loads the alert state from the store and starts the webhook thread (if configured).
    pub fn load(
        cfg: AlertConfig,
        store: Arc<dyn Store>,
        hosts: Arc<Hosts>,
        stop: Arc<AtomicBool>,
    ) -> Result<Alerts, String> {
        let rows = store.host_alerts().map_err(|e| e.to_string())?;
        let ready = store
            .get_meta(READY_KEY)
            .map_err(|e| e.to_string())?
            .is_none_or(|v| v == "ready");
        let webhook = match &cfg.webhook_url {
            Some(u) => Some(
                Webhook::start(u.clone(), stop)
                    .map_err(|e| format!("cannot start the alert webhook thread: {e}"))?,
            ),
            None => None,
        };
        Ok(Alerts {
            state: Mutex::new(State {
                hosts: rows.into_iter().map(|r| (r.host_id, r)).collect(),
                ready,
                last_check: None,
                recent: VecDeque::new(),
            }),
            cfg,
            store,
            hosts,
            webhook,
            started: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A host's alert state (defaults for a host never alerted on).
    pub fn host_state(&self, host_id: i64) -> HostAlertRow {
        self.lock()
            .hosts
            .get(&host_id)
            .cloned()
            .unwrap_or_else(|| HostAlertRow::new(host_id))
    }

    /// Alerts raised since start, newest last.
    pub fn recent(&self) -> Vec<Recent> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Silences (or un-silences) a host's account-limit alerts; silencing resets its state.
    pub fn silence(&self, host_id: i64, on: bool) -> Result<(), crate::store::StoreError> {
        let mut st = self.lock();
        let row = st
            .hosts
            .entry(host_id)
            .or_insert_with(|| HostAlertRow::new(host_id));
        row.silenced = on;
        if on {
            row.limit_state = "ok".into();
            row.limit_sent_at = None;
        }
        let row = row.clone();
        drop(st);
        self.store.set_host_alert(&row)
    }

    /// Evaluates every alert rule, at most once per `every`.
    pub fn check(&self, reasons: &[Reason]) {
        let mut st = self.lock();
        if st.last_check.is_some_and(|t| t.elapsed() < self.cfg.every) {
            return;
        }
        st.last_check = Some(Instant::now());
        if self.started.elapsed() >= self.cfg.settle {
            self.readiness(&mut st, reasons);
        }
        self.account_limits(&mut st);
        self.offline(&mut st);
    }

    fn readiness(&self, st: &mut State, reasons: &[Reason]) {
        let ready = reasons.is_empty();
        if ready == st.ready {
            return;
        }
        st.ready = ready;
        if ready {
            self.raise(
                st,
                "ready",
                "the relay is ready again: coverage and event flow are back to normal".into(),
            );
        } else {
            let why: Vec<String> = reasons
                .iter()
                .map(|r| format!("{}: {}", r.code, r.message))
                .collect();
            self.raise(
                st,
                "not_ready",
                format!("the relay is not ready: {}", why.join("; ")),
            );
        }
        let b = Batch {
            meta: vec![(
                READY_KEY.to_owned(),
                if ready { "ready" } else { "not_ready" }.to_owned(),
            )],
            ..Batch::default()
        };
        if let Err(e) = self.store.write_batch(&b) {
            log::warn!(
                "alerts: could not store the readiness alert state ({e}); a restart may repeat it"
            );
        }
    }

    fn account_limits(&self, st: &mut State) {
        let now = crate::util::now_ms();
        let repeat_ms = self.cfg.repeat.as_millis() as i64;
        let mut warn = Vec::new();
        let mut recover = Vec::new();
        let mut changed = Vec::new();
        for h in self.hosts.all() {
            if h.status() == HostStatus::Banned || h.account_limit() <= 0 {
                continue;
            }
            let row = st
                .hosts
                .entry(h.id())
                .or_insert_with(|| HostAlertRow::new(h.id()));
            if row.silenced {
                continue;
            }
            let usage = h.account_count() as f64 / h.account_limit() as f64;
            let line = format!(
                "{}: {} of {} accounts ({:.0}%)",
                h.hostname(),
                h.account_count(),
                h.account_limit(),
                usage * 100.0
            );
            if usage >= self.cfg.limit_threshold {
                let due = row.limit_state != "warning"
                    || row.limit_sent_at.is_none_or(|t| now - t >= repeat_ms);
                if due {
                    row.limit_state = "warning".into();
                    row.limit_sent_at = Some(now);
                    changed.push(row.clone());
                    warn.push(line);
                }
            } else if row.limit_state == "warning" {
                row.limit_state = "ok".into();
                changed.push(row.clone());
                recover.push(line);
            }
        }
        for chunk in warn.chunks(HOSTS_PER_MESSAGE) {
            self.raise(
                st,
                "account_limit",
                format!(
                    "{} host(s) at or above {:.0}% of their account limit (raise it with /admin/pds/changeLimits, or silence with /admin/alerts/silence):\n{}",
                    chunk.len(),
                    self.cfg.limit_threshold * 100.0,
                    chunk.join("\n")
                ),
            );
        }
        for chunk in recover.chunks(HOSTS_PER_MESSAGE) {
            self.raise(
                st,
                "account_limit_recovered",
                format!(
                    "{} host(s) back below {:.0}% of their account limit:\n{}",
                    chunk.len(),
                    self.cfg.limit_threshold * 100.0,
                    chunk.join("\n")
                ),
            );
        }
        self.persist(&changed);
    }

    fn offline(&self, st: &mut State) {
        let now = crate::util::now_ms();
        let mut changed = Vec::new();
        for h in self.hosts.all() {
            let row = st
                .hosts
                .entry(h.id())
                .or_insert_with(|| HostAlertRow::new(h.id()));
            let offline = h.status() == HostStatus::Offline;
            let text = if offline
                && row.offline_sent_at.is_none()
                && h.account_count() >= self.cfg.offline_accounts
            {
                row.offline_sent_at = Some(now);
                format!(
                    "{} ({} accounts) went offline: its connection failed repeatedly; the relay re-probes it",
                    h.hostname(),
                    h.account_count()
                )
            } else if h.connected() && row.offline_sent_at.is_some() {
                row.offline_sent_at = None;
                format!("{} is back online", h.hostname())
            } else {
                continue;
            };
            changed.push(row.clone());
            self.raise(
                st,
                if offline {
                    "host_offline"
                } else {
                    "host_online"
                },
                text,
            );
        }
        self.persist(&changed);
    }

    fn persist(&self, rows: &[HostAlertRow]) {
        for r in rows {
            if let Err(e) = self.store.set_host_alert(r) {
                log::warn!(
                    "alerts: could not store the alert state of host {} ({e}); a restart may repeat its alert",
                    r.host_id
                );
                return;
            }
        }
    }

    fn raise(&self, st: &mut State, kind: &'static str, text: String) {
        log::warn!("alert ({kind}): {text}");
        metrics::counter!("rlay_alerts_raised_total", "kind" => kind).increment(1);
        if let Some(w) = &self.webhook {
            w.send(format!("rlay: {text}"));
        }
        st.recent.push_back(Recent {
            at: crate::logging::timestamp(),
            kind,
            text,
        });
        while st.recent.len() > RECENT {
            st.recent.pop_front();
        }
    }
}
