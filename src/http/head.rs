//! HTTP/1.1 request heads read straight off a socket (however TCP splits them), and the few
//! answers written without tiny_http: errors before an upgrade, and the WebSocket upgrade.
//! Shared by the API port's front and the simulator's hosts.

use crate::util::percent_decode;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 << 10;

/// A parsed request head.
pub struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes of the head itself.
    pub(crate) len: usize,
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

    /// A query parameter; an empty value counts as absent (`?cursor=` is what
    /// `@atproto/xrpc-server` clients send before they have a cursor, and indigo reads it so).
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key && !v.is_empty()).then(|| percent_decode(v))
        })
    }

    /// Every query pair in order, percent-decoded, repeated keys and empty values kept
    /// (Jetstream's list parameters repeat, and an empty value there is an error).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let Some((_, q)) = self.target.split_once('?') else {
            return Vec::new();
        };
        q.split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The body's length from the framing headers. Anything ambiguous is refused (a front and a
    /// backend that read the framing differently is how requests get smuggled or workers hang):
    /// repeated or malformed `Content-Length`, and any `Transfer-Encoding` (bodies here are
    /// small JSON documents; chunked ones are not accepted).
    pub fn body_length(&self) -> Result<usize, (u16, &'static str)> {
        let mut lengths = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim());
        let length = lengths.next();
        if lengths.next().is_some() {
            return Err((400, "more than one Content-Length header"));
        }
        if self.header("transfer-encoding").is_some() {
            return Err(match length {
                Some(_) => (
                    400,
                    "both Content-Length and Transfer-Encoding: ambiguous framing",
                ),
                None => (
                    411,
                    "send a Content-Length (chunked bodies are not accepted)",
                ),
            });
        }
        match length {
            None => Ok(0),
            Some(v) if !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse()
                .map_err(|_| (400, "Content-Length is not a number")),
            Some(_) => Err((
                400,
                "Content-Length must be one non-negative decimal integer",
            )),
        }
    }
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Checks what the rest of the relay relies on: an ASCII request target and UTF-8 header
/// values. The error says which part is wrong.
fn check(req: &httparse::Request<'_, '_>) -> io::Result<()> {
    if !req.path.unwrap_or("").bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the request target must be printable ASCII (percent-encode other bytes)",
        ));
    }
    for h in req.headers.iter() {
        if std::str::from_utf8(h.value).is_err() {
            return Err(invalid(format!(
                "the value of header {} is not valid UTF-8",
                h.name.escape_debug()
            )));
        }
    }
    Ok(())
}

/// Reads until a complete head is buffered. `Ok(None)`: the client closed before sending one.
pub fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    read_head_by(stream, buf, None)
}

/// Like `read_head`, but the whole head must arrive before `deadline` (a read timeout alone
/// resets with every byte, so a client sending one byte a minute would hold its thread for
/// days). Past the deadline: `ErrorKind::TimedOut`.
pub fn read_head_by(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> io::Result<Option<Head>> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                check(&req)?;
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
        let n = read_by(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One read that gives up at `deadline` (`ErrorKind::TimedOut`).
pub fn read_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> io::Result<usize> {
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
    }
    match stream.read(buf) {
        Err(e) if crate::util::net::timed_out(&e) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request did not arrive in time",
        )),
        r => r,
    }
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade with this `Sec-WebSocket-Key`.
pub fn switching_protocols(key: &str, server: &str) -> String {
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: {server}\r\n\r\n"
    )
}

/// A complete JSON error answer, written directly (errors before an upgrade or a forward).
pub fn write_json_error(stream: &mut TcpStream, status: u16, error: &str, message: &str) {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    write_answer(stream, status, "application/json", &body);
}

/// A plain-text error answer (Jetstream's, whose clients expect text, not XRPC JSON).
pub fn write_text_error(stream: &mut TcpStream, status: u16, text: &str) {
    write_answer(stream, status, "text/plain; charset=utf-8", text);
}

fn write_answer(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: {}\r\nContent-Type: {content_type}\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        super::front::server_header(),
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
}
