//! One simulated PDS host: its own firehose (seq, replay from a cursor, live tail) and a frame
//! log bounded in memory. Subscribers are served on their own threads and sleep on a condvar,
//! so an idle host costs no CPU.

use super::fault::FaultKind;
use crate::proto::cbor::Reader;
use crate::proto::frame::{self, Event};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// Frames kept for cursor replay, per host.
const LOG_MAX_FRAMES: usize = 100_000;
const LOG_MAX_BYTES: usize = 64 << 20;

struct Log {
    frames: VecDeque<(u64, Bytes)>,
    /// Absolute index of `frames[0]` (subscribers keep absolute positions).
    base: u64,
    next_seq: u64,
    bytes: usize,
    /// Bumped by a restart; subscribers of an older generation disconnect.
    generation: u64,
}

pub struct Host {
    /// `localhost:PORT`, as relays know it.
    pub(crate) hostname: String,
    log: Mutex<Log>,
    cv: Condvar,
    /// (kind, every n-th frame or event)
    fault: Mutex<Option<(FaultKind, u64)>>,
    /// Events generated on this host, for pacing event-level faults.
    pub(crate) generated: AtomicU64,
    pub(crate) shutdown: AtomicBool,
    /// Down: every request is cut off unanswered and subscribers are disconnected.
    down: AtomicBool,
    pub(crate) subscribers: AtomicU64,
    /// When each frame (by seq) was first written to a subscriber's socket, while recorded:
    /// the simulator's own share of a latency measurement ends there.
    wire_times: Mutex<Option<HashMap<u64, Instant>>>,
}

impl Host {
    /// Relays (or other clients) subscribed to this host now.
    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    pub fn new(addr: SocketAddr) -> Host {
        Host {
            hostname: format!("localhost:{}", addr.port()),
            log: Mutex::new(Log {
                frames: VecDeque::new(),
                base: 0,
                next_seq: 1,
                bytes: 0,
                generation: 0,
            }),
            cv: Condvar::new(),
            fault: Mutex::new(None),
            generated: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            down: AtomicBool::new(false),
            subscribers: AtomicU64::new(0),
            wire_times: Mutex::new(None),
        }
    }

    /// Starts recording when frames reach a subscriber's socket (latency benchmarks).
    pub(crate) fn record_wire_times(&self) {
        *self
            .wire_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(HashMap::new());
    }

    /// When the frame with this seq was first written to a subscriber; forgets it.
    pub(crate) fn take_wire_time(&self, seq: u64) -> Option<Instant> {
        self.wire_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(|m| m.remove(&seq))
    }

    fn note_written(&self, seqs: &[u64]) {
        let mut w = self
            .wire_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = w.as_mut() {
            let now = Instant::now();
            for s in seqs {
                m.entry(*s).or_insert(now);
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.hostname)
    }

    /// Takes the host down (a crashed PDS: connections are cut, requests unanswered) or up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.cv.notify_all();
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn set_fault(&self, f: Option<(FaultKind, u64)>) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = f;
    }

    pub fn fault(&self) -> Option<(FaultKind, u64)> {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, log: &mut Log, seq: u64, bytes: Bytes) {
        log.bytes += bytes.len();
        log.frames.push_back((seq, bytes));
        while log.frames.len() > LOG_MAX_FRAMES || log.bytes > LOG_MAX_BYTES {
            if let Some((_, b)) = log.frames.pop_front() {
                log.bytes -= b.len();
                log.base += 1;
            }
        }
    }

    /// Gives the event this host's next seq, stores and announces it; returns the seq.
    pub fn publish(&self, mut e: Event) -> u64 {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = log.next_seq;
        log.next_seq += 1;
        e.set_seq(seq as i64);
        let bytes = Bytes::from(frame::encode(&e));
        self.push(&mut log, seq, bytes);
        drop(log);
        self.cv.notify_all();
        seq
    }

    /// Emits the previous frame again, same seq (the repeated-seq fault).
    pub fn repeat_last(&self) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seq, b)) = log.frames.back().cloned() {
            self.push(&mut log, seq, b);
        }
        drop(log);
        self.cv.notify_all();
    }

    /// A restart that lost the PDS's sequence: the log is emptied, seq starts again at 1, and
    /// every subscriber is disconnected.
    pub fn restart(&self) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.base += log.frames.len() as u64;
        log.frames.clear();
        log.bytes = 0;
        log.next_seq = 1;
        log.generation += 1;
        drop(log);
        self.cv.notify_all();
    }

    pub fn last_seq(&self) -> u64 {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_seq
            - 1
    }

    /// Where a new subscriber starts: `(absolute log position, generation)`, or `None` for a
    /// cursor ahead of this host. Taken before the handshake is answered, so a client that has
    /// its 101 sees everything published after it.
    pub fn start_position(&self, cursor: Option<u64>) -> Option<(u64, u64)> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = match cursor {
            Some(c) if c > log.next_seq - 1 => return None,
            None => log.base + log.frames.len() as u64,
            Some(c) => log.base + log.frames.partition_point(|(s, _)| *s <= c) as u64,
        };
        Some((pos, log.generation))
    }

    /// Serves one `subscribeRepos` connection (the 101 response is already written).
    pub fn serve_subscriber(&self, stream: TcpStream, start: Option<(u64, u64)>) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
        let Some((mut pos, generation)) = start else {
            let f = frame::error_frame("FutureCursor", Some("cursor is ahead of this PDS"));
            let _ = ws.send(Message::Binary(Bytes::from(f)));
            let _ = ws.close(None);
            let _ = ws.flush();
            return;
        };
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        self.stream_frames(&mut ws, &mut pos, generation);
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    fn stream_frames(&self, ws: &mut WebSocket<TcpStream>, pos: &mut u64, generation: u64) {
        let mut sent = 0u64;
        let conn_fault = self.fault().filter(|(k, _)| k.is_connection_level());
        let mut last_ping = Instant::now();
        loop {
            let batch: Vec<(u64, Bytes)> = {
                let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if log.generation != generation
                        || self.shutdown.load(Ordering::Relaxed)
                        || self.is_down()
                    {
                        drop(log);
                        let _ = ws.get_mut().shutdown(Shutdown::Both);
                        return;
                    }
                    *pos = (*pos).max(log.base);
                    if *pos < log.base + log.frames.len() as u64 {
                        break;
                    }
                    // Wake once a second to answer the client's pings (relays treat an
                    // unanswered ping as a dead connection).
                    let (g, timeout) = self
                        .cv
                        .wait_timeout(log, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner);
                    log = g;
                    if timeout.timed_out() {
                        break;
                    }
                }
                let start = (*pos - log.base) as usize;
                let v: Vec<(u64, Bytes)> =
                    log.frames.iter().skip(start).take(256).cloned().collect();
                *pos += v.len() as u64;
                v
            };
            // Keep the connection alive for clients that expect traffic, and drain their frames.
            if batch.is_empty() && last_ping.elapsed() > Duration::from_secs(20) {
                last_ping = Instant::now();
                if ws.send(Message::Ping(Bytes::new())).is_err() {
                    return;
                }
            }
            // Only when the client sent something: a read with nothing there would wait out
            // the read timeout in front of every batch.
            while crate::util::net::has_input(ws.get_ref()) {
                match ws.read() {
                    Ok(Message::Close(_)) => return,
                    Ok(_) => {}
                    Err(e) if crate::util::net::ws_timed_out(&e) => {
                        break;
                    }
                    Err(_) => return,
                }
            }
            let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
            for (_, f) in batch {
                sent += 1;
                if let Some((kind, every)) = conn_fault
                    && sent == every.max(1)
                    && self.inject(ws, kind, &f)
                {
                    return;
                }
                if ws.write(Message::Binary(f)).is_err() {
                    return;
                }
            }
            if ws.flush().is_err() {
                return;
            }
            self.note_written(&seqs);
        }
    }

    /// Injects a connection-level fault; returns whether the connection is finished.
    fn inject(&self, ws: &mut WebSocket<TcpStream>, kind: FaultKind, current: &Bytes) -> bool {
        let _ = ws.flush();
        let junk = match kind {
            FaultKind::Garbage => Bytes::from_static(b"\xff\x00garbage, not CBOR\x13\x37"),
            FaultKind::NonCanonical => non_canonical(current),
            FaultKind::OversizeFrame => Bytes::from(vec![0u8; 5_500_000]),
            FaultKind::Stall => {
                // A header promising 1,000 bytes, then 10 of them, then nothing.
                let s = ws.get_mut();
                let _ = s.write_all(&[0x82, 0x7e, 0x03, 0xe8]);
                let _ = s.write_all(&[0u8; 10]);
                let _ = s.flush();
                let until = Instant::now() + Duration::from_secs(300);
                while Instant::now() < until && !self.shutdown.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    // Stop once the peer has hung up.
                    let mut b = [0u8; 1];
                    match std::io::Read::read(s, &mut b) {
                        Ok(0) => break,
                        Err(e) if crate::util::net::timed_out(&e) => {}
                        _ => break,
                    }
                }
                let _ = s.shutdown(Shutdown::Both);
                return true;
            }
            FaultKind::Disconnect => {
                let _ = ws.get_mut().shutdown(Shutdown::Both);
                return true;
            }
            _ => return false,
        };
        let _ = ws.send(Message::Binary(junk));
        // The relay should now hang up; keep sending normally if it does not.
        false
    }
}

/// The same frame with the header's `op` re-encoded non-minimally (`18 01` for `01`): still
/// well-formed CBOR, but not canonical DAG-CBOR.
pub fn non_canonical(f: &Bytes) -> Bytes {
    let mut r = Reader::new(f);
    if r.skip(4).is_err() {
        return f.clone();
    }
    let end = r.position();
    if end == 0 || f[end - 1] != 0x01 {
        return f.clone();
    }
    let mut v = Vec::with_capacity(f.len() + 1);
    v.extend_from_slice(&f[..end - 1]);
    v.extend_from_slice(&[0x18, 0x01]);
    v.extend_from_slice(&f[end..]);
    Bytes::from(v)
}
