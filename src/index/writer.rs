//! Feeds the collection index from the pipeline. The pipeline only pushes a message onto a
//! channel; one writer thread batches whatever has queued up into a single RocksDB write, so
//! indexing costs the per-event path a channel send.

use super::db::{Change, CollectionDb};
use crate::ingest::pipeline::Observer;
use crate::proto::frame::RepoOp;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

enum Msg {
    /// A DID's collections added and emptied by one commit.
    Commit(String, Vec<String>, Vec<String>),
    Remove(String),
    /// Answered once everything before it is written.
    Barrier(Sender<()>),
    Stop,
}

/// Most messages in one write.
const BATCH: usize = 4096;
/// Queue bound: a stalled disk slows the pipeline down rather than growing memory.
const QUEUE: usize = 65_536;
/// Pairs remembered (by 64-bit hash, ~16 bytes each) as already written, so a busy account's
/// every post is not a RocksDB put. A hash collision costs one missed add, re-made by the
/// account's next write in that collection after the set is cleared.
const RECENT: usize = 250_000;

fn pair_hash(collection: &str, did: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    collection.hash(&mut h);
    did.hash(&mut h);
    h.finish()
}

pub struct IndexWriter {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The collections a commit creates or updates records in (deletes never remove a pair: the
/// account may have other records there, and the index says "has had records").
pub fn touched_collections(ops: &[RepoOp]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        if op.action != "create" && op.action != "update" {
            continue;
        }
        let Some((collection, _)) = op.path.split_once('/') else {
            continue;
        };
        if !out.iter().any(|c| c == collection) {
            out.push(collection.to_owned());
        }
    }
    out
}

impl IndexWriter {
    pub fn start(db: Arc<CollectionDb>) -> std::io::Result<IndexWriter> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("index-writer".into())
            .stack_size(2 << 20)
            .spawn(move || run(&db, &rx))?;
        Ok(IndexWriter {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, m: Msg) {
        crate::telemetry::once!(metrics::gauge!("rlay_index_queue_depth"), metrics::Gauge)
            .set(self.tx.len() as f64);
        if self.tx.send(m).is_err() {
            metrics::counter!("rlay_index_errors_total", "kind" => "stopped").increment(1);
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let t = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Observer for IndexWriter {
    fn commit(&self, did: &str, ops: &[RepoOp], emptied: &[String]) {
        let cs = touched_collections(ops);
        if !cs.is_empty() || !emptied.is_empty() {
            self.send(Msg::Commit(did.to_owned(), cs, emptied.to_vec()));
        }
    }

    fn account_deleted(&self, did: &str) {
        self.send(Msg::Remove(did.to_owned()));
    }

    fn barrier(&self) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Barrier(tx)).is_err() {
            return true; // stopped: nothing more will be written
        }
        rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok()
    }
}

/// Writes the batch. Pairs count as indexed (in `recent`) only once RocksDB has them: on a
/// failed write they are forgotten, so the account's next commit in that collection adds
/// them again.
fn flush(db: &CollectionDb, changes: &mut Vec<Change>, recent: &mut HashSet<u64>) {
    if changes.is_empty() {
        return;
    }
    match db.apply(changes) {
        Ok(()) => {
            metrics::counter!("rlay_index_changes_written_total").increment(changes.len() as u64);
            metrics::counter!("rlay_index_batches_total").increment(1);
        }
        Err(e) => {
            for ch in changes.iter() {
                if let Change::Add(c, did) = ch {
                    recent.remove(&pair_hash(c, did));
                }
            }
            metrics::counter!("rlay_index_errors_total", "kind" => "write").increment(1);
            log::error!(
                "{e}: {} change(s) not indexed (check disk space and the data dir); later commits or an admin backfill re-add pairs",
                changes.len()
            );
        }
    }
    changes.clear();
}

fn run(db: &CollectionDb, rx: &Receiver<Msg>) {
    // Pairs known to be in the index, so a busy account's every post is not a RocksDB put.
    let mut recent: HashSet<u64> = HashSet::new();
    let mut changes: Vec<Change> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut taken = 0;
        let mut stop = false;
        while let Some(m) = next.take() {
            taken += 1;
            match m {
                Msg::Commit(did, added, emptied) => {
                    for c in added {
                        let h = pair_hash(&c, &did);
                        if !recent.contains(&h) {
                            if recent.len() >= RECENT {
                                recent.clear();
                            }
                            recent.insert(h);
                            changes.push(Change::Add(c, did.clone()));
                        }
                    }
                    for c in emptied {
                        recent.remove(&pair_hash(&c, &did));
                        changes.push(Change::Remove(c, did.clone()));
                    }
                }
                Msg::Remove(did) => {
                    // Earlier changes land first, so the removal wins over them.
                    flush(db, &mut changes, &mut recent);
                    match db.remove_did(&did) {
                        Ok(gone) => {
                            for c in &gone {
                                recent.remove(&pair_hash(c, &did));
                            }
                            metrics::counter!("rlay_index_pairs_removed_total")
                                .increment(gone.len() as u64);
                        }
                        Err(e) => {
                            metrics::counter!("rlay_index_errors_total", "kind" => "remove")
                                .increment(1);
                            log::error!("{e}: pairs of deleted account {did} not removed");
                        }
                    }
                }
                Msg::Barrier(reply) => {
                    flush(db, &mut changes, &mut recent);
                    let _ = reply.send(());
                }
                Msg::Stop => stop = true,
            }
            if taken < BATCH && !stop {
                next = rx.try_recv().ok();
            }
        }
        flush(db, &mut changes, &mut recent);
        if stop {
            return;
        }
    }
}
