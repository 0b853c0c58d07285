//! The relay's event rate over the last hour, from samples of the head seq, kept in memory so
//! `/status` (and the dashboard) can show the last hour without having watched it.

use std::collections::VecDeque;

/// One sample every `STEP_MS`; by default an hour of them.
pub const STEP_MS: i64 = 10_000;
const KEEP: usize = 361;

#[derive(Debug)]
pub struct RateHistory {
    /// (unix ms, counter), oldest first.
    samples: VecDeque<(i64, u64)>,
    keep: usize,
}

impl Default for RateHistory {
    fn default() -> RateHistory {
        RateHistory::keeping(KEEP)
    }
}

impl RateHistory {
    /// A history of the last `keep` samples (a host's last minute needs 7, not an hour's 361).
    pub fn keeping(keep: usize) -> RateHistory {
        RateHistory {
            samples: VecDeque::with_capacity(keep + 1),
            keep: keep.max(1),
        }
    }

    /// Records the counter (the head seq, a host's events) at `now_ms`, at most once per step (the caller may call it more
    /// often). Returns whether a sample was taken.
    pub fn sample(&mut self, now_ms: i64, head: u64) -> bool {
        if self
            .samples
            .back()
            .is_some_and(|&(t, _)| now_ms - t < STEP_MS)
        {
            return false;
        }
        self.samples.push_back((now_ms, head));
        while self.samples.len() > self.keep {
            self.samples.pop_front();
        }
        true
    }

    /// Events per second over (about) the last `window_ms`, with the head seq read now: from the
    /// oldest sample inside the window to now. Early on it covers the time since the first
    /// sample; `None` before a second has passed.
    pub fn rate(&self, now_ms: i64, head: u64, window_ms: i64) -> Option<f64> {
        let from = self
            .samples
            .iter()
            .find(|&&(t, _)| now_ms - t <= window_ms)
            .or(self.samples.back())?;
        let secs = (now_ms - from.0) as f64 / 1000.0;
        (secs >= 1.0).then(|| head.saturating_sub(from.1) as f64 / secs)
    }

    /// Events/s in each step of the history, oldest first: `(step start ms, events/s)`.
    pub fn series(&self) -> Vec<(i64, f64)> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(&(t0, s0), &(t1, s1))| {
                let secs = ((t1 - t0) as f64 / 1000.0).max(0.001);
                (t0, s1.saturating_sub(s0) as f64 / secs)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_windows() {
        let mut h = RateHistory::default();
        assert_eq!(h.rate(0, 0, 60_000), None);
        for i in 0..=60 {
            h.sample(i * STEP_MS, (i * 1000) as u64);
        }
        // 100 events/s throughout.
        let now = 60 * STEP_MS;
        let r = h.rate(now, 60_000, 60_000).unwrap();
        assert!((r - 100.0).abs() < 0.01, "{r}");
        let r = h.rate(now, 60_000, 3_600_000).unwrap();
        assert!((r - 100.0).abs() < 0.01, "{r}");
        assert_eq!(h.series().len(), 60);
        assert!(h.series().iter().all(|&(_, r)| (r - 100.0).abs() < 0.01));
        // Too soon for another sample.
        assert!(!h.sample(now + 1, 0));
    }
}
