//! One OS thread per upstream host: dial (public addresses only unless dev mode), read frames,
//! hand events to the pipeline, reconnect with exponential backoff and jitter.
//!
//! Host status follows what happens: `active` while connected; `idle` after the host answers
//! `FutureCursor` (re-probed later without a cursor — the host lost its history); `offline`
//! after repeated failures, but still re-probed on a long backoff (indigo gives up on it);
//! `banned` if the upstream turns out to be a relay itself.

use super::dialer::{ConnectError, DialSlot, Dialer};
use super::hosts::HostHandle;
use super::pipeline::Pipeline;
use super::rate::Limiter;
pub use super::watchdog::spawn_watchdog;
use crate::proto::frame::{self, Event};
use crate::store::{HostStatus, Store};
use bytes::Bytes;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Largest frame accepted from an upstream (sync spec).
pub const MAX_FRAME: usize = 5_000_000;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Ping the upstream after this much silence.
    pub(crate) ping_after: Duration,
    /// Reconnect after this much silence (a stalled connection).
    pub(crate) stall_timeout: Duration,
    /// Wait before re-probing a host that answered FutureCursor.
    pub(crate) idle_retry: Duration,
    pub(crate) failures_before_offline: u32,
    pub(crate) offline_retry: Duration,
    pub(crate) max_backoff: Duration,
    /// Base events/s per host (plus account limit / 1000); trusted hosts get 5,000/s.
    pub(crate) base_rate: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            ping_after: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(90),
            idle_retry: Duration::from_secs(15 * 60),
            failures_before_offline: 15,
            offline_retry: Duration::from_secs(30 * 60),
            max_backoff: Duration::from_secs(300),
            base_rate: 50,
        }
    }
}

/// What a frame did to the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameResult {
    Continue,
    Reconnect(String),
    FutureCursor,
}

/// The per-connection part of frame handling, shared by host threads and the scenario runner
/// so both take exactly the same path.
pub struct Session {
    pub(crate) host: Arc<HostHandle>,
    last_seq: Option<u64>,
    warned: bool,
    info_logged: bool,
    /// indigo's per-host counter, looked up once per connection rather than per frame.
    received: metrics::Counter,
}

impl Session {
    pub fn new(host: Arc<HostHandle>) -> Session {
        let received = host.received_counter().clone();
        Session {
            host,
            last_seq: None,
            warned: false,
            info_logged: false,
            received,
        }
    }

    fn warn_once(&mut self, what: std::fmt::Arguments<'_>) {
        if !self.warned {
            log::warn!("upstream {}: {what}", self.host.hostname());
            self.warned = true;
        }
    }

    /// Decodes one binary frame and passes its event on.
    pub fn handle(&mut self, pipeline: &Arc<Pipeline>, bytes: &Bytes) -> FrameResult {
        self.host.count_received();
        self.received.increment(1);
        if bytes.len() > MAX_FRAME {
            metrics::counter!("rlay_bad_frames_total", "reason" => "too_large").increment(1);
            self.warn_once(format_args!(
                "frame of {} bytes is over the 5 MB limit; reconnecting",
                bytes.len()
            ));
            return FrameResult::Reconnect("frame over 5 MB".into());
        }
        let (seq, did) = match frame::peek(bytes) {
            Ok(frame::Peek::Repo {
                seq: Some(seq),
                did: Some(did),
            }) => (seq, did),
            // Decoded where it is processed, which reports what is missing.
            Ok(frame::Peek::Repo { .. }) => return self.schema_error(&"no integer `seq` or DID"),
            Ok(frame::Peek::Other) => return self.other(bytes),
            Err(e) => return self.fatal(&e),
        };
        if !(1..(1i64 << 53)).contains(&seq) || self.last_seq.is_some_and(|l| seq as u64 <= l) {
            metrics::counter!("rlay_events_dropped_total", "reason" => "seq_not_increasing", "pds" => self.host.hostname().to_owned())
                .increment(1);
            log::debug!(
                "upstream {}: seq {seq} after {:?}; dropped",
                self.host.hostname(),
                self.last_seq
            );
            return FrameResult::Continue;
        }
        self.last_seq = Some(seq as u64);
        pipeline.submit(&self.host, seq as u64, did, bytes);
        FrameResult::Continue
    }

    fn fatal(&mut self, e: &frame::FrameError) -> FrameResult {
        metrics::counter!("rlay_bad_frames_total", "reason" => "invalid_cbor").increment(1);
        self.warn_once(format_args!(
            "invalid frame ({e}); dropping the connection as the spec requires and reconnecting"
        ));
        FrameResult::Reconnect(e.to_string())
    }

    fn schema_error(&self, e: &dyn std::fmt::Display) -> FrameResult {
        metrics::counter!("rlay_bad_frames_total", "reason" => "schema").increment(1);
        log::debug!("upstream {}: dropping a frame: {e}", self.host.hostname());
        FrameResult::Continue
    }

    /// Frames other than repo events: info, errors, and types this relay does not know.
    fn other(&mut self, bytes: &Bytes) -> FrameResult {
        match frame::decode(bytes) {
            Err(e) if e.is_fatal() => self.fatal(&e),
            Err(e) => self.schema_error(&e),
            Ok(Event::Error(e)) if e.error == "FutureCursor" => FrameResult::FutureCursor,
            // Text from the network is logged escaped (no forged lines, no terminal escapes)
            // and at most once per connection.
            Ok(Event::Error(e)) => {
                self.warn_once(format_args!(
                    "sent error {:?}: {:?}",
                    clip(&e.error, 100),
                    clip(e.message.as_deref().unwrap_or(""), 300)
                ));
                FrameResult::Reconnect(format!("upstream error {:?}", clip(&e.error, 100)))
            }
            Ok(Event::Info(i)) => {
                metrics::counter!("rlay_upstream_info_total").increment(1);
                if !std::mem::replace(&mut self.info_logged, true) {
                    log::info!(
                        "upstream {}: #info {:?} {:?} (later #info on this connection are not logged)",
                        self.host.hostname(),
                        clip(&i.name, 100),
                        clip(i.message.as_deref().unwrap_or(""), 300)
                    );
                }
                FrameResult::Continue
            }
            // `peek` sends every repo event on, so only unknown types are left.
            Ok(e) => {
                metrics::counter!("rlay_events_skipped_total", "reason" => "unknown_type")
                    .increment(1);
                if let Event::Unknown { t, .. } = e {
                    log::debug!(
                        "upstream {}: skipping message type {t:?}",
                        self.host.hostname()
                    );
                }
                FrameResult::Continue
            }
        }
    }
}

enum End {
    Killed,
    /// The connection delivered events before ending.
    Progress(String),
    NoProgress(String),
    FutureCursor,
}

pub struct Upstream {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cfg: UpstreamConfig,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) dialer: Dialer,
}

/// Control frames (pings, pongs) a host may send per second before the connection is dropped:
/// they skip the event rate limiter, and each ping costs a pong.
const MAX_CONTROL_PER_SEC: u32 = 20;

/// At most `n` characters of text a host sent, for logs (which show it `{:?}`-escaped).
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The TCP socket under a client WebSocket, plain or TLS.
fn tcp_of(ws: &WebSocket<MaybeTlsStream<TcpStream>>) -> Option<&TcpStream> {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => Some(s),
        MaybeTlsStream::Rustls(s) => Some(s.get_ref()),
        _ => None,
    }
}

fn set_read_timeout(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, d: Duration) {
    let s = match ws.get_mut() {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_mut(),
        _ => return,
    };
    let _ = s.set_read_timeout(Some(d));
}

impl Upstream {
    fn stopping(&self, host: &HostHandle) -> bool {
        self.shutdown.load(Ordering::Relaxed) || host.killed()
    }

    /// Waits before the next attempt; a wake-up (`HostHandle::wake`) or a stop ends it early.
    fn sleep(&self, host: &HostHandle, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stopping(host) && !host.take_wake() {
            std::thread::sleep(Duration::from_millis(100).min(d));
        }
    }

    fn set_status(&self, host: &HostHandle, s: HostStatus) {
        if host.status() != s {
            host.set_status(s);
            if let Err(e) = self.store.set_host_status(host.id(), s) {
                log::error!(
                    "upstream {}: could not store status {}: {e}",
                    host.hostname(),
                    s.as_str()
                );
            }
        }
    }

    /// Starts the host's connection thread unless one is running.
    pub fn spawn(self: &Arc<Self>, host: Arc<HostHandle>) -> bool {
        if !host.claim_thread() {
            return false;
        }
        host.make_counters();
        let me = self.clone();
        let h = host.clone();
        // Made here, not on the host's thread: see `dialer`.
        let slot = Arc::new(DialSlot::default());
        let spawned = std::thread::Builder::new()
            .name(format!("host {}", host.hostname()))
            .stack_size(2 << 20)
            .spawn(move || {
                // A panic costs the session, not the host: count it, resume from before the
                // events in flight (replays of those are recognised as stale), and reconnect.
                while crate::util::isolate::isolate(
                    "host",
                    || format!("reading from {}", h.hostname()),
                    || me.run(&h, &slot),
                )
                .is_none()
                    && !me.stopping(&h)
                {
                    h.rewind_cursor();
                    me.sleep(&h, Duration::from_secs(5));
                }
                h.release_thread();
            });
        if let Err(e) = spawned {
            log::error!(
                "upstream {}: cannot start its thread: {e} (raise the thread limit)",
                host.hostname()
            );
            host.release_thread();
            return false;
        }
        true
    }

    fn run(&self, host: &Arc<HostHandle>, slot: &Arc<DialSlot>) {
        let mut failures: u32 = 0;
        loop {
            if self.stopping(host) || host.status() == HostStatus::Banned {
                return;
            }
            let cursor = Some(host.resume_cursor()).filter(|c| *c > 0);
            let end = match self.dialer.dial(host, cursor, slot, || self.stopping(host)) {
                Ok(ws) => {
                    if host.status() != HostStatus::Banned {
                        self.set_status(host, HostStatus::Active);
                    }
                    host.set_connected(true);
                    let end = self.session(host, ws);
                    host.set_connected(false);
                    end
                }
                Err(ConnectError::IsRelay(server)) => {
                    log::warn!(
                        "upstream {}: refusing to crawl a relay (Server: {server}); host banned",
                        host.hostname()
                    );
                    self.set_status(host, HostStatus::Banned);
                    return;
                }
                Err(e) => End::NoProgress(e.to_string()),
            };
            match end {
                End::Killed => return,
                End::FutureCursor => {
                    log::warn!(
                        "upstream {}: our cursor {:?} is ahead of the host (it lost its history?); marking idle, will re-probe in {:?} without a cursor",
                        host.hostname(),
                        cursor,
                        self.cfg.idle_retry
                    );
                    self.set_status(host, HostStatus::Idle);
                    host.reset_cursor();
                    self.sleep(host, self.cfg.idle_retry);
                    continue;
                }
                End::Progress(why) => {
                    failures = 0;
                    log::info!(
                        "upstream {}: disconnected ({why}); reconnecting",
                        host.hostname()
                    );
                }
                End::NoProgress(why) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(5) {
                        log::warn!(
                            "upstream {}: connection failed {failures} time(s) in a row: {why}",
                            host.hostname()
                        );
                    }
                }
            }
            metrics::counter!("rlay_upstream_reconnects_total").increment(1);
            let delay = if failures >= self.cfg.failures_before_offline {
                if host.status() != HostStatus::Offline {
                    log::warn!(
                        "upstream {}: offline after {failures} failures; re-probing every {:?}",
                        host.hostname(),
                        self.cfg.offline_retry
                    );
                }
                self.set_status(host, HostStatus::Offline);
                self.cfg.offline_retry
            } else {
                // Exponential backoff with full jitter: 0..min(max, 1s * 2^n).
                let cap = Duration::from_millis(1000u64.saturating_mul(1 << failures.min(16)))
                    .min(self.cfg.max_backoff);
                let jitter = (crate::proto::verify::now_us() as u64 % 1000) as f64 / 1000.0;
                if failures == 0 {
                    Duration::from_millis(100)
                } else {
                    cap.mul_f64(0.5 + jitter / 2.0)
                }
            };
            self.sleep(host, delay);
        }
    }

    /// One connection: its socket is registered with the host (so kill and the watchdog can
    /// close it) while frames are read.
    fn session(&self, host: &Arc<HostHandle>, ws: WebSocket<MaybeTlsStream<TcpStream>>) -> End {
        host.attach_socket(tcp_of(&ws).and_then(|s| s.try_clone().ok()));
        let end = self.read_frames(host, ws);
        host.attach_socket(None);
        end
    }

    fn read_frames(
        &self,
        host: &Arc<HostHandle>,
        mut ws: WebSocket<MaybeTlsStream<TcpStream>>,
    ) -> End {
        let poll = self
            .cfg
            .ping_after
            .min(Duration::from_secs(5))
            .max(Duration::from_millis(100));
        set_read_timeout(&mut ws, poll);
        let mut session = Session::new(host.clone());
        let mut limiter = Limiter::new(host, self.cfg.base_rate);
        let mut pinged = false;
        // Only events show the connection worked: a host that answers pings and sends nothing
        // else (or garbage) backs off like one that does not answer at all.
        let mut events = 0u64;
        let (mut control, mut control_since) = (0u32, Instant::now());

        let end = |events: u64, why: String| {
            if events > 0 {
                End::Progress(why)
            } else {
                End::NoProgress(why)
            }
        };
        loop {
            if self.stopping(host) {
                let _ = ws.close(None);
                let _ = ws.flush();
                return End::Killed;
            }
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    host.touch();
                    pinged = false;
                    limiter.acquire(&|| self.stopping(host));
                    match session.handle(&self.pipeline, &b) {
                        FrameResult::Continue => events += 1,
                        FrameResult::FutureCursor => return End::FutureCursor,
                        FrameResult::Reconnect(why) => return end(events, why),
                    }
                }
                Ok(Message::Text(_)) => {
                    metrics::counter!("rlay_bad_frames_total", "reason" => "text_frame")
                        .increment(1);
                    return end(events, "text frame on the firehose".into());
                }
                Ok(Message::Close(_)) => return end(events, "closed by the host".into()),
                Ok(_) => {
                    // A ping or pong: the connection is alive, but it is not progress.
                    host.touch();
                    pinged = false;
                    if control_since.elapsed() >= Duration::from_secs(1) {
                        (control, control_since) = (0, Instant::now());
                    }
                    control += 1;
                    if control > MAX_CONTROL_PER_SEC {
                        metrics::counter!("rlay_bad_frames_total", "reason" => "control_flood")
                            .increment(1);
                        return end(
                            events,
                            format!("more than {MAX_CONTROL_PER_SEC} pings or pongs in a second"),
                        );
                    }
                }
                Err(e) if crate::util::net::ws_timed_out(&e) => {
                    let quiet = host.silent();
                    if quiet >= self.cfg.stall_timeout {
                        return end(
                            events,
                            format!("no data for {quiet:?} (stalled connection)"),
                        );
                    }
                    if quiet >= self.cfg.ping_after && !pinged {
                        let _ = ws.send(Message::Ping(Bytes::new()));
                        pinged = true;
                    }
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    metrics::counter!("rlay_bad_frames_total", "reason" => "too_large")
                        .increment(1);
                    return end(events, format!("frame too large: {e}"));
                }
                Err(e) => return end(events, e.to_string()),
            }
        }
    }
}
