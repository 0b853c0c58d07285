//! Full verification of `#commit` (relay checklist items 13–30) and `#sync` (items 32–35).
//!
//! Pure: the caller supplies the account's key and stored state and gets back either the new
//! state or an error naming the rule that failed. Checks run cheapest first, and the signature
//! (the one expensive step: about half of the relay's CPU per event) runs last, so junk is
//! rejected cheaply.

use crate::proto::car::{Car, CarError};
use crate::proto::cbor::decode::is_wellformed_map;
use crate::proto::cid::Cid;
use crate::proto::commit::{CommitError, SignedCommit};
use crate::proto::crypto::{PublicKey, SigError};
use crate::proto::frame::{CommitEvent, SyncEvent};
use crate::proto::mst::{InvertOp, MstError, Tree, invert};
use crate::proto::syntax::{
    is_normalized_did, is_valid_datetime, is_valid_did, is_valid_tid, parse_repo_path,
    tid_timestamp_us,
};

pub const MAX_OPS: usize = 200;
pub const MAX_COMMIT_BLOCKS_BYTES: usize = 2_000_000;
pub const MAX_SYNC_BLOCKS_BYTES: usize = 10_000;
pub const MAX_RECORD_BYTES: usize = 1_000_000;
/// How far in the future a rev's timestamp may be (indigo: 5 minutes).
pub const FUTURE_REV_TOLERANCE_US: i64 = 5 * 60 * 1_000_000;

/// What the relay remembers about a repo between commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoState {
    pub rev: String,
    pub commit: Cid,
    pub data: Cid,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// indigo's lenient mode: allows `tooBig`, `rebase`, a missing `prevData` and a bad `time`.
    pub lenient: bool,
    /// Current time in µs since the epoch (for the future-rev check).
    pub now_us: i64,
}

impl Options {
    pub fn strict_now() -> Options {
        Options {
            lenient: false,
            now_us: now_us(),
        }
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// How the commit relates to the stored state (checklist item 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// No stored state to compare with.
    First,
    Continuous,
    /// `since`/`prevData` disagree with the stored state: forwarded, but counted.
    Broken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub state: RepoState,
    pub chain: Chain,
    /// Collections this commit's deletes left with no records (for the collection index).
    pub emptied: Vec<String>,
}

/// The collections that `ops` deleted the last record of, judged from the new tree: MST keys are
/// sorted, so a collection's keys are contiguous and it is empty exactly when neither neighbour
/// of a deleted key is in it. A neighbour the proof does not include leaves the collection out
/// (assumed non-empty), so the answer never drops a collection that still has records.
pub fn emptied_collections(
    tree: &mut Tree<'_>,
    ops: &[crate::proto::frame::RepoOp],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for op in ops.iter().filter(|o| o.action == "delete") {
        let Some((collection, _)) = op.path.split_once('/') else {
            continue;
        };
        if out.iter().any(|c| c == collection) {
            continue;
        }
        let mut prefix = collection.as_bytes().to_vec();
        prefix.push(b'/');
        let Ok((below, above)) = tree.neighbors(op.path.as_bytes()) else {
            continue;
        };
        let inside = |k: &Option<Vec<u8>>| k.as_ref().is_some_and(|k| k.starts_with(&prefix));
        if !inside(&below) && !inside(&above) {
            out.push(collection.to_owned());
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("rev {rev} is not newer than stored rev {stored} (duplicate or replay)")]
    Stale { rev: String, stored: String },
    #[error("{0} ops (limit {MAX_OPS})")]
    TooManyOps(usize),
    #[error("blocks are {0} bytes (limit {1})")]
    BlocksTooBig(usize, usize),
    #[error("rebase is set")]
    Rebase,
    #[error("tooBig is set")]
    TooBig,
    #[error("repo/did is not a valid normalised DID")]
    BadDid,
    #[error("rev is not a TID")]
    BadRev,
    #[error("since is not a TID")]
    BadSince,
    #[error("time is not a valid datetime")]
    BadTime,
    #[error("rev timestamp is more than 5 minutes in the future")]
    FutureRev,
    #[error("blocks are not a valid CAR: {0}")]
    Car(#[from] CarError),
    #[error("CAR has no roots")]
    NoRoot,
    #[error("commit CID does not equal the CAR root")]
    CommitNotRoot,
    #[error("commit block is missing from the CAR")]
    CommitBlockMissing,
    #[error("commit block is invalid: {0}")]
    Commit(#[from] CommitError),
    #[error("event DID does not match the commit's did")]
    DidMismatch,
    #[error("event rev does not match the commit's rev")]
    RevMismatch,
    #[error("signature: {0}")]
    Signature(#[from] SigError),
    #[error("op {path}: {why}")]
    BadOp { path: String, why: &'static str },
    #[error("op path {0} appears twice")]
    DuplicatePath(String),
    #[error("MST: {0}")]
    Mst(#[from] MstError),
    #[error("op {path} does not match the new tree")]
    OpMismatch { path: String },
    #[error("record for op {path} is missing from blocks")]
    RecordMissing { path: String },
    #[error("record for op {path} is over 1,000,000 bytes")]
    RecordTooBig { path: String },
    #[error("record for op {path} is not a CBOR map")]
    RecordInvalid { path: String },
    #[error("prevData is missing")]
    MissingPrevData,
    /// (what inversion gave, the message's `prevData`), boxed to keep the error small.
    #[error("inverting the ops gives {}, not prevData {}", .0.0, .0.1)]
    InversionMismatch(Box<(Cid, Cid)>),
}

impl VerifyError {
    /// A stable, low-cardinality name for metrics (`validation_failures{rule=...}`).
    pub fn rule(&self) -> &'static str {
        match self {
            VerifyError::Stale { .. } => "stale_rev",
            VerifyError::TooManyOps(_) => "too_many_ops",
            VerifyError::BlocksTooBig(..) => "blocks_too_big",
            VerifyError::Rebase => "rebase",
            VerifyError::TooBig => "too_big",
            VerifyError::BadDid => "bad_did",
            VerifyError::BadRev => "bad_rev",
            VerifyError::BadSince => "bad_since",
            VerifyError::BadTime => "bad_time",
            VerifyError::FutureRev => "future_rev",
            VerifyError::Car(CarError::BlockHash(_)) => "block_hash",
            VerifyError::Car(_) => "bad_car",
            VerifyError::NoRoot => "no_root",
            VerifyError::CommitNotRoot => "commit_not_root",
            VerifyError::CommitBlockMissing => "commit_block_missing",
            VerifyError::Commit(_) => "bad_commit",
            VerifyError::DidMismatch => "did_mismatch",
            VerifyError::RevMismatch => "rev_mismatch",
            VerifyError::Signature(_) => "signature",
            VerifyError::BadOp { .. } => "bad_op",
            VerifyError::DuplicatePath(_) => "duplicate_path",
            VerifyError::Mst(MstError::MissingBlock(_)) => "missing_block",
            VerifyError::Mst(_) => "bad_mst",
            VerifyError::OpMismatch { .. } => "op_mismatch",
            VerifyError::RecordMissing { .. } => "record_missing",
            VerifyError::RecordTooBig { .. } => "record_too_big",
            VerifyError::RecordInvalid { .. } => "record_invalid",
            VerifyError::MissingPrevData => "missing_prev_data",
            VerifyError::InversionMismatch(_) => "inversion_mismatch",
        }
    }

    /// A replay or duplicate: silently ignored rather than counted as invalid.
    pub fn is_stale(&self) -> bool {
        matches!(self, VerifyError::Stale { .. })
    }

    /// Worth refreshing the signing key and trying once more.
    pub fn is_signature(&self) -> bool {
        matches!(self, VerifyError::Signature(_))
    }
}

fn check_rev(rev: &str, stored: Option<&RepoState>, opts: &Options) -> Result<(), VerifyError> {
    if !is_valid_tid(rev) {
        return Err(VerifyError::BadRev);
    }
    if let Some(s) = stored
        && rev <= s.rev.as_str()
    {
        return Err(VerifyError::Stale {
            rev: rev.to_owned(),
            stored: s.rev.clone(),
        });
    }
    match tid_timestamp_us(rev) {
        Some(ts) if ts <= opts.now_us.saturating_add(FUTURE_REV_TOLERANCE_US) => Ok(()),
        _ => Err(VerifyError::FutureRev),
    }
}

fn check_did(did: &str) -> Result<(), VerifyError> {
    if is_valid_did(did) && is_normalized_did(did) {
        Ok(())
    } else {
        Err(VerifyError::BadDid)
    }
}

/// Parses the CAR and the commit at its root (items 18–22).
fn load_commit<'a>(
    car: &Car<'a>,
    commit_cid: Option<&Cid>,
    did: &str,
    rev: &str,
) -> Result<SignedCommit<'a>, VerifyError> {
    let root = *car.roots.first().ok_or(VerifyError::NoRoot)?;
    if !root.is_blessed_dag_cbor() {
        return Err(VerifyError::CommitNotRoot);
    }
    if commit_cid.is_some_and(|c| *c != root) {
        return Err(VerifyError::CommitNotRoot);
    }
    let block = car.get(&root).ok_or(VerifyError::CommitBlockMissing)?;
    let sc = SignedCommit::decode(block)?;
    if sc.commit.did != did {
        return Err(VerifyError::DidMismatch);
    }
    if sc.commit.rev != rev {
        return Err(VerifyError::RevMismatch);
    }
    Ok(sc)
}

/// Op shapes (item 24). Lenient mode tolerates pre-Sync-1.1 ops without `prev`.
fn check_ops<'e>(evt: &'e CommitEvent, lenient: bool) -> Result<Vec<InvertOp<'e>>, VerifyError> {
    let mut out = Vec::with_capacity(evt.ops.len());
    for op in &evt.ops {
        let bad = |why| VerifyError::BadOp {
            path: op.path.clone(),
            why,
        };
        if parse_repo_path(&op.path).is_none() {
            return Err(bad("path is not <nsid>/<record key>"));
        }
        match op.action.as_str() {
            "create" => {
                if op.cid.is_none() {
                    return Err(bad("create without cid"));
                }
                if op.prev.is_some() {
                    return Err(bad("create with prev"));
                }
            }
            "update" => {
                if op.cid.is_none() {
                    return Err(bad("update without cid"));
                }
                match op.prev {
                    None if !lenient => return Err(bad("update without prev")),
                    Some(p) if Some(p) == op.cid => return Err(bad("update to the same cid")),
                    _ => {}
                }
            }
            "delete" => {
                if op.cid.is_some() {
                    return Err(bad("delete with cid"));
                }
                if op.prev.is_none() && !lenient {
                    return Err(bad("delete without prev"));
                }
            }
            _ => return Err(bad("unknown action")),
        }
        out.push(InvertOp {
            path: &op.path,
            cid: op.cid,
            prev: op.prev,
        });
    }
    let mut paths: Vec<&str> = out.iter().map(|o| o.path).collect();
    paths.sort_unstable();
    if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
        return Err(VerifyError::DuplicatePath(w[0].to_owned()));
    }
    Ok(out)
}

/// Verifies a `#commit` against the account's key and the stored state.
pub fn verify_commit(
    evt: &CommitEvent,
    key: &PublicKey,
    stored: Option<&RepoState>,
    opts: &Options,
) -> Result<Accepted, VerifyError> {
    // 13–17: message-level checks.
    if evt.ops.len() > MAX_OPS {
        return Err(VerifyError::TooManyOps(evt.ops.len()));
    }
    if evt.blocks.len() > MAX_COMMIT_BLOCKS_BYTES {
        return Err(VerifyError::BlocksTooBig(
            evt.blocks.len(),
            MAX_COMMIT_BLOCKS_BYTES,
        ));
    }
    if !opts.lenient {
        if evt.rebase {
            return Err(VerifyError::Rebase);
        }
        if evt.too_big {
            return Err(VerifyError::TooBig);
        }
        if !is_valid_datetime(&evt.time) {
            return Err(VerifyError::BadTime);
        }
    }
    check_did(&evt.repo)?;
    if evt.since.as_deref().is_some_and(|s| !is_valid_tid(s)) {
        return Err(VerifyError::BadSince);
    }
    check_rev(&evt.rev, stored, opts)?;

    // 18–22: CAR and commit.
    let car = Car::parse(&evt.blocks)?;
    let sc = load_commit(&car, Some(&evt.commit), &evt.repo, &evt.rev)?;
    let ops = check_ops(evt, opts.lenient)?;

    // 25–27: the new tree agrees with every op, and records are present and sane.
    let mut tree = Tree::load(&car, sc.commit.data);
    for op in &ops {
        let found = tree.get(op.path.as_bytes())?;
        if found != op.cid {
            return Err(VerifyError::OpMismatch {
                path: op.path.to_owned(),
            });
        }
        if let Some(cid) = op.cid {
            let path = || op.path.to_owned();
            let rec = car
                .get(&cid)
                .ok_or_else(|| VerifyError::RecordMissing { path: path() })?;
            if rec.len() > MAX_RECORD_BYTES {
                return Err(VerifyError::RecordTooBig { path: path() });
            }
            if cid.codec() == crate::proto::cid::CODEC_DAG_CBOR && !is_wellformed_map(rec) {
                return Err(VerifyError::RecordInvalid { path: path() });
            }
        }
    }

    let emptied = emptied_collections(&mut tree, &evt.ops);

    // 28: operation inversion must reproduce the previous root.
    let expected = match (evt.prev_data, stored, &evt.since) {
        (Some(p), _, _) => Some(p),
        (None, _, _) if opts.lenient => None,
        (None, None, None) => Some(crate::proto::mst::empty_tree_cid()),
        (None, _, _) => return Err(VerifyError::MissingPrevData),
    };
    if let Some(expected) = expected {
        let got = if ops.is_empty() {
            sc.commit.data
        } else {
            invert(&mut tree, &ops)?
        };
        if got != expected {
            return Err(VerifyError::InversionMismatch(Box::new((got, expected))));
        }
    }

    // 23: the signature.
    sc.verify(key)?;

    // 30: continuity with what we stored.
    let chain = match stored {
        None => Chain::First,
        Some(s) => {
            let data_ok = match evt.prev_data {
                Some(p) => p == s.data,
                None => opts.lenient,
            };
            if data_ok && evt.since.as_deref() == Some(s.rev.as_str()) {
                Chain::Continuous
            } else {
                Chain::Broken
            }
        }
    };
    Ok(Accepted {
        state: RepoState {
            rev: evt.rev.clone(),
            commit: evt.commit,
            data: sc.commit.data,
        },
        chain,
        emptied,
    })
}

/// Verifies a `#sync` (items 32–35): the commit alone, no MST.
pub fn verify_sync(
    evt: &SyncEvent,
    key: &PublicKey,
    stored: Option<&RepoState>,
    opts: &Options,
) -> Result<Accepted, VerifyError> {
    if evt.blocks.len() > MAX_SYNC_BLOCKS_BYTES {
        return Err(VerifyError::BlocksTooBig(
            evt.blocks.len(),
            MAX_SYNC_BLOCKS_BYTES,
        ));
    }
    if !opts.lenient && !is_valid_datetime(&evt.time) {
        return Err(VerifyError::BadTime);
    }
    check_did(&evt.did)?;
    check_rev(&evt.rev, stored, opts)?;
    let car = Car::parse(&evt.blocks)?;
    let sc = load_commit(&car, None, &evt.did, &evt.rev)?;
    sc.verify(key)?;
    let root = car.roots[0];
    Ok(Accepted {
        state: RepoState {
            rev: evt.rev.clone(),
            commit: root,
            data: sc.commit.data,
        },
        chain: Chain::First,
        emptied: Vec::new(),
    })
}
