//! `cargo bench --bench overload`: offered twice what it can verify for a minute, the relay
//! loses nothing (overload costs latency, not events) and its latency recovers afterwards.
//!
//! 20 hosts × 5 accounts, k256, strict validation, `rlay serve` as its own process.
//! 1. Latency before: 100 events/s for 15 s (`latency_p50_ms_before`, `latency_p99_ms_before`).
//! 2. Capacity: 20,000 events signed ahead and released at once; the consumer's rate is the
//!    relay's capacity C (`capacity_events_per_sec`).
//! 3. Overload: events signed ahead are emitted at 2·C for `--secs` (60) s. Prints
//!    `offered_events_per_sec`, `delivered_events_per_sec_during_overload`,
//!    `overload_drain_secs` (from the end of the offer until the last event arrived), and
//!    `overload_events_lost` / `overload_events_duplicated` (valid events emitted vs received).
//! 4. Latency after: as in 1 (`latency_p50_ms_after`, `latency_p99_ms_after`).

mod harness;
mod procstat;

use harness::{arg_secs, consume, k256_network, plan, valid, wait_for};
use rlay::sim::traffic::Rng;
use rlay::sim::{LedgerEntry, Planned, Sim};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Key = (String, &'static str, String);

/// What the consumer saw: how often each event arrived, and emit → receive latencies (ms) of
/// those the sim timed.
#[derive(Default)]
struct Seen {
    counts: HashMap<Key, u32>,
    latencies: Vec<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Emits `planned` at `rate` a second; returns how long that took in seconds. (Everything is
/// planned first: events planned and then not emitted would break their accounts' chains.)
fn emit_paced(sim: &Sim, planned: Vec<Planned>, rate: f64) -> f64 {
    let t0 = Instant::now();
    for (i, p) in planned.into_iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sim.world().emit(p);
    }
    t0.elapsed().as_secs_f64()
}

/// 100 events/s for 15 s, timed from emit to receive; prints p50 and p99 as `…_{label}`.
fn latency(sim: &Sim, rng: &mut Rng, seen: &Mutex<Seen>, got: &AtomicU64, label: &str) {
    let planned = plan(sim, rng, 1500);
    let n = valid(&planned) as u64;
    seen.lock().expect("seen").latencies.clear();
    let base = got.load(Ordering::Relaxed);
    emit_paced(sim, planned, 100.0);
    wait_for(got, base + n, 60);
    let mut lat = std::mem::take(&mut seen.lock().expect("seen").latencies);
    println!("latency_p50_ms_{label}: {:.1} ms", pct(&mut lat, 0.50));
    println!("latency_p99_ms_{label}: {:.1} ms", pct(&mut lat, 0.99));
}

fn main() {
    let secs = arg_secs(60.0);
    let (sim, _dir, port, relay) = k256_network(20);
    sim.world().record_emit_times();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let got = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (w, s, g) = (sim.world().clone(), seen.clone(), got.clone());
    let consumer = consume(port, stop.clone(), move |e| {
        let now = Instant::now();
        if let Some(key) = LedgerEntry::key_of(&e) {
            let mut seen = s.lock().expect("seen");
            if let Some(at) = w.take_emit_time(&key.2) {
                seen.latencies
                    .push(now.duration_since(at).as_secs_f64() * 1000.0);
            }
            *seen.counts.entry(key).or_default() += 1;
        }
        g.fetch_add(1, Ordering::Relaxed);
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut rng = Rng::new(9);
    latency(&sim, &mut rng, &seen, &got, "before");

    let burst = plan(&sim, &mut rng, 20_000);
    let n = valid(&burst) as u64;
    let base = got.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for p in burst {
        sim.world().emit(p);
    }
    let capacity = n as f64
        / wait_for(&got, base + n, 180)
            .duration_since(t0)
            .as_secs_f64();
    println!("capacity_events_per_sec: {capacity:.0} events/s");

    let rate = 2.0 * capacity;
    let t_plan = Instant::now();
    let offer = plan(&sim, &mut rng, (rate * secs) as usize);
    println!(
        "overload_planned: {} events in {:.0} s",
        offer.len(),
        t_plan.elapsed().as_secs_f64()
    );
    let n = valid(&offer) as u64;
    let ledger_from = sim.world().ledger().len();
    let base = got.load(Ordering::Relaxed);
    let cpu0 = procstat::cpu_seconds(Some(relay.0.id()));
    let t0 = Instant::now();
    let count = offer.len();
    let offered_for = emit_paced(&sim, offer, rate);
    let during = (got.load(Ordering::Relaxed) - base) as f64 / offered_for;
    let done = wait_for(&got, base + n, 600);
    let cpu = procstat::cpu_seconds(Some(relay.0.id())) - cpu0;
    println!(
        "offered_events_per_sec: {:.0} events/s",
        count as f64 / offered_for
    );
    println!("delivered_events_per_sec_during_overload: {during:.0} events/s");
    println!(
        "overload_drain_secs: {:.1} s",
        done.duration_since(t0).as_secs_f64() - offered_for
    );
    println!(
        "overload_relay_cpu_us_per_event: {:.1} us",
        cpu * 1e6 / n as f64
    );
    // Every valid event emitted during the overload, exactly once.
    std::thread::sleep(Duration::from_secs(2));
    let (mut lost, mut duplicated) = (0, 0);
    {
        let seen = seen.lock().expect("seen");
        for e in &sim.world().ledger()[ledger_from..] {
            match seen
                .counts
                .get(&(e.did.clone(), e.kind, e.key.clone()))
                .copied()
                .unwrap_or(0)
            {
                0 => lost += 1,
                1 => {}
                _ => duplicated += 1,
            }
        }
    }
    println!("overload_events_lost: {lost} events");
    println!("overload_events_duplicated: {duplicated} events");

    latency(&sim, &mut rng, &seen, &got, "after");
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    drop(relay);
}
