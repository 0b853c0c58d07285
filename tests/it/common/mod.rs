//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod http;
pub mod metrics;
pub mod pg;
pub mod receiver;
pub mod relay;

use std::path::PathBuf;

/// `../shared` beside the project root (CI lays it out the same way).
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel)
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let p = shared(rel);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

/// Lines of a vector file: comments and blank lines skipped, never trimmed.
pub fn read_lines(rel: &str) -> Vec<String> {
    let p = shared(rel);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// All permutations of `0..n` (Heap's algorithm).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        heap(k - 1, a, out);
        for i in 0..k - 1 {
            if k.is_multiple_of(2) {
                a.swap(i, k - 1);
            } else {
                a.swap(0, k - 1);
            }
            heap(k - 1, a, out);
        }
    }
    let mut a: Vec<usize> = (0..n).collect();
    let mut out = Vec::new();
    heap(n, &mut a, &mut out);
    out
}

/// Builds a binary frame from the JSON form used by the indigo fixtures (`$bytes`, `$link`).
/// Those captures come from Go structs, where an empty `blobs` slice prints as `null` although
/// it is `[]` on the wire; that one quirk is undone here.
pub fn frame_from_json(header: &serde_json::Value, body: &serde_json::Value) -> Vec<u8> {
    use rlay::proto::cbor::Value;
    let mut body = Value::from_json(body).expect("fixture body converts");
    if body.get("blobs") == Some(&Value::Null) {
        body.set("blobs", Value::Array(vec![]));
    }
    let mut out = Value::from_json(header)
        .expect("fixture header converts")
        .encode();
    out.extend_from_slice(&body.encode());
    out
}
