//! Admitting hosts: `requestCrawl` (public and admin, and discovery's), domain bans, and
//! blocking/unblocking.

use super::hosts::{HostHandle, Hosts};
use super::upstream::Upstream;
use crate::proto::syntax::is_valid_handle;
use crate::store::{HostStatus, NewHost, Store, StoreError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CrawlConfig {
    pub(crate) allow_insecure: bool,
    pub(crate) default_account_limit: i64,
    pub(crate) trusted_account_limit: i64,
    pub(crate) trusted_domains: Vec<String>,
    pub(crate) new_hosts_per_day: u32,
    pub(crate) disable_request_crawl: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error("public requestCrawl is disabled on this relay")]
    Disabled,
    #[error("invalid hostname: {0}")]
    BadHostname(String),
    #[error("host is banned: {0}")]
    Banned(String),
    #[error("host {0} did not answer describeServer: {1}")]
    NotFound(String, String),
    #[error("too many new hosts today; try again later")]
    RateLimited,
    #[error("too many requestCrawl calls from this address; wait a minute")]
    TooManyRequests,
    #[error("too many hosts are waiting to be checked; try again in a minute")]
    Busy,
    #[error("{0} identifies itself as a relay; relays are not crawled")]
    IsRelay(String),
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

impl CrawlError {
    /// (HTTP status, XRPC error name)
    pub fn xrpc(&self) -> (u16, &'static str) {
        match self {
            CrawlError::Disabled => (403, "Forbidden"),
            CrawlError::BadHostname(_) => (400, "InvalidRequest"),
            CrawlError::Banned(_) | CrawlError::IsRelay(_) => (400, "HostBanned"),
            CrawlError::NotFound(..) => (400, "HostNotFound"),
            CrawlError::RateLimited | CrawlError::TooManyRequests => (429, "RateLimitExceeded"),
            CrawlError::Busy => (503, "ServiceUnavailable"),
            CrawlError::Store(_) => (500, "InternalServerError"),
        }
    }

    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            CrawlError::Disabled => "disabled",
            CrawlError::BadHostname(_) => "bad_hostname",
            CrawlError::Banned(_) => "banned",
            CrawlError::NotFound(..) => "host_not_found",
            CrawlError::RateLimited => "daily_limit",
            CrawlError::TooManyRequests => "address_rate",
            CrawlError::Busy => "queue_full",
            CrawlError::IsRelay(_) => "is_relay",
            CrawlError::Store(_) => "store_error",
        }
    }
}

/// `(hostname, no_tls)` from a requestCrawl argument: a bare hostname or an http(s)/ws(s) URL.
/// Ports are only allowed for `localhost`, which needs admin rights or dev mode.
pub fn parse_hostname(
    input: &str,
    admin: bool,
    insecure: bool,
) -> Result<(String, bool), CrawlError> {
    let bad = |why: &str| CrawlError::BadHostname(format!("{input:?}: {why}"));
    let s = input.trim();
    let (rest, scheme_tls) = if let Some(r) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("wss://"))
    {
        (r, Some(true))
    } else if let Some(r) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("ws://"))
    {
        (r, Some(false))
    } else if s.contains("://") {
        return Err(bad("only http(s) and ws(s) URLs"));
    } else {
        (s, None)
    };
    let host = rest
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("empty"));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (
            n.to_owned(),
            Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
        ),
        None => (host.clone(), None),
    };
    if name == "localhost" {
        if port.is_none() {
            return Err(bad("localhost needs a port"));
        }
        if !admin && !insecure {
            return Err(bad("localhost is for admins in dev mode only"));
        }
        return Ok((host, scheme_tls != Some(true)));
    }
    if port.is_some() {
        return Err(bad("ports are only allowed for localhost"));
    }
    if !is_valid_handle(&name) {
        return Err(bad(
            "not a valid DNS hostname (IP addresses and single labels are refused)",
        ));
    }
    let no_tls = scheme_tls == Some(false);
    if no_tls && !admin && !insecure {
        return Err(bad(
            "plain http/ws is allowed only in dev mode (RELAY_ALLOW_INSECURE_HOSTS)",
        ));
    }
    Ok((name, no_tls))
}

/// `*.suffix` matches subdomains of suffix; anything else must match exactly (ignoring a port).
pub fn is_trusted(hostname: &str, patterns: &[String]) -> bool {
    let name = hostname.split(':').next().unwrap_or(hostname);
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => name == p || hostname == p,
    })
}

pub struct Crawler {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hosts: Arc<Hosts>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) cfg: CrawlConfig,
    /// Public requestCrawl switch (admin `setEnabled`), in memory like indigo.
    pub(crate) enabled: AtomicBool,
    pub(crate) per_day_limit: AtomicU32,
    recent: Mutex<VecDeque<Instant>>,
    bans: RwLock<Vec<String>>,
    http: ureq::Agent,
}

impl Crawler {
    pub fn new(
        store: Arc<dyn Store>,
        hosts: Arc<Hosts>,
        upstream: Arc<Upstream>,
        cfg: CrawlConfig,
    ) -> Result<Crawler, StoreError> {
        let bans = store.domain_bans()?;
        Ok(Crawler {
            http: crate::util::net::http_agent(cfg.allow_insecure, Duration::from_secs(5)),
            enabled: AtomicBool::new(!cfg.disable_request_crawl),
            per_day_limit: AtomicU32::new(cfg.new_hosts_per_day),
            recent: Mutex::new(VecDeque::new()),
            bans: RwLock::new(bans),
            store,
            hosts,
            upstream,
            cfg,
        })
    }

    /// Whether public requestCrawl is accepted.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// New hosts accepted per day through public requestCrawl.
    pub fn per_day_limit(&self) -> u32 {
        self.per_day_limit.load(Ordering::Relaxed)
    }

    pub fn set_per_day_limit(&self, n: u32) {
        self.per_day_limit.store(n, Ordering::Relaxed);
    }

    /// Whether the host or any parent domain (not a bare TLD) is banned.
    pub fn is_banned_domain(&self, hostname: &str) -> bool {
        let name = hostname.split(':').next().unwrap_or(hostname);
        let bans = self.bans.read().unwrap_or_else(PoisonError::into_inner);
        let labels: Vec<&str> = name.split('.').collect();
        (0..labels.len().saturating_sub(1)).any(|i| {
            let suffix = labels[i..].join(".");
            bans.iter().any(|b| b.eq_ignore_ascii_case(&suffix))
        })
    }

    pub fn domain_bans(&self) -> Vec<String> {
        self.bans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn ban_domain(&self, domain: &str) -> Result<(), StoreError> {
        let d = domain.trim().to_ascii_lowercase();
        self.store.ban_domain(&d)?;
        self.bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
        Ok(())
    }

    pub fn unban_domain(&self, domain: &str) -> Result<bool, StoreError> {
        let d = domain.trim().to_ascii_lowercase();
        let removed = self.store.unban_domain(&d)?;
        self.bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|b| *b != d);
        Ok(removed)
    }

    /// Liveness check: `describeServer` must answer 200, from something that is not a relay.
    fn check_host(&self, hostname: &str, no_tls: bool) -> Result<(), CrawlError> {
        let url = format!(
            "{}://{hostname}/xrpc/com.atproto.server.describeServer",
            if no_tls { "http" } else { "https" }
        );
        match self.http.get(&url).call() {
            Ok(r) => {
                if let Some(s) = r.headers().get("server").and_then(|v| v.to_str().ok())
                    && s.to_ascii_lowercase().contains("atproto-relay")
                {
                    return Err(CrawlError::IsRelay(hostname.to_owned()));
                }
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(CrawlError::NotFound(
                        hostname.to_owned(),
                        format!("HTTP {}", r.status()),
                    ))
                }
            }
            Err(e) => Err(CrawlError::NotFound(hostname.to_owned(), e.to_string())),
        }
    }

    /// Whether public requestCrawl may still add a host today.
    pub fn has_daily_room(&self) -> bool {
        let q = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let day = Duration::from_secs(86_400);
        q.iter().filter(|t| t.elapsed() <= day).count()
            < self.per_day_limit.load(Ordering::Relaxed) as usize
    }

    pub fn is_known(&self, hostname: &str) -> bool {
        self.hosts.by_name(hostname).is_some()
    }

    fn take_daily_slot(&self) -> bool {
        let mut q = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let day = Duration::from_secs(86_400);
        while q.front().is_some_and(|t| t.elapsed() > day) {
            q.pop_front();
        }
        if q.len() >= self.per_day_limit.load(Ordering::Relaxed) as usize {
            return false;
        }
        q.push_back(Instant::now());
        true
    }

    /// Adds (or revives) a host and starts its connection thread.
    pub fn add_host(&self, hostname: &str, no_tls: bool) -> Result<Arc<HostHandle>, CrawlError> {
        if let Some(h) = self.hosts.by_name(hostname) {
            if h.status() == HostStatus::Banned {
                return Err(CrawlError::Banned(hostname.to_owned()));
            }
            self.upstream.spawn(h.clone());
            return Ok(h);
        }
        let trusted = is_trusted(hostname, &self.cfg.trusted_domains);
        let row = self.store.insert_host(&NewHost {
            hostname: hostname.to_owned(),
            account_limit: if trusted {
                self.cfg.trusted_account_limit
            } else {
                self.cfg.default_account_limit
            },
            trusted,
            no_tls,
        })?;
        let h = Arc::new(HostHandle::from_row(&row));
        self.hosts.insert(h.clone());
        log::info!("crawl: subscribing to new host {hostname}");
        self.upstream.spawn(h.clone());
        Ok(h)
    }

    /// `com.atproto.sync.requestCrawl` (admin: bypasses the switch, the daily limit and the
    /// localhost and plain-http restrictions). The public route goes through `CrawlQueue`.
    pub fn request_crawl(&self, input: &str, admin: bool) -> Result<Arc<HostHandle>, CrawlError> {
        let (hostname, no_tls) = self.admit(input, admin)?;
        self.check_and_add(&hostname, no_tls, admin)
    }

    /// The checks that need no network: the switch, the hostname, bans. Returns
    /// `(hostname, no_tls)`.
    pub fn admit(&self, input: &str, admin: bool) -> Result<(String, bool), CrawlError> {
        if !admin && !self.enabled.load(Ordering::Relaxed) {
            return Err(CrawlError::Disabled);
        }
        let (hostname, no_tls) = parse_hostname(input, admin, self.cfg.allow_insecure)?;
        if self.is_banned_domain(&hostname) {
            return Err(CrawlError::Banned(hostname));
        }
        if self
            .hosts
            .by_name(&hostname)
            .is_some_and(|h| h.status() == HostStatus::Banned)
        {
            return Err(CrawlError::Banned(hostname));
        }
        Ok((hostname, no_tls))
    }

    /// Checks that the host answers as a PDS, then adds it (public callers within the daily
    /// limit).
    pub fn check_and_add(
        &self,
        hostname: &str,
        no_tls: bool,
        admin: bool,
    ) -> Result<Arc<HostHandle>, CrawlError> {
        if let Err(e) = self.check_host(hostname, no_tls) {
            if let CrawlError::IsRelay(_) = e
                && let Some(h) = self.hosts.by_name(hostname)
            {
                h.set_status(HostStatus::Banned);
                self.store.set_host_status(h.id(), HostStatus::Banned)?;
            }
            return Err(e);
        }
        let known = self.hosts.by_name(hostname).is_some();
        if !known && !admin && !self.take_daily_slot() {
            return Err(CrawlError::RateLimited);
        }
        self.add_host(hostname, no_tls)
    }

    /// Bans a host and drops its connection.
    pub fn block(&self, hostname: &str) -> Result<bool, StoreError> {
        let Some(h) = self.hosts.by_name(hostname) else {
            return Ok(false);
        };
        h.set_status(HostStatus::Banned);
        h.kill();
        self.store.set_host_status(h.id(), HostStatus::Banned)?;
        Ok(true)
    }

    /// Lifts a ban and reconnects (indigo needs a separate requestCrawl for that).
    pub fn unblock(&self, hostname: &str) -> Result<bool, StoreError> {
        let Some(h) = self.hosts.by_name(hostname) else {
            return Ok(false);
        };
        h.set_status(HostStatus::Active);
        self.store.set_host_status(h.id(), HostStatus::Active)?;
        self.upstream.spawn(h);
        Ok(true)
    }

    /// Drops the live connection (and bans the host if asked).
    pub fn kill(&self, hostname: &str, block: bool) -> Result<bool, StoreError> {
        let Some(h) = self.hosts.by_name(hostname) else {
            return Ok(false);
        };
        if !h.connected() && !block {
            return Ok(false);
        }
        if block {
            return self.block(hostname);
        }
        h.drop_connection();
        Ok(true)
    }

    /// Probes a known host now: wakes its connection thread from its backoff, or starts one.
    pub fn revive(&self, h: &Arc<HostHandle>) {
        if h.status() == HostStatus::Banned {
            return;
        }
        h.wake();
        self.upstream.spawn(h.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        let ok = |s: &str, admin| parse_hostname(s, admin, false).ok();
        assert_eq!(
            ok("pds.example.com", false),
            Some(("pds.example.com".into(), false))
        );
        assert_eq!(
            ok("https://PDS.example.com/xrpc", false),
            Some(("pds.example.com".into(), false))
        );
        assert_eq!(
            ok("wss://pds.example.com", false),
            Some(("pds.example.com".into(), false))
        );
        assert_eq!(ok("http://pds.example.com", false), None);
        assert_eq!(
            ok("http://pds.example.com", true),
            Some(("pds.example.com".into(), true))
        );
        assert_eq!(ok("localhost:8080", false), None);
        assert_eq!(
            ok("localhost:8080", true),
            Some(("localhost:8080".into(), true))
        );
        assert_eq!(
            ok("https://localhost:8080", true),
            Some(("localhost:8080".into(), false))
        );
        assert_eq!(ok("localhost", true), None);
        assert_eq!(ok("https://8.8.8.8", true), None);
        assert_eq!(ok("https://internal", true), None);
        assert_eq!(ok("pds.example.com:8443", true), None);
        assert_eq!(ok("ftp://pds.example.com", true), None);
        assert_eq!(ok("at://pds.example.com", true), None);
        assert!(ok("service.local", false).is_some());
        assert!(
            parse_hostname("localhost:8080", false, true).is_ok(),
            "dev mode allows localhost"
        );
    }

    #[test]
    fn trusted_domains() {
        let p = vec![
            "*.host.bsky.network".to_owned(),
            "pds.example.com".to_owned(),
        ];
        assert!(is_trusted("morel.us-east.host.bsky.network", &p));
        assert!(!is_trusted("host.bsky.network", &p));
        assert!(is_trusted("pds.example.com", &p));
        assert!(!is_trusted("evil-pds.example.com", &p));
        assert!(is_trusted("localhost:2600", &["localhost".to_owned()]));
    }
}
