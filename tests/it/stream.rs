//! The event stream with synthetic events, over real loopback WebSockets: sequencer, disk log,
//! ring hand-over, cursor rules, retention, tail repair, slow and stalled consumers.

use bytes::Bytes;
use rlay::http::front::Front;
use rlay::proto::frame::{self, Event, IdentityEvent, SyncEvent};
use rlay::stream::eventlog::{EventLog, KIND_IDENTITY, LogFrame};
use rlay::stream::firehose::FirehoseConfig;
use rlay::stream::{Stream, StreamConfig};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

struct Relay {
    stream: Stream,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn relay(cfg: StreamConfig) -> Relay {
    let dir = tempfile::tempdir().expect("dir");
    relay_in(dir, cfg)
}

fn relay_in(dir: tempfile::TempDir, cfg: StreamConfig) -> Relay {
    let stream = Stream::open(&dir.path().join("events"), cfg).expect("open stream");
    let addr = Front::serve_stream(stream.hub().clone(), Arc::new(AtomicBool::new(false)))
        .expect("firehose server");
    Relay {
        stream,
        addr,
        _dir: dir,
    }
}

fn did_for(n: u64) -> String {
    format!("did:plc:seq{n:021}")
}

fn identity(n: u64) -> Event {
    Event::Identity(IdentityEvent {
        seq: 0,
        did: did_for(n),
        time: "2025-01-01T00:00:00.000Z".into(),
        handle: None,
    })
}

fn big(n: u64, size: usize) -> Event {
    Event::Sync(SyncEvent {
        seq: 0,
        did: did_for(n),
        blocks: Bytes::from(vec![7u8; size]),
        rev: "3k2222222222a".into(),
        time: "t".into(),
    })
}

fn connect(addr: SocketAddr, cursor: Option<u64>) -> Ws {
    let url = match cursor {
        Some(c) => format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let (mut ws, _) = tungstenite::connect(url).expect("connect");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    ws
}

/// The next data frame, decoded (pings are skipped).
fn next(ws: &mut Ws) -> Option<Event> {
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Some(frame::decode(&b).expect("relay frames decode")),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn wait_for_head(r: &Relay, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.stream.head() < seq {
        assert!(Instant::now() < deadline, "sequencer did not reach {seq}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn handover_is_gapless_under_concurrent_publishing() {
    let cfg = StreamConfig {
        ring_capacity: 128,
        max_segment_bytes: 64 << 10,
        ..StreamConfig::default()
    };
    let r = relay(cfg);
    for n in 1..=2000 {
        r.stream.sequencer().emit(&identity(n));
    }
    wait_for_head(&r, 2000);
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(2000));
    std::thread::scope(|s| {
        let (stop_p, pub_p, seq) = (
            stop.clone(),
            published.clone(),
            r.stream.sequencer().clone(),
        );
        s.spawn(move || {
            let mut n = pub_p.load(Ordering::SeqCst);
            while !stop_p.load(Ordering::SeqCst) {
                for _ in 0..20 {
                    n += 1;
                    seq.emit(&identity(n));
                }
                pub_p.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        let mut clients = Vec::new();
        for t in 0..8u64 {
            let r = &r;
            clients.push(s.spawn(move || {
                let mut rng = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..125 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let head = r.stream.head();
                    let cursor = head.saturating_sub(rng % 1200);
                    let target = head + 10;
                    let mut ws = connect(r.addr, Some(cursor));
                    let mut expect = cursor + 1;
                    while expect <= target {
                        let e = next(&mut ws).unwrap_or_else(|| {
                            panic!("stream ended before seq {target} (cursor {cursor})")
                        });
                        let seq = e.seq().expect("seq") as u64;
                        assert_eq!(seq, expect, "gap or duplicate after cursor {cursor}");
                        assert_eq!(
                            e.did(),
                            Some(did_for(seq).as_str()),
                            "frame content matches the log"
                        );
                        expect += 1;
                    }
                    let _ = ws.close(None);
                }
            }));
        }
        for c in clients {
            c.join().expect("client thread");
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        r.stream.hub().log().segment_count() > 3,
        "the test crossed several log segments"
    );
}

#[test]
fn hundred_consumers_receive_identical_streams() {
    let r = relay(StreamConfig::default());
    let mut clients: Vec<Ws> = (0..100).map(|_| connect(r.addr, None)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.stream.hub().consumers().len() < 100 {
        assert!(Instant::now() < deadline, "consumers registered");
        std::thread::sleep(Duration::from_millis(5));
    }
    for n in 1..=500 {
        r.stream.sequencer().emit(&identity(n));
    }
    let first: Vec<Event> = (0..500)
        .map(|_| next(&mut clients[0]).expect("event"))
        .collect();
    assert_eq!(
        first
            .iter()
            .map(|e| e.seq().unwrap_or(0) as u64)
            .collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    std::thread::scope(|s| {
        for ws in clients.iter_mut().skip(1) {
            let first = &first;
            s.spawn(move || {
                for want in first {
                    assert_eq!(next(ws).as_ref(), Some(want));
                }
            });
        }
    });
}

/// Frames and the relay's own control frames share one socket: pings sent while a burst of
/// frames of every length form (7-bit, 16-bit, 64-bit) streams are answered with pongs, and no
/// frame is split or reordered by them.
#[test]
fn pings_answered_mid_stream_and_frames_stay_whole() {
    let r = relay(StreamConfig::default());
    let mut ws = connect(r.addr, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.stream.hub().consumers().is_empty() {
        assert!(Instant::now() < deadline, "consumer registered");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sizes = [10usize, 200, 70_000, 3_000, 1];
    let total = 600u64;
    let publisher = {
        let seq = r.stream.sequencer().clone();
        std::thread::spawn(move || {
            for n in 1..=total {
                seq.emit(&big(n, sizes[n as usize % sizes.len()]));
                if n % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    let (mut got, mut pings, mut pongs) = (0u64, 0u64, 0u64);
    while got < total {
        if got >= pings * 100 {
            ws.send(Message::Ping(Bytes::from_static(b"mid")))
                .expect("ping");
            pings += 1;
        }
        match ws.read().expect("the stream stays readable") {
            Message::Binary(b) => {
                got += 1;
                let Event::Sync(e) = frame::decode(&b).expect("a whole frame") else {
                    panic!("a #sync frame");
                };
                assert_eq!(e.seq as u64, got, "in order, none lost");
                assert_eq!(e.blocks.len(), sizes[got as usize % sizes.len()]);
            }
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                pongs += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.join().expect("publisher");
    // The last pings may be answered after the last frame.
    while pongs < pings {
        match ws.read().expect("pongs") {
            Message::Pong(_) => pongs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn restart_keeps_seq_and_replay() {
    let dir = tempfile::tempdir().expect("dir");
    let events = dir.path().join("events");
    {
        let s = Stream::open(&events, StreamConfig::default()).expect("open");
        for n in 1..=100 {
            s.sequencer().emit(&identity(n));
        }
        assert_eq!(s.sequencer().barrier(Duration::from_secs(10)), Some(100));
        s.shutdown();
    }
    let r = relay_in(dir, StreamConfig::default());
    assert_eq!(r.stream.head(), 100, "head restored from disk");
    r.stream.sequencer().emit(&identity(101));
    wait_for_head(&r, 101);
    let mut ws = connect(r.addr, Some(50));
    for want in 51..=101 {
        assert_eq!(next(&mut ws).and_then(|e| e.seq()), Some(want));
    }
}

#[test]
fn after_a_reboot_seqs_skip_past_what_may_have_been_broadcast() {
    let dir = tempfile::tempdir().expect("dir");
    let events = dir.path().join("events");
    let s = Stream::open(&events, StreamConfig::default()).expect("open");
    for n in 1..=10 {
        s.sequencer().emit(&identity(n));
    }
    assert_eq!(s.sequencer().barrier(Duration::from_secs(10)), Some(10));
    // Within one boot a restart continues right after the log (a killed process loses nothing
    // it broadcast: frames reach the OS first).
    let reservation = std::fs::read(events.join("seq-reservation")).expect("reservation");
    assert_eq!(reservation.len(), 8 + 36, "seq and boot id");
    assert!(u64::from_le_bytes(reservation[..8].try_into().expect("8 bytes")) >= 10);
    // As if the machine had lost power: the reservation was made in another boot, when seqs up
    // to 500 may have gone out although the log kept only 10.
    let mut other_boot = 500u64.to_le_bytes().to_vec();
    other_boot.extend_from_slice(b"00000000-0000-0000-0000-000000000000");
    s.shutdown();
    // The sequencer records its last seq as it exits; wait for that before faking a reboot.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let mut clean = 10u64.to_le_bytes().to_vec();
    clean.extend_from_slice(boot.trim().as_bytes());
    crate::common::relay::wait_until(5, "the clean-stop record", || {
        std::fs::read(events.join("seq-reservation")).is_ok_and(|r| r == clean)
    });
    std::fs::write(events.join("seq-reservation"), other_boot).expect("write");
    let s = Stream::open(&events, StreamConfig::default()).expect("reopen");
    s.sequencer().emit(&identity(11));
    assert_eq!(
        s.sequencer().barrier(Duration::from_secs(10)),
        Some(501),
        "no seq handed out twice"
    );
}

#[test]
fn initial_seq_floor_applies() {
    let dir = tempfile::tempdir().expect("dir");
    let s = Stream::open(
        &dir.path().join("e"),
        StreamConfig {
            initial_seq: 5000,
            ..StreamConfig::default()
        },
    )
    .expect("open");
    s.sequencer().emit(&identity(1));
    assert_eq!(s.sequencer().barrier(Duration::from_secs(5)), Some(5000));
}

fn frame_at(seq: u64, time_ms: i64) -> LogFrame {
    LogFrame {
        seq,
        time_us: time_ms * 1000,
        did_hash: 1,
        kind: KIND_IDENTITY,
        bytes: Bytes::from(frame::encode(&identity(seq))),
    }
}

#[test]
fn old_millisecond_records_read_as_microseconds_and_times_find_seqs() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, _) = EventLog::open_with(dir.path(), 1, Duration::from_secs(3600)).expect("open");
    // Seqs 1-3 as an older relay wrote them (ms), 4-6 in µs.
    let ms = 1_700_000_000_000i64;
    for seq in 1..=3 {
        let mut f = frame_at(seq, 0);
        f.time_us = ms + seq as i64;
        log.append(&[f]).expect("append");
    }
    for seq in 4..=6 {
        let mut f = frame_at(seq, 0);
        f.time_us = (ms + 10) * 1000 + seq as i64;
        log.append(&[f]).expect("append");
    }
    let mut rd = log.reader(0);
    let mut times = Vec::new();
    while let Some(f) = rd.next_frame().expect("read") {
        times.push(f.time_us);
    }
    let us = (ms + 10) * 1000;
    assert_eq!(
        times,
        [
            (ms + 1) * 1000,
            (ms + 2) * 1000,
            (ms + 3) * 1000,
            us + 4,
            us + 5,
            us + 6
        ]
    );
    assert_eq!(log.last_at_or_before(0).expect("find"), None);
    assert_eq!(
        log.last_at_or_before((ms + 2) * 1000).expect("find"),
        Some(2)
    );
    assert_eq!(log.last_at_or_before(us + 4).expect("find"), Some(4));
    assert_eq!(log.last_at_or_before(us + 5 - 1).expect("find"), Some(4));
    assert_eq!(log.last_at_or_before(i64::MAX).expect("find"), Some(6));
}

#[test]
fn retention_removes_only_expired_segments() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, _) = EventLog::open_with(dir.path(), 1, Duration::from_secs(3600)).expect("open");
    let now = rlay::util::now_ms();
    let old = now - 100 * 3600 * 1000;
    // One record per segment (1-byte roll size): seqs 1..=5 old, 6..=8 new.
    for seq in 1..=8 {
        log.append(&[frame_at(seq, if seq <= 5 { old } else { now })])
            .expect("append");
    }
    assert_eq!(log.segment_count(), 8);
    let removed = log.remove_older_than(now - 72 * 3600 * 1000).expect("gc");
    assert_eq!(
        removed, 4,
        "segments 1-4 are followed by old segments; 5 may hold events up to 6's start"
    );
    assert_eq!(log.oldest_seq(), Some(5));
    let mut rd = log.reader(0);
    let mut seen = Vec::new();
    while let Some(f) = rd.next_frame().expect("read") {
        seen.push(f.seq);
    }
    assert_eq!(seen, vec![5, 6, 7, 8]);
    assert_eq!(
        log.remove_older_than(now + 1_000_000).expect("gc"),
        3,
        "never the newest segment"
    );
}

#[test]
fn torn_and_corrupt_tails_are_repaired() {
    for corrupt in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let path;
        {
            let (log, _) = EventLog::open(dir.path()).expect("open");
            let frames: Vec<LogFrame> = (1..=10).map(|s| frame_at(s, 1)).collect();
            log.append(&frames).expect("append");
            log.sync().expect("sync");
            path = std::fs::read_dir(dir.path())
                .expect("ls")
                .flatten()
                .next()
                .expect("segment")
                .path();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("reopen");
        if corrupt {
            // A complete record whose checksum is wrong.
            let mut rec = Vec::new();
            let payload = vec![9u8; 40];
            rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            rec.extend_from_slice(&0xdead_beefu32.to_le_bytes());
            rec.extend_from_slice(&payload);
            f.write_all(&rec).expect("write");
        } else {
            // A record cut off mid-way: the length promises more than is there.
            f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
                .expect("write");
        }
        drop(f);
        let (log, report) = EventLog::open(dir.path()).expect("open repaired");
        assert_eq!(report.last_seq(), Some(10));
        assert!(report.truncated_bytes() > 0);
        let mut rd = log.reader(0);
        let mut n = 0;
        while let Some(fr) = rd.next_frame().expect("read") {
            n += 1;
            assert_eq!(fr.seq, n);
        }
        assert_eq!(n, 10);
        drop(log);
        let s = Stream::open(dir.path(), StreamConfig::default()).expect("stream");
        s.sequencer().emit(&identity(11));
        assert_eq!(
            s.sequencer().barrier(Duration::from_secs(5)),
            Some(11),
            "seq continues after the repaired tail"
        );
    }
}

#[test]
fn outdated_future_and_invalid_cursors() {
    let r = relay(StreamConfig {
        max_segment_bytes: 1,
        ..StreamConfig::default()
    });
    for n in 1..=10 {
        r.stream.sequencer().emit(&identity(n));
        // One batch per event, so each lands in its own segment.
        r.stream.sequencer().barrier(Duration::from_secs(5));
    }
    wait_for_head(&r, 10);
    // Drop the first segments as if they had aged out.
    let removed = r
        .stream
        .hub()
        .log()
        .remove_older_than(rlay::util::now_ms() + 1000)
        .expect("gc");
    assert!(removed >= 5);
    let oldest = r.stream.hub().log().oldest_seq().expect("oldest");

    let mut ws = connect(r.addr, Some(1));
    match next(&mut ws) {
        Some(Event::Info(i)) => assert_eq!(i.name, "OutdatedCursor"),
        other => panic!(
            "expected #info OutdatedCursor, got {:?}",
            other.map(|e| (e.type_name(), e.seq()))
        ),
    }
    assert_eq!(
        next(&mut ws).and_then(|e| e.seq()),
        Some(oldest as i64),
        "then replay from the oldest retained"
    );

    let mut ws = connect(r.addr, Some(10_000));
    match next(&mut ws) {
        Some(Event::Error(e)) => assert_eq!(e.error, "FutureCursor"),
        other => panic!(
            "expected FutureCursor, got {:?}",
            other.map(|e| (e.type_name(), e.seq()))
        ),
    }
    assert!(next(&mut ws).is_none(), "closed after FutureCursor");

    // cursor=0 replays the whole retained window, no #info.
    let mut ws = connect(r.addr, Some(0));
    assert_eq!(next(&mut ws).and_then(|e| e.seq()), Some(oldest as i64));

    // An invalid cursor is an HTTP 400 with an XRPC error body, before any upgrade.
    for bad in ["abc", "-5", "1.5"] {
        let url = format!(
            "ws://{}/xrpc/com.atproto.sync.subscribeRepos?cursor={bad}",
            r.addr
        );
        match tungstenite::connect(url) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400);
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                        .expect("json body");
                assert_eq!(body["error"], "InvalidRequest");
            }
            other => panic!(
                "cursor {bad}: expected HTTP 400, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn paused_reader_catches_up_from_disk() {
    let r = relay(StreamConfig {
        ring_capacity: 64,
        ..StreamConfig::default()
    });
    let mut ws = connect(r.addr, None);
    while r.stream.hub().consumers().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    for n in 1..=10_000 {
        r.stream.sequencer().emit(&big(n, 4096));
    }
    // Read nothing while the relay publishes 40 MB; the ring (64 frames) is long gone.
    wait_for_head(&r, 10_000);
    std::thread::sleep(Duration::from_secs(1));
    for want in 1..=10_000 {
        let e = next(&mut ws).unwrap_or_else(|| panic!("stream ended at {want}"));
        assert_eq!(e.seq(), Some(want));
    }
}

#[test]
fn ring_memory_bound_evicts_the_oldest_and_replay_reads_them_from_disk() {
    let bound = 256 << 10;
    let r = relay(StreamConfig {
        ring_max_bytes: bound,
        ..StreamConfig::default()
    });
    // 8 MB of frames: far over the bound, far under the ring's frame count.
    for n in 1..=2000 {
        r.stream.sequencer().emit(&big(n, 4096));
    }
    wait_for_head(&r, 2000);
    let held = r.stream.hub().ring_bytes();
    assert!(
        (bound / 2..=bound).contains(&held),
        "the ring holds {held} bytes, bound {bound}"
    );
    let mut ws = connect(r.addr, Some(0));
    for want in 1..=2000 {
        let e = next(&mut ws).unwrap_or_else(|| panic!("stream ended at {want}"));
        assert_eq!(e.seq(), Some(want));
    }
}

#[test]
fn stalled_reader_gets_consumer_too_slow_and_others_are_unaffected() {
    let fh = FirehoseConfig {
        stall_timeout: Duration::from_secs(1),
        ..FirehoseConfig::default()
    };
    let r = relay(StreamConfig {
        firehose: fh,
        ..StreamConfig::default()
    });
    let mut stalled = connect(r.addr, None);
    let mut healthy = connect(r.addr, None);
    while r.stream.hub().consumers().len() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // More than the kernel will buffer for a client that never reads (32 MB rmem + 4 MB wmem).
    let total = 10_000u64;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            for want in 1..=total {
                assert_eq!(next(&mut healthy).and_then(|e| e.seq()), Some(want as i64));
            }
        });
        for n in 1..=total {
            r.stream.sequencer().emit(&big(n, 16 << 10));
        }
        h.join().expect("healthy consumer got everything in order");
    });
    // Give the relay time to notice the stall, then drain what the kernel buffered.
    std::thread::sleep(Duration::from_secs(2));
    let mut last = None;
    while let Some(e) = next(&mut stalled) {
        last = Some(e);
    }
    match last {
        Some(Event::Error(e)) => assert_eq!(e.error, "ConsumerTooSlow"),
        other => panic!(
            "expected the stalled consumer to end with ConsumerTooSlow, got {:?}",
            other.map(|e| (e.type_name(), e.seq()))
        ),
    }
    assert_eq!(
        r.stream.hub().consumers().len(),
        0,
        "the stalled consumer is gone, the healthy one finished"
    );
}
