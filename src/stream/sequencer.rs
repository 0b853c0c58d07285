//! The sequencer: the one thread that gives events their relay seq.
//!
//! Producers encode each frame once, on their own threads, leaving its seq as a slot
//! (`Outgoing`). For each batch drained from its channel the sequencer writes consecutive seqs
//! into those slots, appends the batch to the disk log with one vectored write (no copy of the
//! frames), and only then publishes it to the ring — so nothing is broadcast that a restart
//! could lose or renumber. Parked consumers are woken in rounds (`wakeups`), not per batch.
//!
//! fsync policy: frames reach the OS (write(2)) before they are broadcast, which survives a
//! process crash; `fdatasync` runs every 200 ms while there are writes and on every `Barrier`
//! (the store flusher sends one before committing account state, so stored state never gets
//! ahead of the durable log), both on the `log-sync` thread so the sequencer never waits for
//! the disk on the live path; and at segment roll and at shutdown.

use super::eventlog::{EventLog, KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC, LogFrame};
use super::ring::Ring;
use super::wakeups::Wakeups;
use crate::proto::frame::{Event, Unsequenced};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_BATCH: usize = 1024;
/// Seqs reserved ahead on disk at a time: a crash that loses the log's unsynced tail can never
/// make a restart hand out a seq that was already broadcast (it skips ahead instead).
const RESERVE_AHEAD: u64 = 100_000;
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// An accepted event, encoded by its producer, waiting for its seq.
#[derive(Debug)]
pub struct Outgoing {
    frame: Unsequenced,
    kind: u8,
    did_hash: u64,
    /// `time_us` values it takes: one per Jetstream event it becomes (a commit's ops), at least 1.
    times: u32,
}

impl Outgoing {
    /// `None` for event types that are not sequenced (`#info`, errors, unknown types).
    pub fn new(e: &Event) -> Option<Outgoing> {
        Some(Outgoing {
            frame: Unsequenced::encode(e)?,
            kind: kind_of(e),
            did_hash: crate::util::did_hash(e.did().unwrap_or_default()),
            times: match e {
                Event::Commit(c) => u32::try_from(c.ops.len()).unwrap_or(u32::MAX).max(1),
                _ => 1,
            },
        })
    }
}

pub enum SeqMsg {
    Event(Outgoing),
    /// Replies with the last assigned seq once everything before it is fsynced.
    Barrier(Sender<u64>),
}

/// The sending side, cloned by every producer.
#[derive(Clone)]
pub struct Sequencer {
    tx: Sender<SeqMsg>,
}

impl Sequencer {
    /// Queues an encoded event (blocks when the sequencer is 10k events behind: backpressure).
    pub fn send(&self, out: Outgoing) -> bool {
        self.tx.send(SeqMsg::Event(out)).is_ok()
    }

    /// Encodes and queues an event; false if it is not a sequenced type or the sequencer is gone.
    pub fn emit(&self, e: &Event) -> bool {
        Outgoing::new(e).is_some_and(|o| self.send(o))
    }

    /// Waits until every event emitted before this call is durable; returns the last seq.
    pub fn barrier(&self, timeout: Duration) -> Option<u64> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(SeqMsg::Barrier(tx)).ok()?;
        rx.recv_timeout(timeout).ok()
    }

    pub fn backlog(&self) -> usize {
        self.tx.len()
    }
}

fn kind_of(e: &Event) -> u8 {
    match e {
        Event::Commit(_) => KIND_COMMIT,
        Event::Sync(_) => KIND_SYNC,
        Event::Identity(_) => KIND_IDENTITY,
        _ => KIND_ACCOUNT,
    }
}

/// Starts the sequencer thread. Seqs continue after `last_on_disk`, never below `initial_seq`.
pub fn spawn(
    log: Arc<EventLog>,
    ring: Arc<Ring>,
    last_on_disk: Option<u64>,
    last_time_us: i64,
    initial_seq: u64,
) -> std::io::Result<(Sequencer, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(10_000);
    let reserved = log.reserved_seq()?;
    let next = last_on_disk
        .map_or(1, |l| l + 1)
        .max(initial_seq.max(1))
        .max(reserved + 1);
    if reserved >= last_on_disk.map_or(1, |l| l + 1) {
        log::info!(
            "event log: seqs up to {reserved} may have been handed out before; continuing at {next}"
        );
    }
    ring.set_initial_head(next - 1);
    let weak = Arc::downgrade(&log);
    let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("log-sync".into())
        .stack_size(256 << 10)
        .spawn(move || sync_thread(weak, sync_rx))?;
    let h = std::thread::Builder::new()
        .name("sequencer".into())
        .stack_size(2 << 20)
        .spawn(move || run(rx, log, ring, next, last_time_us, sync_tx))?;
    Ok((Sequencer { tx }, h))
}

/// Retries `f` every second until it works, logging the first failure and counting each.
fn until_ok(log: &EventLog, what: &str, mut f: impl FnMut() -> std::io::Result<()>) {
    let mut logged = false;
    while let Err(e) = f() {
        metrics::counter!("rlay_event_log_write_errors_total").increment(1);
        if !logged {
            log::error!(
                "event log: cannot {what} in {} ({e}); events are held back, not broadcast, until the disk accepts writes (check free space and permissions)",
                log.dir().display()
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if logged {
        log::info!("event log: writes succeed again in {}", log.dir().display());
    }
}

fn run(
    rx: Receiver<SeqMsg>,
    log: Arc<EventLog>,
    ring: Arc<Ring>,
    mut next: u64,
    mut last_time_us: i64,
    sync_tx: Sender<Synced>,
) {
    let mut reserved = next - 1;
    let mut wakeups = Wakeups::default();
    metrics::gauge!("disk_persister_current_seq").set((next - 1) as f64);
    loop {
        let first = match wakeups.due(&ring) {
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
            Some(due) => match rx.recv_deadline(due) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    wakeups.wake(&ring);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut frames: Vec<LogFrame> = Vec::new();
        let mut barriers = Vec::new();
        let now = crate::util::now_us();
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                SeqMsg::Event(o) => {
                    // Unique and increasing even if the clock steps back: each event takes the
                    // next `times` microseconds at or after now.
                    let time_us = now.max(last_time_us.saturating_add(1));
                    last_time_us = time_us.saturating_add(i64::from(o.times) - 1);
                    frames.push(LogFrame {
                        seq: next,
                        time_us,
                        did_hash: o.did_hash,
                        kind: o.kind,
                        bytes: o.frame.sequence(next),
                    });
                    next += 1;
                }
                SeqMsg::Barrier(b) => barriers.push(b),
            }
            if frames.len() < MAX_BATCH {
                msg = rx.try_recv().ok();
            }
        }
        if !frames.is_empty() {
            if next - 1 > reserved {
                let upto = next - 1 + RESERVE_AHEAD;
                until_ok(&log, "reserve seqs", || log.reserve_seq(upto));
                reserved = upto;
            }
            until_ok(&log, "append", || log.append(&frames));
            let arcs: Vec<Arc<LogFrame>> = frames.into_iter().map(Arc::new).collect();
            ring.publish(&arcs);
            wakeups.published(&ring);
            crate::telemetry::once!(
                metrics::counter!("rlay_events_sequenced_total"),
                metrics::Counter
            )
            .increment(arcs.len() as u64);
            crate::telemetry::once!(
                metrics::gauge!("disk_persister_current_seq"),
                metrics::Gauge
            )
            .set((next - 1) as f64);
        }
        // The log-sync thread answers barriers once the disk has everything appended so far;
        // the sequencer goes on meanwhile (waiting here stalled the live stream for a whole
        // fdatasync every second: the flusher's barrier).
        for b in barriers {
            if let Err(e) = sync_tx.send(Synced {
                reply: b,
                seq: next - 1,
            }) {
                sync(&log);
                let _ = e.0.reply.send(e.0.seq);
            }
        }
    }
    wakeups.wake(&ring);
    sync(&log);
    // A clean stop: the next run continues right after the last seq.
    if let Err(e) = log.reserve_seq(next - 1) {
        log::warn!(
            "event log: could not record the last seq at shutdown ({e}); the next start skips ahead"
        );
    }
}

/// A barrier waiting for the disk: `seq` and everything before it are appended, and `reply`
/// gets `seq` once they are synced.
struct Synced {
    reply: Sender<u64>,
    seq: u64,
}

/// The fdatasyncs: every [`SYNC_EVERY`] while there are writes, and as soon as a barrier
/// arrives (one sync answers every barrier queued before it started), until the log is dropped.
/// A failure is logged when it starts and when it ends (appends report the disk's state to
/// health on their own).
fn sync_thread(log: std::sync::Weak<EventLog>, barriers: Receiver<Synced>) {
    let mut outage = crate::util::Outage::default();
    let mut due = std::time::Instant::now() + SYNC_EVERY;
    loop {
        let mut waiting = Vec::new();
        match barriers.recv_deadline(due) {
            Ok(b) => {
                waiting.push(b);
                waiting.extend(barriers.try_iter());
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                due = std::time::Instant::now() + SYNC_EVERY;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        let Some(log) = log.upgrade() else {
            return;
        };
        match log.sync() {
            Ok(()) => {
                if outage.recovered() {
                    log::info!(
                        "event log: fdatasync works again in {}",
                        log.dir().display()
                    );
                }
            }
            Err(e) => {
                if outage.failed() {
                    log::error!(
                        "event log: fdatasync failed in {}: {e}; events are still written and broadcast but may not survive a power loss (check the disk)",
                        log.dir().display()
                    );
                }
            }
        }
        for b in waiting {
            let _ = b.reply.send(b.seq);
        }
    }
}

fn sync(log: &EventLog) {
    if let Err(e) = log.sync() {
        log::error!(
            "event log: fdatasync failed in {}: {e}",
            log.dir().display()
        );
    }
}
