//! The validation threads: host threads read frames, check them with `frame::peek` and hand
//! each one here, where decoding, verification, account state and emission run on a few
//! threads.
//!
//! Why not verify on the host thread: mimalloc gives every thread its own heap, and a thread
//! that verifies opens pages in every size class decoding, the CAR, the MST and encoding use.
//! With thousands of host threads that was about 70 KiB resident per host under traffic; here
//! those pages are shared by a few threads.
//!
//! Order: all events of a DID go to the same thread (by DID hash), in the order its host sent
//! them. Cursor: the host thread calls `HostHandle::begin` before handing an event over, so the
//! host's cursor never passes an event still queued here.
//!
//! Bounds: each thread's queue holds `QUEUE_PER_THREAD` events and a host may have at most
//! `MAX_QUEUED_PER_HOST` queued, so one busy host cannot fill the queues for the others; a
//! host thread over either bound waits (it stops reading, and TCP pushes back on its PDS).
//! Waits that belong to one host (its identity-gate share) are taken by that host's thread in
//! `Pipeline::submit`, never by a validation thread.

use super::hosts::HostHandle;
use super::pipeline::Pipeline;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};

/// Events waiting in one validation thread's queue.
const QUEUE_PER_THREAD: usize = 2048;
/// Events one host may have queued for validation at once.
pub(crate) const MAX_QUEUED_PER_HOST: usize = 64;

struct Job {
    host: Arc<HostHandle>,
    seq: u64,
    frame: Bytes,
}

/// The sending side, owned by the pipeline.
pub(crate) struct Validators {
    queues: Vec<Sender<Job>>,
    /// Events queued or being processed, for `Pipeline::is_idle`.
    busy: AtomicI64,
}

/// The threads' receiving sides, until the pipeline they serve exists.
pub(crate) struct ValidatorThreads {
    receivers: Vec<Receiver<Job>>,
}

impl Validators {
    pub(crate) fn new(threads: usize) -> (Validators, ValidatorThreads) {
        let (queues, receivers) = (0..threads.max(1))
            .map(|_| crossbeam_channel::bounded(QUEUE_PER_THREAD))
            .unzip();
        let v = Validators {
            queues,
            busy: AtomicI64::new(0),
        };
        (v, ValidatorThreads { receivers })
    }

    /// Queues the frame for the thread of its DID (by `did_hash`); blocks while that queue is
    /// full. Allocates nothing, so host threads keep few allocator pages.
    pub(crate) fn send(&self, did_hash: u64, host: Arc<HostHandle>, seq: u64, frame: Bytes) {
        let t = (did_hash % self.queues.len() as u64) as usize;
        host.add_queued(1);
        self.busy.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.queues[t].send(Job { host, seq, frame }) {
            // The thread is gone (shutdown): the event is lost with the process anyway, but
            // its host's cursor must not wait for it.
            let job = e.into_inner();
            job.host.add_queued(-1);
            self.busy.fetch_sub(1, Ordering::Relaxed);
            job.host.end(job.seq);
        }
    }

    /// Events queued or being processed.
    pub(crate) fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed).max(0) as usize
    }
}

impl ValidatorThreads {
    pub(crate) fn spawn(self, pipeline: Weak<Pipeline>) -> std::io::Result<()> {
        for (i, rx) in self.receivers.into_iter().enumerate() {
            let p = pipeline.clone();
            std::thread::Builder::new()
                .name(format!("validate-{i}"))
                .stack_size(2 << 20)
                .spawn(move || run(&p, &rx))?;
        }
        Ok(())
    }
}

fn run(pipeline: &Weak<Pipeline>, rx: &Receiver<Job>) {
    while let Ok(Job { host, seq, frame }) = rx.recv() {
        let Some(p) = pipeline.upgrade() else { return };
        // The host may queue another while this one is processed.
        host.add_queued(-1);
        let h = host.clone();
        let done = crate::util::isolate::isolate(
            "validate",
            || format!("processing seq {seq} from {}", host.hostname()),
            || p.accept(h, seq, &frame),
        );
        if done.is_none() {
            // The event is lost with the panic; its host's cursor must not wait for it.
            host.end(seq);
        }
        p.validators().busy.fetch_sub(1, Ordering::Relaxed);
    }
}
