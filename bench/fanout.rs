//! `cargo bench --bench fanout`: the relay's firehose fan-out. The relay (sequencer, disk log,
//! ring, consumer threads) runs in this process; 50 WebSocket consumers run in a child process,
//! so the CPU time measured here is the relay's alone.
//!
//! Run 1 publishes ~1 KB frames at a fixed 10,000 events/s for 10 s; run 2 publishes as fast as
//! the sequencer takes them. Every consumer must receive every frame, in order (checked by the
//! child), or the benchmark fails.
//!
//! Run 3 has 1,000 consumers at 1,000 events/s for 10 s; it runs first, and alone with
//! `-- --part many` (`--part fifty`: runs 1 and 2).
//!
//! Prints `fanout_deliveries_per_sec`, `fanout_cpu_us_per_delivery` (run 1),
//! `fanout_max_deliveries_per_sec`, `fanout_max_cpu_us_per_delivery` (run 2) and
//! `fanout_1000_consumers_deliveries_per_sec`, `fanout_1000_consumers_cpu_us_per_delivery` (run 3),
//! with run 3's CPU split into what the relay's code spent (`..._user_us_per_delivery`) and what
//! the kernel spent for it (`..._kernel_us_per_delivery`: socket writes, which on loopback
//! include the receiving side's TCP work, and parking and waking threads).

mod feed;
mod wire;

mod procstat;

use bytes::Bytes;
use rlay::proto::frame::{Event, SyncEvent};
use std::time::Instant;

const CONSUMERS: usize = 50;
const RATE: u64 = 10_000;
const SECONDS: u64 = 10;
/// Run 3: many consumers at the network's rate.
const MANY: usize = 1000;
const MANY_RATE: u64 = 1000;

fn event(n: u64) -> Event {
    Event::Sync(SyncEvent {
        seq: 0,
        did: format!("did:plc:fanout{n:016}"),
        blocks: Bytes::from(vec![(n % 251) as u8; 900]),
        rev: "3l2222222222a".into(),
        time: "2025-01-01T00:00:00.000Z".into(),
    })
}

/// What one run measured.
struct Figures {
    deliveries_per_sec: f64,
    /// Relay CPU per delivery, user and system.
    user_us: f64,
    kernel_us: f64,
}

impl Figures {
    fn cpu_us(&self) -> f64 {
        self.user_us + self.kernel_us
    }
}

fn run(consumers: usize, rate: Option<u64>, count: u64) -> Figures {
    let (_dir, stream, addr) = feed::serve();
    let clients = feed::Clients::spawn(
        &[
            "--clients",
            &addr.to_string(),
            &consumers.to_string(),
            &count.to_string(),
        ],
        "",
        consumers,
        &stream,
    );
    let (user0, system0) = procstat::user_system_seconds(None);
    let start = Instant::now();
    for n in 1..=count {
        stream.sequencer().emit(&event(n));
        if let Some(r) = rate {
            feed::pace(start, n, r);
        }
    }
    clients.finish("every consumer received every frame");
    let elapsed = start.elapsed().as_secs_f64();
    let (user1, system1) = procstat::user_system_seconds(None);
    let deliveries = (consumers as u64 * count) as f64;
    stream.shutdown();
    Figures {
        deliveries_per_sec: deliveries / elapsed,
        user_us: (user1 - user0) * 1e6 / deliveries,
        kernel_us: (system1 - system0) * 1e6 / deliveries,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        let n = args[i + 2].parse().expect("n");
        let count = args[i + 3].parse().expect("count");
        wire::check_consumers(&args[i + 1], n, None, count);
        return;
    }
    // `--part many` runs run 3 alone (to profile it).
    let only = |part: &str| !args.iter().any(|a| a == "--part") || args.iter().any(|a| a == part);
    if only("many") {
        let many = run(MANY, Some(MANY_RATE), MANY_RATE * SECONDS);
        println!("fanout_1000_consumers_publish_rate: {MANY_RATE} events/s");
        println!(
            "fanout_1000_consumers_deliveries_per_sec: {:.0}",
            many.deliveries_per_sec
        );
        println!(
            "fanout_1000_consumers_cpu_us_per_delivery: {:.3}",
            many.cpu_us()
        );
        println!(
            "fanout_1000_consumers_user_us_per_delivery: {:.3}",
            many.user_us
        );
        println!(
            "fanout_1000_consumers_kernel_us_per_delivery: {:.3}",
            many.kernel_us
        );
    }
    if !only("fifty") {
        return;
    }
    let paced = run(CONSUMERS, Some(RATE), RATE * SECONDS);
    println!("fanout_consumers: {CONSUMERS}");
    println!("fanout_publish_rate: {RATE} events/s");
    println!("fanout_deliveries_per_sec: {:.0}", paced.deliveries_per_sec);
    println!("fanout_cpu_us_per_delivery: {:.3}", paced.cpu_us());
    let max = run(CONSUMERS, None, 100_000);
    println!(
        "fanout_max_deliveries_per_sec: {:.0}",
        max.deliveries_per_sec
    );
    println!("fanout_max_cpu_us_per_delivery: {:.3}", max.cpu_us());
}
