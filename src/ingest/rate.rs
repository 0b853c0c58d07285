//! Per-host event rate limits: they slow reading from a host, they never drop its events.

use super::hosts::HostHandle;
use std::time::{Duration, Instant};

/// Token buckets for the per-second, per-hour and per-day limits (indigo's formulas).
pub(crate) struct Limiter {
    buckets: [(f64, f64, f64); 3], // (tokens, capacity, refill per second)
    last: Instant,
}

impl Limiter {
    pub(crate) fn new(host: &HostHandle, base: u32) -> Limiter {
        let limit = host.account_limit() as f64;
        let (sec, hour, day) = if host.trusted() {
            (5_000.0, 50_000_000.0, 500_000_000.0)
        } else {
            (
                f64::from(base) + limit / 1000.0,
                2_500.0 + limit,
                20_000.0 + 10.0 * limit,
            )
        };
        Limiter {
            buckets: [
                (sec, sec, sec),
                (hour, hour, hour / 3600.0),
                (day, day, day / 86_400.0),
            ],
            last: Instant::now(),
        }
    }

    /// Waits until one more event is allowed: the limit slows reading, it never drops events.
    pub(crate) fn acquire(&mut self, stop: &dyn Fn() -> bool) {
        loop {
            let now = Instant::now();
            let dt = now.duration_since(self.last).as_secs_f64();
            self.last = now;
            for b in &mut self.buckets {
                b.0 = (b.0 + dt * b.2).min(b.1);
            }
            if self.buckets.iter().all(|b| b.0 >= 1.0) {
                for b in &mut self.buckets {
                    b.0 -= 1.0;
                }
                return;
            }
            metrics::counter!("rlay_host_rate_limited_total").increment(1);
            if stop() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
