//! The relay's takedown filter: DIDs (by hash) whose `#commit`/`#sync` frames are not replayed.
//! Read on every replayed frame, written on a takedown, so reads are lock-free snapshots.

use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Default)]
pub struct Hidden {
    set: ArcSwap<HashSet<u64>>,
    edit: Mutex<()>,
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

    /// Whether the account with this DID hash is hidden.
    pub fn hides(&self, did_hash: u64) -> bool {
        self.set.load().contains(&did_hash)
    }

    fn edit_set(&self, f: impl FnOnce(&mut HashSet<u64>)) {
        let _g = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        let mut s = self.set.load_full().as_ref().clone();
        f(&mut s);
        self.set.store(Arc::new(s));
    }
}
