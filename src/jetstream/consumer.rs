//! One Jetstream consumer: its start (a `time_us` cursor, found in the ring or the disk log),
//! then a loop that turns each sequenced frame into its shared Jetstream events, sends those the
//! filter wants, and reads the client's `options_update` messages. A slow consumer falls back
//! to the disk log like a firehose consumer and is closed only when it makes no progress.

use super::encode::{Cache, Compressor};
use super::params::{ClientMessage, Cursor, Filter, Options, client_message};
use crate::stream::eventlog::LogFrame;
use crate::stream::firehose::{Client, Hub};
use crate::stream::follow::Follower;
use crate::stream::registry::ConsumerInfo;
use crate::stream::ring::Lookup;
use bytes::Bytes;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Client messages larger than this close the connection (1009); a 10,000-DID update is ~450 KB.
const MAX_CLIENT_MESSAGE: usize = 2 << 20;

/// While events flow, a consumer lets this long of them gather before it looks again, instead
/// of waking for each one: a wake-up (futex, write, context switch) per event per consumer was
/// most of what Jetstream cost the relay. It bounds the latency it adds.
const LINGER: Duration = Duration::from_millis(2);

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
            cache: Cache::new(hub.ring.capacity().min(65_536) as usize),
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
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE))
            .max_write_buffer_size(64 << 20);
        let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
        let reg = self.hub.registry.add(
            "jetstream",
            client.remote_addr,
            client.user_agent,
            self.hub.ring.head(),
        );
        let mut session = Session {
            filter: opts.filter,
            compress: opts.compress,
            from_time: match opts.cursor {
                Cursor::From(t) => t,
                Cursor::Live => 0,
            },
            info: &reg.info,
        };
        session.describe();
        metrics::gauge!("rlay_jetstream_consumers").increment(1.0);
        let end = match opts.require_hello {
            true => session.hello(&mut ws, &self.hub),
            false => Ok(()),
        }
        .and_then(|()| {
            let after = self.start_after(opts.cursor);
            self.run(&mut ws, &mut session, after)
        });
        metrics::gauge!("rlay_jetstream_consumers").decrement(1.0);
        let why = match end {
            Ok(()) => "ended".to_owned(),
            Err(e) => e,
        };
        log::info!(
            "jetstream: consumer {} from {} disconnected after {} events: {why}",
            reg.info.id,
            reg.info.remote_addr,
            reg.info.events_sent.load(Ordering::Relaxed)
        );
    }

    fn run(
        &self,
        ws: &mut WebSocket<TcpStream>,
        s: &mut Session<'_>,
        last: u64,
    ) -> Result<(), String> {
        let hub = &self.hub;
        let waiter = hub.ring.register();
        let mut follow = Follower::new(&hub.ring, &hub.log, &hub.replay_budget, last);
        let mut last_write = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_read = Instant::now();
        let compressed = if s.compress { "true" } else { "false" };
        let mut streaming = false;
        loop {
            if hub.shutdown.load(Ordering::Relaxed) {
                close(ws, CloseCode::Away, "server shutting down");
                return Err("relay shutting down".into());
            }
            let (mut sent, mut bytes, mut frames) = (0u64, 0u64, 0usize);
            let mut stuck = false;
            while sent < 256 && !stuck {
                let f: Arc<LogFrame> = match follow.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(format!("cannot read the event log: {e}")),
                };
                frames += 1;
                s.info.cursor.store(f.seq, Ordering::Relaxed);
                if f.is_repo_event() && hub.hidden.hides(f.did_hash) {
                    continue;
                }
                let e = self.cache.get(&f);
                for item in &e.items {
                    if !s.wants(&e, item) {
                        continue;
                    }
                    let (msg, n) = if s.compress {
                        let z = item.zstd(&self.compressor);
                        (Message::Binary(z.clone()), z.len())
                    } else {
                        (Message::Text(item.json.clone()), item.json.len())
                    };
                    match ws.write(msg) {
                        Ok(()) => {}
                        // Queued, but the socket is full: flush below decides.
                        Err(e) if crate::util::net::ws_timed_out(&e) => stuck = true,
                        Err(e) => return Err(format!("write failed: {e}")),
                    }
                    sent += 1;
                    bytes += n as u64;
                    if stuck {
                        break;
                    }
                }
            }
            // Counted once per batch: a metrics lookup per event is most of a delivery's cost.
            if sent > 0 {
                s.info.events_sent.fetch_add(sent, Ordering::Relaxed);
                s.info.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                metrics::counter!("rlay_jetstream_events_sent_total").increment(sent);
                metrics::counter!("rlay_jetstream_bytes_sent_total", "compressed" => compressed)
                    .increment(bytes);
            }
            match ws.flush() {
                Ok(()) => {
                    if sent > 0 {
                        last_write = Instant::now();
                    }
                    last_progress = Instant::now();
                }
                Err(e) if crate::util::net::ws_timed_out(&e) => {
                    if last_progress.elapsed() >= hub.config.stall_timeout {
                        metrics::counter!("rlay_consumer_rejected_total", "reason" => "too_slow")
                            .increment(1);
                        return Err("no progress reading the stream".into());
                    }
                }
                Err(e) => return Err(format!("write failed: {e}")),
            }
            // Three syscalls per look are not worth making per batch.
            if last_read.elapsed() >= crate::stream::CLIENT_READ_EVERY {
                s.read_client(ws)?;
                last_read = Instant::now();
            }
            if frames > 0 {
                streaming = true;
            } else if streaming {
                streaming = false;
                std::thread::sleep(LINGER);
            } else {
                if last_write.elapsed() >= Duration::from_secs(30) {
                    let _ = ws.send(Message::Ping(Bytes::new()));
                    last_write = Instant::now();
                }
                waiter.wait(Duration::from_millis(100));
            }
        }
    }
}

fn close(ws: &mut WebSocket<TcpStream>, code: CloseCode, reason: &str) {
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }));
    let _ = ws.flush();
}

/// One consumer's changing state.
struct Session<'a> {
    filter: Filter,
    compress: bool,
    /// Items before this `time_us` are not sent (the cursor's event may have earlier ops).
    from_time: i64,
    info: &'a ConsumerInfo,
}

impl Session<'_> {
    /// Whether this consumer is sent `item` of `did`'s frame.
    fn wants(&self, e: &super::encode::Encoded, item: &super::encode::Item) -> bool {
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

    /// Reads what the client sent: an `options_update` replaces the filter; a bad one closes
    /// the connection with its code. `Ok(true)` if an update arrived.
    fn read_client(&mut self, ws: &mut WebSocket<TcpStream>) -> Result<bool, String> {
        // Without waiting: a read timeout is rounded up to a scheduler tick (4 ms at HZ=250).
        let _ = ws.get_ref().set_nonblocking(true);
        let r = self.read_client_waiting_for_nothing(ws);
        let _ = ws.get_ref().set_nonblocking(false);
        r
    }

    fn read_client_waiting_for_nothing(
        &mut self,
        ws: &mut WebSocket<TcpStream>,
    ) -> Result<bool, String> {
        let mut updated = false;
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => match client_message(t.as_str()) {
                    Ok(ClientMessage::Update(f)) => {
                        self.filter = f;
                        self.describe();
                        updated = true;
                    }
                    Ok(ClientMessage::Other) => {}
                    Err(r) => {
                        close(ws, CloseCode::from(r.code), &r.reason);
                        return Err(format!("refused a client message: {}", r.reason));
                    }
                },
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                    return Err("client closed".into());
                }
                Ok(_) => {}
                Err(e) if crate::util::net::ws_timed_out(&e) => return Ok(updated),
                Err(tungstenite::Error::Capacity(_)) => {
                    close(ws, CloseCode::Size, "read limited at 2097152 bytes");
                    return Err("client message too large".into());
                }
                Err(e) => return Err(format!("connection lost: {e}")),
            }
        }
    }

    /// `requireHello`: nothing is sent until the first valid `options_update`.
    fn hello(&mut self, ws: &mut WebSocket<TcpStream>, hub: &Hub) -> Result<(), String> {
        let mut pinged = Instant::now();
        loop {
            if hub.shutdown.load(Ordering::Relaxed) {
                close(ws, CloseCode::Away, "server shutting down");
                return Err("relay shutting down".into());
            }
            if self.read_client(ws)? {
                return Ok(());
            }
            if pinged.elapsed() >= Duration::from_secs(30) {
                let _ = ws.send(Message::Ping(Bytes::new()));
                pinged = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
