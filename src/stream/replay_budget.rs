//! The disk replay budget: events per second that all consumers reading from the disk log may
//! take together. Replays are CPU-bound and unbounded by nature (a client asking for 72 hours
//! reads as fast as it can), so without a budget ten of them on a small machine take every core
//! and live delivery waits its turn. With it, replays share a fixed rate, and what is left stays
//! for the live stream.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Frames a reader counts before it asks the budget (one lock per this many).
pub const CHUNK: u64 = 64;

pub struct ReplayBudget {
    /// Events per second; 0 means no limit.
    rate: f64,
    state: Mutex<State>,
}

struct State {
    /// Events that may still be taken at once (negative: owed).
    tokens: f64,
    at: Instant,
}

impl ReplayBudget {
    pub fn new(per_sec: u64) -> ReplayBudget {
        ReplayBudget {
            rate: per_sec as f64,
            state: Mutex::new(State {
                tokens: per_sec as f64 / 10.0,
                at: Instant::now(),
            }),
        }
    }

    /// Takes `n` events from the budget, sleeping the calling consumer thread until they are
    /// within it.
    pub fn take(&self, n: u64) {
        if self.rate <= 0.0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            // At most a tenth of a second's worth saved up: a burst, not a backlog.
            let burst = self.rate / 10.0;
            s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * self.rate).min(burst);
            s.at = now;
            s.tokens -= n as f64;
            (s.tokens < 0.0).then(|| Duration::from_secs_f64(-s.tokens / self.rate))
        };
        if let Some(w) = wait {
            metrics::counter!("rlay_replay_throttled_ms_total").increment(w.as_millis() as u64);
            std::thread::sleep(w.min(Duration::from_secs(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_together_keep_to_the_rate() {
        let b = std::sync::Arc::new(ReplayBudget::new(100_000));
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let b = b.clone();
                s.spawn(move || {
                    for _ in 0..(10_000 / CHUNK) {
                        b.take(CHUNK);
                    }
                });
            }
        });
        // 4 × 9,984 events at 100,000/s, less the 10,000 burst: about 0.3 s.
        let secs = start.elapsed().as_secs_f64();
        assert!((0.25..1.0).contains(&secs), "{secs}");
    }

    #[test]
    fn no_limit_never_waits() {
        let b = ReplayBudget::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            b.take(1_000_000);
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
