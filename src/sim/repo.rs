//! A writable atproto repository that produces what a PDS emits: signed commits with Sync 1.1
//! diffs (new nodes, covering proofs, inversion neighbours, new records), `#sync` events and full
//! CAR exports. Pure; the simulated network, tests and benchmarks build on it.

use crate::proto::car::write_car;
use crate::proto::cid::Cid;
use crate::proto::commit::Commit;
use crate::proto::crypto::PrivateKey;
use crate::proto::frame::{CommitEvent, RepoOp, SyncEvent};
use crate::proto::mst::node::decode_node;
use crate::proto::mst::proof::diff_proof;
use crate::proto::mst::{InvertOp, MstError, Tree};
use crate::proto::syntax::tid_from_parts;
use crate::proto::verify::now_us;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone)]
pub enum Write {
    Create { path: String, record: Vec<u8> },
    Update { path: String, record: Vec<u8> },
    Delete { path: String },
}

impl Write {
    pub fn path(&self) -> &str {
        match self {
            Write::Create { path, .. } | Write::Update { path, .. } | Write::Delete { path } => {
                path
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    #[error("MST: {0}")]
    Mst(#[from] MstError),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} does not exist")]
    NotFound(String),
}

/// The parts of a repo's state a simulated fault may need to roll back.
#[derive(Debug, Clone)]
pub struct Snapshot {
    data: Cid,
    head: Option<(Cid, String)>,
    records: usize,
}

/// One repository and its signing key.
pub struct Repo {
    pub(crate) did: String,
    key: PrivateKey,
    blocks: HashMap<Cid, Vec<u8>>,
    data: Cid,
    head: Option<(Cid, String)>,
    clock_id: u16,
    last_us: u64,
    records: usize,
}

impl Repo {
    pub fn new(did: &str, key: PrivateKey) -> Repo {
        let clock_id = (did
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
            & 0x3ff) as u16;
        Repo {
            did: did.to_owned(),
            key,
            blocks: HashMap::new(),
            data: crate::proto::mst::empty_tree_cid(),
            head: None,
            clock_id,
            last_us: 0,
            records: 0,
        }
    }

    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Rotates the signing key (key rotation, migration).
    pub fn set_key(&mut self, key: PrivateKey) {
        self.key = key;
    }

    /// MST root.
    pub fn data(&self) -> Cid {
        self.data
    }

    /// Latest commit CID and rev.
    pub fn head(&self) -> Option<(Cid, &str)> {
        self.head.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    pub fn record_count(&self) -> usize {
        self.records
    }

    fn next_rev(&mut self) -> String {
        let now = u64::try_from(now_us()).unwrap_or(0);
        self.last_us = now.max(self.last_us + 1);
        tid_from_parts(self.last_us, self.clock_id)
    }

    /// Current state, to [`Repo::restore`] after producing an event that must not count
    /// (simulated faults). Blocks are only removed by [`Repo::gc`], so restoring is cheap.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            data: self.data,
            head: self.head.clone(),
            records: self.records,
        }
    }

    pub fn restore(&mut self, s: Snapshot) {
        if let Some((c, _)) = &self.head
            && s.head.as_ref().map(|(h, _)| h) != Some(c)
        {
            self.blocks.remove(c);
        }
        self.data = s.data;
        self.head = s.head;
        self.records = s.records;
    }

    /// Applies writes as one commit and returns the `#commit` event a PDS would emit (seq 0).
    pub fn commit(&mut self, writes: &[Write], time: &str) -> Result<CommitEvent, RepoError> {
        self.commit_with_rev(writes, time, None)
    }

    /// Like [`Repo::commit`] with an explicit rev (simulated faults use older revs).
    pub fn commit_with_rev(
        &mut self,
        writes: &[Write],
        time: &str,
        rev: Option<String>,
    ) -> Result<CommitEvent, RepoError> {
        let prev_data = self.data;
        let mut new_blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
        let mut ops = Vec::with_capacity(writes.len());
        let mut record_blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
        let new_root = {
            let mut tree = Tree::load(&self.blocks, self.data);
            for w in writes {
                let path = w.path().to_owned();
                let (cid, prev) = match w {
                    Write::Create { record, .. } => {
                        let c = Cid::dag_cbor(record);
                        if tree.insert(path.as_bytes(), c)?.is_some() {
                            return Err(RepoError::Exists(path));
                        }
                        record_blocks.push((c, record.clone()));
                        (Some(c), None)
                    }
                    Write::Update { record, .. } => {
                        let c = Cid::dag_cbor(record);
                        let old = tree
                            .update(path.as_bytes(), c)?
                            .ok_or_else(|| RepoError::NotFound(path.clone()))?;
                        record_blocks.push((c, record.clone()));
                        (Some(c), Some(old))
                    }
                    Write::Delete { .. } => {
                        let old = tree
                            .remove(path.as_bytes())?
                            .ok_or_else(|| RepoError::NotFound(path.clone()))?;
                        (None, Some(old))
                    }
                };
                let action = match w {
                    Write::Create { .. } => "create",
                    Write::Update { .. } => "update",
                    Write::Delete { .. } => "delete",
                };
                ops.push(RepoOp {
                    action: action.to_owned(),
                    path,
                    cid,
                    prev,
                });
            }
            tree.root_cid_with(&mut |c, b| new_blocks.push((c, b)))?
        };
        for (c, b) in new_blocks {
            self.blocks.insert(c, b);
        }
        for (c, b) in &record_blocks {
            self.blocks.insert(*c, b.clone());
        }
        for op in &ops {
            match op.action.as_str() {
                "create" => self.records += 1,
                "delete" => self.records = self.records.saturating_sub(1),
                _ => {}
            }
        }

        let inv: Vec<InvertOp> = ops
            .iter()
            .map(|o| InvertOp {
                path: &o.path,
                cid: o.cid,
                prev: o.prev,
            })
            .collect();
        let (proof, _inverted) = diff_proof(&self.blocks, new_root, &inv)?;
        debug_assert_eq!(_inverted, prev_data);

        let rev = rev.unwrap_or_else(|| self.next_rev());
        let since = self.head.as_ref().map(|(_, r)| r.clone());
        let (_, commit_bytes, commit_cid) =
            Commit::sign(&self.key, &self.did, &rev, new_root, None);
        let mut car_blocks: Vec<(Cid, &[u8])> = vec![(commit_cid, &commit_bytes)];
        let mut in_car: HashSet<Cid> = HashSet::from([commit_cid]);
        let mut sorted: Vec<&Cid> = proof.iter().collect();
        sorted.sort();
        for c in sorted {
            if let Some(b) = self.blocks.get(c)
                && in_car.insert(*c)
            {
                car_blocks.push((*c, b));
            }
        }
        for (c, b) in &record_blocks {
            if in_car.insert(*c) {
                car_blocks.push((*c, b));
            }
        }
        let car = write_car(&[commit_cid], car_blocks);
        self.blocks.insert(commit_cid, commit_bytes);
        self.head = Some((commit_cid, rev.clone()));
        self.data = new_root;
        Ok(CommitEvent {
            seq: 0,
            rebase: false,
            too_big: false,
            repo: self.did.clone(),
            commit: commit_cid,
            rev,
            since: since.clone(),
            blocks: Bytes::from(car),
            ops,
            blobs: Vec::new(),
            prev_data: since.map(|_| prev_data),
            time: time.to_owned(),
        })
    }

    /// A fresh empty commit (e.g. after a key rotation), signed with the current key.
    pub fn empty_commit(&mut self, time: &str) -> Result<CommitEvent, RepoError> {
        self.commit(&[], time)
    }

    /// `#sync` for the current head (a CAR holding only the commit block).
    pub fn sync_event(&self, time: &str) -> Option<SyncEvent> {
        let (cid, rev) = self.head.as_ref()?;
        let block = self.blocks.get(cid)?;
        Some(SyncEvent {
            seq: 0,
            did: self.did.clone(),
            blocks: Bytes::from(write_car(&[*cid], [(*cid, block.as_slice())])),
            rev: rev.clone(),
            time: time.to_owned(),
        })
    }

    /// Re-signs the current head as a new commit (new rev, same data): what a PDS emits as the
    /// basis of a `#sync` after a migration or key rotation.
    pub fn resign(&mut self) -> Option<()> {
        let rev = self.next_rev();
        let (_, bytes, cid) = Commit::sign(&self.key, &self.did, &rev, self.data, None);
        self.blocks.insert(cid, bytes);
        self.head = Some((cid, rev));
        Some(())
    }

    /// A block of the repository by CID (`getBlocks`).
    pub fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.blocks.get(cid).map(Vec::as_slice)
    }

    /// The whole repository as a CAR (commit, every MST node, every record).
    pub fn export_car(&self) -> Vec<u8> {
        let Some((head, _)) = &self.head else {
            return write_car(&[], std::iter::empty());
        };
        let mut out: Vec<(Cid, &[u8])> = Vec::new();
        if let Some(b) = self.blocks.get(head) {
            out.push((*head, b));
        }
        for c in self.reachable() {
            if let Some(b) = self.blocks.get(&c) {
                out.push((c, b));
            }
        }
        write_car(&[*head], out)
    }

    /// Every record (path, cid) in key order.
    pub fn list_records(&self) -> BTreeMap<String, Cid> {
        let mut out = BTreeMap::new();
        let mut t = Tree::load(&self.blocks, self.data);
        if let Ok(entries) = t.entries() {
            for (k, v) in entries {
                out.insert(String::from_utf8_lossy(&k).into_owned(), v);
            }
        }
        out
    }

    /// MST node and record CIDs reachable from the current root.
    fn reachable(&self) -> Vec<Cid> {
        let mut out = Vec::new();
        let mut stack = vec![self.data];
        while let Some(c) = stack.pop() {
            let Some(b) = self.blocks.get(&c) else {
                continue;
            };
            let Ok(n) = decode_node(b) else { continue };
            out.push(c);
            stack.extend(n.left);
            for e in n.entries {
                out.push(e.val);
                stack.extend(e.right);
            }
        }
        out
    }

    /// Drops blocks no longer reachable once the store has grown well past the live set. Call
    /// it only when no [`Snapshot`] will be restored.
    pub fn gc(&mut self) {
        let live_estimate = self.records * 2 + 16;
        if self.blocks.len() < live_estimate * 2 {
            return;
        }
        let mut keep: HashSet<Cid> = self.reachable().into_iter().collect();
        if let Some((h, _)) = &self.head {
            keep.insert(*h);
        }
        self.blocks.retain(|c, _| keep.contains(c));
    }
}
