//! `cargo bench --bench verify`: decode + full verification (CAR hashes, commit, MST forward
//! check and inversion, secp256k1 signature) of a typical 1-op commit into a repo of 2,000
//! records.
//!
//! Prints `commit_verify_us: X` and `commit_verify_per_core: N/s`, plus a breakdown
//! (`signature_only_us`: the k256 crate's check; `signature_rlay_us`: the relay's own,
//! `proto::secp256k1`).

use bytes::Bytes;
use rlay::proto::cbor::Value;
use rlay::proto::crypto::{Curve, PrivateKey};
use rlay::proto::frame::{self, Event};
use rlay::proto::verify::{Options, RepoState, verify_commit};
use rlay::sim::repo::{Repo, Write};
use std::time::{Duration, Instant};

const TIME: &str = "2025-01-01T00:00:00.000Z";

fn post(i: u32) -> Write {
    let rec = Value::Map(vec![
        ("$type".into(), Value::Str("app.bsky.feed.post".into())),
        (
            "text".into(),
            Value::Str(format!(
                "hello world, this is post number {i} of the benchmark"
            )),
        ),
        ("createdAt".into(), Value::Str(TIME.into())),
        ("langs".into(), Value::Array(vec![Value::Str("en".into())])),
    ])
    .encode();
    Write::Create {
        path: format!("app.bsky.feed.post/3l{:011}", i * 7919 % 100_000_000),
        record: rec,
    }
}

fn main() {
    let mut repo = Repo::new(
        "did:plc:benchaaaaaaaaaaaaaaaaaaa",
        PrivateKey::from_seed(Curve::K256, b"bench"),
    );
    for chunk in (0..2000u32).collect::<Vec<_>>().chunks(100) {
        let writes: Vec<Write> = chunk.iter().map(|&i| post(i)).collect();
        repo.commit(&writes, TIME).expect("seed commit");
    }
    let key = repo.key().public();
    // 200 consecutive 1-op commits, each paired with the state stored before it.
    let mut cases = Vec::new();
    for i in 0..200u32 {
        let (head, rev) = repo.head().expect("head");
        let state = RepoState {
            rev: rev.to_owned(),
            commit: head,
            data: repo.data(),
        };
        let mut evt = repo.commit(&[post(10_000 + i)], TIME).expect("commit");
        evt.seq = 1_000_000 + i64::from(i);
        cases.push((Bytes::from(frame::encode(&Event::Commit(evt))), state));
    }
    let opts = Options::strict_now();
    let avg_frame = cases.iter().map(|(f, _)| f.len()).sum::<usize>() / cases.len();

    let run = |f: &dyn Fn(&Bytes, &RepoState)| -> f64 {
        // Warm up, then time for ~2 s.
        for (b, s) in cases.iter().take(50) {
            f(b, s);
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            for (b, s) in &cases {
                f(b, s);
                n += 1;
            }
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };

    let full = run(&|b, s| {
        let Ok(Event::Commit(evt)) = frame::decode(b) else {
            panic!("decode")
        };
        verify_commit(&evt, &key, Some(s), &opts).expect("verifies");
    });
    let decode_only = run(&|b, _| {
        let _ = std::hint::black_box(frame::decode(b));
    });
    let (sig_only, sig_rlay) = {
        let sc_bytes: Vec<(Vec<u8>, [u8; 32])> = cases
            .iter()
            .map(|(b, _)| {
                let Ok(Event::Commit(evt)) = frame::decode(b) else {
                    panic!()
                };
                let car = rlay::proto::car::Car::parse(&evt.blocks).expect("car");
                let blk = car.get(&evt.commit).expect("commit").to_vec();
                let d = rlay::proto::commit::SignedCommit::decode(&blk)
                    .expect("commit")
                    .unsigned_digest();
                (blk, d)
            })
            .collect();
        let timed = |check: &dyn Fn(&[u8; 32], &[u8])| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(2) {
                for (blk, d) in &sc_bytes {
                    let sc = rlay::proto::commit::SignedCommit::decode(blk).expect("commit");
                    check(d, &sc.commit.sig);
                    n += 1;
                }
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        // The k256 crate's own check (the floor the issues quote), then the relay's
        // (proto::secp256k1 on k256's field arithmetic).
        let vk = k256::ecdsa::VerifyingKey::from_sec1_bytes(&key.compressed()).expect("key");
        let stock = timed(&|d, sig| {
            use k256::ecdsa::signature::hazmat::PrehashVerifier;
            let sig = k256::ecdsa::Signature::from_slice(sig).expect("sig");
            vk.verify_prehash(d, &sig).expect("sig");
        });
        let ours = timed(&|d, sig| key.verify_digest(d, sig).expect("sig"));
        (stock, ours)
    };

    println!("frame_bytes_avg: {avg_frame} bytes");
    println!("frame_decode_us: {decode_only:.2}");
    println!("signature_only_us: {sig_only:.2}");
    println!("signature_rlay_us: {sig_rlay:.2}");
    println!("commit_verify_us: {full:.2}");
    println!("commit_verify_per_core: {:.0}/s", 1e6 / full);
}
