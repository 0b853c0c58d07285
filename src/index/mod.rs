//! The collection index: which DIDs have records in which collection. Fed inline by the ingest
//! pipeline (no separate process reading the firehose), stored in RocksDB, served as
//! `listReposByCollection`, and backfilled from an upstream relay.

pub mod audit;
pub mod backfill;
pub mod db;
pub mod remote;
pub mod routes;
pub mod writer;

use backfill::{Backfill, BackfillConfig};
use db::{CollectionDb, IndexError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use writer::IndexWriter;

/// How long collection counts (a full scan) are reused.
const COUNTS_TTL: Duration = Duration::from_secs(30);

/// DIDs per collection, and when they were counted.
type Counts = Option<(Instant, Arc<BTreeMap<String, u64>>)>;

pub struct CollectionIndex {
    pub(crate) db: Arc<CollectionDb>,
    pub(crate) writer: Arc<IndexWriter>,
    pub(crate) backfill: Arc<Backfill>,
    counts: Mutex<Counts>,
}

impl CollectionIndex {
    /// Opens the index under `dir` and starts its writer thread.
    pub fn open(
        dir: &Path,
        store: Arc<dyn crate::store::Store>,
        backfill: BackfillConfig,
        shutdown: Arc<AtomicBool>,
    ) -> Result<CollectionIndex, IndexError> {
        let db = Arc::new(CollectionDb::open(dir)?);
        let writer = IndexWriter::start(db.clone())
            .map_err(|e| IndexError::new(format!("cannot start the index writer thread: {e}")))?;
        let backfill = Arc::new(Backfill::new(db.clone(), store, backfill, shutdown));
        Ok(CollectionIndex {
            db,
            writer: Arc::new(writer),
            backfill,
            counts: Mutex::new(None),
        })
    }

    /// DIDs per collection, at most `COUNTS_TTL` old (`fresh` forces a new scan).
    pub fn counts(&self, fresh: bool) -> Result<Arc<BTreeMap<String, u64>>, IndexError> {
        let mut cached = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if !fresh
            && let Some((at, c)) = cached.as_ref()
            && at.elapsed() < COUNTS_TTL
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.db.counts()?);
        *cached = Some((Instant::now(), c.clone()));
        Ok(c)
    }

    /// Writes what is queued and stops the writer.
    pub fn stop(&self) {
        self.writer.stop();
    }
}
