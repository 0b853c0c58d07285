//! What one client, or all of them, may hold of the API port: connections (one thread each),
//! counted in total and per client address, with separate room for firehose consumers; and how
//! long a request may take to arrive. Past a limit the answer is 503 at once, so a flood costs
//! the flooder a refused connection and the relay nothing it cannot spare.

use crate::util::sharded::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections that are not (yet) firehose consumers.
    pub max_connections: usize,
    /// Of those, from one client address.
    pub max_per_address: usize,
    /// Firehose consumers.
    pub max_consumers: usize,
    /// Time for a whole request head and body to arrive.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_per_address: 100,
            max_consumers: 5000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The counts behind `Limits`.
#[derive(Default)]
pub(crate) struct Counts {
    connections: AtomicUsize,
    consumers: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerAddress,
    Consumers,
}

impl Refused {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::Total => "connections",
            Refused::PerAddress => "per_address",
            Refused::Consumers => "consumers",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::Total => {
                "the relay has as many open API connections as it allows; retry shortly"
            }
            Refused::PerAddress => {
                "too many open connections from your address; close some and retry"
            }
            Refused::Consumers => {
                "the relay has as many firehose consumers as it allows; retry later"
            }
        }
    }
}

/// One held connection; releases its place when dropped.
pub(crate) struct Held {
    counts: Arc<Counts>,
    ip: IpAddr,
    consumer: bool,
}

impl Counts {
    /// Takes a place for a new connection from `ip`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, l: &Limits) -> Result<Held, Refused> {
        let mut per = lock(&self.per_address);
        let mine = per.get(&ip).copied().unwrap_or(0);
        if mine >= l.max_per_address {
            return Err(Refused::PerAddress);
        }
        if self.connections.load(Ordering::Relaxed) >= l.max_connections {
            return Err(Refused::Total);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        per.insert(ip, mine + 1);
        metrics::gauge!("rlay_api_connections").increment(1.0);
        Ok(Held {
            counts: self.clone(),
            ip,
            consumer: false,
        })
    }
}

impl Held {
    /// The connection becomes a firehose consumer: it leaves the API's counts (a consumer is
    /// not a request in flight) and takes a consumer place.
    pub(crate) fn into_consumer(mut self, l: &Limits) -> Result<Held, Refused> {
        let c = &self.counts.consumers;
        if c.fetch_add(1, Ordering::Relaxed) >= l.max_consumers {
            c.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Consumers);
        }
        self.release_api();
        self.consumer = true;
        Ok(self)
    }

    fn release_api(&self) {
        self.counts.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("rlay_api_connections").decrement(1.0);
        let mut per = lock(&self.counts.per_address);
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.consumer {
            self.counts.consumers.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.release_api();
        }
    }
}
