//! `cargo bench --bench sim`: how fast the simulated network emits pre-signed events.
//!
//! 20 hosts × 10 accounts. N events of the realistic mix are generated and signed first (the
//! untimed phase; its rate is printed for information), then emitted to one live subscriber per
//! host running in a child process. `sim_events_per_sec` is events per CPU-second of the
//! simulator during emission, i.e. what one core sustains.

use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{Planned, Sim, SimConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

const HOSTS: usize = 20;
const EVENTS: usize = 150_000;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    (f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0))
        / 100.0
}

/// Child mode: subscribe to every host and count frames until `total` arrived.
fn readers(hosts: &[String], total: usize) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for h in hosts {
        let mut s = TcpStream::connect(h.replace("localhost", "127.0.0.1")).expect("connect");
        write!(s, "GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nHost: {h}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("handshake");
        let mut r = BufReader::with_capacity(1 << 20, s);
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).expect("response");
            if line == "\r\n" {
                break;
            }
        }
        let c = count.clone();
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let mut h = [0u8; 2];
                if r.read_exact(&mut h).is_err() {
                    return;
                }
                let mut len = u64::from(h[1] & 0x7f);
                if len == 126 {
                    let mut e = [0u8; 2];
                    r.read_exact(&mut e).expect("len");
                    len = u64::from(u16::from_be_bytes(e));
                } else if len == 127 {
                    let mut e = [0u8; 8];
                    r.read_exact(&mut e).expect("len");
                    len = u64::from_be_bytes(e);
                }
                let len = len as usize;
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                r.read_exact(&mut buf[..len]).expect("payload");
                if h[0] & 0x0f == 2 {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    println!("ready");
    while count.load(std::sync::atomic::Ordering::Relaxed) < total {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    println!("done");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--readers") {
        let total = args[i + 1].parse().expect("total");
        readers(&args[i + 2..], total);
        return;
    }
    let sim = Sim::start(&SimConfig {
        hosts: HOSTS,
        accounts_per_host: 10,
        initial_records: 20,
        ..SimConfig::default()
    })
    .expect("sim");
    let mut rng = Rng::new(99);
    let gen_start = Instant::now();
    let mut planned: Vec<Planned> = Vec::with_capacity(EVENTS);
    while planned.len() < EVENTS {
        planned.extend(random_action(&sim.world, &mut rng));
    }
    let gen_secs = gen_start.elapsed().as_secs_f64();

    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--readers")
        .arg(planned.len().to_string())
        .args(sim.hostnames())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn readers");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    while sim
        .world
        .hosts
        .iter()
        .map(|h| h.subscribers.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>()
        < HOSTS as u64
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let n = planned.len();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    for p in planned {
        sim.world.emit(p);
    }
    line.clear();
    out.read_line(&mut line).expect("done");
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let _ = child.wait();
    println!("sim_generate_events_per_sec: {:.0}", n as f64 / gen_secs);
    println!("sim_emit_wall_events_per_sec: {:.0}", n as f64 / wall);
    println!("sim_events_per_sec: {:.0}", n as f64 / cpu.max(0.01));
}
