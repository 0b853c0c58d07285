#![no_main]
//! Any bytes as an MST node: must never panic; a node that decodes re-encodes to the same bytes
//! (the decoder accepts only canonical nodes).
use libfuzzer_sys::fuzz_target;
use rlay::proto::mst::node::{decode_node, encode_node};

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = decode_node(data) {
        let again = encode_node(
            n.left.as_ref(),
            n.entries.iter().map(|e| (e.key.as_slice(), &e.val, e.right)),
        );
        assert_eq!(again, data);
    }
});
