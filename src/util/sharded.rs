//! A fixed set of lock-protected shards picked by DID hash: the account slots and the identity
//! cache both need many DIDs touched concurrently without one global lock.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const SHARDS: usize = 64;

pub struct Sharded<T> {
    shards: Box<[T]>,
}

impl<T> Sharded<T> {
    pub fn new(mut make: impl FnMut() -> T) -> Sharded<T> {
        Sharded {
            shards: (0..SHARDS).map(|_| make()).collect(),
        }
    }

    /// The shard that holds `did`.
    pub fn of(&self, did: &str) -> &T {
        &self.shards[(super::did_hash(did) % SHARDS as u64) as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter()
    }
}

/// Locking that shrugs off poisoning: a panic elsewhere must not take every later caller down,
/// and each critical section here leaves the data consistent at every step.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}
