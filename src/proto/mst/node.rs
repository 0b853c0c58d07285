//! The MST node block: `{e: [{k, p, t, v}], l}`, decoded strictly and encoded canonically.

use super::MstError;
use super::key::{common_prefix_len, is_valid_mst_key, key_height};
use crate::proto::cbor::{Reader, Writer};
use crate::proto::cid::Cid;

/// Entries per node beyond which a node is treated as hostile. With fanout 4 a real repo never
/// comes close; an account mining keys to build one giant node would.
pub const MAX_NODE_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub key: Vec<u8>,
    pub val: Cid,
    pub right: Option<Cid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    pub left: Option<Cid>,
    pub entries: Vec<NodeEntry>,
    /// Height shared by every entry (`None` for a node without entries).
    pub height: Option<u8>,
}

fn decode_entry(r: &mut Reader<'_>, prev: &[u8], first: bool) -> Result<NodeEntry, MstError> {
    let mut keys = r.map()?;
    let (mut k, mut p, mut t, mut v) = (None, None, None, None);
    while let Some(name) = keys.next(r)? {
        match name {
            "k" => k = Some(r.bytes()?),
            "p" => p = Some(r.u64()?),
            "t" => t = Some(r.nullable_blessed_cid()?),
            "v" => v = Some(r.cid()?),
            _ => return Err(MstError::Structure("unknown field in MST entry")),
        }
    }
    let (Some(k), Some(p), Some(t), Some(v)) = (k, p, t, v) else {
        return Err(MstError::Structure("MST entry lacks k, p, t or v"));
    };
    let p = usize::try_from(p).map_err(|_| MstError::Structure("prefix length too large"))?;
    if p > prev.len() || (first && p != 0) {
        return Err(MstError::Structure("prefix length exceeds previous key"));
    }
    let mut key = Vec::with_capacity(p + k.len());
    key.extend_from_slice(&prev[..p]);
    key.extend_from_slice(k);
    if !first {
        if common_prefix_len(prev, &key) != p {
            return Err(MstError::Structure("prefix compression is not maximal"));
        }
        if key.as_slice() <= prev {
            return Err(MstError::Structure("keys not strictly increasing"));
        }
    }
    if !is_valid_mst_key(&key) {
        return Err(MstError::Structure("invalid MST key"));
    }
    Ok(NodeEntry {
        key,
        val: v,
        right: t,
    })
}

/// Decodes and checks one node block: canonical CBOR, exactly the `e`/`l` and `k`/`p`/`t`/`v`
/// fields, maximal prefix compression, sorted unique valid keys, one height for all entries.
pub fn decode_node(bytes: &[u8]) -> Result<NodeData, MstError> {
    let mut r = Reader::new(bytes);
    let mut keys = r.map()?;
    let mut entries = None;
    let mut left = None;
    let mut left_seen = false;
    while let Some(name) = keys.next(&mut r)? {
        match name {
            "e" => {
                let n = r.array()?;
                if n > MAX_NODE_ENTRIES {
                    return Err(MstError::Structure("too many entries in one MST node"));
                }
                let mut es: Vec<NodeEntry> = Vec::with_capacity(n);
                for i in 0..n {
                    let prev = es.last().map(|e| e.key.as_slice()).unwrap_or(&[]);
                    let e = decode_entry(&mut r, prev, i == 0)?;
                    es.push(e);
                }
                entries = Some(es);
            }
            "l" => {
                left = r.nullable_blessed_cid()?;
                left_seen = true;
            }
            _ => return Err(MstError::Structure("unknown field in MST node")),
        }
    }
    r.finish()?;
    let entries = entries.ok_or(MstError::Structure("MST node lacks `e`"))?;
    if !left_seen {
        return Err(MstError::Structure("MST node lacks `l`"));
    }
    let mut height = None;
    for e in &entries {
        let h = key_height(&e.key);
        match height {
            None => height = Some(h),
            Some(x) if x != h => {
                return Err(MstError::Structure(
                    "entries of one node at different heights",
                ));
            }
            _ => {}
        }
    }
    Ok(NodeData {
        left,
        entries,
        height,
    })
}

/// Canonical node bytes. `entries` yields (full key, value, right subtree) in key order.
pub fn encode_node<'k>(
    left: Option<&Cid>,
    entries: impl ExactSizeIterator<Item = (&'k [u8], &'k Cid, Option<Cid>)>,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + entries.len() * 110);
    w.map(2).str("e").array(entries.len());
    let mut prev: &[u8] = &[];
    for (key, val, right) in entries {
        let p = common_prefix_len(prev, key);
        w.map(4)
            .str("k")
            .bytes(&key[p..])
            .str("p")
            .u64(p as u64)
            .str("t")
            .nullable_cid(right.as_ref())
            .str("v")
            .cid(val);
        prev = key;
    }
    w.str("l").nullable_cid(left);
    w.into_bytes()
}
