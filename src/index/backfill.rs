//! Backfill: fills the collection index with what an upstream relay already knows (the network's
//! history before rlay started), by paging its `listReposByCollection`. Progress per collection
//! (upstream cursor, DIDs imported) is stored after every page, so a killed relay resumes at the
//! page it was on when it starts again.

use super::db::CollectionDb;
use super::remote;
use crate::store::{BackfillRow, Store};
use crate::util::now_ms;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub const PENDING: &str = "pending";
pub const RUNNING: &str = "running";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

/// Attempts per page before a collection is marked failed (a later trigger retries it).
const ATTEMPTS: u32 = 6;

pub struct BackfillConfig {
    pub(crate) host: String,
    pub(crate) collections_file: Option<PathBuf>,
    pub(crate) page_size: usize,
    pub(crate) pause: Duration,
}

pub struct Backfill {
    db: Arc<CollectionDb>,
    store: Arc<dyn Store>,
    cfg: BackfillConfig,
    running: AtomicBool,
    shutdown: Arc<AtomicBool>,
    last_error: Mutex<Option<String>>,
}

impl Backfill {
    pub fn new(
        db: Arc<CollectionDb>,
        store: Arc<dyn Store>,
        cfg: BackfillConfig,
        shutdown: Arc<AtomicBool>,
    ) -> Backfill {
        Backfill {
            db,
            store,
            cfg,
            running: AtomicBool::new(false),
            shutdown,
            last_error: Mutex::new(None),
        }
    }

    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    /// The collections to backfill: the NSIDs file plus every collection already indexed.
    fn discover(&self) -> Result<BTreeSet<String>, String> {
        let mut out = BTreeSet::new();
        if let Some(path) = &self.cfg.collections_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read RELAY_BACKFILL_COLLECTIONS_FILE {}: {e}",
                    path.display()
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                if crate::proto::syntax::is_valid_nsid(l) {
                    out.insert(l.to_owned());
                } else {
                    log::warn!(
                        "backfill: {}:{}: {l:?} is not an NSID, skipped",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
        let seen = self.db.counts().map_err(|e| e.to_string())?;
        out.extend(seen.into_keys());
        Ok(out)
    }

    /// Queues every discovered collection (finished ones again only with `restart`) and starts
    /// the worker if it is not running. Returns how many collections are queued.
    pub fn trigger(self: &Arc<Self>, restart: bool) -> Result<usize, String> {
        let err = |e: crate::store::StoreError| format!("backfill: store: {e}");
        for c in self.discover()? {
            let row = self.store.backfill_get(&c).map_err(err)?;
            let fresh = BackfillRow {
                collection: c.clone(),
                cursor: None,
                imported: 0,
                state: PENDING.into(),
                updated_at: now_ms(),
            };
            let next = match row {
                None => Some(fresh),
                Some(_) if restart => Some(fresh),
                Some(r) if r.state == FAILED => Some(BackfillRow {
                    state: PENDING.into(),
                    updated_at: now_ms(),
                    ..r
                }),
                Some(_) => None,
            };
            if let Some(r) = next {
                self.store.backfill_upsert(&r).map_err(err)?;
            }
        }
        let queued = self
            .store
            .backfill_list()
            .map_err(err)?
            .iter()
            .filter(|r| r.state == PENDING || r.state == RUNNING)
            .count();
        self.spawn_worker();
        Ok(queued)
    }

    /// At start-up: carries on with a backfill a previous run left unfinished.
    pub fn resume(self: &Arc<Self>) {
        match self.store.backfill_list() {
            Ok(rows)
                if rows
                    .iter()
                    .any(|r| r.state == PENDING || r.state == RUNNING) =>
            {
                log::info!(
                    "backfill: resuming an unfinished backfill from {}",
                    self.cfg.host
                );
                self.spawn_worker();
            }
            Ok(_) => {}
            Err(e) => log::warn!("backfill: cannot read progress from the store: {e}"),
        }
    }

    fn spawn_worker(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("backfill".into())
            .stack_size(2 << 20)
            .spawn(move || {
                me.work();
                me.running.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.running.store(false, Ordering::SeqCst);
            log::error!("backfill: cannot start its thread: {e}");
        }
    }

    /// Sleeps `d` unless the relay shuts down first; false on shutdown.
    fn pause(&self, d: Duration) -> bool {
        let step = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero() {
            if self.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        !self.shutdown.load(Ordering::SeqCst)
    }

    fn work(&self) {
        let agent = remote::agent();
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let next = match self.store.backfill_list() {
                Ok(rows) => rows
                    .into_iter()
                    .find(|r| r.state == RUNNING || r.state == PENDING),
                Err(e) => {
                    log::error!("backfill: cannot read progress from the store: {e}; stopping");
                    return;
                }
            };
            let Some(row) = next else {
                log::info!("backfill: finished");
                return;
            };
            if !self.collection(&agent, row) {
                return;
            }
        }
    }

    /// Pages one collection to its end; false when the relay is shutting down.
    fn collection(&self, agent: &ureq::Agent, mut row: BackfillRow) -> bool {
        row.state = RUNNING.into();
        loop {
            let mut attempt = 0;
            let page = loop {
                match remote::fetch_page(
                    agent,
                    &self.cfg.host,
                    &row.collection,
                    row.cursor.as_deref(),
                    self.cfg.page_size,
                ) {
                    Ok(p) => break p,
                    Err(e) => {
                        attempt += 1;
                        metrics::counter!("rlay_backfill_errors_total").increment(1);
                        if attempt >= ATTEMPTS {
                            log::error!(
                                "backfill: {} failed after {ATTEMPTS} attempts ({e}); it stays failed until the next POST /admin/collections/backfill",
                                row.collection
                            );
                            self.note_error(e);
                            row.state = FAILED.into();
                            row.updated_at = now_ms();
                            let _ = self.store.backfill_upsert(&row);
                            return true;
                        }
                        log::warn!("backfill: {} (attempt {attempt}): {e}", row.collection);
                        if !self.pause(Duration::from_secs(1 << attempt.min(5))) {
                            return false;
                        }
                    }
                }
            };
            if page.invalid > 0 {
                metrics::counter!("rlay_backfill_invalid_dids_total")
                    .increment(page.invalid as u64);
            }
            let pairs: Vec<(String, String)> = page
                .dids
                .iter()
                .map(|d| (row.collection.clone(), d.clone()))
                .collect();
            // The pairs are written before the cursor moves past them.
            if let Err(e) = self.db.add(&pairs) {
                log::error!(
                    "backfill: {e}; stopping (fix the disk, then POST /admin/collections/backfill)"
                );
                self.note_error(e.to_string());
                return true;
            }
            metrics::counter!("rlay_backfill_dids_total").increment(pairs.len() as u64);
            row.imported += pairs.len() as i64;
            let finished = match page.cursor {
                Some(c) if row.cursor.as_deref() != Some(c.as_str()) => {
                    row.cursor = Some(c);
                    false
                }
                _ => true,
            };
            if finished {
                row.state = DONE.into();
            }
            row.updated_at = now_ms();
            if let Err(e) = self.store.backfill_upsert(&row) {
                log::error!("backfill: cannot save progress of {}: {e}", row.collection);
                self.note_error(e.to_string());
            }
            if finished {
                log::info!(
                    "backfill: {} done, {} DID(s) imported",
                    row.collection,
                    row.imported
                );
                return true;
            }
            if !self.pause(self.cfg.pause) {
                return false;
            }
        }
    }
}
