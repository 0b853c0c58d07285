//! The `rlay` binary: `serve`, `sim`, `migrate`, `audit-collections`.

use rlay::cli::Args;

/// mimalloc: per-thread free lists suit thousands of mostly idle host threads, and it returns
/// memory to the OS promptly (zlay found the allocator choice decisive for its footprint).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rlay::config::Config;
use std::process::ExitCode;

const USAGE: &str = "rlay - an AT Protocol relay

usage:
  rlay serve                 run the relay (configuration: environment or --flags, see README)
  rlay migrate               apply database migrations and exit
  rlay sim [options]         run a simulated network of PDS hosts and a PLC directory
      --hosts N                 hosts (default 3)
      --accounts-per-host A     accounts per host (default 2)
      --rate R                  events/s across all hosts (default 20)
      --plc-listen ADDR         PLC directory address (default 127.0.0.1:2582)
      --first-port P            hosts listen on localhost:P, P+1, ... (default 2600; 0 = any)
      --crawl URL               ask this relay to crawl every host (admin requestCrawl)
      --admin-password PW       the relay's admin password (with --crawl)
      --fault KIND:FRACTION     give a fraction of the hosts a fault (repeatable)
            --prefill N               sign N events before emitting (for high rates)
      --seed S                  seed for keys and traffic (default 1)
    rlay audit-collections --against URL [--sample N] [--relay URL]
                             compare this relay's listReposByCollection with another
                             relay's for N collections (default 20); exit 1 on differences
      --relay URL               this relay (default http://<RELAY_API_LISTEN>)
  rlay version



Every RELAY_* variable has a flag: RELAY_API_LISTEN=... is --api-listen ...";

fn main() -> ExitCode {
    // No transparent huge pages for this process: the allocator asks for them, and with one
    // thread per host every thread's first allocation would pin a whole 2 MiB page (4 GB of RSS
    // at 2,750 hosts instead of a few hundred MB).
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "warning: could not opt out of transparent huge pages ({e}); memory use will be higher"
        );
    }
    let args = Args::parse(std::env::args().skip(1));
    let asked_for_help = args.has("help")
        || matches!(args.command.as_deref(), Some("help" | "-h"))
        || args.positional.iter().any(|p| p == "-h");
    if asked_for_help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.has("version") {
        println!("rlay {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = check_args(&args) {
        eprintln!("{e}\n\nrun `rlay --help` for the options");
        return ExitCode::from(2);
    }
    let cfg = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    rlay::logging::init(&cfg.log_level);
    match args.command.as_deref() {
        Some("migrate") => match rlay::store::open(cfg.database_url.as_deref(), &cfg.data_dir) {
            Ok(s) => {
                println!("migrations applied ({} store)", s.backend());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("migrate failed: {e}");
                ExitCode::FAILURE
            }
        },
        Some("serve") => serve(&cfg),
        Some("sim") => run_sim(&args),
        Some("audit-collections") => audit(&args, &cfg),
        Some("version") => {
            println!("rlay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            println!("{USAGE}");
            ExitCode::from(if args.command.is_none() { 0 } else { 2 })
        }
    }
}

/// Rejects options the command does not take, before anything starts: a mistyped flag would
/// otherwise be ignored and the command would run with a default the operator did not want.
fn check_args(args: &Args) -> Result<(), String> {
    let own: &[&str] = match args.command.as_deref() {
        Some("sim") => &[
            "hosts",
            "accounts-per-host",
            "rate",
            "plc-listen",
            "first-port",
            "crawl",
            "admin-password",
            "fault",
            "prefill",
            "seed",
        ],
        Some("audit-collections") => &["against", "sample", "relay"],
        _ => &[],
    };
    let config: Vec<String> = rlay::config::VARS
        .iter()
        .map(|v| rlay::config::flag_name(v.0))
        .collect();
    let mut known: Vec<&str> = config.iter().map(String::as_str).collect();
    known.extend_from_slice(own);
    let command = args
        .command
        .as_deref()
        .map_or("rlay".to_owned(), |c| format!("rlay {c}"));
    if let Some(flag) = args.unknown_flag(&known) {
        return Err(format!("{command}: unknown option --{flag}"));
    }
    if let Some(extra) = args.positional.first() {
        return Err(format!("{command}: unexpected argument {extra:?}"));
    }
    Ok(())
}

fn run_sim(args: &Args) -> ExitCode {
    use rlay::sim::{Sim, SimConfig, fault};
    let num = |name: &str, default: f64| -> Result<f64, String> {
        args.flag(name).map_or(Ok(default), |v| {
            v.parse::<f64>()
                .map_err(|_| format!("--{name} must be a number, got {v:?}"))
        })
    };
    type SimOpts = (SimConfig, f64, usize, Vec<(fault::FaultKind, f64)>);
    let parsed = (|| -> Result<SimOpts, String> {
        let cfg = SimConfig {
            hosts: num("hosts", 3.0)? as usize,
            accounts_per_host: num("accounts-per-host", 2.0)? as usize,
            plc_listen: args
                .flag("plc-listen")
                .unwrap_or("127.0.0.1:2582")
                .to_owned(),
            first_port: num("first-port", 2600.0)? as u16,
            seed: num("seed", 1.0)? as u64,
            ..SimConfig::default()
        };
        let faults = args
            .all("fault")
            .into_iter()
            .map(fault::parse_spec)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            cfg,
            num("rate", 20.0)?,
            num("prefill", 0.0)? as usize,
            faults,
        ))
    })();
    let (cfg, rate, prefill, faults) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rlay sim: {e}");
            return ExitCode::from(2);
        }
    };
    let mut sim = match Sim::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "rlay sim: cannot start ({e}); are ports {}.. and {} free?",
                cfg.first_port, cfg.plc_listen
            );
            return ExitCode::FAILURE;
        }
    };
    for (host, kind) in sim.apply_faults(&faults) {
        log::info!("sim: {host} has fault {kind}");
    }
    println!(
        "{}",
        serde_json::json!({"plc": sim.world.plc_url, "hosts": sim.hostnames()})
    );
    if let Some(relay) = args.flag("crawl") {
        let pw = args.flag("admin-password").unwrap_or("");
        crawl(relay, pw, &sim.hostnames());
    }
    sim.start_traffic(rate, prefill);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(10));
        log::info!("sim: {} events emitted", sim.emitted());
    }
}

/// Asks a relay to crawl each host, retrying while the relay comes up.
fn crawl(relay: &str, password: &str, hosts: &[String]) {
    use base64::Engine;
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .new_agent();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
    );
    let url = format!("{}/admin/pds/requestCrawl", relay.trim_end_matches('/'));
    for h in hosts {
        let mut ok = false;
        for attempt in 0..30 {
            match agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(serde_json::json!({"hostname": h}))
            {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) => log::warn!(
                    "sim: requestCrawl for {h} answered {} (attempt {attempt})",
                    r.status()
                ),
                Err(e) => log::warn!("sim: requestCrawl for {h} failed: {e} (attempt {attempt})"),
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        if !ok {
            log::error!(
                "sim: the relay at {relay} never accepted {h}; check --admin-password and that it allows insecure hosts"
            );
        }
    }
}

fn audit(args: &Args, cfg: &Config) -> ExitCode {
    let Some(against) = args.flag("against") else {
        eprintln!("audit-collections: --against URL is required (e.g. https://bsky.network)");
        return ExitCode::from(2);
    };
    let n = match args.flag("sample").map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("audit-collections: --sample must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let relay = args
        .flag("relay")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("http://{}", cfg.api_listen.replace("0.0.0.0", "127.0.0.1")));
    let Some(password) = cfg.admin_passwords.first() else {
        eprintln!(
            "audit-collections: set RELAY_ADMIN_PASSWORD (the collection list comes from the relay's admin API)"
        );
        return ExitCode::from(2);
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    match rlay::index::audit::run(
        relay.trim_end_matches('/'),
        against.trim_end_matches('/'),
        n,
        password,
        seed,
    ) {
        Ok(report) => {
            print!("{}", report.render(50));
            if report.differences() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("audit-collections: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(cfg: &Config) -> ExitCode {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("cannot install a handler for signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let relay = match rlay::relay::Relay::start(cfg, rlay::relay::Parts::default()) {
        Ok(r) => r,
        Err(e) => {
            log::error!("relay failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "rlay listening on {} (metrics on {})",
        relay.api_addr,
        relay
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    relay.shutdown();
    ExitCode::SUCCESS
}
