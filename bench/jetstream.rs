//! `cargo bench --bench jetstream`: turning sequenced frames into Jetstream v1 events.
//!
//! A realistic mix of signed commits (posts, likes, follows, reposts and deletes from simulated
//! repos, one to three ops each) plus identity and account events is encoded on one core.
//!
//! Prints `jetstream_encode_events_per_sec` (Jetstream events made per second on one core, JSON
//! only), `jetstream_zstd_events_per_sec` (the same with each event also compressed once) and
//! `jetstream_zstd_ratio` (JSON bytes / zstd bytes with the v1 dictionary). The delivery and
//! relay-CPU figures of issue 16 are not measured by this benchmark yet.

use bytes::Bytes;
use rlay::jetstream::encode::{Compressor, encode};
use rlay::proto::cbor::value::Value;
use rlay::proto::crypto::{Curve, PrivateKey};
use rlay::proto::frame::{self, AccountEvent, Event, IdentityEvent};
use rlay::sim::repo::{Repo, Write};
use rlay::stream::eventlog::LogFrame;
use std::time::Instant;

const ACCOUNTS: usize = 50;
const FRAMES: usize = 20_000;

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn record(kind: u64, n: u64, did: &str) -> Vec<u8> {
    let time = s("2026-12-01T12:00:00.000Z");
    let subject = || {
        Value::Map(vec![
            (
                "cid".into(),
                s("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"),
            ),
            (
                "uri".into(),
                s(&format!("at://{did}/app.bsky.feed.post/3l2222222{n:06}")),
            ),
        ])
    };
    let v = match kind {
        0 => Value::Map(vec![
            ("$type".into(), s("app.bsky.feed.post")),
            ("createdAt".into(), time),
            ("langs".into(), Value::Array(vec![s("en")])),
            (
                "text".into(),
                s(&format!(
                    "post number {n}: a few words about the day, nothing more, nothing less"
                )),
            ),
        ]),
        1 => Value::Map(vec![
            ("$type".into(), s("app.bsky.feed.like")),
            ("createdAt".into(), time),
            ("subject".into(), subject()),
        ]),
        2 => Value::Map(vec![
            ("$type".into(), s("app.bsky.graph.follow")),
            ("createdAt".into(), time),
            ("subject".into(), s(&format!("did:plc:follow{n:018}"))),
        ]),
        _ => Value::Map(vec![
            ("$type".into(), s("app.bsky.feed.repost")),
            ("createdAt".into(), time),
            ("subject".into(), subject()),
        ]),
    };
    v.encode()
}

fn frames() -> Vec<LogFrame> {
    let mut repos: Vec<Repo> = (0..ACCOUNTS)
        .map(|i| {
            let did = format!("did:plc:bench{i:019}");
            Repo::new(&did, PrivateKey::from_seed(Curve::K256, did.as_bytes()))
        })
        .collect();
    let collections = [
        "app.bsky.feed.post",
        "app.bsky.feed.like",
        "app.bsky.graph.follow",
        "app.bsky.feed.repost",
    ];
    let mut written: Vec<Vec<String>> = vec![Vec::new(); ACCOUNTS];
    let mut out = Vec::with_capacity(FRAMES);
    let mut t = 1_764_590_400_000_000i64;
    for n in 0..FRAMES as u64 {
        let a = (n * 7 % ACCOUNTS as u64) as usize;
        let did = format!("did:plc:bench{a:019}");
        let e = match n % 50 {
            0 => Event::Identity(IdentityEvent {
                seq: n as i64,
                did: did.clone(),
                time: "2026-12-01T12:00:00.000Z".into(),
                handle: Some(format!("u{a}.bsky.social")),
            }),
            1 => Event::Account(AccountEvent {
                seq: n as i64,
                did: did.clone(),
                time: "2026-12-01T12:00:00.000Z".into(),
                active: true,
                status: None,
            }),
            _ => {
                let ops = 1 + (n % 3) as usize;
                let mut writes = Vec::new();
                let mut created = Vec::new();
                for k in 0..ops {
                    let m = n * 3 + k as u64;
                    if m.is_multiple_of(20) && !written[a].is_empty() {
                        writes.push(Write::Delete {
                            path: written[a].remove(0),
                        });
                        continue;
                    }
                    let kind = match m % 10 {
                        0..=4 => 0,
                        5..=7 => 1,
                        8 => 2,
                        _ => 3,
                    };
                    let path = format!("{}/3l{m:011}", collections[kind as usize]);
                    created.push(path.clone());
                    writes.push(Write::Create {
                        path,
                        record: record(kind, m, &did),
                    });
                }
                // Deleted by later commits only: one commit never creates and deletes a path.
                written[a].extend(created);
                match repos[a].commit(&writes, "2026-12-01T12:00:00.000Z") {
                    Ok(c) => Event::Commit(c),
                    Err(e) => panic!("commit: {e}"),
                }
            }
        };
        let times = match &e {
            Event::Commit(c) => c.ops.len() as i64,
            _ => 1,
        };
        out.push(LogFrame {
            seq: n + 1,
            time_us: t,
            did_hash: rlay::util::did_hash(&did),
            kind: 1,
            bytes: Bytes::from(frame::encode(&e)),
        });
        t += times.max(1);
    }
    out
}

fn main() {
    let frames = frames();
    // JSON only, one core.
    let started = Instant::now();
    let mut events = 0usize;
    let mut json_bytes = 0usize;
    for f in &frames {
        let e = encode(f);
        events += e.items.len();
        json_bytes += e.items.iter().map(|i| i.json.len()).sum::<usize>();
    }
    let secs = started.elapsed().as_secs_f64();
    // JSON and one zstd frame per event.
    let z = Compressor::default();
    let started = Instant::now();
    let mut zstd_bytes = 0usize;
    for f in &frames {
        let e = encode(f);
        zstd_bytes += e.items.iter().map(|i| i.zstd(&z).len()).sum::<usize>();
    }
    let zsecs = started.elapsed().as_secs_f64();
    println!("frames: {} frames", frames.len());
    println!("jetstream_events: {events} events");
    println!(
        "jetstream_json_bytes_per_event: {:.0} bytes",
        json_bytes as f64 / events as f64
    );
    println!(
        "jetstream_encode_events_per_sec: {:.0} events/s",
        events as f64 / secs
    );
    println!(
        "jetstream_zstd_events_per_sec: {:.0} events/s",
        events as f64 / zsecs
    );
    println!(
        "jetstream_zstd_ratio: {:.2} x",
        json_bytes as f64 / zstd_bytes.max(1) as f64
    );
}
