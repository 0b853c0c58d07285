//! When the sequencer wakes the consumer threads after publishing.
//!
//! A wake-up round costs every consumer a context switch and a socket write whatever the round
//! carries, so waking on every publish made the fan-out cost per delivery that fixed cost
//! (about 1.3 µs with 1,000 consumers at 1,000 events/s, one event per round). Rounds are
//! therefore spaced: the first publish after a quiet spell wakes at once, and publishes within
//! the spacing after a round wait for the next round, which carries them all. The spacing grows
//! with the number of consumers, because so does a round's cost: about 4.4 µs per consumer
//! (the fan-out bench's profile: its park and unpark, the write, and the TCP path that wakes its
//! client), so 20 µs per consumer keeps the rounds' fixed cost to about a fifth of a core at
//! any event rate, between a floor of 1 ms (below anything a consumer downstream notices, yet
//! ten events a round at 10,000 events/s) and a ceiling of 20 ms (reached at 1,000 consumers).

use super::ring::Ring;
use std::time::{Duration, Instant};

const FLOOR: Duration = Duration::from_millis(1);
const PER_CONSUMER: Duration = Duration::from_micros(20);
const CEILING: Duration = Duration::from_millis(20);

/// The least time between two wake-up rounds of `consumers` consumers.
pub fn spacing(consumers: usize) -> Duration {
    PER_CONSUMER
        .saturating_mul(u32::try_from(consumers).unwrap_or(u32::MAX))
        .clamp(FLOOR, CEILING)
}

/// The sequencer's record of its last round; only the sequencer thread holds one.
#[derive(Default)]
pub struct Wakeups {
    last: Option<Instant>,
    /// Frames were published since the last round.
    pending: bool,
}

impl Wakeups {
    /// When the next round is owed, if frames are waiting for one.
    pub fn due(&self, ring: &Ring) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        Some(
            self.last
                .map_or_else(Instant::now, |l| l + spacing(ring.waiter_count())),
        )
    }

    /// Frames were just published: wake now if the spacing has passed, else owe a round.
    pub fn published(&mut self, ring: &Ring) {
        self.pending = true;
        if self.due(ring).is_some_and(|d| Instant::now() >= d) {
            self.wake(ring);
        }
    }

    /// Runs the owed round (the sequencer calls it at [`Wakeups::due`]).
    pub fn wake(&mut self, ring: &Ring) {
        ring.wake_all();
        metrics::counter!("rlay_consumer_wake_rounds_total").increment(1);
        self.last = Some(Instant::now());
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_grows_with_consumers_between_floor_and_ceiling() {
        assert_eq!(spacing(0), FLOOR);
        assert_eq!(spacing(10), FLOOR);
        assert_eq!(spacing(250), Duration::from_millis(5));
        assert_eq!(spacing(1_000_000), CEILING);
    }

    #[test]
    fn first_publish_wakes_at_once_then_rounds_are_owed() {
        let ring = std::sync::Arc::new(Ring::new(16, 1 << 20));
        let mut w = Wakeups::default();
        w.published(&ring);
        assert_eq!(
            w.due(&ring),
            None,
            "the first publish after a quiet spell wakes at once"
        );
        w.published(&ring);
        let due = w
            .due(&ring)
            .expect("a publish right after a round owes the next");
        assert!(due > Instant::now());
        w.wake(&ring);
        assert_eq!(w.due(&ring), None);
    }
}
