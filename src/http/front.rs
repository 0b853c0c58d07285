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

use crate::stream::firehose::{Client, Hub, Start};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
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

pub struct Front {
    pub hub: Arc<Hub>,
    /// tiny_http's loopback address.
    pub backend: SocketAddr,
    pub peers: Arc<Peers>,
    pub shutdown: Arc<AtomicBool>,
}

/// A parsed request head.
pub struct Head {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Bytes of the head itself.
    pub len: usize,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

/// Decodes `%XX` and `+` in a query component (invalid escapes are kept literally).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until a complete head is buffered. `Ok(None)`: the client closed before sending one.
pub fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(Some(Head {
                    method: req.method.unwrap_or("").to_owned(),
                    target: req.path.unwrap_or("").to_owned(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    len,
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        if buf.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A minimal complete response written directly by the front (errors before an upgrade).
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

pub fn write_json_error(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    error: &str,
    message: &str,
) {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: {}\r\nContent-Type: application/json\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server_header(),
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
}

impl Front {
    /// Accepts connections until shutdown. Blocks.
    /// Accepts until shutdown. The accept blocks (a polling loop would add its poll interval to
    /// every request's latency); shutdown wakes it with a connection of its own.
    pub fn run(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            match accepted {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("api-conn".into())
                        .stack_size(2 << 20)
                        .spawn(move || me.handle(stream, peer));
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

    fn handle(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let mut buf = Vec::with_capacity(2048);
        let head = match read_head(&mut stream, &mut buf) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                write_json_error(
                    &mut stream,
                    400,
                    "Bad Request",
                    "InvalidRequest",
                    &e.to_string(),
                );
                return;
            }
            Err(_) => return,
        };
        if head.path() == "/xrpc/com.atproto.sync.subscribeRepos" {
            self.firehose(stream, peer, &head);
        } else if let Err(e) = self.forward(&mut stream, peer, &head, &buf) {
            log::debug!("api: forwarding a request from {peer} failed: {e}");
        }
    }

    fn firehose(&self, mut stream: TcpStream, peer: SocketAddr, head: &Head) {
        if head.method != "GET" {
            write_json_error(
                &mut stream,
                405,
                "Method Not Allowed",
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
                        "Bad Request",
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
                "Upgrade Required",
                "InvalidRequest",
                "subscribeRepos needs a WebSocket upgrade",
            );
            return;
        };
        // Fix the start before answering: a client holding its 101 must see every later event.
        let start: Start = self.hub.start_for(cursor);
        let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: {}\r\n\r\n",
            server_header()
        );
        if stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
        let client = Client {
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
        };
        self.hub.serve(stream, start, client);
    }

    /// Sends one request to tiny_http (with `Connection: close`) and streams its response back.
    fn forward(
        &self,
        client: &mut TcpStream,
        peer: SocketAddr,
        head: &Head,
        buf: &[u8],
    ) -> io::Result<()> {
        let body_len = match head.header("content-length") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?,
            None if head.header("transfer-encoding").is_some() => {
                write_json_error(
                    client,
                    411,
                    "Length Required",
                    "InvalidRequest",
                    "send a Content-Length",
                );
                return Ok(());
            }
            None => 0,
        };
        if body_len > MAX_BODY {
            write_json_error(
                client,
                413,
                "Payload Too Large",
                "PayloadTooLarge",
                "request body over 1 MiB",
            );
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
            let n = client.read(&mut chunk[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed mid-body",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let mut backend = TcpStream::connect(self.backend)?;
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
