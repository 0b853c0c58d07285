//! `cargo bench --bench replay`: cursor replay from the disk log, and what compression saves.
//!
//! 1. 1,000,000 events of the simulator's mix (20,000 generated and signed, then cycled: each
//!    block of the log is far smaller than a cycle, so repeats do not help compression) go
//!    through the sequencer into a fresh log. The sealed segments are then compressed as the
//!    relay does in the background. Prints `log_bytes_per_event` before and after, and
//!    `log_compression_ratio` (sealed segments, raw / compressed). The four real captured
//!    network frames in `../shared/fixtures/indigo/firehose/` are compressed as one block too
//!    (`real_frames_compression_ratio`), with both sets' mean frame size, to show how the
//!    simulator's mix compares.
//! 2. One consumer (in a child process) replays all 1,000,000 from cursor 0, mostly from the
//!    compressed segments: `replay_events_per_sec`.
//! 3. Ten consumers replay from cursor 0 while events are published at 1,000/s and a live
//!    consumer (this process) times each from publish to receipt: `live_p99_ms_during_replay`
//!    (and p50), and the same with no replays (`live_p99_ms_idle`). The replays share the relay's
//!    disk replay budget (`RELAY_REPLAY_RATE_LIMIT`'s default; `REPLAY_RATE=N` here tries another).
//!    `RELAY_LOG_LEVEL=info` shows the consumers coming and going.

mod feed;
mod procstat;
mod wire;

use bytes::Bytes;
use rlay::proto::frame::Event;
use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{Planned, Sim, SimConfig};
use rlay::stream::StreamConfig;
use rlay::stream::eventlog::{EventLog, KIND_COMMIT, LogFrame};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EVENTS: u64 = 1_000_000;
const DISTINCT: usize = 20_000;
const REPLAYERS: usize = 10;
const LIVE_RATE: u64 = 1_000;

fn sim_events() -> Vec<Event> {
    let sim = Sim::start(&SimConfig {
        hosts: 10,
        accounts_per_host: 20,
        initial_records: 20,
        ..SimConfig::default()
    })
    .expect("sim");
    let mut rng = Rng::new(7);
    let mut out = Vec::with_capacity(DISTINCT);
    while out.len() < DISTINCT {
        for p in random_action(sim.world(), &mut rng) {
            if let Planned::Valid(_, e) = p {
                out.push(e);
            }
        }
    }
    out
}

/// The four captured frames, as the network sent them (header + body).
fn real_frames() -> Vec<Vec<u8>> {
    use rlay::proto::cbor::Value;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/indigo/firehose");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("fixture")).expect("json");
            let mut body = Value::from_json(&json).expect("body");
            if body.get("blobs") == Some(&Value::Null) {
                body.set("blobs", Value::Array(vec![]));
            }
            let header = serde_json::json!({"op": 1, "t": "#commit"});
            let mut out = Value::from_json(&header).expect("header").encode();
            out.extend_from_slice(&body.encode());
            out
        })
        .collect()
}

/// Raw and compressed bytes of `frames` written as one sealed segment.
fn block_ratio(frames: &[Vec<u8>]) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("dir");
    // Every append starts a segment: the frames in one, a marker in the next.
    let (log, _) = EventLog::open_with(dir.path(), 1 << 30, Duration::ZERO).expect("log");
    let rec = |i: usize, b: &[u8]| LogFrame {
        seq: i as u64 + 1,
        time_us: 1_800_000_000_000_000 + i as i64,
        did_hash: i as u64,
        kind: KIND_COMMIT,
        bytes: Bytes::copy_from_slice(b),
    };
    let batch: Vec<LogFrame> = frames.iter().enumerate().map(|(i, b)| rec(i, b)).collect();
    log.append(&batch).expect("append");
    log.append(&[rec(frames.len(), b"end")]).expect("append");
    let c = log.compress_sealed().expect("compress");
    assert_eq!(c.segments, 1);
    (c.raw_bytes, c.compressed_bytes)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Publishes at `LIVE_RATE` to a live consumer in this process while `replayers` consumers (a
/// child process) each replay `EVENTS` from cursor 0, or for 5 s without them. `head` is the
/// last seq before; returns the sorted publish → receipt latencies (ms) and how long it ran.
fn live_latency(
    stream: &rlay::stream::Stream,
    addr: &str,
    events: &[Event],
    replayers: usize,
    head: u64,
) -> (Vec<f64>, f64) {
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..200_000).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Consumers of an earlier run may not have noticed their client left yet.
    let before = stream.hub().consumers().len();
    let replays = (replayers > 0).then(|| {
        feed::Clients::spawn(
            &[
                "--clients",
                addr,
                &replayers.to_string(),
                &EVENTS.to_string(),
            ],
            "",
            replayers,
            stream,
        )
    });
    let mut live = wire::subscribe(addr);
    while stream.hub().consumers().len() < before + replayers + 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let reader = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                let Ok((opcode, len)) = wire::read_frame(&mut live, &mut buf) else {
                    break;
                };
                if opcode != 2 {
                    continue;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let Some(i) = wire::frame_seq(&buf[..len]).checked_sub(head + 1) else {
                    continue;
                };
                match published.get(i as usize).map(|p| p.load(Ordering::Acquire)) {
                    Some(sent) if sent > 0 => lat.push(now.saturating_sub(sent) as f64 / 1e6),
                    _ => {}
                }
            }
            lat
        })
    };
    let publisher = {
        let (published, stop, seqr) = (published.clone(), stop.clone(), stream.sequencer().clone());
        let events = events.to_vec();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && (n as usize) < published.len() {
                published[n as usize].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                seqr.emit(&events[n as usize % events.len()]);
                n += 1;
                feed::pace(start, n, LIVE_RATE);
            }
            n
        })
    };
    let t = Instant::now();
    match replays {
        Some(r) => r.finish("every replaying consumer read every event in order"),
        None => std::thread::sleep(Duration::from_secs(5)),
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("publisher");
    // One more event wakes the live reader so it sees the stop.
    stream.sequencer().emit(&events[0]);
    let mut lat = reader.join().expect("live reader");
    lat.sort_by(f64::total_cmp);
    assert!(
        lat.len() as u64 + 10 >= sent,
        "the live consumer got {} of {sent}",
        lat.len()
    );
    (lat, secs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        wire::check_consumers(
            &args[i + 1],
            args[i + 2].parse().expect("n"),
            Some(0),
            args[i + 3].parse().expect("count"),
        );
        return;
    }

    if let Ok(level) = std::env::var("RELAY_LOG_LEVEL") {
        rlay::logging::init(&level);
    }
    // 1. The log, before and after compression.
    let events = sim_events();
    let (_dir, stream, addr) = feed::serve_with(StreamConfig {
        compress_log: false,
        replay_rate: std::env::var("REPLAY_RATE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(rlay::stream::DEFAULT_REPLAY_RATE),
        ..StreamConfig::default()
    });
    let addr = addr.to_string();
    let t = Instant::now();
    for n in 0..EVENTS {
        stream.sequencer().emit(&events[n as usize % events.len()]);
    }
    let head = stream.sequencer().barrier(Duration::from_secs(120));
    assert_eq!(head, Some(EVENTS), "every event sequenced");
    let write_secs = t.elapsed().as_secs_f64();
    let log = stream.hub().log();
    let (raw_disk, _) = log.disk_usage();
    let t = Instant::now();
    let c = log.compress_sealed().expect("compress");
    let compress_secs = t.elapsed().as_secs_f64();
    let (disk, zsegs) = log.disk_usage();
    println!(
        "log_write_events_per_sec: {:.0}",
        EVENTS as f64 / write_secs
    );
    println!(
        "log_bytes_per_event_before: {:.1} bytes",
        raw_disk as f64 / EVENTS as f64
    );
    println!(
        "log_bytes_per_event_after: {:.1} bytes",
        disk as f64 / EVENTS as f64
    );
    println!(
        "log_compression_ratio: {:.3} ({zsegs} of {} segments compressed; the newest stays raw)",
        c.raw_bytes as f64 / c.compressed_bytes.max(1) as f64,
        log.segment_count()
    );
    println!(
        "log_compress_mib_per_sec: {:.0} MiB/s",
        c.raw_bytes as f64 / compress_secs / (1 << 20) as f64
    );
    let real = real_frames();
    let (real_raw, real_z) = block_ratio(&real);
    let sim_sample: Vec<Vec<u8>> = events
        .iter()
        .take(200)
        .map(rlay::proto::frame::encode)
        .collect();
    let (sim_raw, sim_z) = block_ratio(&sim_sample);
    let mean = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len() as f64;
    println!(
        "real_frames_compression_ratio: {:.3} ({} frames, {real_raw} → {real_z} bytes)",
        real_raw as f64 / real_z as f64,
        real.len()
    );
    println!(
        "sim_200_frames_compression_ratio: {:.3}",
        sim_raw as f64 / sim_z as f64
    );
    println!("real_mean_frame_bytes: {:.0} bytes", mean(&real));
    println!("sim_mean_frame_bytes: {:.0} bytes", mean(&sim_sample));

    // 2. One consumer replays everything.
    let cpu0 = procstat::cpu_seconds(None);
    let start = Instant::now();
    let one = feed::Clients::spawn(
        &["--clients", &addr, "1", &EVENTS.to_string()],
        "",
        1,
        &stream,
    );
    one.finish("the replaying consumer read every event in order");
    let secs = start.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(None) - cpu0;
    println!("replay_events_per_sec: {:.0}", EVENTS as f64 / secs);
    println!(
        "replay_relay_cpu_us_per_event: {:.2} µs",
        cpu * 1e6 / EVENTS as f64
    );

    // 3. A live consumer alone, then during ten replays; first the 2 GB just written goes to
    // disk, so the kernel's write-back of it does not stand in the way.
    let _ = std::process::Command::new("sync").status();
    let (idle, _) = live_latency(&stream, &addr, &events, 0, EVENTS);
    println!("live_p50_ms_idle: {:.2} ms", percentile(&idle, 0.50));
    println!("live_p99_ms_idle: {:.2} ms", percentile(&idle, 0.99));
    // The event that woke the last reader is sequenced before the next run counts from it.
    let head = stream
        .sequencer()
        .barrier(Duration::from_secs(10))
        .expect("the head");
    let (lat, replay_secs) = live_latency(&stream, &addr, &events, REPLAYERS, head);
    println!(
        "replays_during_live: {REPLAYERS} × {EVENTS} events in {replay_secs:.1} s ({:.0} events/s together)",
        (REPLAYERS as u64 * EVENTS) as f64 / replay_secs
    );
    println!("live_events_during_replay: {}", lat.len());
    println!(
        "live_p50_ms_during_replay: {:.2} ms",
        percentile(&lat, 0.50)
    );
    println!(
        "live_p99_ms_during_replay: {:.2} ms",
        percentile(&lat, 0.99)
    );
    stream.shutdown();
}
