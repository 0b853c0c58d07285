//! Sibling relays (`RELAY_SIBLING_RELAYS`): host changes made here (public requestCrawl, admin
//! block/unblock, killUpstream, changeLimits, domain bans, takedowns) are re-sent to each
//! sibling, as indigo does: same method, path, query and body, with Accept, User-Agent,
//! Authorization and Content-Type copied and `Via: 1.1 atproto-relay` added. A request that
//! already came from a relay (`Via` or `User-Agent` naming `atproto-relay`) is not forwarded
//! again, so two relays that list each other do not loop.
//!
//! Each sibling has its own thread and bounded queue: a sibling that is down delays nothing
//! here and no other sibling; its requests are retried a few times, then logged and dropped.

use super::server::Req;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Requests waiting per sibling.
const QUEUE: usize = 1000;
const ATTEMPTS: u32 = 3;

/// The marker a relay puts in `Via` and its User-Agent.
pub const RELAY_MARK: &str = "atproto-relay";

#[derive(Debug, Clone)]
struct Forward {
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Sibling {
    url: String,
    tx: Sender<Forward>,
}

pub struct Siblings {
    list: Vec<Sibling>,
}

impl Siblings {
    /// One forwarding thread per sibling URL.
    pub fn start(urls: &[String], stop: Arc<AtomicBool>) -> std::io::Result<Siblings> {
        let mut list = Vec::new();
        for url in urls {
            let (tx, rx) = bounded(QUEUE);
            let u = url.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("sibling {url}"))
                .stack_size(2 << 20)
                .spawn(move || run(&u, &rx, &stop))?;
            list.push(Sibling {
                url: url.clone(),
                tx,
            });
        }
        Ok(Siblings { list })
    }

    pub fn none() -> Siblings {
        Siblings { list: Vec::new() }
    }

    /// Queues the request for every sibling, unless it came from a relay.
    pub fn forward(&self, r: &Req) {
        if self.list.is_empty() || r.came_from_relay() {
            return;
        }
        let mut headers: Vec<(String, String)> = r.forwardable_headers().to_vec();
        if let Some(a) = &r.authorization {
            headers.push(("Authorization".into(), a.clone()));
        }
        headers.push(("Via".into(), format!("1.1 {RELAY_MARK}")));
        let f = Forward {
            method: r.method.as_str().to_owned(),
            path_and_query: if r.raw_query.is_empty() {
                r.path.clone()
            } else {
                format!("{}?{}", r.path, r.raw_query)
            },
            headers,
            body: r.body.clone(),
        };
        for s in &self.list {
            match s.tx.try_send(f.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("rlay_sibling_forwards_total", "result" => "queue_full")
                        .increment(1);
                    log::warn!(
                        "siblings: {} has {QUEUE} requests waiting (is it down?); not forwarding {} {}",
                        s.url,
                        f.method,
                        f.path_and_query
                    );
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

fn run(url: &str, rx: &Receiver<Forward>, stop: &AtomicBool) {
    let agent = crate::util::net::http_agent(true, Duration::from_secs(10));
    while !stop.load(Ordering::Relaxed) {
        let Ok(f) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let mut last = String::new();
        let mut ok = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << attempt));
            }
            match send(&agent, url, &f) {
                Ok(status) if status < 500 => {
                    if status >= 400 {
                        log::info!(
                            "siblings: {url} answered {status} to {} {}",
                            f.method,
                            f.path_and_query
                        );
                    }
                    ok = true;
                    break;
                }
                Ok(status) => last = format!("HTTP {status}"),
                Err(e) => last = e,
            }
        }
        let result = if ok { "sent" } else { "failed" };
        metrics::counter!("rlay_sibling_forwards_total", "result" => result).increment(1);
        if !ok {
            log::warn!(
                "siblings: could not forward {} {} to {url} after {ATTEMPTS} attempts ({last}); make the change there by hand",
                f.method,
                f.path_and_query
            );
        }
    }
}

fn send(agent: &ureq::Agent, base: &str, f: &Forward) -> Result<u16, String> {
    let url = format!("{base}{}", f.path_and_query);
    let resp = if f.method == "POST" {
        let mut req = agent.post(&url);
        for (k, v) in &f.headers {
            req = req.header(k, v);
        }
        req.send(&f.body[..])
    } else {
        let mut req = agent.get(&url);
        for (k, v) in &f.headers {
            req = req.header(k, v);
        }
        req.call()
    };
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}
