//! Public `requestCrawl`: what is cheap (the switch, the hostname, bans, the daily room) is
//! decided at once; checking a new host (`describeServer`, up to 5 s) runs on a few threads of
//! its own behind a bounded queue, and each client address has a small rate. A flood of crawl
//! requests thus costs those threads and one queue slot each, never the API workers, and the
//! caller gets its answer at once. Failed checks are counted and logged at debug level (a flood
//! of them must not flood the log).

use super::crawl::{CrawlError, Crawler};
use crate::util::isolate::isolate;
use crate::util::sharded::lock;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Threads checking new hosts.
const CHECK_THREADS: usize = 4;
/// Host checks waiting for a thread; past this the caller is told to come back later.
const QUEUE_SLOTS: usize = 64;
/// requestCrawl calls per client address: a burst of this many...
const PER_ADDRESS_BURST: f64 = 10.0;
/// ...refilled at this many per second (10 a minute).
const PER_ADDRESS_PER_SEC: f64 = 10.0 / 60.0;
/// Client addresses remembered; past this, addresses whose allowance is full again are forgotten.
const MAX_ADDRESSES: usize = 10_000;

pub struct CrawlQueue {
    crawler: Arc<Crawler>,
    tx: Sender<(String, bool)>,
    /// Hostnames queued or being checked: asking again answers at once without a second check.
    queued: Arc<Mutex<HashSet<String>>>,
    per_address: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl CrawlQueue {
    pub fn start(crawler: Arc<Crawler>) -> std::io::Result<CrawlQueue> {
        let (tx, rx) = crossbeam_channel::bounded::<(String, bool)>(QUEUE_SLOTS);
        let queued: Arc<Mutex<HashSet<String>>> = Arc::default();
        for i in 0..CHECK_THREADS {
            let (rx, crawler, queued) = (rx.clone(), crawler.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("crawl check {i}"))
                .spawn(move || {
                    for (hostname, no_tls) in rx {
                        let r = isolate(
                            "crawl check",
                            || format!("checking {hostname}"),
                            || crawler.check_and_add(&hostname, no_tls, false),
                        );
                        let result = match r {
                            Some(Ok(_)) => "added",
                            Some(Err(e)) => {
                                log::debug!(
                                    "crawl: public requestCrawl of {hostname} refused: {e}"
                                );
                                e.label()
                            }
                            None => "panic",
                        };
                        metrics::counter!("rlay_crawl_checks_total", "result" => result)
                            .increment(1);
                        lock(&queued).remove(&hostname);
                    }
                })?;
        }
        Ok(CrawlQueue {
            crawler,
            tx,
            queued,
            per_address: Mutex::default(),
        })
    }

    /// Takes one call from `from`'s allowance; false when it is spent.
    fn allow(&self, from: IpAddr) -> bool {
        let mut m = lock(&self.per_address);
        let now = Instant::now();
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * PER_ADDRESS_PER_SEC)
                .min(PER_ADDRESS_BURST)
        };
        if m.len() >= MAX_ADDRESSES && !m.contains_key(&from) {
            m.retain(|_, v| refill(*v) < PER_ADDRESS_BURST);
            if m.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let e = m.entry(from).or_insert((PER_ADDRESS_BURST, now));
        let tokens = refill(*e);
        if tokens < 1.0 {
            *e = (tokens, now);
            return false;
        }
        *e = (tokens - 1.0, now);
        true
    }

    /// Public requestCrawl from `from`: answers at once; a new host is checked and added later.
    pub fn submit(&self, input: &str, from: Option<IpAddr>) -> Result<(), CrawlError> {
        let r = self.decide(input, from);
        if let Err(e) = &r {
            metrics::counter!("rlay_crawl_requests_refused_total", "reason" => e.label())
                .increment(1);
        }
        r
    }

    fn decide(&self, input: &str, from: Option<IpAddr>) -> Result<(), CrawlError> {
        if let Some(ip) = from
            && !self.allow(ip)
        {
            return Err(CrawlError::TooManyRequests);
        }
        let (hostname, no_tls) = self.crawler.admit(input, false)?;
        if self.crawler.is_known(&hostname) {
            // Known hosts are (re)connected without a new check.
            self.crawler.add_host(&hostname, no_tls)?;
            return Ok(());
        }
        if !self.crawler.has_daily_room() {
            return Err(CrawlError::RateLimited);
        }
        if !lock(&self.queued).insert(hostname.clone()) {
            return Ok(());
        }
        match self.tx.try_send((hostname.clone(), no_tls)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                lock(&self.queued).remove(&hostname);
                Err(CrawlError::Busy)
            }
        }
    }
}
