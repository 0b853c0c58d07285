//! `cargo bench --bench abuse`: honest traffic (20 hosts × 5 accounts, 300 events/s) through
//! `rlay serve`, first alone, then beside each flood in turn, 60 s each:
//! - `slow_connections`: 20,000 API connections from 200 loopback addresses, each sending a
//!   byte of its request head every 5 s and reconnecting when cut (from two child processes,
//!   for the open-file limit);
//! - `did_flood`: one host sending `#identity` events for 2,000 made-up DIDs a second, whose
//!   lookups take 200 ms each (a slow identity source);
//! - `ping_flood`: 20 hosts sending a WebSocket ping every 2 ms.
//!
//! Per phase it prints the honest events delivered per second and health's p99; then
//! `honest_events_per_sec_under_abuse` (the worst flood phase, with its share of the rate alone),
//! `abuse_rss_growth_mib` (the relay's peak resident memory during the floods minus its peak
//! with honest traffic alone; the ring is kept at 5,000 frames and full before measuring, so
//! that growth is the floods', not the ring filling) and
//! `health_p99_ms_under_abuse` (over every health call during the floods).
//! `-- --secs N` shortens each phase.

mod harness;
mod procstat;

use harness::{arg_secs, consume, crawl, free_port, spawn_relay_with, wait_connected};
use rlay::proto::frame::{Event, IdentityEvent};
use rlay::sim::hostile::{HostilePds, Misbehaviour, made_up_did};
use rlay::sim::{Planned, Sim, SimConfig};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HONEST_RATE: f64 = 300.0;
const SLOW_CONNECTIONS: usize = 20_000;
/// Slow connections per client address (the relay's default per-address cap).
const PER_ADDRESS: usize = 100;

/// One health call's time in ms (5,000 when it failed or took longer).
fn health_ms(port: u16) -> f64 {
    let t = Instant::now();
    let ok = (|| -> std::io::Result<bool> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /xrpc/_health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out.starts_with(b"HTTP/1.1 200"))
    })();
    if ok.unwrap_or(false) {
        t.elapsed().as_secs_f64() * 1000.0
    } else {
        5000.0
    }
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * 0.99) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Runs in the background while a phase lasts: health every 50 ms, the relay's RSS every second.
struct Watch {
    stop: Arc<AtomicBool>,
    health: JoinHandle<Vec<f64>>,
    rss: JoinHandle<f64>,
}

impl Watch {
    fn start(port: u16, pid: u32) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let health = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !s.load(Ordering::Relaxed) {
                v.push(health_ms(port));
                std::thread::sleep(Duration::from_millis(50));
            }
            v
        });
        let s = stop.clone();
        let rss = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(procstat::rss_mib(pid));
                std::thread::sleep(Duration::from_secs(1));
            }
            peak
        });
        Watch { stop, health, rss }
    }

    /// (health times in ms, peak RSS in MiB)
    fn finish(self) -> (Vec<f64>, f64) {
        self.stop.store(true, Ordering::Relaxed);
        (
            self.health.join().unwrap_or_default(),
            self.rss.join().unwrap_or(0.0),
        )
    }
}

/// The client address of slow connection `i`: `PER_ADDRESS` connections per address.
fn slow_source(i: usize) -> Ipv4Addr {
    let a = i / PER_ADDRESS;
    Ipv4Addr::new(127, 3, (a / 250) as u8, (a % 250 + 1) as u8)
}

fn open_slow(relay: SocketAddr, from: Ipv4Addr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(from.into(), 0).into())?;
    sock.connect_timeout(&relay.into(), Duration::from_millis(500))?;
    let mut s: TcpStream = sock.into();
    s.write_all(b"GET /xrpc/_health HTTP/1.1\r\nX-Slow: ")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Slow connections `first..first + count` (run in a child process of its own, since a process
/// may hold only so many sockets): kept open until stdin closes, then prints the most that were
/// open at once.
fn slow_attacker(port: u16, first: usize, count: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        s.store(true, Ordering::Relaxed);
    });
    let relay = SocketAddr::from(([127, 0, 0, 1], port));
    let mut slots: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let mut retry_at = vec![Instant::now(); count];
    let (mut most, mut trickled) = (0, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        // At most 100 new connections per 100 ms round.
        let mut budget = 100;
        let now = Instant::now();
        for i in 0..count {
            if budget == 0 {
                break;
            }
            if slots[i].is_none() && now >= retry_at[i] {
                budget -= 1;
                match open_slow(relay, slow_source(first + i)) {
                    Ok(s) => slots[i] = Some(s),
                    Err(_) => retry_at[i] = now + Duration::from_secs(10),
                }
            }
        }
        if trickled.elapsed() >= Duration::from_secs(5) {
            trickled = Instant::now();
            for i in 0..count {
                let cut = slots[i].as_mut().is_some_and(|s| match s.write(b"a") {
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                });
                if cut {
                    slots[i] = None;
                    retry_at[i] = Instant::now() + Duration::from_secs(10);
                }
            }
        }
        most = most.max(slots.iter().filter(|s| s.is_some()).count());
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{most}");
}

/// `SLOW_CONNECTIONS` slow connections from two child processes until `stop`; the handle
/// returns the most that were open at once.
fn slow_connections(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    let half = SLOW_CONNECTIONS / 2;
    let children: Vec<Child> = (0..2)
        .map(|k| {
            Command::new(std::env::current_exe().expect("this benchmark's path"))
                .args([
                    "--slow-attacker",
                    &port.to_string(),
                    &(k * half).to_string(),
                ])
                .arg(half.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start an attacker process")
        })
        .collect();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        children
            .into_iter()
            .map(|mut c| {
                drop(c.stdin.take());
                let mut out = String::new();
                if let Some(mut o) = c.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                let _ = c.wait();
                out.trim().parse::<usize>().unwrap_or(0)
            })
            .sum()
    })
}

/// Identity events for made-up DIDs from the flood sim's host, 2,000 a second, until `stop`.
fn did_flood(flood: Arc<Sim>, stop: Arc<AtomicBool>) -> JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut n = 0u32;
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let due = (t0.elapsed().as_secs_f64() * 2000.0) as u32;
            while n < due {
                let e = Event::Identity(IdentityEvent {
                    seq: 0,
                    did: made_up_did(n),
                    time: flood.world().time_now(),
                    handle: None,
                });
                flood.world().emit(Planned::Defect(0, e));
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--slow-attacker") {
        let n = |k: usize| args.get(i + k).and_then(|s| s.parse().ok()).unwrap_or(0);
        return slow_attacker(n(1) as u16, n(2), n(3));
    }
    let secs = arg_secs(60.0);
    let mut sim = Sim::start(&SimConfig {
        hosts: 20,
        accounts_per_host: 5,
        ..SimConfig::default()
    })
    .expect("sim");
    let flood = Arc::new(
        Sim::start(&SimConfig {
            hosts: 1,
            accounts_per_host: 0,
            ..SimConfig::default()
        })
        .expect("flood sim"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    // A small ring, filled before measuring: memory growth is then the floods', not the ring's.
    let mut relay = spawn_relay_with(
        dir.path(),
        port,
        sim.world().plc_url(),
        &["--ring-capacity=5000"],
    );
    let pid = relay.id();
    let mut hosts = sim.hostnames();
    hosts.extend(flood.hostnames());
    crawl(port, &hosts);
    wait_connected(port, hosts.len());

    let got = Arc::new(AtomicU64::new(0));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let g = got.clone();
    let consumer = consume(port, stop_consumer.clone(), move |_| {
        g.fetch_add(1, Ordering::Relaxed);
    });
    sim.start_traffic(HONEST_RATE, 0);
    std::thread::sleep(Duration::from_secs(25));

    // One phase: the flood `start` returns, for `secs`; (honest events/s, health times, peak RSS).
    let phase = |name: &str, start: &dyn Fn(Arc<AtomicBool>) -> Box<dyn FnOnce() -> String>| {
        let stop = Arc::new(AtomicBool::new(false));
        let finish = start(stop.clone());
        let watch = Watch::start(port, pid);
        let n0 = got.load(Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let rate = (got.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let (mut health, rss) = watch.finish();
        let note = finish();
        println!("{name}_honest_events_per_sec: {rate:.0} events/s");
        println!("{name}_health_p99_ms: {:.1} ms", p99(&mut health));
        println!("{name}_rss_peak_mib: {rss:.0} MiB");
        if !note.is_empty() {
            println!("{note}");
        }
        (rate, health, rss)
    };

    let (alone, _, rss_alone) = phase("no_abuse", &|_| Box::new(String::new));
    let mut floods = Vec::new();
    floods.push(phase("slow_connections", &|stop| {
        let h = slow_connections(port, stop);
        Box::new(move || {
            format!(
                "slow_connections_open_max: {} connections",
                h.join().unwrap_or_default()
            )
        })
    }));
    let world = sim.world().clone();
    floods.push(phase("did_flood", &|stop| {
        world.plc().slow_unknown(Duration::from_millis(200));
        let h = did_flood(flood.clone(), stop);
        let w = world.clone();
        Box::new(move || {
            w.plc().slow_unknown(Duration::ZERO);
            format!(
                "did_flood_events_sent: {} events",
                h.join().unwrap_or_default()
            )
        })
    }));
    floods.push(phase("ping_flood", &|_| {
        let pds: Vec<HostilePds> = (0..20)
            .map(|_| HostilePds::start(Misbehaviour::PingFlood))
            .collect();
        crawl(
            port,
            &pds.iter().map(HostilePds::hostname).collect::<Vec<_>>(),
        );
        Box::new(move || {
            let cut: usize = pds.iter().map(HostilePds::closed).sum();
            drop(pds);
            format!("ping_flood_connections_cut: {cut} connections")
        })
    }));

    sim.stop_traffic();
    stop_consumer.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    let _ = relay.kill();
    let _ = relay.wait();

    let worst = floods.iter().map(|f| f.0).fold(f64::INFINITY, f64::min);
    let peak = floods.iter().map(|f| f.2).fold(0.0, f64::max);
    let mut health: Vec<f64> = floods.iter().flat_map(|f| f.1.iter().copied()).collect();
    println!("honest_events_per_sec_alone: {alone:.0} events/s");
    println!("honest_events_per_sec_under_abuse: {worst:.0} events/s");
    println!("honest_share_under_abuse: {:.0} %", 100.0 * worst / alone);
    println!(
        "abuse_rss_growth_mib: {:.0} MiB",
        (peak - rss_alone).max(0.0)
    );
    println!("health_p99_ms_under_abuse: {:.1} ms", p99(&mut health));
}
