//! One downstream `subscribeRepos` consumer: cursor handling, then the shared delivery loop
//! (`deliver`) sending every frame as it is, from the ring (or from the disk log when the
//! consumer is behind the ring).
//!
//! No gap and no duplicate at the disk→ring→live hand-over: the consumer tracks the last seq it
//! sent and always asks for the next one; the ring says whether it has it, has not got it yet,
//! or has already dropped it (then the disk log, which was written before the ring, has it).

use super::batch::{Kind, Payload};
use super::deliver::{End, Feed, GOODBYE, deliver};
use super::eventlog::{EventLog, LogFrame};
use super::outbox::Outbox;
use super::registry::Registry;
use super::ring::Ring;
use crate::proto::frame;
use crate::util::Hidden;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

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
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10))
            .max_write_buffer_size(1 << 20);
        let mut out = Outbox::new(stream, config, Duration::from_secs(1));
        let after = match start {
            Start::Future => {
                let f = frame::error_frame(
                    "FutureCursor",
                    Some("cursor is ahead of the relay's latest sequence number"),
                );
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                out.finish(
                    Some((Payload::Owned(f), Kind::Binary)),
                    Some(close),
                    GOODBYE,
                );
                metrics::counter!("rlay_consumer_rejected_total", "reason" => "future_cursor")
                    .increment(1);
                return;
            }
            Start::Outdated(after) => {
                let f = frame::info_frame(
                    "OutdatedCursor",
                    Some("cursor is older than the replay window; starting from the oldest event"),
                );
                // The first thing the delivery loop writes.
                out.push(Payload::Owned(f), Kind::Binary);
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
        let mut frames = Frames {
            sent: metrics::counter!("events_sent_counter"),
        };
        let end = deliver(self, &mut out, &mut frames, after, &reg.info);
        log::info!(
            "firehose: consumer {} from {} disconnected after {} events: {end}",
            reg.info.id,
            reg.info.remote_addr,
            reg.info.events_sent.load(Ordering::Relaxed)
        );
    }
}

/// The firehose sends every frame as it is, from the shared buffer.
struct Frames {
    /// Registered once, not looked up by name per batch.
    sent: metrics::Counter,
}

impl Feed for Frames {
    fn queue(&mut self, f: Arc<LogFrame>, out: &mut Outbox) -> u64 {
        out.push(Payload::Shared(f), Kind::Binary);
        1
    }

    fn counted(&mut self, messages: u64) {
        self.sent.increment(messages);
    }

    /// Clients ignore what they send besides pings and a close.
    fn client_message(&mut self, _: tungstenite::Message) -> Result<(), End> {
        Ok(())
    }

    fn too_slow(&self) -> Option<(Payload, Kind)> {
        let f = frame::error_frame("ConsumerTooSlow", Some("no progress reading the stream"));
        Some((Payload::Owned(f), Kind::Binary))
    }
}
