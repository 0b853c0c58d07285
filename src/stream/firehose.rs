//! One downstream `subscribeRepos` consumer: cursor handling, then an endless loop that sends
//! frames from the ring (or from the disk log when the consumer is behind the ring), answers
//! the client's pings, pings idle clients, and gives up only on a client that makes no progress
//! for the stall timeout.
//!
//! No gap and no duplicate at the disk→ring→live hand-over: the consumer tracks the last seq it
//! sent and always asks for the next one; the ring says whether it has it, has not got it yet,
//! or has already dropped it (then the disk log, which was written before the ring, has it).

use super::batch::{Batch, Payload};
use super::eventlog::EventLog;
use super::follow::Follower;
use super::registry::Registry;
use super::ring::Ring;
use crate::proto::frame;
use crate::util::Hidden;
use bytes::Bytes;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Send everything after this seq (live: the current head).
    After(u64),
    /// The cursor predates the retained window: `#info OutdatedCursor`, then everything after
    /// this seq (the one before the oldest retained event).
    Outdated(u64),
    /// The cursor is ahead of the relay: `FutureCursor` error, then close.
    Future,
}

#[derive(Debug, Clone)]
pub struct FirehoseConfig {
    pub stall_timeout: Duration,
    pub ping_interval: Duration,
}

impl Default for FirehoseConfig {
    fn default() -> Self {
        FirehoseConfig {
            stall_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// Everything consumer threads share.
pub struct Hub {
    pub(crate) log: Arc<EventLog>,
    pub(crate) ring: Arc<Ring>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) hidden: Arc<Hidden>,
    pub(crate) config: FirehoseConfig,
    pub(crate) replay_budget: Arc<super::replay_budget::ReplayBudget>,
    pub(crate) shutdown: Arc<AtomicBool>,
}

/// The consumer's socket as tungstenite sees it: counts bytes sent, and bounds how long one
/// flush may run. tungstenite retries partial writes in a loop, so against a client whose window
/// opens a few bytes at a time a single flush could otherwise last forever.
struct Counted {
    inner: TcpStream,
    written: Arc<AtomicU64>,
    deadline: Option<Instant>,
}

impl Read for Counted {
    /// Never waits. The consumer loop reads only to see whether the client sent something,
    /// then parks on the ring; a socket read timeout would hold every idle turn (and the next
    /// event) for a whole scheduler tick, since the kernel rounds it up to one (4 ms at HZ=250).
    /// It is one `recv(MSG_DONTWAIT)`: writes must keep blocking, and switching the socket to
    /// non-blocking and back around each read cost two more syscalls per wake-up.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd;
        recv(self.inner.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
    }
}

impl Counted {
    /// One write to the socket, refused once the deadline has passed, and counted.
    fn counted(
        &mut self,
        w: impl FnOnce(&mut TcpStream) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = w(&mut self.inner)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.counted(|s| s.write(buf))
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.counted(|s| s.write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Metadata about the client, for the registry.
pub struct Client {
    pub(crate) remote_addr: String,
    pub(crate) user_agent: String,
}

impl Hub {
    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// The relay's takedown filter (shared with the pipeline).
    pub fn hidden(&self) -> &Arc<Hidden> {
        &self.hidden
    }

    /// Memory the ring's frames occupy now (bounded by `StreamConfig::ring_max_bytes`).
    pub fn ring_bytes(&self) -> u64 {
        self.ring.bytes()
    }

    /// The consumers connected now.
    pub fn consumers(&self) -> Vec<Arc<super::registry::ConsumerInfo>> {
        self.registry.list()
    }

    /// Applies the cursor rules of the spec to a requested cursor.
    pub fn start_for(&self, cursor: Option<u64>) -> Start {
        let head = self.ring.head();
        // Replays start from what the disk log retains (the ring may briefly hold a little more
        // right after retention, but the window is defined by the log).
        let before_oldest = self.log.oldest_seq().map_or(head, |o| o.saturating_sub(1));
        match cursor {
            None => Start::After(head),
            Some(0) => Start::After(before_oldest),
            Some(c) if c > head => Start::Future,
            Some(c) if c < before_oldest => Start::Outdated(before_oldest),
            Some(c) => Start::After(c),
        }
    }

    /// Runs a consumer on an upgraded connection until it ends.
    pub fn serve(&self, stream: TcpStream, start: Start, client: Client) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        let written = Arc::new(AtomicU64::new(0));
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10))
            .max_write_buffer_size(64 << 20);
        let mut ws = WebSocket::from_raw_socket(
            Counted {
                inner: stream,
                written: written.clone(),
                deadline: None,
            },
            Role::Server,
            Some(config),
        );
        let after = match start {
            Start::Future => {
                let f = frame::error_frame(
                    "FutureCursor",
                    Some("cursor is ahead of the relay's latest sequence number"),
                );
                let _ = ws.send(Message::Binary(Bytes::from(f)));
                let _ = ws.close(None);
                let _ = ws.flush();
                metrics::counter!("rlay_consumer_rejected_total", "reason" => "future_cursor")
                    .increment(1);
                return;
            }
            Start::Outdated(after) => {
                let f = frame::info_frame(
                    "OutdatedCursor",
                    Some("cursor is older than the replay window; starting from the oldest event"),
                );
                if ws.send(Message::Binary(Bytes::from(f))).is_err() {
                    return;
                }
                after
            }
            Start::After(a) => a,
        };
        let reg = self
            .registry
            .add("firehose", client.remote_addr, client.user_agent, after);
        log::info!(
            "firehose: consumer {} connected from {} ({}), starting after seq {after}",
            reg.info.id,
            reg.info.remote_addr,
            reg.info.user_agent
        );
        let end = self.run(&mut ws, after, &reg.info, &written);
        log::info!(
            "firehose: consumer {} from {} disconnected after {} events: {end}",
            reg.info.id,
            reg.info.remote_addr,
            reg.info.events_sent.load(Ordering::Relaxed)
        );
    }

    fn run(
        &self,
        ws: &mut WebSocket<Counted>,
        last: u64,
        info: &super::registry::ConsumerInfo,
        written: &AtomicU64,
    ) -> &'static str {
        let waiter = self.ring.register();
        let mut follow = Follower::new(&self.ring, &self.log, &self.replay_budget, last);
        // Frames go out as a `Batch`; tungstenite's own frames (pongs, pings, close) only
        // between batches, and a batch only once those are flushed (see `batch`).
        let mut batch = Batch::default();
        let mut own_pending = false;
        let mut progress_bytes = written.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        let mut last_write = Instant::now();
        let mut last_read = Instant::now();
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                ws.get_mut().deadline = Some(Instant::now() + Duration::from_secs(1));
                if matches!(batch.write_to(ws.get_mut()), Ok(true)) {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                }
                return "relay shutting down";
            }
            // Every write in this iteration (frames, pongs, pings) must finish within a
            // second; what does not fit stays queued for the next round.
            ws.get_mut().deadline = Some(Instant::now() + Duration::from_secs(1));
            let mut filled = 0u64;
            let mut progressed = false;
            if batch.is_empty() {
                // Costs no syscall when tungstenite holds nothing (the usual case).
                match ws.flush() {
                    Ok(()) => {
                        progressed = own_pending;
                        own_pending = false;
                    }
                    Err(e) if crate::util::net::ws_timed_out(&e) => own_pending = true,
                    Err(_) => return "write failed",
                }
            }
            let was_pending = !batch.is_empty() || own_pending;
            if batch.is_empty() && !own_pending {
                // Queue up to ~64 KiB of frames, then write them at once.
                while batch.len() < 64 << 10 {
                    let f = match follow.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            log::warn!(
                                "firehose: consumer {} cannot read the event log: {e}",
                                info.id
                            );
                            return "event log read error";
                        }
                    };
                    info.cursor.store(f.seq, Ordering::Relaxed);
                    if f.is_repo_event() && self.hidden.hides(f.did_hash) {
                        continue;
                    }
                    batch.push(Payload::Shared(f));
                    filled += 1;
                }
            }
            if filled > 0 {
                info.events_sent.fetch_add(filled, Ordering::Relaxed);
                metrics::counter!("events_sent_counter").increment(filled);
            }
            // Progress means a whole batch reached the socket. Counting bytes instead would
            // let a dead client live forever on the few KB that TCP autotuning trickles in.
            if !batch.is_empty() {
                match batch.write_to(ws.get_mut()) {
                    Ok(done) => progressed |= done,
                    Err(_) => return "write failed",
                }
            }
            let pending = !batch.is_empty() || own_pending;
            if progressed {
                last_write = Instant::now();
                last_progress = last_write;
            }
            if filled > 0 || was_pending {
                let now_bytes = written.load(Ordering::Relaxed);
                info.bytes_sent.store(now_bytes, Ordering::Relaxed);
                metrics::counter!("rlay_consumer_bytes_sent_total")
                    .increment(now_bytes - progress_bytes);
                progress_bytes = now_bytes;
                if pending && last_progress.elapsed() >= self.config.stall_timeout {
                    return Self::too_slow(ws, &mut batch, own_pending);
                }
                if !pending && filled > 0 && last_read.elapsed() < Duration::from_secs(1) {
                    continue;
                }
            } else {
                last_progress = Instant::now();
            }
            // Service the client between batches: pings get pongs, a close ends us, anything
            // else is ignored.
            if batch.is_empty() && (last_read.elapsed() >= super::CLIENT_READ_EVERY || pending) {
                last_read = Instant::now();
                if let Some(end) = Self::read_client(ws) {
                    return end;
                }
            }
            if !pending && filled == 0 {
                if last_write.elapsed() >= self.config.ping_interval {
                    match ws.send(Message::Ping(Bytes::new())) {
                        Ok(()) => last_write = Instant::now(),
                        Err(e) if crate::util::net::ws_timed_out(&e) => own_pending = true,
                        Err(_) => return "connection lost",
                    }
                }
                waiter.wait(Duration::from_millis(100));
            } else if pending {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Gives up on a consumer that made no progress: best effort, the client may still drain
    /// its buffer and read why it was dropped, so the error frame is offered for a few seconds
    /// after whatever was already queued.
    fn too_slow(
        ws: &mut WebSocket<Counted>,
        batch: &mut Batch,
        mut own_pending: bool,
    ) -> &'static str {
        metrics::counter!("rlay_consumer_rejected_total", "reason" => "too_slow").increment(1);
        // Queued now, written only once tungstenite's pending bytes are out (a batch is empty
        // while they are, so this frame is the batch's first or follows its frames).
        batch.push(Payload::Owned(frame::error_frame(
            "ConsumerTooSlow",
            Some("no progress reading the stream"),
        )));
        let give_up = Instant::now() + Duration::from_secs(5);
        ws.get_mut().deadline = Some(give_up);
        while Instant::now() < give_up {
            if own_pending {
                match ws.flush() {
                    Ok(()) => own_pending = false,
                    Err(e) if crate::util::net::ws_timed_out(&e) => {}
                    Err(_) => break,
                }
                continue;
            }
            match batch.write_to(ws.get_mut()) {
                Ok(true) | Err(_) => break,
                Ok(false) => {}
            }
        }
        "ConsumerTooSlow"
    }

    /// Reads what the client sent without waiting: pings get pongs (tungstenite queues them),
    /// a close or a broken connection ends the consumer with its reason.
    fn read_client(ws: &mut WebSocket<Counted>) -> Option<&'static str> {
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                    return Some("client closed");
                }
                Ok(_) => continue,
                Err(e) if crate::util::net::ws_timed_out(&e) => return None,
                Err(_) => return Some("connection lost"),
            }
        }
    }
}
