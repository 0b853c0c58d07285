//! Property tests for the MST: incremental edits agree with bulk builds, and inverting a random
//! batch of ops from only the blocks a diff carries gives back the original root, in any order.

use proptest::prelude::*;
use rlay::proto::car::BlockSource;
use rlay::proto::cid::Cid;
use rlay::proto::mst::proof::diff_proof;
use rlay::proto::mst::{InvertOp, Tree, invert};
use std::collections::{BTreeMap, HashMap};

fn key(i: u32) -> Vec<u8> {
    // Mixed collections so keys share prefixes of varying length.
    let coll = [
        "app.bsky.feed.like",
        "app.bsky.feed.post",
        "app.bsky.graph.follow",
    ][(i % 3) as usize];
    format!("{coll}/3k{:08x}", i.wrapping_mul(2_654_435_761)).into_bytes()
}

fn val(i: u32, generation: u32) -> Cid {
    Cid::dag_cbor(&[i.to_le_bytes(), generation.to_le_bytes()].concat())
}

fn build(map: &BTreeMap<Vec<u8>, Cid>, store: &mut HashMap<Cid, Vec<u8>>) -> Cid {
    let items: Vec<(Vec<u8>, Cid)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let empty: HashMap<Cid, Vec<u8>> = HashMap::new();
    let mut t = Tree::from_sorted(&empty, &items).expect("build");
    t.root_cid_with(&mut |c, b| {
        store.insert(c, b);
    })
    .expect("root")
}

#[derive(Debug, Clone)]
enum Op {
    Create(u32),
    Update(usize),
    Delete(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1000u32..100_000).prop_map(Op::Create),
        any::<usize>().prop_map(Op::Update),
        any::<usize>().prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn invert_random_batches(keys in proptest::collection::btree_set(0u32..1000, 0..300),
                             ops in proptest::collection::vec(op_strategy(), 1..12),
                             order_seed in any::<u64>()) {
        let before: BTreeMap<Vec<u8>, Cid> = keys.iter().map(|&i| (key(i), val(i, 0))).collect();
        let mut store = HashMap::new();
        let root_before = build(&before, &mut store);

        // Resolve the abstract ops against the current key set (one op per path).
        let mut after = before.clone();
        let mut touched = std::collections::HashSet::new();
        let mut concrete: Vec<(Vec<u8>, Option<Cid>, Option<Cid>)> = Vec::new();
        let existing: Vec<Vec<u8>> = before.keys().cloned().collect();
        for op in &ops {
            match *op {
                Op::Create(i) => {
                    let k = key(i);
                    if after.contains_key(&k) || !touched.insert(k.clone()) { continue; }
                    after.insert(k.clone(), val(i, 1));
                    concrete.push((k, Some(val(i, 1)), None));
                }
                Op::Update(j) | Op::Delete(j) if !existing.is_empty() => {
                    let k = existing[j % existing.len()].clone();
                    if !touched.insert(k.clone()) { continue; }
                    let prev = before[&k];
                    if matches!(op, Op::Update(_)) {
                        let new = Cid::dag_cbor(&[k.as_slice(), b"v2"].concat());
                        after.insert(k.clone(), new);
                        concrete.push((k, Some(new), Some(prev)));
                    } else {
                        after.remove(&k);
                        concrete.push((k, None, Some(prev)));
                    }
                }
                _ => {}
            }
        }

        // Incremental edits on a lazily loaded tree agree with a bulk build of the new map.
        let snapshot = store.clone();
        let mut t = Tree::load(&snapshot, root_before);
        for (k, new, _) in &concrete {
            match new {
                Some(c) => { t.insert(k, *c).expect("insert"); }
                None => { prop_assert!(t.remove(k).expect("remove").is_some()); }
            }
        }
        let mut new_blocks = HashMap::new();
        let root_after = t.root_cid_with(&mut |c, b| { new_blocks.insert(c, b); }).expect("root");
        let mut rebuilt = HashMap::new();
        prop_assert_eq!(root_after, build(&after, &mut rebuilt));
        store.extend(new_blocks.clone());

        // The diff's blocks: every new node is in it, and inversion from them alone works.
        let paths: Vec<String> = concrete.iter().map(|(k, _, _)| String::from_utf8(k.clone()).expect("ascii")).collect();
        let inv: Vec<InvertOp> = concrete.iter().zip(&paths)
            .map(|((_, new, prev), p)| InvertOp { path: p, cid: *new, prev: *prev }).collect();
        let (proof, inverted) = diff_proof(&store, root_after, &inv).expect("proof");
        prop_assert_eq!(inverted, root_before);
        // Every node of the new tree that the old tree lacked must travel with the diff.
        for c in rebuilt.keys() {
            if snapshot.get_block(c).is_none() {
                prop_assert!(proof.contains(c), "new node {} missing from the diff", c);
            }
        }
        let diff: HashMap<Cid, Vec<u8>> = proof.iter().filter_map(|c| store.get(c).map(|b| (*c, b.clone()))).collect();

        // Shuffle the op order deterministically from the seed.
        let mut order: Vec<usize> = (0..inv.len()).collect();
        let mut s = order_seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let shuffled: Vec<InvertOp> = order.iter().map(|&i| inv[i]).collect();
        let mut t = Tree::load(&diff, root_after);
        prop_assert_eq!(invert(&mut t, &shuffled).expect("invert from diff only"), root_before);
    }
}
