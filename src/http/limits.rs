//! What one client, or all of them, may hold of the API port: connections (one thread each),
//! counted in total and per client address, with separate room for firehose consumers; and how
//! long a request may take to arrive. Past a limit the answer is 503 at once, so a flood costs
//! the flooder a refused connection and the relay nothing it cannot spare.
//!
//! Slow clients cannot fill the port: when every place is taken, the connection that has been
//! reading its request head the longest is closed to make room (a real client sends its head
//! in a millisecond; a slowloris attacker's are the oldest), so health and other quick
//! requests still get in. The evicted threads leave within moments; until they have, at most a
//! tenth more connections are admitted.

use crate::util::sharded::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Shutdown, TcpStream};
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
            max_connections: 512,
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
    heads: Mutex<HeadReaders>,
}

/// Connections whose request has not fully arrived (head, and body if any), oldest first, with
/// a handle to close each.
#[derive(Default)]
struct HeadReaders {
    next: u64,
    open: BTreeMap<u64, TcpStream>,
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
    /// Its entry among the head readers, until its request has arrived.
    reading: Option<u64>,
}

impl Counts {
    /// Takes a place for `stream`, a new connection from `ip`, closing the oldest head reader
    /// if every place is taken.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        stream: &TcpStream,
        l: &Limits,
    ) -> Result<Held, Refused> {
        let mut per = lock(&self.per_address);
        let mine = per.get(&ip).copied().unwrap_or(0);
        if mine >= l.max_per_address {
            return Err(Refused::PerAddress);
        }
        let open = self.connections.load(Ordering::Relaxed);
        let mut heads = lock(&self.heads);
        if open >= l.max_connections {
            let evicted = (open < l.max_connections + l.max_connections / 10 + 1)
                .then(|| heads.open.pop_first())
                .flatten();
            let Some((_, oldest)) = evicted else {
                return Err(Refused::Total);
            };
            let _ = oldest.shutdown(Shutdown::Both);
            metrics::counter!("rlay_api_connections_evicted_total", "reason" => "slow_head")
                .increment(1);
        }
        // Without a handle it cannot be evicted, but it is still bounded by the deadline.
        let reading = stream.try_clone().ok().map(|s| {
            heads.next += 1;
            let id = heads.next;
            heads.open.insert(id, s);
            id
        });
        drop(heads);
        self.connections.fetch_add(1, Ordering::Relaxed);
        per.insert(ip, mine + 1);
        metrics::gauge!("rlay_api_connections").increment(1.0);
        Ok(Held {
            counts: self.clone(),
            ip,
            consumer: false,
            reading,
        })
    }
}

impl Held {
    /// The request (head, and body if any) has arrived: no longer a candidate for eviction.
    pub(crate) fn head_read(&mut self) {
        if let Some(id) = self.reading.take() {
            lock(&self.counts.heads).open.remove(&id);
        }
    }

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
        self.head_read();
        if self.consumer {
            self.counts.consumers.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.release_api();
        }
    }
}
