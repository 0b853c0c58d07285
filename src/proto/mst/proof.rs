//! Which MST blocks a commit diff must carry.
//!
//! A verifier needs the nodes on the path to each changed key, the nodes a TS-style covering
//! proof adds (paths to both neighbours of each changed key: what `@atproto/sync` relies on),
//! and whatever operation inversion reads. The simplest way to get exactly that set, and to keep
//! it in step with the verifier, is to run those very reads against the full store and record
//! every block touched.

use super::{InvertOp, MstError, Tree, invert};
use crate::proto::car::BlockSource;
use crate::proto::cid::Cid;
use std::cell::RefCell;
use std::collections::HashSet;

/// A block source that remembers what was read from it.
pub struct Tracking<'a> {
    inner: &'a dyn BlockSource,
    seen: RefCell<HashSet<Cid>>,
}

impl<'a> Tracking<'a> {
    pub fn new(inner: &'a dyn BlockSource) -> Self {
        Tracking {
            inner,
            seen: RefCell::new(HashSet::new()),
        }
    }

    pub fn into_seen(self) -> HashSet<Cid> {
        self.seen.into_inner()
    }
}

impl BlockSource for Tracking<'_> {
    fn get_block(&self, cid: &Cid) -> Option<&[u8]> {
        self.seen.borrow_mut().insert(*cid);
        self.inner.get_block(cid)
    }
}

/// The MST node CIDs a diff from the tree before `ops` to `new_root` must include. `store` must
/// hold the complete new tree. Also checks that inversion really yields a root (the caller can
/// compare it with the previous root).
pub fn diff_proof(
    store: &dyn BlockSource,
    new_root: Cid,
    ops: &[InvertOp<'_>],
) -> Result<(HashSet<Cid>, Cid), MstError> {
    let tracking = Tracking::new(store);
    let inverted = {
        let mut tree = Tree::load(&tracking, new_root);
        tree.get(b"a/a").ok(); // loads the root even for an empty op list
        for op in ops {
            tree.get(op.path.as_bytes())?;
            let (pred, succ) = tree.neighbors(op.path.as_bytes())?;
            for n in pred.iter().chain(succ.iter()) {
                tree.get(n)?;
            }
        }
        invert(&mut tree, ops)?
    };
    Ok((tracking.into_seen(), inverted))
}
