//! Relay configuration: environment variables (names follow indigo where the meaning is the
//! same), each mirrored by a command-line flag (`RELAY_API_LISTEN` ⇄ `--api-listen`,
//! `DATABASE_URL` ⇄ `--database-url`). Flags win over the environment.

use clap::builder::BoolishValueParser;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting of `serve` (and of the commands that open the relay's state), as `clap` reads
/// them: a `--flag`, else its `RELAY_*` variable, else the default. `rlay serve --help` lists
/// them, and a test checks the README's configuration table against these same definitions.
#[derive(Debug, Clone, clap::Args)]
#[rustfmt::skip]
#[command(next_help_heading = "Relay settings (flag, or the environment variable shown)")]
pub struct Settings {
    /// Data directory: event log segments, RocksDB collection index, default SQLite database.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./data", value_name = "DIR")]
    data_dir: PathBuf,
    /// State store: `postgres://user:pass@host/db` or `sqlite://PATH`. [default: sqlite://<data dir>/rlay.sqlite]
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// HTTP API, admin API and the firehose WebSocket, on one port.
    #[arg(long, env = "RELAY_API_LISTEN", default_value = "0.0.0.0:3000", value_name = "ADDR")]
    api_listen: String,
    /// Prometheus `/metrics`; empty to disable.
    #[arg(long, env = "RELAY_METRICS_LISTEN", default_value = "0.0.0.0:3001", value_name = "ADDR")]
    metrics_listen: String,
    /// Admin password(s) for `/admin/*`, comma-separated for rotation. [default: (random, logged at start)]
    #[arg(long, env = "RELAY_ADMIN_PASSWORD", value_name = "PW[,PW]", hide_env_values = true)]
    admin_password: Option<String>,
    /// PLC directory used to resolve did:plc.
    #[arg(long, env = "RELAY_PLC_HOST", default_value = "https://plc.directory", value_name = "URL")]
    plc_host: String,
    /// Relay whose `listHosts` seeds the host list and is checked for new hosts every discovery interval; empty for none.
    #[arg(long, env = "RELAY_BOOTSTRAP_HOST", default_value = "https://bsky.network", value_name = "URL")]
    bootstrap_host: String,
    /// Comma-separated relay URLs that get this relay's host changes, and whose hosts are discovered too.
    #[arg(long, env = "RELAY_SIBLING_RELAYS", default_value = "", value_name = "URLS")]
    sibling_relays: String,
    /// How often the bootstrap relay's and siblings' `listHosts` are checked for hosts we lack.
    #[arg(long, env = "RELAY_DISCOVERY_INTERVAL", default_value = "10m", value_name = "DURATION", value_parser = duration)]
    discovery_interval: Duration,
    /// Share of the hosts that should be connected below which the relay is not ready (after the grace period).
    #[arg(long, env = "RELAY_MIN_COVERAGE", default_value = "0.9", value_name = "RATIO", value_parser = ratio)]
    min_coverage: f64,
    /// How long coverage must stay below the minimum before `/xrpc/_ready` says so (it clears after a fifth of it).
    #[arg(long, env = "RELAY_COVERAGE_GRACE", default_value = "5m", value_name = "DURATION", value_parser = duration)]
    coverage_grace: Duration,
    /// Not ready when hosts are connected but no event was sequenced for this long.
    #[arg(long, env = "RELAY_STALL_GRACE", default_value = "2m", value_name = "DURATION", value_parser = duration)]
    stall_grace: Duration,
    /// Slack-compatible incoming webhook (JSON `{"text": ...}`) for alerts; empty for none.
    #[arg(long, env = "RELAY_ALERT_WEBHOOK_URL", default_value = "", value_name = "URL")]
    alert_webhook_url: String,
    /// How often alert conditions are checked.
    #[arg(long, env = "RELAY_ALERT_CHECK_INTERVAL", default_value = "1m", value_name = "DURATION", value_parser = duration)]
    alert_check_interval: Duration,
    /// Share of its account limit at which a host is alerted on.
    #[arg(long, env = "RELAY_ACCOUNT_LIMIT_ALERT_THRESHOLD", default_value = "0.8", value_name = "RATIO", value_parser = ratio)]
    account_limit_alert_threshold: f64,
    /// A host still over the threshold is alerted on again after this long.
    #[arg(long, env = "RELAY_ACCOUNT_LIMIT_ALERT_REPEAT_INTERVAL", default_value = "6h", value_name = "DURATION", value_parser = duration)]
    account_limit_alert_repeat_interval: Duration,
    /// A host with at least this many accounts going offline is alerted on.
    #[arg(long, env = "RELAY_OFFLINE_ALERT_ACCOUNTS", default_value = "1000", value_name = "N")]
    offline_alert_accounts: i64,
    /// Accounts per second per host fetched to make throttled accounts whole when they are let in.
    #[arg(long, env = "RELAY_RESYNC_RATE", default_value = "5", value_name = "N", value_parser = ratio_positive)]
    resync_rate: f64,
    /// Dev mode: allow `ws://`/`http://` and `localhost:PORT` upstreams, skip public-IP checks.
    #[arg(long, env = "RELAY_ALLOW_INSECURE_HOSTS", default_value = "false", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    allow_insecure_hosts: bool,
    /// indigo's lenient mode: accept `tooBig`, `rebase`, missing `prevData`, bad `time`.
    #[arg(long, env = "RELAY_LENIENT_SYNC_VALIDATION", default_value = "false", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    lenient_sync_validation: bool,
    /// zlay's mode: pass events through unverified while a DID's key is being resolved.
    #[arg(long, env = "RELAY_OPTIMISTIC_VALIDATION", default_value = "false", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    optimistic_validation: bool,
    /// Comma-separated hosts (`*.suffix` or exact) given the trusted account limit.
    #[arg(long, env = "RELAY_TRUSTED_DOMAINS", default_value = "*.host.bsky.network", value_name = "LIST")]
    trusted_domains: String,
    /// Accounts per untrusted host before new ones are `throttled` (deleted and throttled accounts do not count).
    #[arg(long, env = "RELAY_DEFAULT_ACCOUNT_LIMIT", default_value = "100", value_name = "N")]
    default_account_limit: i64,
    /// Account limit for trusted hosts.
    #[arg(long, env = "RELAY_TRUSTED_ACCOUNT_LIMIT", default_value = "10000000", value_name = "N")]
    trusted_account_limit: i64,
    /// New hosts accepted per day through public requestCrawl.
    #[arg(long, env = "RELAY_NEW_HOSTS_PER_DAY_LIMIT", default_value = "50", value_name = "N")]
    new_hosts_per_day_limit: u32,
    /// Refuse public requestCrawl (admin requestCrawl still works).
    #[arg(long, env = "RELAY_DISABLE_REQUEST_CRAWL", default_value = "false", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    disable_request_crawl: bool,
    /// How long events stay in the disk log for cursor replay.
    #[arg(long, env = "RELAY_REPLAY_WINDOW", default_value = "72h", value_name = "DURATION", value_parser = duration)]
    replay_window: Duration,
    /// Compress sealed event log segments (zstd blocks; replay reads both kinds).
    #[arg(long, env = "RELAY_COMPRESS_LOG", default_value = "true", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    compress_log: bool,
    /// Events per second all consumers replaying from the disk log may read together (0: no limit), so replays cannot starve live delivery.
    #[arg(long, env = "RELAY_REPLAY_RATE_LIMIT", default_value = "200000", value_name = "N")]
    replay_rate_limit: u64,
    /// Floor for the relay's sequence numbers (jump ahead after a wipe).
    #[arg(long, env = "RELAY_INITIAL_SEQ_NUMBER", default_value = "1", value_name = "SEQ")]
    initial_seq_number: i64,
    /// Accounts kept in memory (a few hundred bytes each); others are read from the store when they next appear.
    #[arg(long, env = "RELAY_ACCOUNT_CACHE_SIZE", default_value = "500000", value_name = "N")]
    account_cache_size: usize,
    /// Frames kept in memory for fast replay and fan-out.
    #[arg(long, env = "RELAY_RING_CAPACITY", default_value = "50000", value_name = "N")]
    ring_capacity: usize,
    /// Memory the ring's frames may use, in MiB; the oldest frames leave first.
    #[arg(long, env = "RELAY_RING_MAX_MIB", default_value_t = crate::stream::DEFAULT_RING_MAX_MIB, value_name = "MIB")]
    ring_max_mib: u64,
    /// A consumer that makes no progress this long gets `ConsumerTooSlow`.
    #[arg(long, env = "RELAY_CONSUMER_STALL_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = duration)]
    consumer_stall_timeout: Duration,
    /// DID resolver threads.
    #[arg(long, env = "RELAY_RESOLVER_THREADS", default_value = "4", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    resolver_threads: u16,
    /// Threads that verify events (signatures, commits, MST proofs); host threads only read.
    #[arg(long, env = "RELAY_VERIFY_THREADS", default_value_t = crate::ingest::pipeline::DEFAULT_VERIFY_THREADS, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    verify_threads: u16,
    /// Threads that dial upstream hosts (DNS, TCP, TLS, WebSocket handshake): at most this many
    /// connection attempts at once; the others wait in `rlay_dial_queue`.
    #[arg(long, env = "RELAY_DIAL_THREADS", default_value = "16", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    dial_threads: u16,
    /// Reconnect to a host that sent nothing (not even a pong) for this long.
    #[arg(long, env = "RELAY_UPSTREAM_STALL_TIMEOUT", default_value = "90s", value_name = "DURATION", value_parser = duration)]
    upstream_stall_timeout: Duration,
    /// Wait before re-probing a host that answered `FutureCursor` (it lost its history).
    #[arg(long, env = "RELAY_IDLE_HOST_RETRY", default_value = "15m", value_name = "DURATION", value_parser = duration)]
    idle_host_retry: Duration,
    /// Base per-second event rate per host (plus account limit / 1000); excess is slowed, not dropped.
    #[arg(long, env = "RELAY_HOST_EVENT_RATE", default_value = "50", value_name = "N")]
    host_event_rate: u32,
    /// Upstream for collection-index backfill (`listReposByCollection`).
    #[arg(long, env = "RELAY_BACKFILL_HOST", default_value = "https://bsky.network", value_name = "URL")]
    backfill_host: String,
    /// File of NSIDs (one per line) to backfill besides those already seen. [default: (none)]
    #[arg(long, env = "RELAY_BACKFILL_COLLECTIONS_FILE", value_name = "PATH")]
    backfill_collections_file: Option<PathBuf>,
    /// DIDs asked for per backfill page (1-2000).
    #[arg(long, env = "RELAY_BACKFILL_PAGE_SIZE", default_value = "1000", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=2000))]
    backfill_page_size: u16,
    /// Pause between backfill pages, to be gentle with the upstream.
    #[arg(long, env = "RELAY_BACKFILL_PAGE_PAUSE", default_value = "1s", value_name = "DURATION", value_parser = duration)]
    backfill_page_pause: Duration,
    /// API connections (not firehose consumers) open at once; when full, the one whose request
    /// has been arriving longest is closed for a newcomer, else the newcomer gets 503.
    #[arg(long, env = "RELAY_MAX_API_CONNECTIONS", default_value = "512", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_api_connections: u32,
    /// API connections from one client address (behind a reverse proxy, raise it: all clients share its address).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_ADDRESS", default_value = "100", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_address: u32,
    /// Firehose consumers connected at once; beyond it new ones get 503.
    #[arg(long, env = "RELAY_MAX_CONSUMERS", default_value = "5000", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_consumers: u32,
    /// Time for a whole request (head and body) to arrive; slower ones get 408.
    #[arg(long, env = "RELAY_REQUEST_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = duration)]
    request_timeout: Duration,
    /// Serve Jetstream v1 (`GET /subscribe`): the verified events as filtered JSON.
    #[arg(long, env = "RELAY_JETSTREAM", default_value = "true", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    jetstream: bool,
    /// Jetstream consumers connected at once (they count against RELAY_MAX_CONSUMERS too); beyond it new ones get 503.
    #[arg(long, env = "RELAY_MAX_JETSTREAM_CONSUMERS", default_value = "1000", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_jetstream_consumers: u32,
    /// error, warn, info, debug or trace.
    #[arg(long, env = "RELAY_LOG_LEVEL", default_value = "info", value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
}

/// One setting as documented: its variable, its default as shown, and its meaning.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub default: String,
    pub help: String,
}

/// Every setting, read from the `clap` definitions above (the README's table is checked
/// against this). A setting without a literal default states it in its help as `[default: …]`.
pub fn variables() -> Vec<Variable> {
    use clap::Args as _;
    let cmd = Settings::augment_args(clap::Command::new("serve"));
    cmd.get_arguments()
        .filter_map(|a| {
            let name = a.get_env()?.to_string_lossy().into_owned();
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let (help, default) = match help.split_once(" [default: ") {
                Some((h, d)) => (h.to_owned(), d.trim_end_matches(']').to_owned()),
                None => {
                    let d = a.get_default_values().first();
                    (
                        help,
                        d.map(|d| d.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    )
                }
            };
            Some(Variable {
                name,
                default,
                help,
            })
        })
        .collect()
}

/// Parses `72h`, `30s`, `5m`, `100ms`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| "expected a duration like 72h, 30s, 5m or 500ms".to_owned())
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number from 0 to 1, like 0.9".to_owned()),
    }
}

fn ratio_positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("expected a number above 0".to_owned()),
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A URL setting with its trailing slashes cut; empty means "none".
fn url(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/');
    (!s.is_empty()).then(|| s.to_owned())
}

#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) database_url: Option<String>,
    pub(crate) api_listen: String,
    pub(crate) metrics_listen: String,
    pub(crate) admin_passwords: Vec<String>,
    pub(crate) plc_host: String,
    pub(crate) bootstrap_host: Option<String>,
    pub(crate) sibling_relays: Vec<String>,
    pub(crate) discovery_interval: Duration,
    pub(crate) readiness: crate::coverage::readiness::Rules,
    pub(crate) alerts: crate::alerts::AlertConfig,
    pub(crate) resync_rate: f64,
    pub(crate) jetstream: bool,
    pub(crate) max_jetstream_consumers: usize,
    pub(crate) allow_insecure_hosts: bool,
    pub(crate) lenient_sync_validation: bool,
    pub(crate) optimistic_validation: bool,
    pub(crate) trusted_domains: Vec<String>,
    pub(crate) default_account_limit: i64,
    pub(crate) trusted_account_limit: i64,
    pub(crate) new_hosts_per_day: u32,
    pub(crate) disable_request_crawl: bool,
    pub(crate) replay_window: Duration,
    pub(crate) compress_log: bool,
    pub(crate) replay_rate: u64,
    pub(crate) initial_seq: i64,
    pub(crate) ring_capacity: usize,
    pub(crate) ring_max_mib: u64,
    pub(crate) account_cache_size: usize,
    pub(crate) consumer_stall_timeout: Duration,
    pub(crate) resolver_threads: usize,
    pub(crate) verify_threads: usize,
    pub(crate) dial_threads: usize,
    pub(crate) upstream_stall_timeout: Duration,
    pub(crate) idle_host_retry: Duration,
    pub(crate) host_event_rate: u32,
    pub(crate) backfill_host: String,
    pub(crate) backfill_collections_file: Option<PathBuf>,
    pub(crate) backfill_page_size: usize,
    pub(crate) backfill_page_pause: Duration,
    pub(crate) log_level: String,
    pub(crate) limits: crate::http::limits::Limits,
}

impl Settings {
    /// The configuration these settings describe.
    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone().filter(|u| !u.trim().is_empty()),
            api_listen: self.api_listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            admin_passwords: self.admin_password.as_deref().map(list).unwrap_or_default(),
            plc_host: self.plc_host.trim_end_matches('/').to_owned(),
            bootstrap_host: url(&self.bootstrap_host),
            sibling_relays: list(&self.sibling_relays)
                .iter()
                .filter_map(|u| url(u))
                .collect(),
            discovery_interval: self.discovery_interval,
            readiness: crate::coverage::readiness::Rules {
                min_coverage: self.min_coverage,
                grace: self.coverage_grace,
                stall_grace: self.stall_grace,
            },
            alerts: crate::alerts::AlertConfig {
                webhook_url: url(&self.alert_webhook_url),
                every: self.alert_check_interval,
                limit_threshold: self.account_limit_alert_threshold,
                repeat: self.account_limit_alert_repeat_interval,
                offline_accounts: self.offline_alert_accounts,
                settle: self.coverage_grace,
            },
            resync_rate: self.resync_rate,
            jetstream: self.jetstream,
            max_jetstream_consumers: self.max_jetstream_consumers as usize,
            allow_insecure_hosts: self.allow_insecure_hosts,
            lenient_sync_validation: self.lenient_sync_validation,
            optimistic_validation: self.optimistic_validation,
            trusted_domains: list(&self.trusted_domains),
            default_account_limit: self.default_account_limit,
            trusted_account_limit: self.trusted_account_limit,
            new_hosts_per_day: self.new_hosts_per_day_limit,
            disable_request_crawl: self.disable_request_crawl,
            replay_window: self.replay_window,
            compress_log: self.compress_log,
            replay_rate: self.replay_rate_limit,
            initial_seq: self.initial_seq_number,
            ring_capacity: self.ring_capacity,
            ring_max_mib: self.ring_max_mib,
            account_cache_size: self.account_cache_size,
            consumer_stall_timeout: self.consumer_stall_timeout,
            resolver_threads: usize::from(self.resolver_threads),
            verify_threads: usize::from(self.verify_threads),
            dial_threads: usize::from(self.dial_threads),
            upstream_stall_timeout: self.upstream_stall_timeout,
            idle_host_retry: self.idle_host_retry,
            host_event_rate: self.host_event_rate,
            backfill_host: self.backfill_host.trim_end_matches('/').to_owned(),
            backfill_collections_file: self
                .backfill_collections_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            backfill_page_size: usize::from(self.backfill_page_size),
            backfill_page_pause: self.backfill_page_pause,
            log_level: self.log_level.clone(),
            limits: crate::http::limits::Limits {
                max_connections: self.max_api_connections as usize,
                max_per_address: self.max_connections_per_address as usize,
                max_consumers: self.max_consumers as usize,
                request_timeout: self.request_timeout,
            },
        }
    }
}

impl Config {
    /// The configuration from `serve`-style arguments (flags over environment over defaults):
    /// how tests and benchmarks configure a relay exactly as the command line would.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            settings: Settings,
        }
        use clap::Parser as _;
        Serve::try_parse_from(args).map(|s| s.settings.config())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_flags() {
        assert_eq!(parse_duration("72h"), Some(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("3 weeks"), None);
        let c = Config::from_args([
            "serve",
            "--api-listen",
            "127.0.0.1:9",
            "--allow-insecure-hosts",
        ])
        .unwrap();
        assert_eq!(c.api_listen, "127.0.0.1:9");
        assert!(c.allow_insecure_hosts);
        assert_eq!(c.default_account_limit, 100);
        let c = Config::from_args(["serve", "--bootstrap-host="]).unwrap();
        assert_eq!(c.bootstrap_host, None);
        assert!(Config::from_args(["serve", "--replay-window=3 weeks"]).is_err());
    }
}
