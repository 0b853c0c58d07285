//! Live consumers (firehose and Jetstream), for the admin API (`/admin/consumers/list`) and
//! metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug)]
pub struct ConsumerInfo {
    pub(crate) id: u64,
    /// "firehose" or "jetstream".
    pub(crate) kind: &'static str,
    /// What a Jetstream consumer asked for (filters, compression), for the admin list.
    pub(crate) detail: Mutex<Option<serde_json::Value>>,
    pub(crate) remote_addr: String,
    pub(crate) user_agent: String,
    pub(crate) connected_at_ms: i64,
    /// Last seq delivered.
    pub(crate) cursor: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
}

impl ConsumerInfo {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn detail(&self) -> Option<serde_json::Value> {
        self.detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_detail(&self, d: serde_json::Value) {
        *self.detail.lock().unwrap_or_else(PoisonError::into_inner) = Some(d);
    }

    pub fn remote_addr(&self) -> &str {
        &self.remote_addr
    }

    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    pub fn connected_at_ms(&self) -> i64 {
        self.connected_at_ms
    }

    /// Last seq delivered.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    pub fn events_sent(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<ConsumerInfo>>>,
}

/// Unregisters on drop.
pub struct Registration {
    registry: Arc<Registry>,
    pub(crate) info: Arc<ConsumerInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.info.id);
        metrics::gauge!("relay_connected_inbound").decrement(1.0);
    }
}

impl Registry {
    pub fn add(
        self: &Arc<Self>,
        kind: &'static str,
        remote_addr: String,
        user_agent: String,
        cursor: u64,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ConsumerInfo {
            id,
            kind,
            detail: Mutex::new(None),
            remote_addr,
            user_agent,
            connected_at_ms: crate::util::now_ms(),
            cursor: AtomicU64::new(cursor),
            events_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        });
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, info.clone());
        metrics::gauge!("relay_connected_inbound").increment(1.0);
        Registration {
            registry: self.clone(),
            info,
        }
    }

    pub fn list(&self) -> Vec<Arc<ConsumerInfo>> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Consumers of one kind.
    pub fn count_kind(&self, kind: &str) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| c.kind == kind)
            .count()
    }
}
