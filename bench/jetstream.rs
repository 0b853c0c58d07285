//! `cargo bench --bench jetstream`: the relay's Jetstream v1 stream.
//!
//! Part `encode`: a realistic mix of signed commits (posts, likes, follows, reposts and deletes
//! from simulated repos, one to three ops each) plus identity and account events, encoded on one
//! core. Prints `jetstream_encode_events_per_sec` (JSON only), `jetstream_zstd_events_per_sec`
//! (each event also compressed once) and `jetstream_zstd_ratio` (JSON bytes / zstd bytes with
//! the v1 dictionary).
//!
//! Part `deliveries`: the relay's stream (sequencer, log, ring, Jetstream consumers) in this
//! process, 100 Jetstream consumers with mixed filters in a child process, fed that mix at
//! 10,000 events/s for 10 s. Every consumer must receive exactly the events its filter wants, in
//! order. Prints `jetstream_deliveries_per_sec`, `jetstream_cpu_us_per_delivery` (this process)
//! and `jetstream_max_lag_events` (the most relay events any consumer was behind the head).
//!
//! Part `relay`: the relay bench's throughput run (`cargo bench --bench relay`) without and with
//! 10 Jetstream consumers attached (mixed: 3 compressed, 6 filtered), alternated and averaged
//! over three runs each (log compression off: it is not Jetstream's, and when its upkeep runs
//! fall inside a run is luck), plus one run with 10 plain (unfiltered, uncompressed) consumers
//! and, as a yardstick, one with 10 more firehose consumers instead. Prints
//! `relay_cpu_us_per_event_without_jetstream`, `relay_cpu_us_per_event_with_jetstream`,
//! `jetstream_cpu_overhead_pct` and the same for the plain consumers (A/B between runs: drift in
//! the machine's speed shows in the yardstick), and `jetstream_threads_cpu_pct`: the CPU of the
//! relay's Jetstream consumer threads (which also encode each event once) over the rest of the
//! relay's, in the same runs. Each run's own figures go to stderr, so drift between runs shows.
//!
//! `--part NAME` runs one part.

mod feed;
mod harness;
mod procstat;

use bytes::Bytes;
use harness::Throughput;
use rlay::jetstream::encode::{Compressor, Item, encode};
use rlay::jetstream::params::Filter;
use rlay::proto::cbor::value::Value;
use rlay::proto::crypto::{Curve, PrivateKey};
use rlay::proto::frame::{self, AccountEvent, Event, IdentityEvent};
use rlay::sim::repo::{Repo, Write};
use rlay::stream::eventlog::LogFrame;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

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

/// The mix as events, in order.
fn events() -> Vec<Event> {
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
        out.push(e);
    }
    out
}

/// The events as the sequencer would log them: seq from 1, one `time_us` per op.
fn log_frames(events: &[Event]) -> Vec<LogFrame> {
    let mut t = 1_764_590_400_000_000i64;
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (did, ops) = match e {
                Event::Commit(c) => (c.repo.clone(), c.ops.len() as i64),
                Event::Identity(x) => (x.did.clone(), 1),
                Event::Account(x) => (x.did.clone(), 1),
                _ => (String::new(), 1),
            };
            let f = LogFrame {
                seq: i as u64 + 1,
                time_us: t,
                did_hash: rlay::util::did_hash(&did),
                kind: 1,
                bytes: Bytes::from(frame::encode(e)),
            };
            t += ops.max(1);
            f
        })
        .collect()
}

fn encode_part(frames: &[LogFrame]) {
    // Each pass over the frames is a tenth of a second, so one pass read ±10% from run to run
    // (the first also pays for first-touching its output): the best of five.
    let best = |pass: &dyn Fn() -> (usize, usize)| {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                let n = pass();
                (started.elapsed().as_secs_f64(), n)
            })
            .fold((f64::MAX, (0, 0)), |a, b| if b.0 < a.0 { b } else { a })
    };
    // Each pass gives (events, bytes) summed over the frames.
    let sum = |per_item: &dyn Fn(&Item) -> usize| -> (usize, usize) {
        frames.iter().fold((0, 0), |(n, bytes), f| {
            let e = encode(f);
            let b: usize = e.items.iter().map(per_item).sum();
            (n + e.items.len(), bytes + b)
        })
    };
    // JSON only, one core.
    let (secs, (events, json_bytes)) = best(&|| sum(&|i| i.json.len()));
    // JSON and one zstd frame per event.
    let z = Compressor::default();
    let (zsecs, (_, zstd_bytes)) = best(&|| sum(&|i| i.zstd(&z).len()));
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

const CONSUMERS: usize = 100;
const RATE: u64 = 10_000;
const SECONDS: u64 = 10;

fn did(a: usize) -> String {
    format!("did:plc:bench{a:019}")
}

/// The 100 consumers' filters, as (query string, collections, DIDs), most of them narrow as an
/// application's would be: 10 whole streams, 10 compressed whole streams, 20 posts, 20 graph
/// records, 20 five accounts, 20 a few accounts' likes and reposts.
fn mix() -> Vec<(String, Vec<String>, Vec<String>)> {
    let q = |c: &[&str], d: &[String], z: bool| {
        let mut parts: Vec<String> = c.iter().map(|c| format!("wantedCollections={c}")).collect();
        parts.extend(d.iter().map(|d| format!("wantedDids={d}")));
        if z {
            parts.push("compress=true".into());
        }
        (
            format!("?{}", parts.join("&")),
            c.iter().map(|s| s.to_string()).collect(),
            d.to_vec(),
        )
    };
    let mut out = Vec::new();
    for i in 0..CONSUMERS / 10 {
        out.push(q(&[], &[], false));
        out.push(q(&[], &[], true));
        for _ in 0..2 {
            out.push(q(&["app.bsky.feed.post"], &[], false));
            out.push(q(&["app.bsky.graph.*"], &[], false));
        }
        let five: Vec<String> = (0..5).map(|k| did((i * 5 + k) % ACCOUNTS)).collect();
        out.push(q(&[], &five, false));
        out.push(q(&[], &five, i % 2 == 0));
        out.push(q(
            &["app.bsky.feed.like", "app.bsky.feed.repost"],
            &five,
            false,
        ));
        out.push(q(&["app.bsky.feed.*"], &five[..2], false));
    }
    out
}

/// Child mode: `jetstream --clients ADDR`, one line per consumer on stdin: `COUNT QUERY`. Each
/// reads COUNT events and checks that their `time_us` only grows; prints `done` at the end.
fn clients(addr: &str) {
    let mut specs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let Some((n, q)) = line.split_once(' ') else {
            break;
        };
        specs.push((n.parse::<u64>().expect("count"), q.to_owned()));
    }
    let handles: Vec<_> = specs
        .into_iter()
        .map(|(count, q)| {
            let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/subscribe{q}"))
                .expect("jetstream subscribe");
            println!("connected");
            std::thread::spawn(move || {
                let mut dict =
                    zstd::bulk::Decompressor::with_dictionary(rlay::jetstream::encode::DICTIONARY)
                        .expect("dictionary");
                let (mut got, mut last) = (0u64, 0i64);
                while got < count {
                    let t = match ws.read().expect("read") {
                        tungstenite::Message::Text(t) => time_us(t.as_bytes()),
                        tungstenite::Message::Binary(b) => {
                            got += 1;
                            // Check one compressed event in 64: decompression is client work.
                            if got % 64 == 1 {
                                let json = dict.decompress(&b, 1 << 20).expect("zstd");
                                assert!(time_us(&json) > 0, "a compressed event decodes");
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    assert!(t > last, "time_us went {last} -> {t}");
                    last = t;
                    got += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    println!("done");
}

fn time_us(json: &[u8]) -> i64 {
    let key = b"\"time_us\":";
    let at = json
        .windows(key.len())
        .position(|w| w == key)
        .expect("time_us")
        + key.len();
    json[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |n, b| n * 10 + i64::from(b - b'0'))
}

fn deliveries_part(events: &[Event], frames: &[LogFrame]) {
    let count = RATE * SECONDS;
    let mix = mix();
    // What each consumer must receive: the frames are sent over and over, in order.
    let encoded: Vec<_> = frames.iter().map(encode).collect();
    let expected: Vec<u64> = mix
        .iter()
        .map(|(_, c, d)| {
            let f = Filter::new(c, d, 0).expect("filter");
            let per_round: Vec<u64> = encoded
                .iter()
                .map(|e| {
                    e.items
                        .iter()
                        .filter(|i| f.wants(&e.did, i.collection_name()))
                        .count() as u64
                })
                .collect();
            (0..count as usize)
                .map(|n| per_round[n % per_round.len()])
                .sum()
        })
        .collect();
    let total: u64 = expected.iter().sum();
    assert!(
        expected.iter().all(|&n| n > 0),
        "every filter wants something: {:?}",
        mix.iter()
            .zip(&expected)
            .filter(|(_, n)| **n == 0)
            .map(|(m, _)| &m.0)
            .collect::<Vec<_>>()
    );

    let (_dir, stream, addr) = feed::serve();
    let specs: String = mix
        .iter()
        .zip(&expected)
        .map(|((q, _, _), n)| format!("{n} {q}\n"))
        .collect();
    let clients = feed::Clients::spawn(
        &["--clients", &addr.to_string()],
        &specs,
        CONSUMERS,
        &stream,
    );
    let done = Arc::new(AtomicBool::new(false));
    let lag = {
        let (hub, done) = (stream.hub().clone(), done.clone());
        std::thread::spawn(move || {
            let mut worst = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let head = hub.ring().head();
                for c in hub.consumers() {
                    worst = worst.max(head.saturating_sub(c.cursor()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            worst
        })
    };
    let cpu0 = procstat::cpu_seconds(None);
    let start = Instant::now();
    for n in 1..=count {
        stream
            .sequencer()
            .emit(&events[(n as usize - 1) % events.len()]);
        feed::pace(start, n, RATE);
    }
    let emitted = start.elapsed();
    clients.finish("every consumer received its events");
    let elapsed = start.elapsed();
    let cpu = procstat::cpu_seconds(None) - cpu0;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = lag.join().expect("lag sampler");
    stream.shutdown();
    println!("jetstream_consumers: {CONSUMERS}");
    println!("jetstream_publish_rate: {RATE} events/s");
    println!("jetstream_deliveries: {total} deliveries");
    println!(
        "jetstream_deliveries_per_sec: {:.0} deliveries/s",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "jetstream_cpu_us_per_delivery: {:.3} us",
        cpu * 1e6 / total as f64
    );
    println!(
        "jetstream_drain_ms: {:.0} ms",
        (elapsed - emitted).as_secs_f64() * 1000.0
    );
    println!("jetstream_max_lag_events: {worst} events");
}

fn relay_part() {
    let mixed = [
        "",
        "",
        "?compress=true",
        "?compress=true",
        "?wantedCollections=app.bsky.feed.post",
        "?wantedCollections=app.bsky.feed.post",
        "?wantedCollections=app.bsky.feed.like",
        "?wantedCollections=app.bsky.graph.*",
        "?wantedCollections=app.bsky.feed.*&compress=true",
        "?wantedCollections=app.bsky.actor.profile",
    ];
    let plain = [""; 10];
    // Alternated, so drift in the machine's speed falls on both sides. Log compression is off
    // in these runs: its ~1.5 s of CPU per run for ~440 MB of frames falls inside or outside a
    // run's window by the luck of the 10 s upkeep timer, which swung the A/B by ±10 points.
    let nz = ["--compress-log=false"];
    let runs: Vec<(&str, Throughput)> = vec![
        ("without", harness::throughput(&[], 0, &nz)),
        ("mixed", harness::throughput(&mixed, 0, &nz)),
        ("plain", harness::throughput(&plain, 0, &nz)),
        ("firehose", harness::throughput(&[], 10, &nz)),
        ("without", harness::throughput(&[], 0, &nz)),
        ("mixed", harness::throughput(&mixed, 0, &nz)),
        ("without", harness::throughput(&[], 0, &nz)),
        ("mixed", harness::throughput(&mixed, 0, &nz)),
    ];
    for (i, (name, t)) in runs.iter().enumerate() {
        eprintln!(
            "run {i} {name}: {:.1} us/event, Jetstream threads {:.2} us/event",
            t.cpu_us_per_event, t.jetstream_cpu_us_per_event
        );
    }
    let mean = |name: &str, f: &dyn Fn(&Throughput) -> f64| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == name)
            .map(|r| f(&r.1))
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let cpu = |t: &Throughput| t.cpu_us_per_event;
    let rate = |t: &Throughput| t.events as f64 / t.secs;
    let (without, with, plain_cpu) = (
        mean("without", &cpu),
        mean("mixed", &cpu),
        mean("plain", &cpu),
    );
    println!(
        "relay_events_per_sec_without_jetstream: {:.0} events/s",
        mean("without", &rate)
    );
    println!(
        "relay_events_per_sec_with_jetstream: {:.0} events/s",
        mean("mixed", &rate)
    );
    println!("relay_cpu_us_per_event_without_jetstream: {without:.1} us");
    println!("relay_cpu_us_per_event_with_jetstream: {with:.1} us");
    println!(
        "jetstream_cpu_overhead_pct: {:.1} %",
        (with / without - 1.0) * 100.0
    );
    println!("relay_cpu_us_per_event_with_10_plain_jetstream: {plain_cpu:.1} us");
    println!(
        "jetstream_plain_cpu_overhead_pct: {:.1} %",
        (plain_cpu / without - 1.0) * 100.0
    );
    // The direct measure, free of run-to-run drift: what the Jetstream consumer threads
    // themselves used (encoding once, filtering, compressing, writing), against the rest of the
    // relay in the same runs.
    let own = |name: &str| {
        let share = |t: &Throughput| {
            t.jetstream_cpu_us_per_event / (t.cpu_us_per_event - t.jetstream_cpu_us_per_event)
        };
        mean(name, &share) * 100.0
    };
    println!(
        "jetstream_threads_cpu_pct: {:.1} % (mixed), {:.1} % (plain)",
        own("mixed"),
        own("plain")
    );
    // The yardstick: 10 more firehose consumers instead.
    let fh = mean("firehose", &cpu);
    println!("relay_cpu_us_per_event_with_10_more_firehose: {fh:.1} us");
    println!(
        "firehose_10_consumers_cpu_overhead_pct: {:.1} %",
        (fh / without - 1.0) * 100.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        clients(&args[i + 1]);
        return;
    }
    let only = |part: &str| !args.iter().any(|a| a == "--part") || args.iter().any(|a| a == part);
    let events = events();
    let frames = log_frames(&events);
    if only("encode") {
        encode_part(&frames);
    }
    if only("deliveries") {
        deliveries_part(&events, &frames);
    }
    if only("relay") {
        relay_part();
    }
}
