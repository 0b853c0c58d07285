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

mod harness;
mod procstat;

use harness::{consume, crawl, free_port, spawn_relay, wait_connected};
use rlay::sim::{LedgerEntry, Sim, SimConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn throughput() {
    let t = harness::throughput(&[], 0);
    println!("relay_events_verified: {}", t.events);
    println!("relay_events_per_sec: {:.0}", t.events as f64 / t.secs);
    println!("relay_cpu_us_per_event: {:.1}", t.cpu_us_per_event);
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
