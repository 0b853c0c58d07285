//! HTTP/1.1 request heads read straight off a socket (however TCP splits them), and the few
//! answers written without tiny_http: errors before an upgrade, and the WebSocket upgrade.
//! Shared by the API port's front and the simulator's hosts.

use crate::util::percent_decode;
use std::io::{self, Read, Write};
use std::net::TcpStream;

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

    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
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

/// The `101 Switching Protocols` answer to a WebSocket upgrade with this `Sec-WebSocket-Key`.
pub fn switching_protocols(key: &str, server: &str) -> String {
    let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nServer: {server}\r\n\r\n"
    )
}

/// A complete JSON error answer, written directly (errors before an upgrade or a forward).
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
        super::front::server_header(),
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
}
