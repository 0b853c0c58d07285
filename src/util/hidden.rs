//! The relay's takedown filter: DIDs (by hash) whose `#commit`/`#sync` frames are not replayed.
//! Read on every replayed frame, written on a takedown, so reads are lock-free snapshots.

use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

/// DID hashes are hashes already: one multiply spreads them over the table. (SipHash cost more
/// than the rest of the check, which runs for every frame sent to every consumer.)
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Set = HashSet<u64, BuildHasherDefault<Spread>>;

#[derive(Default)]
pub struct Hidden {
    set: ArcSwap<Set>,
    edit: Mutex<()>,
}

/// The filter as it stood when taken: a consumer takes one per batch of frames, not per frame.
pub struct View(Arc<Set>);

impl View {
    /// Whether the account with this DID hash is hidden.
    pub fn hides(&self, did_hash: u64) -> bool {
        !self.0.is_empty() && self.0.contains(&did_hash)
    }
}

impl Hidden {
    pub fn hide(&self, did: &str) {
        self.edit_set(|s| {
            s.insert(super::did_hash(did));
        });
    }

    pub fn unhide(&self, did: &str) {
        self.edit_set(|s| {
            s.remove(&super::did_hash(did));
        });
    }

    /// The filter now; a takedown after this shows in the next one.
    pub fn view(&self) -> View {
        View(self.set.load_full())
    }

    fn edit_set(&self, f: impl FnOnce(&mut Set)) {
        let _g = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = self.set.load_full().as_ref().clone();
        f(&mut s);
        self.set.store(Arc::new(s));
    }
}
