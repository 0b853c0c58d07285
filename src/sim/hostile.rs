//! Hostile upstreams for tests and benchmarks: a PDS that misbehaves on its firehose, and
//! made-up DIDs for identity floods.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A PDS that answers describeServer and then misbehaves on its firehose.
pub struct HostilePds {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Connections that ended because the relay closed them.
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
pub enum Misbehaviour {
    /// Announces a 200-byte frame, then sends it one byte every 300 ms.
    Trickle,
    /// Pings without end.
    PingFlood,
}

impl HostilePds {
    pub fn start(kind: Misbehaviour) -> HostilePds {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (connections, closed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, d, st) = (connections.clone(), closed.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let (c, d) = (c.clone(), d.clone());
                std::thread::spawn(move || serve(&mut s, kind, &c, &d));
            }
        });
        HostilePds {
            port,
            connections,
            closed,
            stop,
        }
    }

    pub fn hostname(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Firehose connections the relay has opened.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections that ended because the relay closed them.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for HostilePds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(s: &mut TcpStream, kind: Misbehaviour, conns: &AtomicUsize, closed: &AtomicUsize) {
    let mut buf = Vec::new();
    let Ok(Some(head)) = crate::http::head::read_head(s, &mut buf) else {
        return;
    };
    if head.path() != "/xrpc/com.atproto.sync.subscribeRepos" {
        let body = r#"{"did":"did:web:hostile.test","availableUserDomains":[]}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let key = head.header("sec-websocket-key").unwrap_or("").to_owned();
    if s.write_all(crate::http::head::switching_protocols(&key, "hostile").as_bytes())
        .is_err()
    {
        return;
    }
    conns.fetch_add(1, Ordering::SeqCst);
    let ended = match kind {
        Misbehaviour::Trickle => s.write_all(&[0x82, 126, 0x00, 200]).and_then(|()| {
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(300));
                s.write_all(&[0xa0])?;
            }
            Ok(())
        }),
        Misbehaviour::PingFlood => (|| loop {
            s.write_all(&[0x89, 0x00])?;
            std::thread::sleep(Duration::from_millis(2));
        })(),
    };
    if ended.is_err() {
        closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// A valid did:plc made from a number.
pub fn made_up_did(n: u32) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut id = String::from("did:plc:");
    let mut v = n;
    for _ in 0..24 {
        id.push(alphabet[(v % 32) as usize] as char);
        v /= 32;
    }
    id
}
