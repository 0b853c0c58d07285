//! When the relay is fit to serve (`/xrpc/_ready`). Liveness (`/xrpc/_health`) asks "is the
//! process working"; readiness asks "is it carrying the network". The rules, as the README
//! documents them:
//!
//! - `coverage`: of the hosts that should be connected, fewer than `min_coverage` are, for
//!   longer than `grace`. It clears once coverage has been back for `grace / 5`, so one host
//!   flapping at the threshold cannot flap readiness faster than that.
//! - `stalled`: hosts are connected but no event was sequenced for `stall_grace`.
//! - `event_log`, `database`: the log cannot be written, the store does not answer (at once).

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Rules {
    pub min_coverage: f64,
    pub grace: Duration,
    pub stall_grace: Duration,
}

/// What the rules look at, read once per evaluation.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Hosts that should be connected, and how many of them are.
    pub expected: u64,
    pub expected_connected: u64,
    pub connected: u64,
    pub head_seq: u64,
    pub log_error: Option<String>,
    pub store_error: Option<String>,
}

impl Inputs {
    /// Connected share of the expected hosts (1 when none are expected).
    pub fn coverage(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.expected_connected as f64 / self.expected as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

impl Reason {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code, "message": self.message})
    }
}

pub struct Readiness {
    rules: Rules,
    /// Coverage has been below the minimum since.
    below_since: Option<Instant>,
    /// Coverage came back at (while still judged poor).
    back_since: Option<Instant>,
    poor: bool,
    head: u64,
    head_moved: Instant,
}

impl Readiness {
    pub fn new(rules: Rules, now: Instant) -> Readiness {
        Readiness {
            rules,
            below_since: None,
            back_since: None,
            poor: false,
            head: 0,
            head_moved: now,
        }
    }

    /// Applies the rules to this moment's inputs; empty means ready.
    pub fn update(&mut self, now: Instant, i: &Inputs) -> Vec<Reason> {
        let mut reasons = Vec::new();
        let coverage = i.coverage();
        if coverage < self.rules.min_coverage {
            self.back_since = None;
            let since = *self.below_since.get_or_insert(now);
            if now.duration_since(since) >= self.rules.grace {
                self.poor = true;
            }
        } else {
            self.below_since = None;
            if self.poor {
                let back = *self.back_since.get_or_insert(now);
                if now.duration_since(back) >= self.rules.grace / 5 {
                    self.poor = false;
                    self.back_since = None;
                }
            }
        }
        if self.poor {
            reasons.push(Reason {
                code: "coverage",
                message: format!(
                    "{} of {} hosts that should be connected are ({:.0}%, below the minimum {:.0}% for over {}s): see /status and /admin/pds/list for which are not",
                    i.expected_connected,
                    i.expected,
                    coverage * 100.0,
                    self.rules.min_coverage * 100.0,
                    self.rules.grace.as_secs()
                ),
            });
        }
        if i.head_seq != self.head {
            self.head = i.head_seq;
            self.head_moved = now;
        }
        let quiet = now.duration_since(self.head_moved);
        if i.connected > 0 && quiet >= self.rules.stall_grace {
            reasons.push(Reason {
                code: "stalled",
                message: format!(
                    "{} host(s) connected but no event sequenced for {}s: check the resolver backlog and rlay_events_dropped_total",
                    i.connected,
                    quiet.as_secs()
                ),
            });
        }
        if let Some(e) = &i.log_error {
            reasons.push(Reason {
                code: "event_log",
                message: format!("the event log cannot be written ({e}): check the disk"),
            });
        }
        if let Some(e) = &i.store_error {
            reasons.push(Reason {
                code: "database",
                message: format!("the database does not answer ({e})"),
            });
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(expected: u64, up: u64, head: u64) -> Inputs {
        Inputs {
            expected,
            expected_connected: up,
            connected: up,
            head_seq: head,
            ..Inputs::default()
        }
    }

    /// The default rules: 90%, 5 min grace, 2 min stall.
    fn defaults(t0: Instant) -> Readiness {
        Readiness::new(
            Rules {
                min_coverage: 0.9,
                grace: Duration::from_secs(300),
                stall_grace: Duration::from_secs(120),
            },
            t0,
        )
    }

    fn codes(r: &[Reason]) -> Vec<&'static str> {
        r.iter().map(|r| r.code).collect()
    }

    #[test]
    fn coverage_needs_the_grace_period_both_ways() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut r = defaults(t0);
        assert!(r.update(s(0), &inputs(10, 10, 1)).is_empty());
        // Half the hosts go: not poor until the grace has passed.
        assert!(r.update(s(1), &inputs(10, 5, 2)).is_empty());
        assert!(r.update(s(300), &inputs(10, 5, 3)).is_empty());
        assert_eq!(codes(&r.update(s(301), &inputs(10, 5, 4))), ["coverage"]);
        // Back: still poor for a fifth of the grace, then ready.
        assert_eq!(codes(&r.update(s(302), &inputs(10, 10, 5))), ["coverage"]);
        // A dip restarts the recovery clock, not the poor one.
        assert_eq!(codes(&r.update(s(340), &inputs(10, 8, 6))), ["coverage"]);
        assert_eq!(codes(&r.update(s(341), &inputs(10, 10, 7))), ["coverage"]);
        assert!(r.update(s(401), &inputs(10, 10, 8)).is_empty());
        // One host flapping below the line for less than the grace changes nothing.
        for k in 0..20 {
            let up = if k % 2 == 0 { 8 } else { 10 };
            assert!(r.update(s(402 + k * 30), &inputs(10, up, 9 + k)).is_empty());
        }
    }

    #[test]
    fn stall_counts_only_while_hosts_are_connected() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut r = defaults(t0);
        assert!(r.update(s(119), &inputs(10, 10, 0)).is_empty());
        assert_eq!(codes(&r.update(s(120), &inputs(10, 10, 0))), ["stalled"]);
        assert!(r.update(s(121), &inputs(10, 10, 1)).is_empty());
        assert!(r.update(s(500), &inputs(0, 0, 1)).is_empty());
        let mut i = inputs(0, 0, 1);
        i.log_error = Some("No space left on device".into());
        assert_eq!(codes(&r.update(s(501), &i)), ["event_log"]);
    }
}
