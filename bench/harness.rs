//! What the whole-relay benchmarks share: `rlay serve` as a child process, admin calls, and a
//! live firehose consumer. Included by each bench with `mod harness;`.
#![allow(dead_code)]

use rlay::proto::frame::{self, Event};
use rlay::sim::admin::RelayAdmin;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

pub const PW: &str = "bench-pw";

pub fn free_port() -> u16 {
    rlay::sim::admin::free_port().expect("a free loopback port")
}

/// `rlay serve` on `port` with the bench defaults and `extra` flags; returns once it is ready.
/// The metrics port is off unless `extra` sets `--metrics-listen=`.
pub fn spawn_relay_with(dir: &std::path::Path, port: u16, plc: &str, extra: &[&str]) -> Child {
    let metrics = if extra.iter().any(|a| a.starts_with("--metrics-listen")) {
        None
    } else {
        Some("--metrics-listen=")
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlay"))
        .arg("serve")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--api-listen=127.0.0.1:{port}"))
        .args(metrics)
        .arg(format!("--admin-password={PW}"))
        .arg(format!("--plc-host={plc}"))
        .arg("--bootstrap-host=")
        .arg("--allow-insecure-hosts=true")
        .arg("--trusted-domains=localhost")
        .args(extra)
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

/// A gauge or counter's value from the relay's metrics port (NaN if absent).
pub fn metric(metrics_port: u16, name: &str) -> f64 {
    let body = ureq::get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn admin(port: u16) -> RelayAdmin {
    RelayAdmin::new(&format!("http://127.0.0.1:{port}"), PW)
}

pub fn spawn_relay(dir: &std::path::Path, port: u16, plc: &str) -> Child {
    spawn_relay_with(dir, port, plc, &[])
}

/// Admin requestCrawl for every host, from a few threads.
pub fn crawl(port: u16, hosts: &[String]) {
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

pub fn connected(port: u16) -> usize {
    admin(port).connected().len()
}

pub fn wait_connected(port: u16, n: usize) {
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
pub fn consume(
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

/// The relay process, killed when dropped (also when a benchmark panics, so no relay outlives
/// it holding its output open).
pub struct RelayProcess(pub Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `--secs N` argument, or `default`.
pub fn arg_secs(default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The throughput set-up: `hosts` × 5 k256 accounts of 20 records each, crawled by a relay.
pub fn k256_network(hosts: usize) -> (rlay::sim::Sim, tempfile::TempDir, u16, RelayProcess) {
    k256_network_with(hosts, &[])
}

/// [`k256_network`] with `extra` relay flags.
pub fn k256_network_with(
    hosts: usize,
    extra: &[&str],
) -> (rlay::sim::Sim, tempfile::TempDir, u16, RelayProcess) {
    let sim = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts,
        accounts_per_host: 5,
        p256_every: 0,
        initial_records: 20,
        ..rlay::sim::SimConfig::default()
    })
    .expect("sim");
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let relay = RelayProcess(spawn_relay_with(
        dir.path(),
        port,
        sim.world().plc_url(),
        extra,
    ));
    crawl(port, &sim.hostnames());
    wait_connected(port, hosts);
    (sim, dir, port, relay)
}

/// At least `n` events of the realistic mix, signed ahead.
pub fn plan(
    sim: &rlay::sim::Sim,
    rng: &mut rlay::sim::traffic::Rng,
    n: usize,
) -> Vec<rlay::sim::Planned> {
    let mut planned = Vec::with_capacity(n + 16);
    while planned.len() < n {
        planned.extend(rlay::sim::traffic::random_action(sim.world(), rng));
    }
    planned
}

/// How many of them are valid (what the relay must deliver).
pub fn valid(planned: &[rlay::sim::Planned]) -> usize {
    planned
        .iter()
        .filter(|p| matches!(p, rlay::sim::Planned::Valid(..)))
        .count()
}

/// Waits until the consumer's count reaches `n`; the time it did.
pub fn wait_for(got: &std::sync::atomic::AtomicU64, n: u64, secs: u64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while got.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "consumer got {} of {n} events",
            got.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Instant::now()
}

/// What one throughput run measured.
pub struct Throughput {
    pub events: u64,
    pub secs: f64,
    pub cpu_us_per_event: f64,
    /// Of that, what the relay's Jetstream consumer threads used (they also encode each event
    /// once, for all of them).
    pub jetstream_cpu_us_per_event: f64,
}

/// The relay bench's throughput run: 40 hosts × 5 k256 accounts, the realistic mix signed ahead
/// and released at once, read by one firehose consumer and by one Jetstream consumer per entry of
/// `jetstream` (its query string). The clock stops once the firehose consumer has every event and
/// the Jetstream consumers have gone quiet; the CPU is the relay process's alone. `firehose`
/// more firehose consumers read along (a yardstick for what a consumer costs). `relay_flags`
/// go to `rlay serve`.
pub fn throughput(jetstream: &[&str], firehose: usize, relay_flags: &[&str]) -> Throughput {
    let (sim, _dir, port, relay) = k256_network_with(40, relay_flags);
    let mut rng = rlay::sim::traffic::Rng::new(5);
    let planned = plan(&sim, &mut rng, 120_000);
    let n = valid(&planned) as u64;
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let g = got.clone();
    let c = consume(port, stop.clone(), move |_| {
        g.fetch_add(1, Ordering::Relaxed);
    });
    let readers: Vec<_> = jetstream
        .iter()
        .map(|q| jetstream_reader(port, q, stop.clone()))
        .collect();
    let more: Vec<_> = (0..firehose)
        .map(|_| consume(port, stop.clone(), |_| {}))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = crate::procstat::cpu_seconds(Some(relay.0.id()));
    let js0 = crate::procstat::threads_cpu_seconds(Some(relay.0.id()), "jetstream");
    let t0 = Instant::now();
    for p in planned {
        sim.world().emit(p);
    }
    let secs = wait_for(&got, n, 180).duration_since(t0).as_secs_f64();
    let total = || -> u64 { readers.iter().map(|(n, _)| n.load(Ordering::Relaxed)).sum() };
    let mut last = total();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = total();
        if now == last {
            break;
        }
        last = now;
    }
    let cpu = crate::procstat::cpu_seconds(Some(relay.0.id())) - cpu0;
    let js = crate::procstat::threads_cpu_seconds(Some(relay.0.id()), "jetstream") - js0;
    stop.store(true, Ordering::Relaxed);
    let _ = c.join();
    for h in more {
        let _ = h.join();
    }
    for (count, h) in readers {
        let _ = h.join();
        assert!(
            count.load(Ordering::Relaxed) > 0,
            "a Jetstream consumer got nothing"
        );
    }
    drop(relay);
    Throughput {
        events: n,
        secs,
        cpu_us_per_event: cpu * 1e6 / n as f64,
        jetstream_cpu_us_per_event: js * 1e6 / n as f64,
    }
}

/// A Jetstream consumer on `/subscribe{query}` counting the messages it reads.
pub fn jetstream_reader(
    port: u16,
    query: &str,
    stop: Arc<AtomicBool>,
) -> (
    Arc<std::sync::atomic::AtomicU64>,
    std::thread::JoinHandle<()>,
) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}/subscribe{query}"))
        .expect("jetstream subscribe");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    }
    let c = count.clone();
    let h = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match ws.read() {
                Ok(Message::Text(_) | Message::Binary(_)) => {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) if rlay::util::net::ws_timed_out(&e) => {}
                Err(e) => panic!("jetstream consumer: {e}"),
            }
        }
    });
    (count, h)
}

/// The bare k256 check (one signature over a 32-byte digest with a known key: the `k256` crate's
/// own `verify_prehash`, the floor), in µs of CPU, timed on every core at once: the relay
/// run keeps all cores busy, and on a VM with shared (hyper-threaded) cores a check costs more
/// then than on one core of an idle machine.
pub fn signature_only_us() -> f64 {
    on_every_core(|| {
        use k256::ecdsa::signature::hazmat::PrehashVerifier;
        let (key, cases) = signature_cases();
        let vk =
            k256::ecdsa::VerifyingKey::from_sec1_bytes(&key.public().compressed()).expect("key");
        let sigs: Vec<([u8; 32], k256::ecdsa::Signature)> = cases
            .iter()
            .map(|(d, s)| (*d, k256::ecdsa::Signature::from_slice(s).expect("sig")))
            .collect();
        time_per_call(|| {
            for (d, sig) in &sigs {
                vk.verify_prehash(d, sig)
                    .expect("calibration signature verifies");
            }
            sigs.len()
        })
    })
}

/// The same check as the relay makes it (`PublicKey::verify_digest`: rlay's own secp256k1
/// verifier on k256's field arithmetic), timed the same way.
pub fn signature_rlay_us() -> f64 {
    on_every_core(|| {
        let (key, cases) = signature_cases();
        let public = key.public();
        time_per_call(|| {
            for (d, sig) in &cases {
                public
                    .verify_digest(d, sig)
                    .expect("calibration signature verifies");
            }
            cases.len()
        })
    })
}

fn on_every_core(f: fn() -> f64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let each: Vec<f64> = (0..cores)
        .map(|_| std::thread::spawn(f))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("calibration thread"))
        .collect();
    each.iter().sum::<f64>() / each.len() as f64
}

/// A digest and its compact signature.
type SignedDigest = ([u8; 32], [u8; 64]);

fn signature_cases() -> (rlay::proto::crypto::PrivateKey, Vec<SignedDigest>) {
    use rlay::proto::crypto::{Curve, PrivateKey};
    use sha2::Digest as _;
    let key = PrivateKey::from_seed(Curve::K256, b"calibration");
    let cases = (0..64u32)
        .map(|i| {
            let msg = format!("commit {i}");
            let digest: [u8; 32] = sha2::Sha256::digest(msg.as_bytes()).into();
            (digest, key.sign(msg.as_bytes()))
        })
        .collect();
    (key, cases)
}

/// µs per check of `round` (which returns how many checks it made), over 2 s.
fn time_per_call(mut round: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        n += round();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}
