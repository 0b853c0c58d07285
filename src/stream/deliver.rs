//! The loop every streaming consumer runs, firehose and Jetstream alike: follow the stream from a
//! seq (ring, else disk log), turn each frame into what this consumer sends ([`Feed`]), write it
//! in batches, serve the client between batches, park on the ring when caught up, and give up
//! only on a client that makes no progress for the stall timeout.

use super::batch::{Kind, Payload};
use super::eventlog::LogFrame;
use super::firehose::Hub;
use super::follow::Follower;
use super::outbox::{Lost, Outbox};
use super::registry::ConsumerInfo;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::Message;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// A batch is filled up to about this many bytes, then written at once.
const BATCH_BYTES: usize = 64 << 10;

/// At most this many frames are looked at per round, so a consumer whose filter wants few of
/// them still serves its client and sees a shutdown.
const BATCH_FRAMES: u64 = 1024;

/// Every write of one round (frames, pongs, pings) must start within this; what does not fit
/// stays queued for the next round.
pub const ROUND_WRITES: Duration = Duration::from_secs(1);

/// How long a consumer that is ending may spend telling its client why.
pub const GOODBYE: Duration = Duration::from_secs(1);

/// How a consumer ends, and what its client is told.
pub struct End {
    /// For the log line.
    pub why: String,
    /// The close frame to send; `None` drops the connection without one.
    pub close: Option<CloseFrame>,
}

/// What one kind of consumer makes of the stream.
pub trait Feed {
    /// Queues what this consumer sends of `f` (nothing, one message or several); returns how
    /// many messages.
    fn queue(&mut self, f: Arc<LogFrame>, out: &mut Outbox) -> u64;
    /// Once per filled batch, with the messages it queued: per-kind metrics are counted here,
    /// since a metrics lookup per event is most of a delivery's cost.
    fn counted(&mut self, messages: u64);
    /// A message from the client other than a ping, pong or close; `Err` ends the consumer.
    fn client_message(&mut self, m: Message) -> Result<(), End>;
    /// What a consumer that made no progress is sent before it is dropped, if anything.
    fn too_slow(&self) -> Option<(Payload, Kind)>;
    /// How long to let events gather once a burst has been sent, before looking again: a
    /// wake-up per event per consumer costs more than the events.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }
}

/// Runs `feed` from just after seq `last` until the consumer ends; returns why.
pub fn deliver(
    hub: &Hub,
    out: &mut Outbox,
    feed: &mut impl Feed,
    last: u64,
    info: &ConsumerInfo,
) -> String {
    let waiter = hub.ring.register();
    let mut follow = Follower::new(&hub.ring, &hub.log, &hub.replay_budget, last);
    let mut counted_bytes = out.bytes_written();
    // Registered once: looking a counter up by name each round was a measurable share of a
    // Jetstream thread.
    let bytes_sent = metrics::counter!("rlay_consumer_bytes_sent_total");
    let mut last_progress = Instant::now();
    let mut last_write = Instant::now();
    let mut last_read = Instant::now();
    let mut streaming = false;
    loop {
        if hub.shutdown.load(Ordering::Relaxed) {
            return shut_down(out);
        }
        out.set_deadline(ROUND_WRITES);
        let Ok(mut progressed) = out.flush_own() else {
            return "write failed".into();
        };
        let (mut frames, mut queued) = (0u64, 0u64);
        if out.ready() {
            let hidden = hub.hidden.view();
            while out.queued() < BATCH_BYTES && frames < BATCH_FRAMES {
                let f = match follow.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!(
                            "{}: consumer {} cannot read the event log, so it is dropped \
                             (check the relay's data directory): {e}",
                            info.kind,
                            info.id
                        );
                        return format!("cannot read the event log: {e}");
                    }
                };
                frames += 1;
                info.cursor.store(f.seq, Ordering::Relaxed);
                if f.is_repo_event() && hidden.hides(f.did_hash) {
                    continue;
                }
                queued += feed.queue(f, out);
            }
        }
        if queued > 0 {
            info.events_sent.fetch_add(queued, Ordering::Relaxed);
            feed.counted(queued);
        }
        // Progress means a whole batch reached the socket. Counting bytes instead would let a
        // dead client live forever on the few KB that TCP autotuning trickles in.
        match out.write() {
            Ok(done) => progressed |= done,
            Err(Lost) => return "write failed".into(),
        }
        let pending = !out.ready();
        let now = Instant::now();
        if progressed {
            last_write = now;
        }
        if progressed || !pending {
            last_progress = now;
        }
        let bytes = out.bytes_written();
        if bytes > counted_bytes {
            info.bytes_sent.store(bytes, Ordering::Relaxed);
            bytes_sent.increment(bytes - counted_bytes);
            counted_bytes = bytes;
        }
        if pending && last_progress.elapsed() >= hub.config.stall_timeout {
            metrics::counter!("rlay_consumer_rejected_total", "reason" => "too_slow").increment(1);
            out.finish(feed.too_slow(), None, Duration::from_secs(5));
            return "too slow: no progress reading the stream".into();
        }
        if !out.writing() && (pending || last_read.elapsed() >= super::CLIENT_READ_EVERY) {
            last_read = now;
            if let Err(why) = read_client(out, feed) {
                return why;
            }
        }
        if pending {
            std::thread::sleep(Duration::from_millis(5));
        } else if frames > 0 {
            streaming = true;
        } else if std::mem::take(&mut streaming) && !feed.linger().is_zero() {
            std::thread::sleep(feed.linger());
        } else {
            if last_write.elapsed() >= hub.config.ping_interval {
                if out.ping().is_err() {
                    return "connection lost".into();
                }
                last_write = Instant::now();
            }
            waiter.wait(Duration::from_millis(100));
        }
    }
}

/// Reads everything the client has sent, without waiting (only between batches): pings get
/// pongs, a close or a broken connection ends the consumer, the rest goes to `feed`.
pub fn read_client(out: &mut Outbox, feed: &mut impl Feed) -> Result<(), String> {
    loop {
        match out.read() {
            Ok(None) => return Ok(()),
            Ok(Some(Message::Close(_))) => {
                let _ = out.flush_own();
                return Err("client closed".into());
            }
            Ok(Some(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Ok(Some(m)) => {
                if let Err(end) = feed.client_message(m) {
                    out.finish(None, end.close, GOODBYE);
                    return Err(end.why);
                }
            }
            Err(tungstenite::Error::Capacity(_)) => {
                let limit = out.max_message_size();
                out.finish(
                    None,
                    Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: format!("read limited at {limit} bytes").into(),
                    }),
                    GOODBYE,
                );
                return Err("client message too large".into());
            }
            Err(_) => return Err("connection lost".into()),
        }
    }
}

/// Ends a consumer because the relay is stopping: what is queued, then close 1001 with
/// Jetstream's reason text. Returns why, for the log.
pub fn shut_down(out: &mut Outbox) -> String {
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "server shutting down".into(),
    };
    out.finish(None, Some(close), GOODBYE);
    "relay shutting down".into()
}
