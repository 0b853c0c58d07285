//! The collection index on disk: RocksDB with two column families holding the same pairs in
//! both directions. `rbc` (collection → DID) answers `listReposByCollection` with one prefix
//! scan; `cbr` (DID → collection) finds a deleted account's pairs without scanning every
//! collection. Keys are `a \0 b` with empty values: NSIDs and DIDs are ASCII and never hold NUL,
//! so the byte order of keys is the order of (a, b).

use rocksdb::{ColumnFamilyDescriptor, DB, Options, ReadOptions, WriteBatch, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

const RBC: &str = "rbc";
const CBR: &str = "cbr";

#[derive(Debug, thiserror::Error)]
#[error("collection index: {0}")]
pub struct IndexError(String);

impl IndexError {
    pub fn new(msg: String) -> IndexError {
        IndexError(msg)
    }
}

impl From<rocksdb::Error> for IndexError {
    fn from(e: rocksdb::Error) -> Self {
        IndexError(e.into_string())
    }
}

pub struct CollectionDb {
    db: DB,
}

fn key(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// Read options bounded to keys starting with `prefix \0`.
fn prefix_bounds(prefix: &str) -> ReadOptions {
    let mut lower = prefix.as_bytes().to_vec();
    lower.push(0);
    let mut upper = prefix.as_bytes().to_vec();
    upper.push(1);
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(lower);
    ro.set_iterate_upper_bound(upper);
    ro
}

/// The part of a key after the first NUL, copied out of RocksDB's view (the view is only valid
/// until the iterator moves).
fn second(k: &[u8]) -> Option<String> {
    let at = k.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&k[at + 1..]).ok().map(str::to_owned)
}

/// One (collection, DID) change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Add(String, String),
    Remove(String, String),
}

/// A page of DIDs, and where the next page starts.
pub struct Page {
    pub(crate) dids: Vec<String>,
    /// The last DID read, when more follow: the next page starts after it.
    pub(crate) next: Option<String>,
}

impl Page {
    /// DIDs on this page.
    pub fn len(&self) -> usize {
        self.dids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dids.is_empty()
    }
}

impl CollectionDb {
    fn options() -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Few, long-lived files: the index is small next to the event log and must not eat the
        // file descriptors the host connections need.
        o.set_max_open_files(256);
        o.set_keep_log_file_num(3);
        o
    }

    /// Opens (creating) the index at `path`.
    pub fn open(path: &Path) -> Result<CollectionDb, IndexError> {
        check_path(path)?;
        let cfs = [RBC, CBR].map(|n| ColumnFamilyDescriptor::new(n, Self::options()));
        let db = DB::open_cf_descriptors(&Self::options(), path, cfs).map_err(|e| {
            IndexError(format!(
                "cannot open RocksDB at {}: {} (is another rlay using this data dir?)",
                path.display(),
                e.into_string()
            ))
        })?;
        Ok(CollectionDb { db })
    }

    /// Opens an existing index for reading while a relay may be writing it (the audit command).
    pub fn open_read_only(path: &Path) -> Result<CollectionDb, IndexError> {
        check_path(path)?;
        let db = DB::open_cf_for_read_only(&Options::default(), path, [RBC, CBR], false).map_err(
            |e| {
                IndexError(format!(
                    "cannot open the collection index at {}: {} (check RELAY_DATA_DIR)",
                    path.display(),
                    e.into_string()
                ))
            },
        )?;
        Ok(CollectionDb { db })
    }

    fn cfs(&self) -> Result<(&rocksdb::ColumnFamily, &rocksdb::ColumnFamily), IndexError> {
        match (self.db.cf_handle(RBC), self.db.cf_handle(CBR)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(IndexError("column families rbc/cbr missing".into())),
        }
    }

    /// Adds (collection, DID) pairs in one write.
    pub fn add(&self, pairs: &[(String, String)]) -> Result<(), IndexError> {
        let ops: Vec<Change> = pairs
            .iter()
            .map(|(c, d)| Change::Add(c.clone(), d.clone()))
            .collect();
        self.apply(&ops)
    }

    /// Applies changes in order, in one write. No fsync: the write-ahead log survives a process
    /// kill, and after a power cut the relay's crash recovery re-adds the log tail's pairs.
    pub fn apply(&self, changes: &[Change]) -> Result<(), IndexError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (rbc, cbr) = self.cfs()?;
        let mut b = WriteBatch::default();
        for ch in changes {
            match ch {
                Change::Add(collection, did) => {
                    b.put_cf(rbc, key(collection, did), []);
                    b.put_cf(cbr, key(did, collection), []);
                }
                Change::Remove(collection, did) => {
                    b.delete_cf(rbc, key(collection, did));
                    b.delete_cf(cbr, key(did, collection));
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(b, &wo)?;
        Ok(())
    }

    /// Removes every pair of `did`; returns the collections it had.
    pub fn remove_did(&self, did: &str) -> Result<Vec<String>, IndexError> {
        let collections = self.collections_of(did)?;
        if collections.is_empty() {
            return Ok(collections);
        }
        let (rbc, cbr) = self.cfs()?;
        let mut b = WriteBatch::default();
        for c in &collections {
            b.delete_cf(rbc, key(c, did));
            b.delete_cf(cbr, key(did, c));
        }
        self.db.write(b)?;
        Ok(collections)
    }

    /// The collections `did` has records in.
    pub fn collections_of(&self, did: &str) -> Result<Vec<String>, IndexError> {
        let (_, cbr) = self.cfs()?;
        let mut it = self.db.raw_iterator_cf_opt(cbr, prefix_bounds(did));
        it.seek_to_first();
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            out.extend(second(k));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Up to `limit` DIDs with records in `collection`, in DID order, after `after` (exclusive).
    pub fn page(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, IndexError> {
        let (rbc, _) = self.cfs()?;
        let mut it = self.db.raw_iterator_cf_opt(rbc, prefix_bounds(collection));
        match after {
            Some(a) => {
                let mut k = key(collection, a);
                // The smallest key after `collection \0 a`.
                k.push(0);
                it.seek(&k);
            }
            None => it.seek_to_first(),
        }
        let mut dids: Vec<String> = Vec::with_capacity(limit.min(2000));
        while let Some(k) = it.key() {
            if dids.len() >= limit {
                let next = dids.last().cloned();
                return Ok(Page { dids, next });
            }
            if let Some(did) = second(k) {
                dids.push(did);
            }
            it.next();
        }
        it.status()?;
        Ok(Page { dids, next: None })
    }

    /// Every collection with its number of DIDs (a full scan of `rbc`; callers cache it).
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, IndexError> {
        let (rbc, _) = self.cfs()?;
        let mut it = self.db.raw_iterator_cf(rbc);
        it.seek_to_first();
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(k) = it.key() {
            let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            if let Ok(c) = std::str::from_utf8(&k[..end]) {
                match out.get_mut(c) {
                    Some(n) => *n += 1,
                    None => {
                        out.insert(c.to_owned(), 1);
                    }
                }
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}

/// RocksDB takes C strings: a path with a NUL byte (or not UTF-8 on odd platforms) is refused
/// here with a message naming the variable to fix.
fn check_path(path: &Path) -> Result<(), IndexError> {
    match path.to_str() {
        Some(s) if !s.contains('\0') => Ok(()),
        _ => Err(IndexError(format!(
            "data dir path {} is not a valid C string (RELAY_DATA_DIR must be UTF-8 without NUL)",
            path.display()
        ))),
    }
}
