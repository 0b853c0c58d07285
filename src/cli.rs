//! The command line (`clap`): `serve`, `migrate`, `sim`, `audit-collections`, `version`.
//! Every relay setting is a flag with its `RELAY_*` variable and default (see `config`), so
//! `rlay serve --help` is the full reference and a mistyped option is refused by name before
//! anything starts.

use crate::config::{Config, Settings};
use crate::sim::fault::{self, FaultKind};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "rlay",
    version,
    about = "An AT Protocol relay: crawls PDS hosts, verifies every event, re-broadcasts one firehose",
    after_help = "Every relay setting is a flag or an environment variable: `rlay serve --help` lists them all."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (firehose, sync API and admin API on one port; metrics on another).
    Serve(Settings),
    /// Apply database migrations and exit.
    Migrate(Settings),
    /// Run a simulated network of PDS hosts and a PLC directory on loopback.
    Sim(SimArgs),
    /// Compare this relay's listReposByCollection with another relay's; exit 1 on differences.
    AuditCollections(AuditArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Simulated PDS hosts.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Accounts each host starts with.
    #[arg(long, default_value_t = 2)]
    accounts_per_host: usize,
    /// Events per second across all hosts.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Address of the PLC directory.
    #[arg(long, default_value = "127.0.0.1:2582", value_name = "ADDR")]
    plc_listen: String,
    /// Hosts listen on localhost:P, P+1, ... (0: any free ports).
    #[arg(long, default_value_t = 2600, value_name = "P")]
    first_port: u16,
    /// Ask this relay to crawl every host (admin requestCrawl).
    #[arg(long, value_name = "URL")]
    crawl: Option<String>,
    /// The relay's admin password (with --crawl).
    #[arg(long, value_name = "PW", default_value = "")]
    admin_password: String,
    /// Give a fraction of the hosts a fault, e.g. bad-signature:0.1 (repeatable).
    #[arg(long, value_name = "KIND:FRACTION", value_parser = fault::parse_spec)]
    fault: Vec<(FaultKind, f64)>,
    /// Sign this many events before emitting any (for high rates).
    #[arg(long, default_value_t = 0, value_name = "N")]
    prefill: usize,
    /// Seed for keys and traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// The relay to compare with, e.g. https://bsky.network.
    #[arg(long, value_name = "URL")]
    against: String,
    /// Collections to compare.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    sample: u32,
    /// This relay [default: http://<RELAY_API_LISTEN>].
    #[arg(long, value_name = "URL")]
    relay: Option<String>,
    #[command(flatten)]
    settings: Settings,
}

/// Parses the process's arguments and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    match command {
        Command::Serve(s) => {
            let cfg = s.config();
            crate::logging::init(&cfg.log_level);
            serve(&cfg)
        }
        Command::Migrate(s) => {
            let cfg = s.config();
            crate::logging::init(&cfg.log_level);
            match crate::store::open(cfg.database_url.as_deref(), &cfg.data_dir) {
                Ok(s) => {
                    println!("migrations applied ({} store)", s.backend());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("migrate failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sim(a) => {
            crate::logging::init(&std::env::var("RELAY_LOG_LEVEL").unwrap_or("info".into()));
            sim(&a)
        }
        Command::AuditCollections(a) => {
            let cfg = a.settings.config();
            crate::logging::init(&cfg.log_level);
            audit(&a, &cfg)
        }
        Command::Version => {
            println!("rlay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn serve(cfg: &Config) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("cannot install a handler for signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let relay = match crate::relay::Relay::start(cfg, crate::relay::Parts::default()) {
        Ok(r) => r,
        Err(e) => {
            log::error!("relay failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "rlay listening on {} (metrics on {})",
        relay.api_addr(),
        relay
            .metrics_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    relay.shutdown();
    ExitCode::SUCCESS
}

fn sim(a: &SimArgs) -> ExitCode {
    use crate::sim::{Sim, SimConfig};
    let cfg = SimConfig {
        hosts: a.hosts,
        accounts_per_host: a.accounts_per_host,
        plc_listen: a.plc_listen.clone(),
        first_port: a.first_port,
        seed: a.seed,
        ..SimConfig::default()
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
    for (host, kind) in sim.apply_faults(&a.fault) {
        log::info!("sim: {host} has fault {kind}");
    }
    println!(
        "{}",
        serde_json::json!({"plc": sim.world.plc_url, "hosts": sim.hostnames()})
    );
    if let Some(relay) = &a.crawl {
        crawl(relay, &a.admin_password, &sim.hostnames());
    }
    sim.start_traffic(a.rate, a.prefill);
    loop {
        std::thread::sleep(Duration::from_secs(10));
        log::info!("sim: {} events emitted", sim.emitted());
    }
}

/// Asks a relay to crawl each host, retrying while the relay comes up.
fn crawl(relay: &str, password: &str, hosts: &[String]) {
    let admin = crate::sim::admin::RelayAdmin::new(relay, password);
    for h in hosts {
        let mut ok = false;
        for attempt in 0..30 {
            match admin.request_crawl(h) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => log::warn!("sim: {e} (attempt {attempt})"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if !ok {
            log::error!(
                "sim: the relay at {relay} never accepted {h}; check --admin-password and that it allows insecure hosts"
            );
        }
    }
}

fn audit(a: &AuditArgs, cfg: &Config) -> ExitCode {
    let relay = a
        .relay
        .clone()
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
    match crate::index::audit::run(
        relay.trim_end_matches('/'),
        a.against.trim_end_matches('/'),
        a.sample as usize,
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
