//! The compressed event log: sealed segments become zstd blocks that read back byte for byte,
//! readers go on through a compression under them, and every crash leftover (a partial
//! compressed file, a raw file beside its compressed copy, a torn block) opens cleanly.

use bytes::Bytes;
use rlay::proto::frame::{self, Event, IdentityEvent, SyncEvent};
use rlay::stream::eventlog::{EventLog, KIND_IDENTITY, KIND_SYNC, LogFrame};
use rlay::stream::{Stream, StreamConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Frames of varied size and content: identities, and syncs carrying some repeated text and
/// some noise, with an oversized one past the block size.
fn frame(seq: u64) -> LogFrame {
    let did = format!("did:plc:compress{:016}", seq % 37);
    let (kind, event) = if seq.is_multiple_of(3) {
        let mut blocks = format!("app.bsky.feed.post text number {seq} ")
            .repeat(8)
            .into_bytes();
        let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let noise = if seq == 249 { 600_000 } else { 64 };
        for _ in 0..noise {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blocks.push(x as u8);
        }
        (
            KIND_SYNC,
            Event::Sync(SyncEvent {
                seq: seq as i64,
                did,
                blocks: Bytes::from(blocks),
                rev: "3l2222222222a".into(),
                time: "2025-01-01T00:00:00.000Z".into(),
            }),
        )
    } else {
        (
            KIND_IDENTITY,
            Event::Identity(IdentityEvent {
                seq: seq as i64,
                did,
                time: "2025-01-01T00:00:00.000Z".into(),
                handle: Some(format!("user{seq}.test")),
            }),
        )
    };
    LogFrame {
        seq,
        time_us: 1_800_000_000_000_000 + seq as i64,
        did_hash: seq % 37,
        kind,
        bytes: Bytes::from(frame::encode(&event)),
    }
}

fn read_all(log: &EventLog, after: u64) -> Vec<LogFrame> {
    let mut r = log.reader(after);
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().expect("read") {
        out.push(f);
    }
    out
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

/// A log of 600 frames in segments of about 16 KiB (the last one raw, being written).
fn written_log(dir: &Path) -> (EventLog, Vec<LogFrame>) {
    let (log, _) = EventLog::open_with(dir, 16 << 10, Duration::from_secs(3600)).expect("open");
    let frames: Vec<LogFrame> = (1..=600).map(frame).collect();
    for batch in frames.chunks(7) {
        log.append(batch).expect("append");
    }
    (log, frames)
}

#[test]
fn compressed_segments_read_back_byte_for_byte_and_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, frames) = written_log(dir.path());
    let segments = log.segment_count();
    assert!(segments > 5, "several segments: {segments}");
    let (raw_bytes, _) = log.disk_usage();

    let done = log.compress_sealed().expect("compress");
    assert_eq!(
        done.segments,
        segments - 1,
        "every sealed segment, not the newest"
    );
    // The oversized frame is noise and stays its size; the rest shrinks.
    assert!(
        done.compressed_bytes + 100_000 < done.raw_bytes,
        "smaller: {done:?}"
    );
    let (bytes, compressed) = log.disk_usage();
    assert_eq!(compressed, segments - 1);
    assert!(bytes < raw_bytes, "{bytes} < {raw_bytes}");
    assert_eq!(
        files(dir.path(), ".log").len(),
        1,
        "only the newest stays raw"
    );
    assert_eq!(
        log.compress_sealed().expect("again"),
        Default::default(),
        "nothing left to do"
    );

    assert_eq!(read_all(&log, 0), frames, "every frame exactly as written");
    for after in [1, 100, 248, 249, 250, 599] {
        assert_eq!(
            read_all(&log, after),
            frames[after as usize..],
            "from cursor {after}"
        );
    }
    assert_eq!(
        log.last_at_or_before(frames[300].time_us).expect("find"),
        Some(301)
    );
    drop(log);

    // Reopened with both kinds of segment: same frames, and the sequencer carries on.
    let (log, report) = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(report.last_seq(), Some(600));
    assert_eq!(report.truncated_bytes(), 0);
    assert_eq!(report.segments(), segments);
    assert_eq!(read_all(&log, 0), frames);
    drop(log);
    let s = Stream::open(dir.path(), StreamConfig::default()).expect("stream");
    assert_eq!(s.head(), 600);
}

#[test]
fn a_reader_goes_on_through_a_compression_under_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, frames) = written_log(dir.path());
    // One reader part way into the first segment, one made but not yet started.
    let mut busy = log.reader(0);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(busy.next_frame().expect("read").expect("a frame"));
    }
    let mut idle = log.reader(0);
    log.compress_sealed().expect("compress");
    while let Some(f) = busy.next_frame().expect("read") {
        got.push(f);
    }
    assert_eq!(got, frames, "the busy reader: no gap, no repeat");
    let mut rest = Vec::new();
    while let Some(f) = idle.next_frame().expect("read") {
        rest.push(f);
    }
    assert_eq!(rest, frames, "the reader that opened the compressed files");
}

#[test]
fn crash_leftovers_of_compression_open_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, frames) = written_log(dir.path());
    let raw = files(dir.path(), ".log");
    let copies: Vec<(PathBuf, Vec<u8>)> = raw
        .iter()
        .take(2)
        .map(|p| (p.clone(), std::fs::read(p).expect("raw")))
        .collect();
    log.compress_sealed().expect("compress");
    drop(log);
    // A crash after the rename, before the raw file went: both are there.
    for (p, b) in &copies {
        std::fs::write(p, b).expect("raw back");
    }
    // A crash while writing a compressed file: a partial temporary one.
    let tmp = copies[0].0.with_extension("zlog.tmp");
    std::fs::write(&tmp, b"rlayzlg1 partial").expect("tmp");

    let (log, report) = EventLog::open(dir.path()).expect("open");
    assert_eq!(report.last_seq(), Some(600));
    assert_eq!(
        read_all(&log, 0),
        frames,
        "no duplicate from the raw copies"
    );
    assert!(!tmp.exists(), "the partial file is gone");
    for (p, _) in &copies {
        assert!(
            !p.exists(),
            "{} removed beside its compressed copy",
            p.display()
        );
    }
}

#[test]
fn a_torn_compressed_segment_is_cut_to_its_last_whole_block() {
    let dir = tempfile::tempdir().expect("dir");
    // Two segments: the first large enough for several blocks.
    let (log, _) =
        EventLog::open_with(dir.path(), 512 << 10, Duration::from_secs(3600)).expect("open");
    let frames: Vec<LogFrame> = (1..=600).map(frame).collect();
    for batch in frames.chunks(7) {
        log.append(batch).expect("append");
    }
    assert_eq!(log.segment_count(), 2, "{:?}", log.disk_usage());
    assert_eq!(log.compress_sealed().expect("compress").segments, 1);
    drop(log);
    // The raw newest segment is lost and the compressed one torn: it is now the newest.
    for p in files(dir.path(), ".log") {
        std::fs::remove_file(p).expect("rm");
    }
    let zlog = files(dir.path(), ".zlog").remove(0);
    let whole = std::fs::read(&zlog).expect("zlog");
    std::fs::write(&zlog, &whole[..whole.len() - 10]).expect("tear");

    let (log, report) = EventLog::open(dir.path()).expect("open torn");
    assert!(report.truncated_bytes() > 0, "the torn block is cut");
    assert!(zlog.exists(), "the whole blocks before it stay");
    let last = report.last_seq().expect("records before the torn block");
    let read = read_all(&log, 0);
    assert_eq!(read, frames[..last as usize], "every whole block, in order");
    drop(log);
    let s = Stream::open(dir.path(), StreamConfig::default()).expect("stream");
    assert_eq!(s.head(), last, "the sequencer continues after the cut");
    s.sequencer().emit(&Event::Identity(IdentityEvent {
        seq: 0,
        did: "did:plc:after".into(),
        time: "2025-01-01T00:00:00.000Z".into(),
        handle: None,
    }));
    assert_eq!(
        s.sequencer().barrier(Duration::from_secs(5)),
        Some(last + 1)
    );
}

#[test]
fn old_uncompressed_millisecond_segments_upgrade_in_place() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, _) = EventLog::open_with(dir.path(), 1, Duration::from_secs(3600)).expect("open");
    let ms = 1_700_000_000_000i64;
    for seq in 1..=4u64 {
        let mut f = frame(seq);
        f.time_us = ms + seq as i64;
        log.append(&[f]).expect("append");
    }
    let before = read_all(&log, 0);
    assert_eq!(before[0].time_us, (ms + 1) * 1000, "read as microseconds");
    assert_eq!(log.compress_sealed().expect("compress").segments, 3);
    assert_eq!(read_all(&log, 0), before);
    assert_eq!(
        log.last_at_or_before((ms + 2) * 1000).expect("find"),
        Some(2)
    );
}

/// A frame of about 4 KiB, half text and half noise (compressing 64 MiB of these takes long
/// enough to be caught in the middle).
fn big_frame(seq: u64, time_us: i64) -> LogFrame {
    let mut blocks = format!("app.bsky.feed.post record {seq} with some words ")
        .repeat(40)
        .into_bytes();
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..2048 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blocks.push(x as u8);
    }
    let event = Event::Sync(SyncEvent {
        seq: seq as i64,
        did: format!("did:plc:sigkill{:017}", seq % 101),
        blocks: Bytes::from(blocks),
        rev: "3l2222222222a".into(),
        time: "2026-12-01T00:00:00.000Z".into(),
    });
    LogFrame {
        seq,
        time_us: time_us + seq as i64,
        did_hash: seq % 101,
        kind: KIND_SYNC,
        bytes: Bytes::from(frame::encode(&event)),
    }
}

/// `rlay serve` on `data`, not waiting for it to listen: its log upkeep starts compressing
/// as soon as the log is open.
fn serve(data: &Path) -> std::process::Child {
    use crate::common::relay::{free_port, serve_command};
    serve_command(data, free_port(), &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rlay serve")
}

/// Polls (every millisecond, for at most 30 s) until `ready` holds for the log directory.
fn wait_for(dir: &Path, what: &str, ready: impl Fn(usize, usize, usize) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (raw, z, tmp) = (
            files(dir, ".log").len(),
            files(dir, ".zlog").len(),
            files(dir, ".tmp").len(),
        );
        if ready(raw, z, tmp) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {raw} raw, {z} compressed, {tmp} partial"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn sigkill_mid_compression_loses_nothing_and_the_next_start_finishes_the_job() {
    let data = tempfile::tempdir().expect("dir");
    let dir = data.path().join("events");
    let now_us = rlay::util::now_ms() * 1000;
    let frames: Vec<LogFrame> = (1..=16_000).map(|s| big_frame(s, now_us)).collect();
    {
        let (log, _) = EventLog::open_with(&dir, 8 << 20, Duration::from_secs(3600)).expect("open");
        for batch in frames.chunks(50) {
            log.append(batch).expect("append");
        }
        log.sync().expect("sync");
    }
    let sealed = files(&dir, ".log").len() - 1;
    assert!(sealed >= 6, "several sealed segments: {sealed}");

    // Killed while writing the first compressed file, then while writing a later one.
    let mut relay = serve(data.path());
    wait_for(&dir, "a first compression starts", |_, z, tmp| {
        z == 0 && tmp == 1
    });
    relay.kill().expect("SIGKILL");
    let _ = relay.wait();
    assert_eq!(
        files(&dir, ".zlog").len(),
        0,
        "killed before the first rename"
    );
    let mut relay = serve(data.path());
    wait_for(&dir, "a later compression starts", |_, z, tmp| {
        z >= 2 && tmp == 1
    });
    relay.kill().expect("SIGKILL");
    let _ = relay.wait();
    assert!(
        files(&dir, ".zlog").len() < sealed,
        "killed before the last compression"
    );

    // The next start cleans up and finishes: every sealed segment compressed, none partial.
    let mut relay = serve(data.path());
    wait_for(&dir, "compression finishes", |raw, z, tmp| {
        raw == 1 && z == sealed && tmp == 0
    });
    relay.kill().expect("SIGKILL");
    let _ = relay.wait();

    let (log, _) = EventLog::open_with(&dir, 8 << 20, Duration::from_secs(3600)).expect("reopen");
    let back = read_all(&log, 0);
    assert_eq!(back.len(), frames.len(), "every record is still there");
    assert!(back == frames, "byte for byte, in order");
}
