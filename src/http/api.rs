//! The tiny_http side of the API port: every request except the firehose upgrade.

use super::front::{Peers, server_header};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tiny_http::{Header, Request, Response, Server};

/// Shared context for request handlers.
pub struct Api {
    pub peers: Arc<Peers>,
}

fn header(name: &str, value: &str) -> Header {
    // Both parts are ASCII constants or sanitised values; fall back to a harmless header.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|_| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).expect("static header")
    })
}

pub fn json_response(status: u16, body: &serde_json::Value) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

pub fn xrpc_error(status: u16, error: &str, message: &str) -> Response<io::Cursor<Vec<u8>>> {
    json_response(
        status,
        &serde_json::json!({ "error": error, "message": message }),
    )
}

impl Api {
    fn handle(&self, req: Request) {
        let path = req.url().split('?').next().unwrap_or("").to_owned();
        let resp = match path.as_str() {
            "/" => Response::from_data(
                format!("rlay {}: an AT Protocol relay\n\nfirehose: /xrpc/com.atproto.sync.subscribeRepos\n", env!("CARGO_PKG_VERSION"))
                    .into_bytes(),
            )
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
            _ => xrpc_error(404, "NotFound", "no such route"),
        };
        let resp = resp
            .with_header(header("Server", &server_header()))
            .with_header(header("Access-Control-Allow-Origin", "*"));
        let _ = req.respond(resp);
    }
}

/// Starts tiny_http on a loopback port with `workers` handler threads; returns its address.
pub fn start(api: Arc<Api>, workers: usize) -> io::Result<SocketAddr> {
    let server = Server::http("127.0.0.1:0").map_err(|e| io::Error::other(e.to_string()))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("tiny_http is not on an IP address"))?;
    let server = Arc::new(server);
    for i in 0..workers.max(1) {
        let s = server.clone();
        let a = api.clone();
        std::thread::Builder::new()
            .name(format!("api-worker-{i}"))
            .stack_size(2 << 20)
            .spawn(move || {
                for req in s.incoming_requests() {
                    a.handle(req);
                }
            })?;
    }
    Ok(addr)
}
