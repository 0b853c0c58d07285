//! Dialing upstream hosts on a few shared threads rather than on each host's own.
//!
//! Dialing is the heaviest thing a host thread would otherwise do once and then never again:
//! name resolution (glibc's resolver runs deep on the stack), TCP connect, TLS and the WebSocket
//! handshake (header maps, URI parsing, buffers). A host thread that did it kept those stack
//! pages and its allocator's pages resident for as long as it sat idle, about 140 KiB per
//! connected host. On `RELAY_DIAL_THREADS` shared threads the same work touches the same few
//! stacks and heaps, and a host thread only reads frames.
//!
//! It also bounds outbound connection attempts: at most that many dials are in progress, the
//! rest wait their turn in the queue (`rlay_dial_queue`). Each host thread has at most one
//! request in the queue, so its length is bounded by the admitted hosts.

use super::hosts::HostHandle;
use super::upstream::MAX_FRAME;
use crossbeam_channel::{Receiver, Sender};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Where a dial's outcome is left for the host thread. One per host thread, made before the
/// thread starts; waiting on it allocates nothing.
#[derive(Default)]
pub struct DialSlot {
    outcome: Mutex<Option<Result<Ws, ConnectError>>>,
    ready: Condvar,
}

/// One host's firehose to dial, from `cursor`.
struct Job {
    host: Arc<HostHandle>,
    cursor: Option<i64>,
    slot: Arc<DialSlot>,
}

/// The dial queue and its threads.
pub struct Dialer {
    jobs: Sender<Job>,
}

impl Dialer {
    /// Starts `threads` dialer threads (at least one); `allow_private` (dev mode) lets them dial
    /// loopback and private addresses.
    pub fn start(threads: usize, allow_private: bool) -> std::io::Result<Dialer> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("dialer-{i}"))
                .stack_size(2 << 20)
                .spawn(move || serve(&rx, allow_private))?;
        }
        Ok(Dialer { jobs })
    }

    /// Dials `host`'s firehose from `cursor` on a dialer thread and waits for the outcome in
    /// `slot`; gives up waiting when `stopping` turns true (the connection, if made, is then
    /// dropped unused).
    pub fn dial(
        &self,
        host: &Arc<HostHandle>,
        cursor: Option<i64>,
        slot: &Arc<DialSlot>,
        stopping: impl Fn() -> bool,
    ) -> Result<Ws, ConnectError> {
        let mut outcome = slot.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        *outcome = None;
        metrics::gauge!("rlay_dial_queue").increment(1.0);
        let job = Job {
            host: host.clone(),
            cursor,
            slot: slot.clone(),
        };
        if self.jobs.send(job).is_err() {
            metrics::gauge!("rlay_dial_queue").decrement(1.0);
            return Err(ConnectError::Stopped);
        }
        loop {
            if let Some(result) = outcome.take() {
                return result;
            }
            if stopping() {
                return Err(ConnectError::Stopped);
            }
            outcome = slot
                .ready
                .wait_timeout(outcome, Duration::from_millis(250))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn serve(jobs: &Receiver<Job>, allow_private: bool) {
    for job in jobs {
        let (host, cursor) = (&job.host, job.cursor);
        // A panic in the TLS or WebSocket code costs this dial, not the dialer thread.
        let result = crate::util::isolate::isolate(
            "dialer",
            || format!("dialing {}", host.hostname()),
            || connect(host.hostname(), host.no_tls(), cursor, allow_private),
        )
        .unwrap_or_else(|| Err(ConnectError::Handshake("the dial panicked".into())));
        metrics::gauge!("rlay_dial_queue").decrement(1.0);
        if result.is_ok() {
            log::info!(
                "upstream {}: connected (cursor {:?})",
                host.hostname(),
                cursor
            );
        }
        let mut outcome = job
            .slot
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *outcome = Some(result);
        job.slot.ready.notify_one();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    #[error("the upstream identifies itself as a relay ({0}); relays are not crawled")]
    IsRelay(String),
    #[error("the relay is stopping")]
    Stopped,
}

fn split_host(hostname: &str, tls: bool) -> (String, u16) {
    match hostname.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(443)),
        _ => (hostname.to_owned(), if tls { 443 } else { 80 }),
    }
}

/// Dials a host's firehose (on a dialer thread).
fn connect(
    hostname: &str,
    no_tls: bool,
    cursor: Option<i64>,
    allow_private: bool,
) -> Result<Ws, ConnectError> {
    let scheme = if no_tls { "ws" } else { "wss" };
    let (name, port) = split_host(hostname, !no_tls);
    let q = cursor.map(|c| format!("?cursor={c}")).unwrap_or_default();
    let url = format!("{scheme}://{hostname}/xrpc/com.atproto.sync.subscribeRepos{q}");
    let tcp = crate::util::net::connect(&name, port, allow_private, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(15)))?;
    let _ = tcp.set_nodelay(true);
    let mut req = url
        .into_client_request()
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    if let Ok(ua) = format!("rlay/{} (atproto-relay)", env!("CARGO_PKG_VERSION")).parse() {
        req.headers_mut().insert("User-Agent", ua);
    }
    // Small buffers: thousands of mostly idle connections must not each pin 128 KiB.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(8 << 10)
        .write_buffer_size(0);
    let result = if no_tls {
        tungstenite::client::client_with_config(req, MaybeTlsStream::Plain(tcp), Some(config))
            .map_err(|e| ConnectError::Handshake(e.to_string()))
    } else {
        tungstenite::client_tls_with_config(req, tcp, Some(config), None)
            .map_err(|e| ConnectError::Handshake(e.to_string()))
    };
    let (ws, resp) = result?;
    if let Some(server) = resp.headers().get("server").and_then(|v| v.to_str().ok())
        && server.to_ascii_lowercase().contains("atproto-relay")
    {
        return Err(ConnectError::IsRelay(server.to_owned()));
    }
    Ok(ws)
}
