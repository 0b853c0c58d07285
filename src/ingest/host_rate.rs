//! A host's recent event rate and its count for the day, for operators (`/admin/pds/list`,
//! the dashboard): the relay's own rate history kept for a minute, plus a day counter.
//! Sampled by the coverage thread, so the per-event path stays one counter.

use crate::coverage::rates::{RateHistory, STEP_MS};
use std::sync::{Mutex, PoisonError};

/// The rate covers the last minute: six steps, seven samples.
const WINDOW_MS: i64 = 6 * STEP_MS;
const DAY_MS: i64 = 86_400_000;

struct State {
    rates: RateHistory,
    /// The UTC day (days since the epoch) `day_base` belongs to; `None` before any sample.
    day: Option<i64>,
    /// Events received when that day began (or when the relay started, if later).
    day_base: u64,
}

pub struct HostRate {
    state: Mutex<State>,
}

impl Default for HostRate {
    fn default() -> HostRate {
        HostRate {
            state: Mutex::new(State {
                rates: RateHistory::keeping(7),
                day: None,
                day_base: 0,
            }),
        }
    }
}

impl HostRate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `received` at `now_ms`; callers may call it more often than once per step.
    pub fn sample(&self, now_ms: i64, received: u64) {
        let mut s = self.lock();
        let day = now_ms.div_euclid(DAY_MS);
        if s.day != Some(day) {
            // The first day counts from the relay's start (received began at 0).
            s.day_base = if s.day.is_none() { 0 } else { received };
            s.day = Some(day);
        }
        s.rates.sample(now_ms, received);
    }

    /// Events per second over about the last minute; 0 before a second of samples exists.
    pub fn per_sec(&self, now_ms: i64, received: u64) -> f64 {
        self.lock()
            .rates
            .rate(now_ms, received, WINDOW_MS)
            .unwrap_or(0.0)
    }

    /// Events received since midnight UTC (or since the relay started, if that was later).
    pub fn today(&self, now_ms: i64, received: u64) -> u64 {
        let s = self.lock();
        match s.day {
            None => received,
            Some(d) if d == now_ms.div_euclid(DAY_MS) => received.saturating_sub(s.day_base),
            // The day turned since the last sample: nothing of the new day is known yet.
            Some(_) => 0,
        }
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
