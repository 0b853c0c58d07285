//! The output half of the relay: sequencer → disk log → ring → consumer threads.

pub mod batch;
pub mod deliver;
pub mod eventlog;
pub mod firehose;
pub mod follow;
pub mod logblock;
pub mod outbox;
pub mod registry;
pub mod replay_budget;
pub mod ring;
pub mod sequencer;
pub mod wakeups;

use crate::util::{Hidden, Outage};
use eventlog::{EventLog, OpenReport};
use firehose::{FirehoseConfig, Hub};
use registry::Registry;
use ring::Ring;
use sequencer::Sequencer;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a streaming consumer (firehose or Jetstream) looks at what its client sent: pings,
/// a close, an `options_update`. Not on every wake-up: with many consumers that read is a
/// syscall per delivery.
pub const CLIENT_READ_EVERY: Duration = Duration::from_millis(50);

/// The default disk replay budget: one replaying consumer is still served at full speed on a
/// small machine (200,000 events/s), ten share it and live delivery keeps a core.
pub const DEFAULT_REPLAY_RATE: u64 = 200_000;

/// The ring's default memory bound: about 10,000 real network frames (6.5 KB on average), 15 s
/// of the network at 600 events/s; consumers further behind read the disk log.
pub const DEFAULT_RING_MAX_MIB: u64 = 64;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub ring_capacity: usize,
    /// What the ring's frames may occupy in memory, in bytes.
    pub ring_max_bytes: u64,
    pub replay_window: Duration,
    pub initial_seq: u64,
    pub firehose: FirehoseConfig,
    /// Segment roll size (tests use small segments).
    pub max_segment_bytes: u64,
    pub max_segment_age: Duration,
    /// Compress sealed segments (zstd blocks) in the background.
    pub compress_log: bool,
    /// Events per second all consumers replaying from disk may read together (0: no limit).
    pub replay_rate: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            ring_capacity: 50_000,
            ring_max_bytes: DEFAULT_RING_MAX_MIB << 20,
            replay_window: Duration::from_secs(72 * 3600),
            initial_seq: 1,
            firehose: FirehoseConfig::default(),
            max_segment_bytes: 64 << 20,
            max_segment_age: Duration::from_secs(3600),
            compress_log: true,
            replay_rate: DEFAULT_REPLAY_RATE,
        }
    }
}

/// How often the upkeep thread compresses newly sealed segments and applies retention.
const UPKEEP_EVERY_SECS: u32 = 10;

/// One pass of compression, counted, and logged when it starts or stops failing; a failure
/// leaves the raw segment in place and is tried again on the next pass.
fn compress_sealed(log: &EventLog, outage: &mut Outage) {
    match log.compress_sealed() {
        Ok(c) => {
            if outage.recovered() {
                log::info!("event log: compressing sealed segments works again");
            }
            if c.segments > 0 {
                metrics::counter!("rlay_log_compressed_segments_total")
                    .increment(c.segments as u64);
                metrics::counter!("rlay_log_compress_raw_bytes_total").increment(c.raw_bytes);
                metrics::counter!("rlay_log_compress_out_bytes_total")
                    .increment(c.compressed_bytes);
                log::info!(
                    "event log: compressed {} segment(s), {} → {} bytes",
                    c.segments,
                    c.raw_bytes,
                    c.compressed_bytes
                );
            }
        }
        Err(e) => {
            metrics::counter!("rlay_log_compress_errors_total").increment(1);
            if outage.failed() {
                log::error!(
                    "event log: compressing sealed segments in {} failed: {e}; they stay uncompressed (readable) and are tried again in {UPKEEP_EVERY_SECS} s; check free disk space",
                    log.dir().display()
                );
            }
        }
    }
}

pub struct Stream {
    pub(crate) hub: Arc<Hub>,
    pub(crate) sequencer: Sequencer,
    pub(crate) opened: OpenReport,
    sequencer_thread: Option<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
}

impl Stream {
    /// Opens the event log in `dir` (repairing a torn tail), starts the sequencer and the
    /// retention thread.
    pub fn open(dir: &Path, cfg: StreamConfig) -> std::io::Result<Stream> {
        let (log, opened) = EventLog::open_with(dir, cfg.max_segment_bytes, cfg.max_segment_age)?;
        let log = Arc::new(log);
        let ring = Arc::new(Ring::new(cfg.ring_capacity, cfg.ring_max_bytes));
        let (sequencer, sequencer_thread) = sequencer::spawn(
            log.clone(),
            ring.clone(),
            opened.last_seq,
            opened.last_time_us,
            cfg.initial_seq,
        )?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let hub = Arc::new(Hub {
            log: log.clone(),
            ring,
            registry: Arc::new(Registry::default()),
            hidden: Arc::new(Hidden::default()),
            config: cfg.firehose.clone(),
            replay_budget: Arc::new(replay_budget::ReplayBudget::new(cfg.replay_rate)),
            shutdown: shutdown.clone(),
        });
        let window = cfg.replay_window;
        let compress = cfg.compress_log;
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("log-upkeep".into())
            .stack_size(1 << 20)
            .spawn(move || {
                let mut outage = Outage::default();
                while !stop.load(Ordering::Relaxed) {
                    if compress {
                        compress_sealed(&log, &mut outage);
                    }
                    let cutoff = crate::util::now_ms() - window.as_millis() as i64;
                    match log.remove_older_than(cutoff) {
                        Ok(0) => {}
                        Ok(n) => log::info!(
                            "event log: removed {n} segment(s) older than the replay window"
                        ),
                        Err(e) => log::error!(
                            "event log: retention failed in {}: {e}",
                            log.dir().display()
                        ),
                    }
                    for _ in 0..UPKEEP_EVERY_SECS {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })?;
        Ok(Stream {
            hub,
            sequencer,
            opened,
            sequencer_thread: Some(sequencer_thread),
            shutdown,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The producers' side: where accepted events go to be sequenced.
    pub fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }

    /// What opening the log found (segments, last seq, a repaired tail).
    pub fn opened(&self) -> &OpenReport {
        &self.opened
    }

    /// Last sequenced seq.
    pub fn head(&self) -> u64 {
        self.hub.ring.head()
    }

    /// Makes everything emitted so far durable, disconnects consumers and stops the threads.
    pub fn shutdown(mut self) {
        let _ = self.sequencer.barrier(Duration::from_secs(30));
        self.shutdown.store(true, Ordering::Relaxed);
        self.hub.ring.wake_all();
        // The sequencer exits once every sender is gone; other clones may still exist, so only
        // wait for it when this was the last one.
        let t = self.sequencer_thread.take();
        drop(self.sequencer);
        if let Some(t) = t
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}
