//! The API port's acceptor.
//!
//! Every connection gets a thread that reads the request head (however the bytes are split
//! across TCP segments). A `subscribeRepos` WebSocket upgrade is answered here and the thread
//! becomes that consumer's thread, owning the raw `TcpStream`. Everything else is handed to the
//! tiny_http server on a loopback port, one request per connection.
//!
//! Why not tiny_http's own `upgrade()`: it returns a boxed stream without socket access, so a
//! consumer thread could neither bound its writes (stall detection) nor poll for client pings
//! without blocking frame delivery, and `@atproto/sync` drops connections whose pings go
//! unanswered.

use super::head::{
    Head, read_by, read_head_by, switching_protocols, write_json_error, write_text_error,
};
use super::limits::{Counts, Held, Limits, Refused};
use super::routes::Ctx;
use super::server::Api;
use crate::stream::firehose::{Client, Hub, Start};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::head::MAX_HEAD;
/// Largest request body forwarded (admin and requestCrawl bodies are tiny JSON documents).
pub const MAX_BODY: usize = 1 << 20;

pub fn server_header() -> String {
    format!("rlay/{} (atproto-relay)", env!("CARGO_PKG_VERSION"))
}

/// Real client addresses of connections forwarded to tiny_http, keyed by the loopback port
/// tiny_http sees them come from.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<u16, SocketAddr>>,
}

impl Peers {
    pub fn lookup(&self, loopback: Option<SocketAddr>) -> Option<SocketAddr> {
        let port = loopback?.port();
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .copied()
    }

    fn insert(&self, port: u16, peer: SocketAddr) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port, peer);
    }

    fn remove(&self, port: u16) {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&port);
    }
}

/// The API port: reads each connection's request head, keeps firehose consumers, forwards the
/// rest to tiny_http.
pub struct Front {
    hub: Arc<Hub>,
    /// `GET /subscribe`, unless `RELAY_JETSTREAM` is off.
    jetstream: Option<Arc<crate::jetstream::Jetstream>>,
    /// tiny_http's loopback address.
    backend: SocketAddr,
    peers: Arc<Peers>,
    limits: Limits,
    counts: Arc<Counts>,
    shutdown: Arc<AtomicBool>,
}

/// Copies tiny_http's answer to the client, adding `Connection: close` to its head (tiny_http
/// drops that header, and without it clients would reuse a connection the front is closing).
fn relay_response(backend: &mut TcpStream, client: &mut TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let n = backend.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed early",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    client.write_all(&buf[..end + 2])?;
    client.write_all(b"Connection: close\r\n")?;
    client.write_all(&buf[end + 2..])?;
    io::copy(backend, client)?;
    client.flush()
}

/// Who a consumer is, for the registry.
fn client_of(head: &Head, peer: SocketAddr) -> Client {
    Client {
        remote_addr: head
            .header("x-forwarded-for")
            .and_then(|x| x.split(',').next())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| peer.to_string()),
        user_agent: head
            .header("user-agent")
            .unwrap_or("")
            .chars()
            .take(256)
            .collect(),
    }
}

/// Longest a route handler may take to answer (the slowest, `getRepo`, waits up to 10 s for an
/// identity lookup).
const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers a refused connection with 503 and closes it.
fn refuse(stream: &mut TcpStream, why: Refused) {
    metrics::counter!("rlay_api_connections_refused_total", "reason" => why.label()).increment(1);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    write_json_error(stream, 503, "ServiceUnavailable", why.message());
}

/// Answers a request that could not be read: 400 for a malformed one, 408 for one too slow.
fn request_error(stream: &mut TcpStream, e: &io::Error) {
    match e.kind() {
        io::ErrorKind::InvalidData => {
            metrics::counter!("rlay_api_bad_requests_total", "reason" => "malformed").increment(1);
            write_json_error(stream, 400, "InvalidRequest", &e.to_string());
        }
        io::ErrorKind::TimedOut => {
            metrics::counter!("rlay_api_bad_requests_total", "reason" => "timeout").increment(1);
            write_json_error(
                stream,
                408,
                "RequestTimeout",
                "the request did not arrive within the relay's request timeout",
            );
        }
        _ => {}
    }
}

impl Front {
    /// Serves the API port on `listener`: the firehose from `hub` and, with a `ctx`, every
    /// route of the table (without one, a firehose-only server, as stream tests and the
    /// fan-out benchmark use). Returns the port's address; runs until `shutdown`.
    pub(crate) fn start(
        listener: TcpListener,
        hub: Arc<Hub>,
        ctx: Option<Ctx>,
        jetstream: Option<Arc<crate::jetstream::Jetstream>>,
        limits: Limits,
        shutdown: Arc<AtomicBool>,
    ) -> io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let peers = Arc::new(Peers::default());
        let workers = if ctx.is_some() { 8 } else { 1 };
        let api = Arc::new(Api::new(peers.clone(), ctx.map(Arc::new)));
        let backend = super::server::start(api, workers)?;
        let front = Arc::new(Front {
            hub,
            jetstream,
            backend,
            peers,
            limits,
            counts: Arc::new(Counts::default()),
            shutdown,
        });
        std::thread::Builder::new()
            .name("api-accept".into())
            .stack_size(1 << 20)
            .spawn(move || front.run(listener))?;
        Ok(addr)
    }

    /// A firehose-only API port on 127.0.0.1 (any free port) for `hub`.
    pub fn serve_stream(hub: Arc<Hub>, shutdown: Arc<AtomicBool>) -> io::Result<SocketAddr> {
        // Test and benchmark clients all come from 127.0.0.1.
        let limits = Limits {
            max_per_address: usize::MAX,
            ..Limits::default()
        };
        let jetstream = Arc::new(crate::jetstream::Jetstream::new(hub.clone(), usize::MAX));
        Front::start(
            TcpListener::bind("127.0.0.1:0")?,
            hub,
            None,
            Some(jetstream),
            limits,
            shutdown,
        )
    }

    /// Accepts until shutdown. The accept blocks (a polling loop would add its poll interval to
    /// every request's latency); shutdown wakes it with a connection of its own.
    fn run(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            match accepted {
                Ok((mut stream, peer)) => {
                    // Refused before a thread exists for it: the refusal costs one short write.
                    let held = match self.counts.admit(peer.ip(), &stream, &self.limits) {
                        Ok(h) => h,
                        Err(why) => {
                            refuse(&mut stream, why);
                            continue;
                        }
                    };
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("api-conn".into())
                        .stack_size(2 << 20)
                        .spawn(move || me.handle(stream, peer, held));
                    if let Err(e) = spawned {
                        log::error!(
                            "api: cannot start a thread for {peer}: {e} (raise the process thread limit)"
                        );
                    }
                }
                Err(e) => {
                    log::warn!("api: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn handle(&self, mut stream: TcpStream, peer: SocketAddr, mut held: Held) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        // The whole head and body must arrive within the request timeout.
        let deadline = Instant::now() + self.limits.request_timeout;
        let mut buf = Vec::with_capacity(2048);
        let head = match read_head_by(&mut stream, &mut buf, Some(deadline)) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return request_error(&mut stream, &e),
        };
        if head.path() == "/xrpc/com.atproto.sync.subscribeRepos" {
            held.head_read();
            match held.into_consumer(&self.limits) {
                Ok(consumer) => {
                    name_thread(c"firehose");
                    self.firehose(stream, peer, &head, consumer)
                }
                Err(why) => refuse(&mut stream, why),
            }
        } else if head.path() == "/subscribe"
            && let Some(j) = self.jetstream.clone()
        {
            held.head_read();
            match held.into_consumer(&self.limits) {
                Ok(consumer) => {
                    name_thread(c"jetstream");
                    self.jetstream(&j, stream, peer, &head, consumer)
                }
                Err(why) => refuse(&mut stream, why),
            }
        } else if let Err(e) = self.forward(&mut stream, peer, &head, &buf, deadline, &mut held) {
            if matches!(e.kind(), io::ErrorKind::TimedOut) {
                request_error(&mut stream, &e);
            }
            log::debug!("api: forwarding a request from {peer} failed: {e}");
        }
    }

    /// Runs a consumer; `_held` keeps its place until it ends.
    fn firehose(&self, mut stream: TcpStream, peer: SocketAddr, head: &Head, _held: Held) {
        if head.method != "GET" {
            write_json_error(
                &mut stream,
                405,
                "InvalidRequest",
                "subscribeRepos is a GET WebSocket endpoint",
            );
            return;
        }
        let cursor = match head.query("cursor") {
            None => None,
            Some(c) => match c.parse::<u64>() {
                Ok(v) if v < (1 << 53) => Some(v),
                _ => {
                    write_json_error(
                        &mut stream,
                        400,
                        "InvalidRequest",
                        "cursor must be a non-negative integer",
                    );
                    return;
                }
            },
        };
        let is_ws = head
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let Some(key) = head.header("sec-websocket-key").filter(|_| is_ws) else {
            write_json_error(
                &mut stream,
                426,
                "InvalidRequest",
                "subscribeRepos needs a WebSocket upgrade",
            );
            return;
        };
        // Fix the start before answering: a client holding its 101 must see every later event.
        let start: Start = self.hub.start_for(cursor);
        if stream
            .write_all(switching_protocols(key, &server_header()).as_bytes())
            .is_err()
        {
            return;
        }
        self.hub.serve(stream, start, client_of(head, peer));
    }

    /// Runs a Jetstream consumer; parameters are checked (400, plain text, naming the
    /// parameter) before the upgrade. `_held` keeps its place until it ends.
    fn jetstream(
        &self,
        j: &crate::jetstream::Jetstream,
        mut stream: TcpStream,
        peer: SocketAddr,
        head: &Head,
        _held: Held,
    ) {
        if head.method != "GET" {
            return write_text_error(&mut stream, 405, "subscribe is a GET WebSocket endpoint");
        }
        let opts = match crate::jetstream::params::from_query(
            &head.query_pairs(),
            head.header("socket-encoding"),
        ) {
            Ok(o) => o,
            Err(e) => {
                metrics::counter!("rlay_consumer_rejected_total", "reason" => "jetstream_params")
                    .increment(1);
                return write_text_error(&mut stream, 400, &e);
            }
        };
        if !j.has_room() {
            metrics::counter!("rlay_consumer_rejected_total", "reason" => "jetstream_full")
                .increment(1);
            return write_text_error(
                &mut stream,
                503,
                "too many Jetstream consumers (RELAY_MAX_JETSTREAM_CONSUMERS); try again later",
            );
        }
        let is_ws = head
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        let Some(key) = head.header("sec-websocket-key").filter(|_| is_ws) else {
            return write_text_error(&mut stream, 426, "subscribe needs a WebSocket upgrade");
        };
        // permessage-deflate is declined by leaving it out of the answer.
        if stream
            .write_all(switching_protocols(key, &server_header()).as_bytes())
            .is_err()
        {
            return;
        }
        j.serve(stream, opts, client_of(head, peer));
    }

    /// Sends one request to tiny_http (with `Connection: close`) and streams its response back.
    fn forward(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        head: &Head,
        buf: &[u8],
        deadline: Instant,
        held: &mut Held,
    ) -> io::Result<()> {
        let body_len = match head.body_length() {
            Ok(n) => n,
            Err((status, why)) => {
                write_json_error(client, status, "InvalidRequest", why);
                return Ok(());
            }
        };
        if body_len > MAX_BODY {
            write_json_error(client, 413, "PayloadTooLarge", "request body over 1 MiB");
            return Ok(());
        }
        // The whole body is read here, in this connection's own thread, before tiny_http is
        // involved: a client trickling its body ties up only itself, never a worker.
        let already = (buf.len() - head.len).min(body_len);
        let mut body = Vec::with_capacity(body_len);
        body.extend_from_slice(&buf[head.len..head.len + already]);
        let mut chunk = [0u8; 8192];
        while body.len() < body_len {
            let want = (body_len - body.len()).min(chunk.len());
            let n = read_by(client, &mut chunk[..want], Some(deadline))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed mid-body",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        // The request is whole: no longer a slow client to evict.
        held.head_read();
        // The loopback hop has deadlines too: a handler that never answers ties up only this
        // connection, and only for a while.
        let mut backend = TcpStream::connect_timeout(&self.backend, Duration::from_secs(5))?;
        backend.set_read_timeout(Some(BACKEND_TIMEOUT))?;
        backend.set_write_timeout(Some(BACKEND_TIMEOUT))?;
        let local_port = backend.local_addr()?.port();
        self.peers.insert(local_port, peer);
        let result = (|| {
            let mut out = Vec::with_capacity(head.len + body_len + 32);
            // Rewrite the head with Connection: close so tiny_http answers exactly once.
            let text = String::from_utf8_lossy(&buf[..head.len]);
            for (i, line) in text.split("\r\n").enumerate() {
                if line.is_empty() {
                    continue;
                }
                if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
                    continue;
                }
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&body);
            backend.write_all(&out)?;
            relay_response(&mut backend, client)
        })();
        self.peers.remove(local_port);
        let _ = client.shutdown(Shutdown::Both);
        result
    }
}

/// Renames the calling thread (what `top -H` and `/proc/<pid>/task/*/comm` show), so an
/// operator can tell consumers from request threads and see what each kind costs.
fn name_thread(name: &std::ffi::CStr) {
    if let Err(e) = nix::sys::prctl::set_name(name) {
        log::debug!("api: cannot rename a consumer thread: {e}");
    }
}
