//! Relay configuration: environment variables (names follow indigo where the meaning is the
//! same), each mirrored by a command-line flag (`RELAY_API_LISTEN` ⇄ `--api-listen`,
//! `DATABASE_URL` ⇄ `--database-url`). Flags win over the environment.

use crate::cli::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Every variable: (name, default, meaning). The README's configuration table is checked
/// against this list by a test, so the two cannot drift apart.
pub const VARS: &[(&str, &str, &str)] = &[
    (
        "RELAY_DATA_DIR",
        "./data",
        "Data directory: event log segments, RocksDB collection index, default SQLite database.",
    ),
    (
        "DATABASE_URL",
        "sqlite://<data dir>/rlay.sqlite",
        "State store: `postgres://user:pass@host/db` or `sqlite://PATH`.",
    ),
    (
        "RELAY_API_LISTEN",
        "0.0.0.0:3000",
        "HTTP API, admin API and the firehose WebSocket, on one port.",
    ),
    (
        "RELAY_METRICS_LISTEN",
        "0.0.0.0:3001",
        "Prometheus `/metrics`.",
    ),
    (
        "RELAY_ADMIN_PASSWORD",
        "(random, logged at start)",
        "Admin password(s) for `/admin/*`, comma-separated for rotation.",
    ),
    (
        "RELAY_PLC_HOST",
        "https://plc.directory",
        "PLC directory used to resolve did:plc.",
    ),
    (
        "RELAY_BOOTSTRAP_HOST",
        "https://bsky.network",
        "Relay whose `listHosts` seeds the host list at start-up; empty for none.",
    ),
    (
        "RELAY_ALLOW_INSECURE_HOSTS",
        "false",
        "Dev mode: allow `ws://`/`http://` and `localhost:PORT` upstreams, skip public-IP checks.",
    ),
    (
        "RELAY_LENIENT_SYNC_VALIDATION",
        "false",
        "indigo's lenient mode: accept `tooBig`, `rebase`, missing `prevData`, bad `time`.",
    ),
    (
        "RELAY_OPTIMISTIC_VALIDATION",
        "false",
        "zlay's mode: pass events through unverified while a DID's key is being resolved.",
    ),
    (
        "RELAY_TRUSTED_DOMAINS",
        "*.host.bsky.network",
        "Comma-separated hosts (`*.suffix` or exact) given the trusted account limit.",
    ),
    (
        "RELAY_DEFAULT_ACCOUNT_LIMIT",
        "100",
        "Accounts per untrusted host before new ones are `throttled` (deleted accounts do not count).",
    ),
    (
        "RELAY_TRUSTED_ACCOUNT_LIMIT",
        "10000000",
        "Account limit for trusted hosts.",
    ),
    (
        "RELAY_NEW_HOSTS_PER_DAY_LIMIT",
        "50",
        "New hosts accepted per day through public requestCrawl.",
    ),
    (
        "RELAY_DISABLE_REQUEST_CRAWL",
        "false",
        "Refuse public requestCrawl (admin requestCrawl still works).",
    ),
    (
        "RELAY_REPLAY_WINDOW",
        "72h",
        "How long events stay in the disk log for cursor replay.",
    ),
    (
        "RELAY_INITIAL_SEQ_NUMBER",
        "1",
        "Floor for the relay's sequence numbers (jump ahead after a wipe).",
    ),
    (
        "RELAY_ACCOUNT_CACHE_SIZE",
        "500000",
        "Accounts kept in memory (a few hundred bytes each); others are read from the store when they next appear.",
    ),
    (
        "RELAY_RING_CAPACITY",
        "50000",
        "Frames kept in memory for fast replay and fan-out.",
    ),
    (
        "RELAY_CONSUMER_STALL_TIMEOUT",
        "30s",
        "A consumer that makes no progress this long gets `ConsumerTooSlow`.",
    ),
    ("RELAY_RESOLVER_THREADS", "4", "DID resolver threads."),
    (
        "RELAY_UPSTREAM_STALL_TIMEOUT",
        "90s",
        "Reconnect to a host that sent nothing (not even a pong) for this long.",
    ),
    (
        "RELAY_IDLE_HOST_RETRY",
        "15m",
        "Wait before re-probing a host that answered `FutureCursor` (it lost its history).",
    ),
    (
        "RELAY_HOST_EVENT_RATE",
        "50",
        "Base per-second event rate per host (plus account limit / 1000); excess is slowed, not dropped.",
    ),
    (
        "RELAY_BACKFILL_HOST",
        "https://bsky.network",
        "Upstream for collection-index backfill (`listReposByCollection`).",
    ),
    (
        "RELAY_BACKFILL_COLLECTIONS_FILE",
        "(none)",
        "File of NSIDs (one per line) to backfill besides those already seen.",
    ),
    (
        "RELAY_BACKFILL_PAGE_SIZE",
        "1000",
        "DIDs asked for per backfill page (1-2000).",
    ),
    (
        "RELAY_BACKFILL_PAGE_PAUSE",
        "1s",
        "Pause between backfill pages, to be gentle with the upstream.",
    ),
    (
        "RELAY_LOG_LEVEL",
        "info",
        "error, warn, info, debug or trace.",
    ),
];

#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration: {name}={value:?} is invalid: {why}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub why: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub api_listen: String,
    pub metrics_listen: String,
    pub admin_passwords: Vec<String>,
    pub plc_host: String,
    pub bootstrap_host: Option<String>,
    pub allow_insecure_hosts: bool,
    pub lenient_sync_validation: bool,
    pub optimistic_validation: bool,
    pub trusted_domains: Vec<String>,
    pub default_account_limit: i64,
    pub trusted_account_limit: i64,
    pub new_hosts_per_day: u32,
    pub disable_request_crawl: bool,
    pub replay_window: Duration,
    pub initial_seq: i64,
    pub ring_capacity: usize,
    pub account_cache_size: usize,
    pub consumer_stall_timeout: Duration,
    pub resolver_threads: usize,
    pub upstream_stall_timeout: Duration,
    pub idle_host_retry: Duration,
    pub host_event_rate: u32,
    pub backfill_host: String,
    pub backfill_collections_file: Option<PathBuf>,
    pub backfill_page_size: usize,
    pub backfill_page_pause: Duration,
    pub log_level: String,
}

/// `--api-listen` for `RELAY_API_LISTEN`, `--database-url` for `DATABASE_URL`.
pub fn flag_name(var: &str) -> String {
    var.strip_prefix("RELAY_")
        .unwrap_or(var)
        .to_ascii_lowercase()
        .replace('_', "-")
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

struct Source<'a> {
    args: &'a Args,
}

impl Source<'_> {
    fn raw(&self, var: &str) -> Option<String> {
        self.args
            .flag(&flag_name(var))
            .map(str::to_owned)
            .or_else(|| std::env::var(var).ok())
    }

    fn default_of(var: &str) -> &'static str {
        VARS.iter().find(|v| v.0 == var).map(|v| v.1).unwrap_or("")
    }

    fn string(&self, var: &str) -> String {
        self.raw(var)
            .unwrap_or_else(|| Self::default_of(var).to_owned())
    }

    fn parse<T: std::str::FromStr>(&self, var: &str) -> Result<T, ConfigError> {
        let v = self.string(var);
        v.trim().parse().map_err(|_| ConfigError {
            name: var.into(),
            value: v.clone(),
            why: "not a number".into(),
        })
    }

    fn bool(&self, var: &str) -> Result<bool, ConfigError> {
        let v = self.string(var);
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(ConfigError {
                name: var.into(),
                value: v,
                why: "expected true or false".into(),
            }),
        }
    }

    fn duration(&self, var: &str) -> Result<Duration, ConfigError> {
        let v = self.string(var);
        parse_duration(&v).ok_or(ConfigError {
            name: var.into(),
            value: v,
            why: "expected a duration like 72h, 30s, 500ms".into(),
        })
    }

    fn list(&self, var: &str) -> Vec<String> {
        self.string(var)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn optional(&self, var: &str) -> Option<String> {
        self.raw(var).filter(|s| !s.trim().is_empty())
    }
}

impl Config {
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let s = Source { args };
        let bootstrap = s.string("RELAY_BOOTSTRAP_HOST");
        let backfill_file = s
            .optional("RELAY_BACKFILL_COLLECTIONS_FILE")
            .map(PathBuf::from);
        Ok(Config {
            data_dir: PathBuf::from(s.string("RELAY_DATA_DIR")),
            database_url: s.optional("DATABASE_URL"),
            api_listen: s.string("RELAY_API_LISTEN"),
            metrics_listen: s.string("RELAY_METRICS_LISTEN"),
            admin_passwords: s
                .raw("RELAY_ADMIN_PASSWORD")
                .map(|_| s.list("RELAY_ADMIN_PASSWORD"))
                .unwrap_or_default(),
            plc_host: s.string("RELAY_PLC_HOST").trim_end_matches('/').to_owned(),
            bootstrap_host: (!bootstrap.trim().is_empty())
                .then(|| bootstrap.trim_end_matches('/').to_owned()),
            allow_insecure_hosts: s.bool("RELAY_ALLOW_INSECURE_HOSTS")?,
            lenient_sync_validation: s.bool("RELAY_LENIENT_SYNC_VALIDATION")?,
            optimistic_validation: s.bool("RELAY_OPTIMISTIC_VALIDATION")?,
            trusted_domains: s.list("RELAY_TRUSTED_DOMAINS"),
            default_account_limit: s.parse("RELAY_DEFAULT_ACCOUNT_LIMIT")?,
            trusted_account_limit: s.parse("RELAY_TRUSTED_ACCOUNT_LIMIT")?,
            new_hosts_per_day: s.parse("RELAY_NEW_HOSTS_PER_DAY_LIMIT")?,
            disable_request_crawl: s.bool("RELAY_DISABLE_REQUEST_CRAWL")?,
            replay_window: s.duration("RELAY_REPLAY_WINDOW")?,
            initial_seq: s.parse("RELAY_INITIAL_SEQ_NUMBER")?,
            ring_capacity: s.parse("RELAY_RING_CAPACITY")?,
            account_cache_size: s.parse("RELAY_ACCOUNT_CACHE_SIZE")?,
            consumer_stall_timeout: s.duration("RELAY_CONSUMER_STALL_TIMEOUT")?,
            resolver_threads: s.parse::<usize>("RELAY_RESOLVER_THREADS")?.max(1),
            upstream_stall_timeout: s.duration("RELAY_UPSTREAM_STALL_TIMEOUT")?,
            idle_host_retry: s.duration("RELAY_IDLE_HOST_RETRY")?,
            host_event_rate: s.parse("RELAY_HOST_EVENT_RATE")?,
            backfill_host: s
                .string("RELAY_BACKFILL_HOST")
                .trim_end_matches('/')
                .to_owned(),
            backfill_collections_file: backfill_file,
            backfill_page_size: s.parse::<usize>("RELAY_BACKFILL_PAGE_SIZE")?.clamp(1, 2000),
            backfill_page_pause: s.duration("RELAY_BACKFILL_PAGE_PAUSE")?,
            log_level: s.string("RELAY_LOG_LEVEL"),
        })
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
        assert_eq!(flag_name("RELAY_API_LISTEN"), "api-listen");
        assert_eq!(flag_name("DATABASE_URL"), "database-url");
        let a = Args::parse(
            [
                "serve",
                "--api-listen",
                "127.0.0.1:9",
                "--allow-insecure-hosts",
            ]
            .map(String::from),
        );
        let c = Config::load(&a).unwrap();
        assert_eq!(c.api_listen, "127.0.0.1:9");
        assert!(c.allow_insecure_hosts);
        assert_eq!(c.default_account_limit, 100);
    }
}
