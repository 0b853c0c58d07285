//! Write-behind of account state.
//!
//! Each round reads the log head and every host's safe cursor *first*, then takes the dirty
//! accounts, then asks the sequencer for a barrier (everything emitted so far is fsynced), and
//! only then commits accounts, cursors and the log position in one transaction. So:
//! - the stored state for a host covers every event at or below its stored cursor;
//! - it never includes an event the log could lose;
//! - every event at or below the stored `flushed_seq` is reflected in stored state (its state
//!   was applied before it was emitted, and it was emitted before the head was read). After a
//!   crash, the log beyond `flushed_seq` is re-applied (`Pipeline::recover`).

use super::hosts::Hosts;
use super::pipeline::Pipeline;
use crate::store::{Batch, Store};
use crate::stream::ring::Ring;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Store key of the event-log position covered by stored account state.
pub const FLUSHED_SEQ: &str = "flushed_seq";

/// One write-behind round; returns the number of accounts written. `log_head` is the event
/// log's head read before this call (0: do not record a position).
pub fn flush_once(
    pipeline: &Pipeline,
    store: &dyn Store,
    hosts: &Hosts,
    log_head: u64,
) -> Result<usize, String> {
    let mut cursors = Vec::new();
    let mut counts = Vec::new();
    let all = hosts.all();
    for h in &all {
        let persisted = h.persisted();
        let c = h.safe_cursor();
        if c > persisted.0 {
            cursors.push((h.id(), c));
        }
        let n = h.account_count();
        if n != persisted.1 {
            counts.push((h.id(), n));
        }
    }
    let accounts = pipeline.accounts().take_dirty();
    if accounts.is_empty() && cursors.is_empty() && counts.is_empty() && log_head == 0 {
        return Ok(0);
    }
    let n = accounts.len();
    let dids: Vec<String> = accounts.iter().map(|a| a.did.clone()).collect();
    // The index must hold every change up to the log position recorded below.
    if log_head > 0
        && let Some(o) = pipeline.observer()
        && !o.barrier()
    {
        pipeline.accounts().mark_dirty(&dids);
        return Err("the collection index did not catch up within 30s".into());
    }
    if pipeline.barrier(Duration::from_secs(30)).is_none() {
        pipeline.accounts().mark_dirty(&dids);
        return Err("the event log did not confirm durability within 30s".into());
    }
    let meta = if log_head > 0 {
        vec![(FLUSHED_SEQ.to_owned(), log_head.to_string())]
    } else {
        Vec::new()
    };
    let batch = Batch {
        accounts,
        host_cursors: cursors.clone(),
        host_counts: counts.clone(),
        meta,
    };
    if let Err(e) = store.write_batch(&batch) {
        pipeline.accounts().mark_dirty(&dids);
        return Err(e.to_string());
    }
    pipeline.accounts().flushed(&dids);
    for (id, c) in cursors {
        if let Some(h) = hosts.get(id) {
            h.set_persisted(Some(c), None);
        }
    }
    for (id, n) in counts {
        if let Some(h) = hosts.get(id) {
            h.set_persisted(None, Some(n));
        }
    }
    metrics::counter!("rlay_store_accounts_written_total").increment(n as u64);
    Ok(n)
}

/// Flushes every `interval` until `stop`, then once more.
pub fn spawn(
    pipeline: Arc<Pipeline>,
    store: Arc<dyn Store>,
    hosts: Arc<Hosts>,
    ring: Arc<Ring>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("store-flusher".into()).stack_size(2 << 20).spawn(move || {
        let mut outage = crate::util::Outage::default();
        let mut last_head = 0;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let head = ring.head();
            let record = if head != last_head { head } else { 0 };
            match flush_once(&pipeline, store.as_ref(), &hosts, record) {
                Ok(_) => {
                    last_head = head;
                    if outage.recovered() {
                        log::info!("store: writes succeed again");
                    }
                }
                Err(e) => {
                    if outage.failed() {
                        log::error!("store: cannot write account state ({e}); retrying every {interval:?}. Check the database ({}).", store.backend());
                    }
                    metrics::counter!("rlay_store_write_errors_total").increment(1);
                }
            }
            if stopping {
                return;
            }
            let mut waited = Duration::ZERO;
            while waited < interval && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
        }
    })
}
