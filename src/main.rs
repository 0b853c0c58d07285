//! The `rlay` binary: `serve`, `sim`, `migrate`, `audit-collections`.

use rlay::cli::Args;
use rlay::config::Config;
use std::process::ExitCode;

const USAGE: &str = "rlay - an AT Protocol relay

usage:
  rlay serve                 run the relay (configuration: environment or --flags, see README)
  rlay migrate               apply database migrations and exit
  rlay version

Every RELAY_* variable has a flag: RELAY_API_LISTEN=... is --api-listen ...";

fn main() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
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
        Some("version") | Some("--version") => {
            println!("rlay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            println!("{USAGE}");
            ExitCode::from(if args.command.is_none() { 0 } else { 2 })
        }
    }
}
