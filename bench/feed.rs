//! What the fan-out benchmarks share: the relay's stream serving in this process, consumers in a
//! child process (so this process's CPU is the relay's), and events published at a set rate.
//! Included with `mod feed;`.
#![allow(dead_code)]

use rlay::http::front::Front;
use rlay::stream::{Stream, StreamConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// A fresh stream (sequencer, log, ring) and its API port (firehose and Jetstream).
pub fn serve() -> (tempfile::TempDir, Stream, SocketAddr) {
    serve_with(StreamConfig::default())
}

/// Like [`serve`], with `cfg`.
pub fn serve_with(cfg: StreamConfig) -> (tempfile::TempDir, Stream, SocketAddr) {
    let dir = tempfile::tempdir().expect("dir");
    let stream = Stream::open(&dir.path().join("events"), cfg).expect("stream");
    let addr = Front::serve_stream(stream.hub().clone(), Arc::new(AtomicBool::new(false)))
        .expect("stream server");
    (dir, stream, addr)
}

/// The consumers' child process: this executable run with `args`, given `input` on stdin. It
/// prints `connected` per consumer, then `done` once every consumer has all it expects.
pub struct Clients {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Clients {
    /// Starts the child and returns once its `n` consumers are registered with `stream`.
    pub fn spawn(args: &[&str], input: &str, n: usize, stream: &Stream) -> Clients {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn clients");
        // Dropped at the end of the statement: the child reads to end of input.
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("child input");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        for _ in 0..n {
            line.clear();
            out.read_line(&mut line).expect("child output");
        }
        while stream.hub().consumers().len() < n {
            std::thread::sleep(Duration::from_millis(10));
        }
        Clients { child, out }
    }

    /// Waits for the child's `done`.
    pub fn finish(mut self, what: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("child finished");
        assert_eq!(line.trim(), "done", "{what}");
        let _ = self.child.wait();
    }
}

/// After publishing event `n` (from 1) at `rate` per second since `start`: sleeps until it is
/// due, checking each millisecond's worth.
pub fn pace(start: Instant, n: u64, rate: u64) {
    if n.is_multiple_of((rate / 1000).max(1)) {
        let due = start + Duration::from_micros(n * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
