#![no_main]
//! Any bytes as a CAR, and if it parses, walk it as an MST from its first root.
use libfuzzer_sys::fuzz_target;
use rlay::proto::car::Car;
use rlay::proto::mst::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(car) = Car::parse(data) {
        if let Some(root) = car.roots.first() {
            let mut t = Tree::load(&car, *root);
            let _ = t.entries();
            let _ = t.remove(b"app.bsky.feed.post/3k");
            let _ = t.insert(b"app.bsky.feed.post/3k", *root);
            let _ = t.root_cid();
        }
    }
});
