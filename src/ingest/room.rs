//! A host thread's wait for room in the pipeline (its validation share, its gate share, its
//! read-ahead): parked, and woken by the thread that finishes its events once enough of them
//! are done, rather than polling.
//!
//! Why not poll: a 500 µs sleep loop on each of 40 busy hosts was 45,000 context switches a
//! second, more CPU than the waits saved. Why a step: waking the host for every finished event
//! would cost one switch per event; waking it after `STEP` lets it read a batch from a socket
//! that has filled meanwhile.
//!
//! No lost wake-up: the waiter publishes its target, then re-reads the count; the finisher
//! lowers the count, then reads the target (both sequentially consistent), so at least one of
//! them sees the other. `park_timeout` bounds the wait anyway (a kill, a bound that is not a
//! count of this host's events).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::Thread;
use std::time::Duration;

/// Events in flight that must finish before a waiting host thread is woken.
const STEP: i64 = 32;
/// The longest a waiting host thread sleeps without being woken.
const TIMEOUT: Duration = Duration::from_millis(50);

pub(crate) struct Room {
    /// Wake the waiter when events in flight fall to this; -1: no one is waiting.
    wake_at: AtomicI64,
    waiter: Mutex<Option<Thread>>,
}

impl Room {
    pub(crate) fn new() -> Room {
        Room {
            wake_at: AtomicI64::new(-1),
            waiter: Mutex::new(None),
        }
    }

    /// On the host thread: sleeps until `in_flight()` has fallen by a step (by half, when it
    /// is under two steps), or the timeout passes.
    pub(crate) fn wait(&self, in_flight: impl Fn() -> i64) {
        let now = in_flight();
        let target = (now - STEP).max(now / 2).max(0);
        *self.waiter.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::thread::current());
        self.wake_at.store(target, Ordering::SeqCst);
        if in_flight() > target {
            std::thread::park_timeout(TIMEOUT);
        }
        self.wake_at.store(-1, Ordering::SeqCst);
    }

    /// After an event in flight finished (its count already lowered): wakes the waiter if this
    /// brought `in_flight()` to its target. The count is read only while someone waits, since
    /// this runs for every event; reading it after the target keeps the no-lost-wake-up order.
    pub(crate) fn freed(&self, in_flight: impl FnOnce() -> i64) {
        let at = self.wake_at.load(Ordering::SeqCst);
        if at >= 0 && in_flight() <= at && self.wake_at.swap(-1, Ordering::SeqCst) >= 0 {
            self.wake();
        }
    }

    /// Wakes the waiter now (its host is being killed).
    pub(crate) fn wake(&self) {
        if let Some(t) = self
            .waiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            t.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_waiter_is_woken_once_a_step_has_finished_not_before() {
        let room = Arc::new(Room::new());
        let count = Arc::new(AtomicI64::new(100));
        let (r, c) = (room.clone(), count.clone());
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            r.wait(|| c.load(Ordering::SeqCst));
            (t.elapsed(), c.load(Ordering::SeqCst))
        });
        // Let it park, then finish events one at a time, as the pipeline does.
        while room.wake_at.load(Ordering::SeqCst) < 0 {
            std::thread::yield_now();
        }
        let finish = || {
            let n = count.fetch_sub(1, Ordering::SeqCst) - 1;
            room.freed(|| n);
        };
        for _ in 1..STEP {
            finish();
        }
        std::thread::sleep(Duration::from_millis(10));
        assert!(!waiter.is_finished(), "woken before a step had finished");
        finish();
        let (waited, seen) = waiter.join().expect("waiter");
        assert!(waited < TIMEOUT, "woken by the step, not the timeout");
        assert_eq!(seen, 100 - STEP);
    }

    #[test]
    fn a_wait_ends_at_the_timeout_when_nothing_finishes() {
        let room = Room::new();
        let t = Instant::now();
        room.wait(|| 10);
        assert!(t.elapsed() >= TIMEOUT);
        assert_eq!(room.wake_at.load(Ordering::SeqCst), -1);
    }
}
