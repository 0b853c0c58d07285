//! `rlay serve` as a real process, killed with SIGKILL mid-stream and restarted: a consumer
//! resuming from its cursor sees every valid event exactly once, with no gap in relay seqs.

use crate::common;

use common::relay::{ADMIN_PW, free_port, spawn_serve};
use rlay::proto::frame::{self, Event};
use rlay::sim::{LedgerEntry, Sim, SimConfig};
use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

fn spawn_relay(data: &std::path::Path, port: u16, plc: &str, db: Option<&str>) -> Child {
    let mut extra = vec![format!("--plc-host={plc}")];
    if let Some(u) = db {
        extra.push(format!("--database-url={u}"));
    }
    spawn_serve(data, port, &extra)
}

fn admin_crawl(port: u16, host: &str) {
    rlay::sim::admin::RelayAdmin::new(&format!("http://127.0.0.1:{port}"), ADMIN_PW)
        .request_crawl(host)
        .unwrap_or_else(|e| panic!("admin requestCrawl: {e}"));
}

/// Reads the firehose forever, reconnecting from the last seq seen.
fn consume(port: u16, seen: Arc<Mutex<Vec<Event>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let cursor = seen
            .lock()
            .expect("lock")
            .last()
            .and_then(|e| e.seq())
            .unwrap_or(0);
        let url =
            format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor={cursor}");
        let Ok((mut ws, _)) = tungstenite::connect(url) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        }
        while !stop.load(Ordering::SeqCst) {
            match ws.read() {
                Ok(Message::Binary(b)) => seen
                    .lock()
                    .expect("lock")
                    .push(frame::decode(&b).expect("valid frame")),
                Ok(_) => {}
                Err(e) if rlay::util::net::ws_timed_out(&e) => {}
                Err(_) => break,
            }
        }
    }
}

fn kill9_and_restart(db: Option<String>) {
    let mut sim = Sim::start(&SimConfig {
        hosts: 6,
        accounts_per_host: 3,
        ..SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut relay = spawn_relay(dir.path(), port, sim.world().plc_url(), db.as_deref());
    for h in sim.hostnames() {
        admin_crawl(port, &h);
    }
    std::thread::sleep(Duration::from_millis(500));
    let start = sim.world().ledger().len();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || consume(port, s, st))
    };
    sim.start_traffic(150.0, 0);
    std::thread::sleep(Duration::from_millis(2500));
    relay.kill().expect("SIGKILL");
    let _ = relay.wait();
    std::thread::sleep(Duration::from_millis(800));
    let mut relay = spawn_relay(dir.path(), port, sim.world().plc_url(), db.as_deref());
    std::thread::sleep(Duration::from_millis(2500));
    sim.stop_traffic();
    let expected: Vec<LedgerEntry> = sim.world().ledger()[start..].to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().expect("lock").len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "consumer got {} of {} events",
            seen.lock().expect("lock").len(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    consumer.join().expect("consumer");
    let _ = relay.kill();
    let _ = relay.wait();

    let out = seen.lock().expect("lock").clone();
    let mut counts: HashMap<(String, &str, String), usize> = HashMap::new();
    let mut prev = 0;
    for e in &out {
        let seq = e.seq().expect("seq");
        assert_eq!(
            seq,
            prev + 1,
            "relay seqs continue with no gap and no repeat across the restart"
        );
        prev = seq;
        *counts
            .entry(LedgerEntry::key_of(e).expect("key"))
            .or_default() += 1;
    }
    for x in &expected {
        let n = counts
            .get(&(x.did.clone(), x.kind, x.key.clone()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            n, 1,
            "{} {} delivered {n} times across the kill",
            x.kind, x.key
        );
    }
    assert_eq!(out.len(), expected.len(), "nothing but the valid events");
}

#[test]
fn sigkill_mid_stream_then_restart_sqlite() {
    kill9_and_restart(None);
}

#[test]
fn sigkill_mid_stream_then_restart_postgres() {
    if let Some(url) = common::pg::fresh_database() {
        kill9_and_restart(Some(url));
    }
}
