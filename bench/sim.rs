//! `cargo bench --bench sim`: how fast the simulated network emits pre-signed events.
//!
//! 20 hosts × 10 accounts. N events of the realistic mix are generated and signed first (the
//! untimed phase; its rate is printed for information), then emitted to one live subscriber per
//! host running in a child process. `sim_events_per_sec` is events per CPU-second of the
//! simulator during emission, i.e. what one core sustains.

mod wire;

mod procstat;

use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{Planned, Sim, SimConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

const HOSTS: usize = 20;
const EVENTS: usize = 150_000;

/// Child mode: subscribe to every host and count frames until `total` arrived.
fn readers(hosts: &[String], total: usize) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for h in hosts {
        let mut r = wire::subscribe(h);
        let c = count.clone();
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok((opcode, _)) = wire::read_frame(&mut r, &mut buf) {
                if opcode == 2 {
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
        planned.extend(random_action(sim.world(), &mut rng));
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
        .world()
        .hosts()
        .iter()
        .map(|h| h.subscribers())
        .sum::<u64>()
        < HOSTS as u64
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let n = planned.len();
    let cpu0 = procstat::cpu_seconds(None);
    let start = Instant::now();
    for p in planned {
        sim.world().emit(p);
    }
    line.clear();
    out.read_line(&mut line).expect("done");
    let wall = start.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(None) - cpu0;
    let _ = child.wait();
    println!("sim_generate_events_per_sec: {:.0}", n as f64 / gen_secs);
    println!("sim_emit_wall_events_per_sec: {:.0}", n as f64 / wall);
    println!("sim_events_per_sec: {:.0}", n as f64 / cpu.max(0.01));
}
