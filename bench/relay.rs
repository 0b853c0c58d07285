//! `cargo bench --bench relay`: the whole relay, `rlay serve` as its own process, fed by the
//! simulated network and read by one firehose consumer (both in this process).
//!
//! Part 1 (throughput): 40 hosts × 5 accounts, k256 keys, strict validation. Events of the
//! realistic mix are signed ahead of time, then released at once; the clock runs until the
//! consumer has received every one. Prints `relay_events_per_sec` and `relay_cpu_us_per_event`
//! (the relay process's CPU only).
//!
//! Part 2 (zlay's production shape): 2,750 hosts carrying 600 events/s in total for 60 s. Prints
//! `rss_mib_2750_hosts` (the relay's resident memory at the end) and `latency_p99_ms` (PDS emit
//! → consumer receive).

mod procstat;

use rlay::proto::frame::{self, Event};
use rlay::sim::admin::RelayAdmin;
use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{LedgerEntry, Planned, Sim, SimConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const PW: &str = "bench-pw";

fn free_port() -> u16 {
    rlay::sim::admin::free_port().expect("a free loopback port")
}

fn spawn_relay(dir: &std::path::Path, port: u16, plc: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlay"))
        .arg("serve")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--api-listen=127.0.0.1:{port}"))
        .arg("--metrics-listen=")
        .arg(format!("--admin-password={PW}"))
        .arg(format!("--plc-host={plc}"))
        .arg("--bootstrap-host=")
        .arg("--allow-insecure-hosts=true")
        .arg("--trusted-domains=localhost")
        .env("RELAY_LOG_LEVEL", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rlay serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    child
}

fn admin(port: u16) -> RelayAdmin {
    RelayAdmin::new(&format!("http://127.0.0.1:{port}"), PW)
}

/// Admin requestCrawl for every host, from a few threads.
fn crawl(port: u16, hosts: &[String]) {
    std::thread::scope(|s| {
        for chunk in hosts.chunks(hosts.len().div_ceil(8).max(1)) {
            s.spawn(move || {
                let a = admin(port);
                for h in chunk {
                    a.request_crawl(h).unwrap_or_else(|e| panic!("crawl: {e}"));
                }
            });
        }
    });
}

fn connected(port: u16) -> usize {
    admin(port).connected().len()
}

fn wait_connected(port: u16, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while connected(port) < n {
        assert!(
            Instant::now() < deadline,
            "relay connected to {} of {n} hosts",
            connected(port)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A live consumer calling `on` for each event.
fn consume(
    port: u16,
    stop: Arc<AtomicBool>,
    mut on: impl FnMut(Event) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut ws, _) = tungstenite::connect(format!(
            "ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
        ))
        .expect("subscribe");
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        }
        while !stop.load(Ordering::Relaxed) {
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    if let Ok(e) = frame::decode(&b) {
                        on(e);
                    }
                }
                Ok(_) => {}
                Err(e) if rlay::util::net::ws_timed_out(&e) => {}
                Err(e) => panic!("consumer: {e}"),
            }
        }
    })
}

fn throughput() {
    let sim = Sim::start(&SimConfig {
        hosts: 40,
        accounts_per_host: 5,
        p256_every: 0,
        initial_records: 20,
        ..SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut relay = spawn_relay(dir.path(), port, sim.world().plc_url());
    crawl(port, &sim.hostnames());
    wait_connected(port, 40);
    let mut rng = Rng::new(5);
    let mut planned: Vec<Planned> = Vec::new();
    while planned.len() < 120_000 {
        planned.extend(random_action(sim.world(), &mut rng));
    }
    let n = planned
        .iter()
        .filter(|p| matches!(p, Planned::Valid(..)))
        .count() as u64;
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let g = got.clone();
    let c = consume(port, stop.clone(), move |_| {
        g.fetch_add(1, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = procstat::cpu_seconds(Some(relay.id()));
    let t0 = Instant::now();
    for p in planned {
        sim.world().emit(p);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while got.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "consumer got {} of {n}",
            got.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(Some(relay.id())) - cpu0;
    stop.store(true, Ordering::Relaxed);
    let _ = c.join();
    let _ = relay.kill();
    let _ = relay.wait();
    println!("relay_events_verified: {n}");
    println!("relay_events_per_sec: {:.0}", n as f64 / secs);
    println!("relay_cpu_us_per_event: {:.1}", cpu * 1e6 / n as f64);
}

fn many_hosts() {
    let hosts = 2750;
    let mut sim = Sim::start(&SimConfig {
        hosts,
        accounts_per_host: 1,
        initial_records: 2,
        ..SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut relay = spawn_relay(dir.path(), port, sim.world().plc_url());
    let t = Instant::now();
    crawl(port, &sim.hostnames());
    wait_connected(port, hosts);
    println!(
        "hosts_connected: {hosts} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sim.world().record_emit_times();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, l) = (sim.world().clone(), latencies.clone());
    let c = consume(port, stop.clone(), move |e| {
        let now = Instant::now();
        if let Some((_, _, key)) = LedgerEntry::key_of(&e) {
            let emitted = w.take_emit_time(&key);
            if let Some(at) = emitted {
                l.lock()
                    .expect("lock")
                    .push(now.duration_since(at).as_secs_f64() * 1000.0);
            }
        }
    });
    sim.start_traffic(600.0, 0);
    std::thread::sleep(Duration::from_secs(60));
    let rss = procstat::rss_mib(relay.id());
    sim.stop_traffic();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = c.join();
    let _ = relay.kill();
    let _ = relay.wait();
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("events_delivered_2750_hosts: {}", lat.len());
    println!("rss_mib_2750_hosts: {rss:.0}");
    println!("latency_p50_ms: {:.1}", pct(0.50));
    println!("latency_p99_ms: {:.1}", pct(0.99));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = |part: &str| !args.iter().any(|a| a == "--part") || args.iter().any(|a| a == part);
    if only("throughput") {
        throughput();
    }
    if only("hosts") {
        many_hosts();
    }
}
