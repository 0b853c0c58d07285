//! A Merkle Search Tree that loads nodes lazily from a block source and supports the edits that
//! Sync 1.1 operation inversion needs.
//!
//! Nodes start as `Stub`s (only a CID) and are decoded and structure-checked the first time an
//! operation has to look inside them; a stub that is never touched never needs its block. That is
//! exactly the contract of a commit diff: it carries the nodes on the paths of changed keys plus
//! the neighbours that splits and merges touch, and a missing node is an error only if needed.
//! Unchanged nodes keep the CID they were loaded with; edited nodes are re-encoded on demand.

use super::MstError;
use super::key::{is_valid_mst_key, key_height};
use super::node::{NodeData, decode_node, encode_node};
use crate::proto::car::BlockSource;
use crate::proto::cid::Cid;

enum Link {
    Stub(Cid),
    Node(Box<Node>),
}

struct Node {
    height: u8,
    left: Option<Link>,
    entries: Vec<Entry>,
    /// The node's CID while it matches its loaded or last-computed bytes; `None` once edited.
    cid: Option<Cid>,
}

struct Entry {
    key: Vec<u8>,
    val: Cid,
    right: Option<Link>,
}

type Bound<'b> = Option<&'b [u8]>;

impl Node {
    fn empty(height: u8) -> Node {
        Node {
            height,
            left: None,
            entries: Vec::new(),
            cid: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.left.is_none()
    }

    /// Index of the first entry whose key is not below `key`.
    fn find(&self, key: &[u8]) -> usize {
        self.entries.partition_point(|e| e.key.as_slice() < key)
    }

    /// The subtree pointer before entry `i` (`left` for 0, else entry `i-1`'s right).
    fn slot(&mut self, i: usize) -> &mut Option<Link> {
        match i.checked_sub(1) {
            None => &mut self.left,
            Some(j) => &mut self.entries[j].right,
        }
    }

    /// Key bounds of the subtree in slot `i`, inherited from `lo`/`hi` at the ends.
    fn slot_bounds(&self, i: usize, lo: Bound, hi: Bound) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let l = match i.checked_sub(1) {
            None => lo.map(<[u8]>::to_vec),
            Some(j) => Some(self.entries[j].key.clone()),
        };
        let h = match self.entries.get(i) {
            None => hi.map(<[u8]>::to_vec),
            Some(e) => Some(e.key.clone()),
        };
        (l, h)
    }

    fn from_data(d: NodeData, height: u8, cid: Cid) -> Node {
        Node {
            height,
            left: d.left.map(Link::Stub),
            entries: d
                .entries
                .into_iter()
                .map(|e| Entry {
                    key: e.key,
                    val: e.val,
                    right: e.right.map(Link::Stub),
                })
                .collect(),
            cid: Some(cid),
        }
    }
}

/// Decodes a non-root node expected at `height` within the key range (`lo`, `hi`).
fn load(
    store: &dyn BlockSource,
    cid: &Cid,
    height: u8,
    lo: Bound,
    hi: Bound,
) -> Result<Box<Node>, MstError> {
    let bytes = store.get_block(cid).ok_or(MstError::MissingBlock(*cid))?;
    let d = decode_node(bytes)?;
    match d.height {
        Some(h) if h != height => {
            return Err(MstError::Structure(
                "child node is not one level below its parent",
            ));
        }
        None if d.left.is_none() => {
            return Err(MstError::Structure("empty MST node below the root"));
        }
        None if height == 0 => return Err(MstError::Structure("intermediate node at height 0")),
        _ => {}
    }
    if height == 0 && d.entries.iter().any(|e| e.right.is_some()) {
        return Err(MstError::Structure("subtree pointer below height 0"));
    }
    if let (Some(first), Some(lo)) = (d.entries.first(), lo)
        && first.key.as_slice() <= lo
    {
        return Err(MstError::Structure("key outside its subtree's range"));
    }
    if let (Some(last), Some(hi)) = (d.entries.last(), hi)
        && last.key.as_slice() >= hi
    {
        return Err(MstError::Structure("key outside its subtree's range"));
    }
    Ok(Box::new(Node::from_data(d, height, *cid)))
}

/// Makes sure a link is decoded, returning the node.
fn loaded<'l>(
    link: &'l mut Link,
    store: &dyn BlockSource,
    height: u8,
    lo: Bound,
    hi: Bound,
) -> Result<&'l mut Node, MstError> {
    if let Link::Stub(cid) = link {
        let n = load(store, cid, height, lo, hi)?;
        *link = Link::Node(n);
    }
    match link {
        Link::Node(n) => Ok(n),
        Link::Stub(c) => Err(MstError::MissingBlock(*c)),
    }
}

fn into_loaded(
    link: Link,
    store: &dyn BlockSource,
    height: u8,
    lo: Bound,
    hi: Bound,
) -> Result<Box<Node>, MstError> {
    match link {
        Link::Node(n) => Ok(n),
        Link::Stub(cid) => load(store, &cid, height, lo, hi),
    }
}

fn prune(n: Box<Node>) -> Option<Link> {
    if n.is_empty() {
        None
    } else {
        Some(Link::Node(n))
    }
}

/// Raises a subtree from `from` to `to` by stacking empty intermediate nodes on top of it.
fn wrap(link: Option<Link>, from: u8, to: u8) -> Option<Link> {
    let mut cur = link?;
    for h in from + 1..=to {
        cur = Link::Node(Box::new(Node {
            height: h,
            left: Some(cur),
            entries: Vec::new(),
            cid: None,
        }));
    }
    Some(cur)
}

fn get(
    node: &mut Node,
    key: &[u8],
    kh: u8,
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<Option<Cid>, MstError> {
    let i = node.find(key);
    if let Some(e) = node.entries.get(i)
        && e.key == key
    {
        return Ok(Some(e.val));
    }
    if node.height <= kh {
        return Ok(None);
    }
    let (clo, chi) = node.slot_bounds(i, lo, hi);
    let h = node.height - 1;
    match node.slot(i) {
        None => Ok(None),
        Some(link) => {
            let child = loaded(link, store, h, clo.as_deref(), chi.as_deref())?;
            get(child, key, kh, store, clo.as_deref(), chi.as_deref())
        }
    }
}

fn update(
    node: &mut Node,
    key: &[u8],
    kh: u8,
    val: Cid,
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<Option<Cid>, MstError> {
    let i = node.find(key);
    if let Some(e) = node.entries.get_mut(i)
        && e.key == key
    {
        node.cid = None;
        return Ok(Some(std::mem::replace(&mut e.val, val)));
    }
    if node.height <= kh {
        return Ok(None);
    }
    let (clo, chi) = node.slot_bounds(i, lo, hi);
    let h = node.height - 1;
    let r = match node.slot(i) {
        None => None,
        Some(link) => {
            let child = loaded(link, store, h, clo.as_deref(), chi.as_deref())?;
            update(child, key, kh, val, store, clo.as_deref(), chi.as_deref())?
        }
    };
    if r.is_some() {
        node.cid = None;
    }
    Ok(r)
}

/// Splits a subtree at `key` (which it does not contain) into the parts below and above it.
fn split(
    link: Option<Link>,
    height: u8,
    key: &[u8],
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<(Option<Link>, Option<Link>), MstError> {
    let Some(link) = link else {
        return Ok((None, None));
    };
    let mut node = into_loaded(link, store, height, lo, hi)?;
    let i = node.find(key);
    let (clo, chi) = node.slot_bounds(i, lo, hi);
    let mid = node.slot(i).take();
    let (sl, sr) = match height.checked_sub(1) {
        Some(h) => split(mid, h, key, store, clo.as_deref(), chi.as_deref())?,
        None => (None, None),
    };
    let right_entries = node.entries.split_off(i);
    *node.slot(i) = sl;
    node.cid = None;
    let right = Box::new(Node {
        height,
        left: sr,
        entries: right_entries,
        cid: None,
    });
    Ok((prune(node), prune(right)))
}

/// Joins two adjacent subtrees of the same height (all keys of `a` below `mid`, of `b` above).
fn merge(
    a: Option<Link>,
    b: Option<Link>,
    height: u8,
    store: &dyn BlockSource,
    a_lo: Bound,
    mid: &[u8],
    b_hi: Bound,
) -> Result<Option<Link>, MstError> {
    let (a, b) = match (a, b) {
        (None, x) | (x, None) => return Ok(x),
        (Some(a), Some(b)) => (a, b),
    };
    let mut an = into_loaded(a, store, height, a_lo, Some(mid))?;
    let mut bn = into_loaded(b, store, height, Some(mid), b_hi)?;
    let last = an.entries.len();
    let tail_lo = an.entries.last().map(|e| e.key.clone());
    let head_hi = bn.entries.first().map(|e| e.key.clone());
    let a_tail = an.slot(last).take();
    let b_head = bn.left.take();
    let m = match height.checked_sub(1) {
        Some(h) => merge(
            a_tail,
            b_head,
            h,
            store,
            tail_lo.as_deref().or(a_lo),
            mid,
            head_hi.as_deref().or(b_hi),
        )?,
        None => None,
    };
    *an.slot(last) = m;
    an.entries.append(&mut bn.entries);
    an.cid = None;
    Ok(Some(Link::Node(an)))
}

fn insert(
    node: &mut Node,
    key: &[u8],
    kh: u8,
    val: Cid,
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<Option<Cid>, MstError> {
    let i = node.find(key);
    if let Some(e) = node.entries.get_mut(i)
        && e.key == key
    {
        node.cid = None;
        return Ok(Some(std::mem::replace(&mut e.val, val)));
    }
    let (clo, chi) = node.slot_bounds(i, lo, hi);
    node.cid = None;
    if node.height == kh {
        let child = node.slot(i).take();
        let (l, r) = match kh.checked_sub(1) {
            Some(h) => split(child, h, key, store, clo.as_deref(), chi.as_deref())?,
            None => (None, None),
        };
        *node.slot(i) = l;
        node.entries.insert(
            i,
            Entry {
                key: key.to_vec(),
                val,
                right: r,
            },
        );
        return Ok(None);
    }
    let h = node.height - 1;
    let slot = node.slot(i);
    let link = slot.get_or_insert_with(|| Link::Node(Box::new(Node::empty(h))));
    let child = loaded(link, store, h, clo.as_deref(), chi.as_deref())?;
    insert(child, key, kh, val, store, clo.as_deref(), chi.as_deref())
}

fn remove(
    node: &mut Node,
    key: &[u8],
    kh: u8,
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<Option<Cid>, MstError> {
    let i = node.find(key);
    if node.entries.get(i).is_some_and(|e| e.key == key) {
        let (a_lo, _) = node.slot_bounds(i, lo, hi);
        let (_, b_hi) = node.slot_bounds(i + 1, lo, hi);
        let removed = node.entries.remove(i);
        let left = node.slot(i).take();
        let merged = match node.height.checked_sub(1) {
            Some(h) => merge(
                left,
                removed.right,
                h,
                store,
                a_lo.as_deref(),
                key,
                b_hi.as_deref(),
            )?,
            None => None,
        };
        *node.slot(i) = merged;
        node.cid = None;
        return Ok(Some(removed.val));
    }
    if node.height <= kh {
        return Ok(None);
    }
    let (clo, chi) = node.slot_bounds(i, lo, hi);
    let h = node.height - 1;
    let slot = node.slot(i);
    let Some(link) = slot.as_mut() else {
        return Ok(None);
    };
    let child = loaded(link, store, h, clo.as_deref(), chi.as_deref())?;
    let r = remove(child, key, kh, store, clo.as_deref(), chi.as_deref())?;
    if r.is_some() {
        if child.is_empty() {
            *slot = None;
        }
        node.cid = None;
    }
    Ok(r)
}

/// Computes (and caches) a node's CID, handing every newly encoded block to `sink`.
fn node_cid(node: &mut Node, sink: &mut dyn FnMut(Cid, Vec<u8>)) -> Cid {
    if let Some(c) = node.cid {
        return c;
    }
    let left = node.left.as_mut().map(|l| link_cid(l, sink));
    let rights: Vec<Option<Cid>> = node
        .entries
        .iter_mut()
        .map(|e| e.right.as_mut().map(|l| link_cid(l, sink)))
        .collect();
    let bytes = encode_node(
        left.as_ref(),
        node.entries
            .iter()
            .zip(rights)
            .map(|(e, r)| (e.key.as_slice(), &e.val, r)),
    );
    let cid = Cid::dag_cbor(&bytes);
    sink(cid, bytes);
    node.cid = Some(cid);
    cid
}

fn link_cid(link: &mut Link, sink: &mut dyn FnMut(Cid, Vec<u8>)) -> Cid {
    match link {
        Link::Stub(c) => *c,
        Link::Node(n) => node_cid(n, sink),
    }
}

/// A Merkle Search Tree over a block source.
pub struct Tree<'s> {
    root: Link,
    store: &'s dyn BlockSource,
}

impl<'s> Tree<'s> {
    /// An empty tree.
    pub fn empty(store: &'s dyn BlockSource) -> Tree<'s> {
        Tree {
            root: Link::Node(Box::new(Node::empty(0))),
            store,
        }
    }

    /// A tree rooted at `root`; nothing is read until an operation needs it.
    pub fn load(store: &'s dyn BlockSource, root: Cid) -> Tree<'s> {
        Tree {
            root: Link::Stub(root),
            store,
        }
    }

    /// Builds a complete tree from entries sorted by key (duplicates and invalid keys rejected).
    pub fn from_sorted(
        store: &'s dyn BlockSource,
        items: &[(Vec<u8>, Cid)],
    ) -> Result<Tree<'s>, MstError> {
        for w in items.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(MstError::Structure("keys not strictly increasing"));
            }
        }
        if let Some((k, _)) = items.iter().find(|(k, _)| !is_valid_mst_key(k)) {
            return Err(MstError::InvalidKey(
                String::from_utf8_lossy(k).into_owned(),
            ));
        }
        let heights: Vec<u8> = items.iter().map(|(k, _)| key_height(k)).collect();
        let top = heights.iter().copied().max().unwrap_or(0);
        let root = build(items, &heights, top).unwrap_or_else(|| Box::new(Node::empty(0)));
        Ok(Tree {
            root: Link::Node(root),
            store,
        })
    }

    fn root_node(&mut self) -> Result<&mut Node, MstError> {
        if let Link::Stub(cid) = self.root {
            // The empty tree's single node is a constant; no diff needs to carry it.
            if cid == crate::proto::mst::empty_tree_cid() && self.store.get_block(&cid).is_none() {
                self.root = Link::Node(Box::new(Node {
                    cid: Some(cid),
                    ..Node::empty(0)
                }));
            }
        }
        if let Link::Stub(cid) = self.root {
            let bytes = self
                .store
                .get_block(&cid)
                .ok_or(MstError::MissingBlock(cid))?;
            let d = decode_node(bytes)?;
            let height = match d.height {
                Some(h) => h,
                None if d.left.is_none() => 0,
                None => {
                    return Err(MstError::Structure(
                        "root is an empty node pointing to a child",
                    ));
                }
            };
            if height == 0 && d.entries.iter().any(|e| e.right.is_some()) {
                return Err(MstError::Structure("subtree pointer below height 0"));
            }
            self.root = Link::Node(Box::new(Node::from_data(d, height, cid)));
        }
        match &mut self.root {
            Link::Node(n) => Ok(n),
            Link::Stub(c) => Err(MstError::MissingBlock(*c)),
        }
    }

    fn check_key(key: &[u8]) -> Result<u8, MstError> {
        if !is_valid_mst_key(key) {
            return Err(MstError::InvalidKey(
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
        Ok(key_height(key))
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Cid>, MstError> {
        let kh = Self::check_key(key)?;
        let store = self.store;
        let root = self.root_node()?;
        if kh > root.height {
            return Ok(None);
        }
        get(root, key, kh, store, None, None)
    }

    /// Replaces the value of an existing key, returning the old value (`None`: key absent, no change).
    pub fn update(&mut self, key: &[u8], val: Cid) -> Result<Option<Cid>, MstError> {
        let kh = Self::check_key(key)?;
        let store = self.store;
        let root = self.root_node()?;
        if kh > root.height {
            return Ok(None);
        }
        update(root, key, kh, val, store, None, None)
    }

    /// Inserts or replaces a key, returning the previous value if there was one.
    pub fn insert(&mut self, key: &[u8], val: Cid) -> Result<Option<Cid>, MstError> {
        let kh = Self::check_key(key)?;
        let store = self.store;
        let root = self.root_node()?;
        if root.is_empty() {
            *root = Node {
                height: kh,
                left: None,
                entries: vec![Entry {
                    key: key.to_vec(),
                    val,
                    right: None,
                }],
                cid: None,
            };
            return Ok(None);
        }
        if kh > root.height {
            let old_h = root.height;
            let old = std::mem::replace(&mut self.root, Link::Node(Box::new(Node::empty(0))));
            let (l, r) = split(Some(old), old_h, key, store, None, None)?;
            self.root = Link::Node(Box::new(Node {
                height: kh,
                left: wrap(l, old_h, kh - 1),
                entries: vec![Entry {
                    key: key.to_vec(),
                    val,
                    right: wrap(r, old_h, kh - 1),
                }],
                cid: None,
            }));
            return Ok(None);
        }
        insert(root, key, kh, val, store, None, None)
    }

    /// Removes a key, returning its value (`None`: key absent, no change).
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<Cid>, MstError> {
        let kh = Self::check_key(key)?;
        let store = self.store;
        let root = self.root_node()?;
        if kh > root.height {
            return Ok(None);
        }
        let r = remove(root, key, kh, store, None, None)?;
        if r.is_some() {
            self.trim_root()?;
        }
        Ok(r)
    }

    /// Drops empty intermediate nodes from the top so the root has entries (or is the empty tree).
    ///
    /// A child that is not in the blocks becomes the root as a stub: diffs from real PDSes often
    /// omit it, and if it were itself an empty intermediate the resulting root would simply not
    /// match `prevData`, so this can cause a rejection but never a false acceptance.
    fn trim_root(&mut self) -> Result<(), MstError> {
        let store = self.store;
        loop {
            let root = self.root_node()?;
            if !root.entries.is_empty() {
                return Ok(());
            }
            let Some(mut child) = root.left.take() else {
                root.height = 0;
                root.cid = None;
                return Ok(());
            };
            let h = root.height.saturating_sub(1);
            if let Link::Stub(cid) = &child
                && store.get_block(cid).is_none()
            {
                self.root = child;
                return Ok(());
            }
            loaded(&mut child, store, h, None, None)?;
            self.root = child;
        }
    }

    /// The root CID, re-encoding edited nodes. New node blocks are handed to `sink`.
    pub fn root_cid_with(&mut self, sink: &mut dyn FnMut(Cid, Vec<u8>)) -> Result<Cid, MstError> {
        Ok(link_cid(&mut self.root, sink))
    }

    pub fn root_cid(&mut self) -> Result<Cid, MstError> {
        self.root_cid_with(&mut |_, _| {})
    }

    /// The nearest keys below and above `key` (which need not exist), loading the nodes on the
    /// way. With [`Tree::get`] this gives a TS-style covering proof: the paths to a changed key and
    /// to both its neighbours.
    pub fn neighbors(&mut self, key: &[u8]) -> Result<Neighbors, MstError> {
        let store = self.store;
        let root = self.root_node()?;
        neighbors(root, key, store, None, None)
    }

    /// Every (key, value) in order, loading whatever is needed (errors on a missing node).
    pub fn entries(&mut self) -> Result<Vec<(Vec<u8>, Cid)>, MstError> {
        let store = self.store;
        let mut out = Vec::new();
        let root = self.root_node()?;
        walk(root, store, None, None, &mut out)?;
        Ok(out)
    }
}

type Neighbors = (Option<Vec<u8>>, Option<Vec<u8>>);

fn neighbors(
    node: &mut Node,
    key: &[u8],
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
) -> Result<Neighbors, MstError> {
    let i = node.find(key);
    let found = node.entries.get(i).is_some_and(|e| e.key == key);
    let mut pred = i.checked_sub(1).map(|j| node.entries[j].key.clone());
    let succ_at = if found { i + 1 } else { i };
    let mut succ = node.entries.get(succ_at).map(|e| e.key.clone());
    if node.height == 0 {
        return Ok((pred, succ));
    }
    let h = node.height - 1;
    // Below the key: the subtree just left of it. Above: the subtree just right of it (which is
    // the same slot when the key is absent from this node).
    let (plo, phi) = node.slot_bounds(i, lo, hi);
    if let Some(link) = node.slot(i).as_mut() {
        let child = loaded(link, store, h, plo.as_deref(), phi.as_deref())?;
        let (p, s) = neighbors(child, key, store, plo.as_deref(), phi.as_deref())?;
        pred = p.or(pred);
        if !found {
            succ = s.or(succ);
        }
    }
    if found {
        let (slo, shi) = node.slot_bounds(i + 1, lo, hi);
        if let Some(link) = node.slot(i + 1).as_mut() {
            let child = loaded(link, store, h, slo.as_deref(), shi.as_deref())?;
            let (_, s) = neighbors(child, key, store, slo.as_deref(), shi.as_deref())?;
            succ = s.or(succ);
        }
    }
    Ok((pred, succ))
}

fn walk(
    node: &mut Node,
    store: &dyn BlockSource,
    lo: Bound,
    hi: Bound,
    out: &mut Vec<(Vec<u8>, Cid)>,
) -> Result<(), MstError> {
    for i in 0..=node.entries.len() {
        let (clo, chi) = node.slot_bounds(i, lo, hi);
        let h = node.height.saturating_sub(1);
        if let Some(link) = node.slot(i) {
            let child = loaded(link, store, h, clo.as_deref(), chi.as_deref())?;
            walk(child, store, clo.as_deref(), chi.as_deref(), out)?;
        }
        if let Some(e) = node.entries.get(i) {
            out.push((e.key.clone(), e.val));
        }
    }
    Ok(())
}

/// Recursive bulk construction: entries at `height` split the items; gaps become subtrees.
fn build(items: &[(Vec<u8>, Cid)], heights: &[u8], height: u8) -> Option<Box<Node>> {
    if items.is_empty() {
        return None;
    }
    let mut node = Node::empty(height);
    let mut start = 0;
    for (i, &h) in heights.iter().enumerate() {
        if h == height {
            let sub = sub_build(&items[start..i], &heights[start..i], height);
            *node.slot(node.entries.len()) = sub;
            node.entries.push(Entry {
                key: items[i].0.clone(),
                val: items[i].1,
                right: None,
            });
            start = i + 1;
        }
    }
    let sub = sub_build(&items[start..], &heights[start..], height);
    *node.slot(node.entries.len()) = sub;
    Some(Box::new(node))
}

fn sub_build(items: &[(Vec<u8>, Cid)], heights: &[u8], parent: u8) -> Option<Link> {
    let h = parent.checked_sub(1)?;
    build(items, heights, h).map(Link::Node)
}
