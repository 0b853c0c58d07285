//! A full disk under load: the event log holds events back (nothing is broadcast that is not
//! in the log), health says why, and after space returns and a restart every valid event is
//! there exactly once, with no seq reused.

use crate::common;
use crate::relay_e2e::{assert_delivered_exactly, run_traffic};

use common::http::{Auth, get};
use common::metrics::Mark;
use common::relay::{config, crawl_all, settle, start, wait_until};
use rlay::proto::frame::{self, Event, IdentityEvent};
use rlay::sim::{LedgerEntry, Sim, SimConfig};
use rlay::stream::eventlog::EventLog;
use rlay::stream::{Stream, StreamConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` but for about `leave` bytes.
fn fill(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    let len = f.metadata().expect("meta").len();
    f.set_len(len.saturating_sub(leave)).expect("shrink");
}

#[test]
fn a_full_disk_holds_events_back_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(_fs) = Tmpfs::mount(&dir.path().join("events"), "8m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (root) for the disk-full test"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let sim = Sim::start(&SimConfig {
        hosts: 2,
        accounts_per_host: 2,
        ..SimConfig::default()
    })
    .expect("sim");
    let cfg = config(dir.path(), sim.world().plc_url(), None, &[]);
    let relay = start(&cfg);
    crawl_all(&relay, &sim.hostnames());
    let base = format!("http://{}", relay.api_addr());
    let before = sim.world().ledger().len();
    run_traffic(&sim, 40, 11);
    wait_until(30, "the first events logged", || {
        relay.head_seq() as usize >= sim.world().ledger().len() - before
    });

    // The disk fills up (a few KiB left, so a batch is cut off part-way) while traffic goes on.
    let filler = dir.path().join("events").join("filler");
    fill(&filler, 8 << 10);
    let mark = Mark::now();
    run_traffic(&sim, 300, 12);
    wait_until(30, "appends failing", || {
        mark.delta("rlay_event_log_write_errors_total", &[""]) >= 2.0
    });
    let held_at = relay.head_seq();
    let h = get(&base, "/xrpc/_health", Auth::None);
    assert_eq!(h.status, 503, "{}", h.text);
    assert!(h.text.contains("event log cannot be written"), "{}", h.text);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        relay.head_seq() <= held_at + 1,
        "nothing more broadcast while the log cannot take it"
    );

    // Space comes back: everything held back goes out, and health recovers.
    std::fs::remove_file(&filler).expect("free space");
    let expected: Vec<LedgerEntry> = sim.world().ledger()[before..].to_vec();
    wait_until(60, "every valid event sequenced", || {
        relay.head_seq() as usize >= expected.len()
    });
    settle(&relay);
    wait_until(10, "health recovers", || {
        get(&base, "/xrpc/_health", Auth::None).status == 200
    });
    let last = relay.head_seq();
    relay.shutdown();

    // Reopened, the log holds every valid event exactly once, in order, and new seqs continue
    // right after the last one broadcast.
    let events = dir.path().join("events");
    let (log, report) = EventLog::open(&events).expect("log reopens");
    assert_eq!(report.truncated_bytes(), 0, "no torn record left behind");
    let mut reader = log.reader(0);
    let mut out = Vec::new();
    while let Some(f) = reader.next_frame().expect("read") {
        out.push(frame::decode(&f.bytes).expect("frames decode"));
    }
    assert_delivered_exactly(&out, &expected);
    drop(reader);
    drop(log);
    let stream = Stream::open(&events, StreamConfig::default()).expect("stream");
    stream.sequencer().emit(&Event::Identity(IdentityEvent {
        seq: 0,
        did: "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        time: "2026-01-01T00:00:00.000Z".into(),
        handle: None,
    }));
    assert_eq!(
        stream
            .sequencer()
            .barrier(std::time::Duration::from_secs(10)),
        Some(last + 1),
        "the next seq follows the last one broadcast"
    );
    stream.shutdown();
}
