//! A host's recent event rate and its count for the day, for operators (`/admin/pds/list`,
//! the dashboard). Sampled by the coverage thread, so the per-event path stays one counter.

use std::sync::{Mutex, PoisonError};

/// One sample per step; the rate covers the last `SLOTS - 1` steps (about a minute).
const STEP_MS: i64 = 10_000;
const SLOTS: usize = 7;
const DAY_MS: i64 = 86_400_000;

#[derive(Default)]
struct State {
    /// (unix ms, events received) in a fixed ring: no allocation per host.
    samples: [(i64, u64); SLOTS],
    next: usize,
    taken: usize,
    /// The UTC day (days since the epoch) `day_base` belongs to.
    day: i64,
    /// Events received when that day began (or when the relay started, if later).
    day_base: u64,
}

#[derive(Default)]
pub struct HostRate {
    state: Mutex<State>,
}

impl HostRate {
    /// Records `received` at `now_ms`; callers may call it more often than once per step.
    pub fn sample(&self, now_ms: i64, received: u64) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let day = now_ms.div_euclid(DAY_MS);
        if day != s.day {
            s.day = day;
            s.day_base = if s.taken == 0 { 0 } else { received };
        }
        let last = (s.next + SLOTS - 1) % SLOTS;
        if s.taken > 0 && now_ms - s.samples[last].0 < STEP_MS {
            return;
        }
        let i = s.next;
        s.samples[i] = (now_ms, received);
        s.next = (i + 1) % SLOTS;
        s.taken = (s.taken + 1).min(SLOTS);
    }

    /// Events per second from the oldest sample kept to `received` now; 0 before a second of
    /// samples exists.
    pub fn per_sec(&self, now_ms: i64, received: u64) -> f64 {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.taken == 0 {
            return 0.0;
        }
        let oldest = if s.taken < SLOTS { 0 } else { s.next };
        let (t, n) = s.samples[oldest];
        let secs = (now_ms - t) as f64 / 1000.0;
        if secs < 1.0 {
            return 0.0;
        }
        received.saturating_sub(n) as f64 / secs
    }

    /// Events received since midnight UTC (or since the relay started, if that was later).
    pub fn today(&self, now_ms: i64, received: u64) -> u64 {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.day != now_ms.div_euclid(DAY_MS) {
            // The day turned since the last sample: nothing of the new day is known yet.
            return if s.taken == 0 { received } else { 0 };
        }
        received.saturating_sub(s.day_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_covers_about_the_last_minute() {
        let r = HostRate::default();
        let t0 = 10 * DAY_MS + 1000;
        assert_eq!(r.per_sec(t0, 0), 0.0, "nothing sampled");
        r.sample(t0, 0);
        assert_eq!(r.per_sec(t0 + 500, 10), 0.0, "under a second");
        assert_eq!(r.per_sec(t0 + 2000, 10), 5.0);
        // 100/s for two minutes, sampled every second: the window slides.
        for i in 1..=120 {
            r.sample(t0 + i * 1000, (i * 100) as u64);
        }
        let now = t0 + 120_000;
        let rate = r.per_sec(now, 12_000);
        assert!((rate - 100.0).abs() < 0.01, "{rate}");
        // Then silence for a minute: the rate falls to zero.
        for i in 121..=190 {
            r.sample(t0 + i * 1000, 12_000);
        }
        assert_eq!(r.per_sec(t0 + 190_000, 12_000), 0.0);
    }

    #[test]
    fn today_restarts_at_midnight() {
        let r = HostRate::default();
        let evening = 20 * DAY_MS - 60_000;
        r.sample(evening, 500);
        assert_eq!(r.today(evening + 1000, 520), 520, "since start, same day");
        let morning = 20 * DAY_MS + 5000;
        assert_eq!(r.today(morning, 600), 0, "new day not sampled yet");
        r.sample(morning, 600);
        assert_eq!(r.today(morning + 1000, 650), 50);
    }
}
