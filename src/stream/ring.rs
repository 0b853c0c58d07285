//! The in-memory broadcast ring: the last N sequenced frames, shared by every consumer thread.
//!
//! One writer (the sequencer) stores `Arc<LogFrame>`s into fixed slots (`seq % capacity`) and
//! then advances `head`; readers load slots without any lock. A reader that asks for a seq the
//! ring has already overwritten is told so and reads the disk log instead, so falling behind
//! never costs a consumer its connection.
//!
//! The ring is bounded twice: by frame count and by bytes (frames, plus their bookkeeping). Real
//! network frames average several KB, so a count alone would let a burst of large commits pin
//! hundreds of MB; the byte bound evicts the oldest frames first, and readers of those go to the
//! disk log like any reader that fell behind.
//!
//! Waking readers is lock-free too: each consumer registers a `Parker`, and the sequencer
//! unparks every registered thread in rounds (`wakeups` says when; publishing does not wake).
//! Unparking before the reader parks is not lost (the token is kept), so there is no
//! missed-wakeup window.

use super::eventlog::LogFrame;
use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_utils::sync::{Parker, Unparker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub enum Lookup {
    Ready(Arc<LogFrame>),
    /// Not published yet.
    NotYet,
    /// Older than the ring holds: read it from the disk log.
    Evicted,
}

pub struct Ring {
    slots: Box<[ArcSwapOption<LogFrame>]>,
    capacity: u64,
    /// Last published seq (0: nothing yet).
    head: AtomicU64,
    /// First seq published by this process (0: nothing yet). Seqs are contiguous from here.
    first: AtomicU64,
    /// Oldest seq still held when the byte bound evicted frames (0: none evicted that way).
    tail: AtomicU64,
    /// What the held frames occupy, by [`held_bytes`]. Only the publisher writes it.
    bytes: AtomicU64,
    max_bytes: u64,
    waiters: ArcSwap<Vec<(u64, Unparker)>>,
    waiters_edit: Mutex<u64>,
}

/// A consumer's registration; dropping it unregisters.
pub struct Waiter {
    ring: Arc<Ring>,
    id: u64,
    parker: Parker,
}

impl Waiter {
    /// Sleeps until the next publish or `timeout`.
    pub fn wait(&self, timeout: std::time::Duration) {
        self.parker.park_timeout(timeout);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _g = self
            .ring
            .waiters_edit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cur = self.ring.waiters.load_full();
        let next: Vec<(u64, Unparker)> =
            cur.iter().filter(|(i, _)| *i != self.id).cloned().collect();
        self.ring.waiters.store(Arc::new(next));
    }
}

/// What one held frame costs: its payload, the frame record and the `Arc` counts.
fn held_bytes(f: &LogFrame) -> u64 {
    (f.bytes.len() + std::mem::size_of::<LogFrame>() + 16) as u64
}

impl Ring {
    /// A ring of at most `capacity` frames and `max_bytes` of them (the newest frame is always
    /// held, whatever its size).
    pub fn new(capacity: usize, max_bytes: u64) -> Ring {
        let capacity = capacity.max(16);
        Ring {
            slots: (0..capacity)
                .map(|_| ArcSwapOption::const_empty())
                .collect(),
            capacity: capacity as u64,
            head: AtomicU64::new(0),
            first: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_bytes,
            waiters: ArcSwap::from_pointee(Vec::new()),
            waiters_edit: Mutex::new(0),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Last published seq (0 if none this run).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Sets the head before anything is published (the last seq on disk at start-up), so live
    /// consumers start after it.
    pub fn set_initial_head(&self, seq: u64) {
        self.head.store(seq, Ordering::Release);
    }

    /// Lowest seq the ring can still serve.
    pub fn oldest(&self) -> u64 {
        let first = self.first.load(Ordering::Acquire);
        if first == 0 {
            return u64::MAX;
        }
        first
            .max(self.head().saturating_sub(self.capacity - 1))
            .max(self.tail.load(Ordering::Acquire))
    }

    /// Bytes the held frames occupy (see [`held_bytes`]).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn get(&self, seq: u64) -> Lookup {
        if seq > self.head() {
            return Lookup::NotYet;
        }
        if seq < self.oldest() {
            return Lookup::Evicted;
        }
        match self.slots[(seq % self.capacity) as usize].load_full() {
            Some(f) if f.seq == seq => Lookup::Ready(f),
            // Overwritten between the head check and the load.
            _ => Lookup::Evicted,
        }
    }

    /// Publishes a batch of frames with contiguous seqs. Consumers that are awake see them at
    /// once; parked ones at the next [`Ring::wake_all`].
    pub fn publish(&self, frames: &[Arc<LogFrame>]) {
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return;
        };
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        for f in frames {
            bytes += held_bytes(f);
            if let Some(old) = self.slots[(f.seq % self.capacity) as usize].swap(Some(f.clone())) {
                bytes = bytes.saturating_sub(held_bytes(&old));
            }
        }
        if self.first.load(Ordering::Relaxed) == 0 {
            self.first.store(first.seq, Ordering::Release);
        }
        // Over the byte bound: drop the oldest frames, never the newest. The tail moves before
        // its slot is emptied; a reader that passed the tail check and then finds the slot
        // empty is told "evicted", as when a slot is overwritten.
        let mut tail = self
            .tail
            .load(Ordering::Relaxed)
            .max(self.first.load(Ordering::Relaxed))
            .max((last.seq + 1).saturating_sub(self.capacity));
        while bytes > self.max_bytes && tail < last.seq {
            self.tail.store(tail + 1, Ordering::Release);
            let slot = &self.slots[(tail % self.capacity) as usize];
            if slot.load().as_ref().is_some_and(|f| f.seq == tail)
                && let Some(old) = slot.swap(None)
            {
                bytes = bytes.saturating_sub(held_bytes(&old));
            }
            tail += 1;
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.head.store(last.seq, Ordering::Release);
    }

    /// Consumers registered now.
    pub fn waiter_count(&self) -> usize {
        self.waiters.load().len()
    }

    /// Wakes every consumer (after publishing, at shutdown).
    pub fn wake_all(&self) {
        for (_, u) in self.waiters.load().iter() {
            u.unpark();
        }
    }

    pub fn register(self: &Arc<Self>) -> Waiter {
        let parker = Parker::new();
        let mut next_id = self
            .waiters_edit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next_id += 1;
        let id = *next_id;
        let mut v: Vec<(u64, Unparker)> = self.waiters.load_full().as_ref().clone();
        v.push((id, parker.unparker().clone()));
        self.waiters.store(Arc::new(v));
        Waiter {
            ring: self.clone(),
            id,
            parker,
        }
    }
}
