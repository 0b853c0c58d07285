#![no_main]
//! Any bytes as a firehose frame: must never panic, and whatever decodes must re-encode to
//! bytes that decode to the same event. The in-place read Jetstream makes of a `#commit` must
//! not panic either, and must agree with `decode` on what both accept.
use libfuzzer_sys::fuzz_target;
use rlay::proto::frame;

fuzz_target!(|data: &[u8]| {
    let b = bytes::Bytes::copy_from_slice(data);
    if let Ok(ev) = frame::decode(&b) {
        let again = frame::encode(&ev);
        if !again.is_empty() {
            let back = frame::decode(&bytes::Bytes::from(again)).expect("re-encoded frame decodes");
            assert_eq!(back, ev);
        }
    }
    if let Ok(frame::Sequenced::Commit(c)) = frame::read_sequenced(&b) {
        let _ = c.ops().count();
        if let (Ok(owned), Ok(frame::Event::Commit(strict))) = (c.to_event(&b), frame::decode(&b)) {
            assert_eq!(owned, strict);
        }
    }
});
