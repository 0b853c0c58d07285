//! Merkle Search Trees: key rules, the node codec, a lazily loaded tree, and Sync 1.1 operation
//! inversion.

pub mod key;
pub mod node;
pub mod proof;
pub mod tree;

pub use key::{common_prefix_len, is_valid_mst_key, key_height};
pub use tree::Tree;

use crate::proto::cbor::CborError;
use crate::proto::cid::Cid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MstError {
    #[error("MST node {0} is needed but not in the blocks")]
    MissingBlock(Cid),
    #[error("MST node is not canonical DAG-CBOR: {0}")]
    Cbor(#[from] CborError),
    #[error("malformed MST: {0}")]
    Structure(&'static str),
    #[error("invalid MST key {0:?}")]
    InvalidKey(String),
    #[error("inverting {action} of {path} failed: {why}")]
    Inversion {
        action: &'static str,
        path: String,
        why: &'static str,
    },
}

/// One record operation as inversion sees it: the value after the commit and the value before.
#[derive(Debug, Clone, Copy)]
pub struct InvertOp<'a> {
    pub path: &'a str,
    /// Value after the commit (`None` for a delete).
    pub cid: Option<Cid>,
    /// Value before the commit (`None` for a create).
    pub prev: Option<Cid>,
}

/// Applies the inverse of `ops` to `tree` (the tree after the commit) and returns the root the
/// tree had before it. Fails if a needed node is missing or the tree disagrees with an op.
pub fn invert(tree: &mut Tree<'_>, ops: &[InvertOp<'_>]) -> Result<Cid, MstError> {
    for op in ops {
        let key = op.path.as_bytes();
        let fail = |action, why| MstError::Inversion {
            action,
            path: op.path.to_owned(),
            why,
        };
        match (op.cid, op.prev) {
            (Some(cid), None) => {
                if tree.remove(key)? != Some(cid) {
                    return Err(fail("create", "the tree does not hold the created record"));
                }
            }
            (Some(cid), Some(prev)) => {
                if tree.update(key, prev)? != Some(cid) {
                    return Err(fail("update", "the tree does not hold the updated record"));
                }
            }
            (None, Some(prev)) => {
                if tree.insert(key, prev)?.is_some() {
                    return Err(fail("delete", "the deleted key is still in the tree"));
                }
            }
            (None, None) => return Err(fail("unknown", "op has neither cid nor prev")),
        }
    }
    tree.root_cid()
}

/// CID of the empty MST node `{e: [], l: null}`.
pub fn empty_tree_cid() -> crate::proto::cid::Cid {
    crate::proto::cid::Cid::dag_cbor(&[0xa2, 0x61, 0x65, 0x80, 0x61, 0x6c, 0xf6])
}
