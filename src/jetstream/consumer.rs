//! One Jetstream consumer: its start (a `time_us` cursor, found in the ring or the disk log),
//! then the shared delivery loop (`deliver`), which here turns each sequenced frame into its
//! shared Jetstream events, sends those the filter wants, and takes the client's
//! `options_update` messages. A slow consumer falls back to the disk log like a firehose
//! consumer and is dropped only when it makes no progress.

use super::encode::{Cache, Compressor, Encoded, Item};
use super::params::{ClientMessage, Cursor, Filter, Options, client_message};
use crate::stream::batch::{Kind, Payload};
use crate::stream::deliver::{End, Feed, ROUND_WRITES, deliver, read_client, shut_down};
use crate::stream::eventlog::LogFrame;
use crate::stream::firehose::{Client, Hub};
use crate::stream::outbox::Outbox;
use crate::stream::registry::ConsumerInfo;
use crate::stream::ring::Lookup;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// Client messages larger than this close the connection (1009); a 10,000-DID update is ~450 KB.
const MAX_CLIENT_MESSAGE: usize = 2 << 20;

/// While events flow, a consumer lets this long of them gather before it looks again, instead
/// of waking for each one: a wake-up (futex, write, context switch) per event per consumer was
/// most of what Jetstream cost the relay. It bounds the latency it adds. At 10 ms instead of 2,
/// a write carries five times the events, and the relay bench's Jetstream threads used about a
/// quarter less CPU per event (the reader's wake-up and the socket's per-write cost). 20 ms
/// halves those rounds again: each round's sleep alone was 7% of their time (two context
/// switches on this VM). Three alternated runs read their share of the relay's CPU at 12.0%
/// with 10 ms and 10.5% with 20, but the full bench's share (11.1 to 11.4%) did not move from
/// the stop before, so the gain is within this machine's noise. A Jetstream client does not
/// notice 20 ms; the firehose, whose latency matters more, does not linger.
const LINGER: Duration = Duration::from_millis(20);

/// Encoded frames kept for consumers to share: the newest 8,192 (half a second at the relay's
/// peak rate, many seconds at the network's). Consumers run within a linger of the head, so more
/// bought nothing but memory: with 65,536 slots (the ring's 50,000, rounded up) the relay bench's
/// mixed Jetstream run peaked 41 MB higher (751 against 710 MB), and until the slots filled every
/// event's JSON landed on fresh pages: page faults were a tenth of the Jetstream threads' time in
/// that run's profile, and none with 8,192. A consumer further behind encodes for itself, as one
/// reading the disk log does.
const CACHE_SLOTS: u64 = 8192;

/// How long one write may block: Jetstream drops a connection whose frame takes longer than 5 s.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by every Jetstream consumer.
pub struct Jetstream {
    hub: Arc<Hub>,
    cache: Cache,
    compressor: Compressor,
    max_consumers: usize,
}

impl Jetstream {
    pub fn new(hub: Arc<Hub>, max_consumers: usize) -> Jetstream {
        Jetstream {
            cache: Cache::new(hub.ring.capacity().min(CACHE_SLOTS) as usize),
            hub,
            compressor: Compressor::default(),
            max_consumers,
        }
    }

    /// Whether another consumer may connect.
    pub fn has_room(&self) -> bool {
        self.hub.registry.count_kind("jetstream") < self.max_consumers
    }

    /// The seq to follow from for a `time_us` cursor: just before the last event sequenced at
    /// or before it (its later ops are sent), the oldest retained event if the cursor is older,
    /// live if it is in the future.
    fn start_after(&self, cursor: Cursor) -> u64 {
        let head = self.hub.ring.head();
        let Cursor::From(t) = cursor else {
            return head;
        };
        if t > crate::util::now_us() {
            return head;
        }
        let ring = &self.hub.ring;
        let time_of = |seq: u64| match ring.get(seq) {
            Lookup::Ready(f) => Some(f.time_us),
            _ => None,
        };
        let oldest = ring.oldest();
        if oldest != u64::MAX && time_of(oldest).is_some_and(|o| o <= t) {
            // Binary search the ring for the last seq with time <= t.
            let (mut lo, mut hi) = (oldest, head);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                match time_of(mid) {
                    Some(m) if m <= t => lo = mid,
                    Some(_) => hi = mid - 1,
                    // Evicted meanwhile: the disk log answers instead.
                    None => break,
                }
            }
            if lo == hi {
                return lo.saturating_sub(1);
            }
        }
        match self.hub.log.last_at_or_before(t) {
            Ok(Some(seq)) => seq.saturating_sub(1),
            _ => self
                .hub
                .log
                .oldest_seq()
                .map_or(head, |o| o.saturating_sub(1)),
        }
    }

    /// Runs a consumer on an upgraded connection until it ends.
    pub fn serve(&self, stream: TcpStream, opts: Options, client: Client) {
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE))
            .max_write_buffer_size(1 << 20);
        let mut out = Outbox::new(stream, config, WRITE_TIMEOUT);
        let reg = self.hub.registry.add(
            "jetstream",
            client.remote_addr,
            client.user_agent,
            self.hub.ring.head(),
        );
        let mut session = Session {
            jetstream: self,
            filter: opts.filter,
            compress: opts.compress,
            from_time: match opts.cursor {
                Cursor::From(t) => t,
                Cursor::Live => 0,
            },
            info: &reg.info,
            updated: false,
            bytes: 0,
            counters: Counters::new(opts.compress),
        };
        session.describe();
        metrics::gauge!("rlay_jetstream_consumers").increment(1.0);
        let end = match opts.require_hello {
            true => session.hello(&mut out, &self.hub),
            false => Ok(()),
        }
        .map(|()| {
            let after = self.start_after(opts.cursor);
            deliver(&self.hub, &mut out, &mut session, after, &reg.info)
        })
        .unwrap_or_else(|why| why);
        metrics::gauge!("rlay_jetstream_consumers").decrement(1.0);
        log::info!(
            "jetstream: consumer {} from {} disconnected after {} events: {end}",
            reg.info.id,
            reg.info.remote_addr,
            reg.info.events_sent.load(Ordering::Relaxed)
        );
    }
}

/// One consumer's changing state.
struct Session<'a> {
    jetstream: &'a Jetstream,
    filter: Filter,
    compress: bool,
    /// Items before this `time_us` are not sent (the cursor's event may have earlier ops).
    from_time: i64,
    info: &'a ConsumerInfo,
    /// An `options_update` arrived (what `requireHello` waits for).
    updated: bool,
    /// Payload bytes queued since the last count.
    bytes: u64,
    counters: Counters,
}

/// Registered once per consumer: a lookup by name per batch was a measurable share of the
/// thread.
struct Counters {
    events: metrics::Counter,
    /// Labelled with the consumer's compression, which is fixed when it connects.
    bytes: metrics::Counter,
}

impl Counters {
    fn new(compress: bool) -> Counters {
        let compressed = if compress { "true" } else { "false" };
        Counters {
            events: metrics::counter!("rlay_jetstream_events_sent_total"),
            bytes: metrics::counter!("rlay_jetstream_bytes_sent_total", "compressed" => compressed),
        }
    }
}

impl Session<'_> {
    /// Whether this consumer is sent `item` of `did`'s frame.
    fn wants(&self, e: &Encoded, item: &Item) -> bool {
        let max = self.filter.max_message_size();
        item.time_us >= self.from_time
            && self
                .filter
                .wants_hashed(e.did_hash, &e.did, item.collection())
            && (max == 0 || item.json.len() <= max)
    }

    fn describe(&self) {
        let (collections, dids) = self.filter.describe();
        self.info.set_detail(serde_json::json!({
            "wantedCollections": collections, "wantedDids": dids,
            "maxMessageSizeBytes": self.filter.max_message_size(), "compress": self.compress,
        }));
    }

    /// `requireHello`: nothing is sent until the first valid `options_update`.
    fn hello(&mut self, out: &mut Outbox, hub: &Hub) -> Result<(), String> {
        let mut pinged = Instant::now();
        loop {
            if hub.shutdown.load(Ordering::Relaxed) {
                return Err(shut_down(out));
            }
            out.set_deadline(ROUND_WRITES);
            if out.flush_own().is_err() {
                return Err("write failed".into());
            }
            read_client(out, self)?;
            if self.updated {
                return Ok(());
            }
            if pinged.elapsed() >= Duration::from_secs(30) {
                out.ping().map_err(|_| "connection lost".to_owned())?;
                pinged = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Feed for Session<'_> {
    fn queue(&mut self, f: Arc<LogFrame>, out: &mut Outbox) -> u64 {
        let ring = &self.jetstream.hub.ring;
        let e = self.jetstream.cache.get(&f, |seq| match ring.get(seq) {
            Lookup::Ready(later) => Some(later),
            _ => None,
        });
        let mut n = 0;
        for (i, item) in e.items.iter().enumerate() {
            if !self.wants(&e, item) {
                continue;
            }
            let (piece, len, kind) = if self.compress {
                let z = item.zstd(&self.jetstream.compressor);
                (2 * i + 1, z.len(), Kind::Binary)
            } else {
                (2 * i, item.json.len(), Kind::Text)
            };
            self.bytes += len as u64;
            out.push(Payload::Piece(e.pieces(), piece), kind);
            n += 1;
        }
        n
    }

    fn counted(&mut self, messages: u64) {
        self.counters.events.increment(messages);
        self.counters
            .bytes
            .increment(std::mem::take(&mut self.bytes));
    }

    /// An `options_update` replaces the filter; a bad one closes the connection with its code.
    fn client_message(&mut self, m: Message) -> Result<(), End> {
        let Message::Text(t) = m else {
            return Ok(());
        };
        match client_message(t.as_str()) {
            Ok(ClientMessage::Update(f)) => {
                self.filter = f;
                self.describe();
                self.updated = true;
                Ok(())
            }
            Ok(ClientMessage::Other) => Ok(()),
            Err(r) => Err(End {
                why: format!("refused a client message: {}", r.reason),
                close: Some(CloseFrame {
                    code: CloseCode::from(r.code),
                    reason: r.reason.into(),
                }),
            }),
        }
    }

    /// v1 drops a slow consumer without a word (its clients reconnect from their last
    /// `time_us`).
    fn too_slow(&self) -> Option<(Payload, Kind)> {
        None
    }

    fn linger(&self) -> Duration {
        LINGER
    }
}
