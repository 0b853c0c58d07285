//! The simulator's HTTP plumbing: a blocking accept thread per listener (idle listeners cost no
//! CPU, which is what lets one process hold 3,000 hosts) and a thread per connection.

use crate::http::head::{Head, read_head};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub type Handler = Arc<dyn Fn(TcpStream, Head, Vec<u8>) + Send + Sync>;

/// Serves `listener` forever on a small-stack accept thread, one request per connection.
pub fn serve(listener: TcpListener, name: String, handler: Handler) -> io::Result<()> {
    accept(listener, name, move |mut stream| {
        let mut buf = Vec::with_capacity(1024);
        if let Ok(Some(head)) = read_head(&mut stream, &mut buf) {
            handler(stream, head, buf);
        }
    })
}

/// A handler that answers on a connection it does not own, with [`reply`] (which keeps the
/// connection open), so the connection can carry the next request.
pub type KeptHandler = Arc<dyn Fn(&mut TcpStream, Head, Vec<u8>) + Send + Sync>;

/// Serves `listener` like [`serve`], but each connection answers requests until the client
/// hangs up or idles for 30 s: HTTP/1.1 keep-alive, as the real PLC directory does. Closing
/// after every answer would cost the relay a TCP connect (and ureq a resolver thread) per DID
/// lookup, which the production network does not.
pub fn serve_kept(listener: TcpListener, name: String, handler: KeptHandler) -> io::Result<()> {
    accept(listener, name, move |mut stream| {
        // Answers go out whole, at once, as a production server's do.
        let _ = stream.set_nodelay(true);
        loop {
            // Clients do not pipeline (ureq waits for each answer), so what follows a request
            // in the buffer is never the next one.
            let mut buf = Vec::with_capacity(1024);
            match read_head(&mut stream, &mut buf) {
                Ok(Some(head)) => handler(&mut stream, head, buf),
                _ => return,
            }
        }
    })
}

/// The accept loop: a thread per connection running `conn`.
fn accept(
    listener: TcpListener,
    name: String,
    conn: impl Fn(TcpStream) + Send + Sync + 'static,
) -> io::Result<()> {
    let conn = Arc::new(conn);
    std::thread::Builder::new()
        .name(name)
        .stack_size(128 << 10)
        .spawn(move || {
            for c in listener.incoming() {
                let Ok(stream) = c else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let conn = conn.clone();
                let _ = std::thread::Builder::new()
                    .name("sim-conn".into())
                    .stack_size(512 << 10)
                    .spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
                        conn(stream);
                    });
            }
        })?;
    Ok(())
}

/// The request body after `head` (part of it may already be in `buf`), up to `max` bytes.
pub fn read_body(stream: &mut TcpStream, head: &Head, buf: &[u8], max: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let len: usize = head.header("content-length")?.trim().parse().ok()?;
    if len > max {
        return None;
    }
    let mut body = buf.get(head.len..)?.to_vec();
    body.truncate(len);
    let mut chunk = vec![0u8; len - body.len()];
    stream.read_exact(&mut chunk).ok()?;
    body.extend_from_slice(&chunk);
    Some(body)
}

/// Binds 127.0.0.1:`port` (0 for any free port).
pub fn bind(port: u16) -> io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(("127.0.0.1", port))?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Writes a complete response and closes.
pub fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    write_response(stream, status, content_type, body, "close");
}

pub fn respond_json(stream: &mut TcpStream, status: u16, body: &serde_json::Value) {
    write_json(stream, status, body, "close");
}

/// Writes a complete JSON response and keeps the connection open (for [`serve_kept`]).
pub fn reply(stream: &mut TcpStream, status: u16, body: &serde_json::Value) {
    write_json(stream, status, body, "keep-alive");
}

fn write_json(stream: &mut TcpStream, status: u16, body: &serde_json::Value, connection: &str) {
    let body = body.to_string();
    write_response(
        stream,
        status,
        "application/json",
        body.as_bytes(),
        connection,
    );
}

fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    connection: &str,
) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: rlay-sim-pds\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    // One write: on a connection that stays open, a second small write would wait for the
    // client's delayed ACK (Nagle), 40 ms per answer.
    let mut whole = Vec::with_capacity(head.len() + body.len());
    whole.extend_from_slice(head.as_bytes());
    whole.extend_from_slice(body);
    let _ = stream.write_all(&whole);
    let _ = stream.flush();
}

pub fn xrpc_error(stream: &mut TcpStream, status: u16, error: &str, message: &str) {
    respond_json(
        stream,
        status,
        &serde_json::json!({ "error": error, "message": message }),
    );
}
