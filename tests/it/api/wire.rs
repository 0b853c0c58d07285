//! The API port at the wire: non-WebSocket firehose requests, requests in pieces, oversized
//! bodies, idle connections, and the metrics port.

use super::{assert_error, base, network};
use crate::common;
use common::http::{Auth, get, post};
use common::relay::{ADMIN_PW, live_network, settle, subscribe, wait_until};
use rlay::relay::Relay;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn subscribe_repos_refuses_what_is_not_a_websocket() {
    let (_sim, _dir, relay) = network();
    let b = base(&relay);
    assert_error(
        &get(&b, "/xrpc/com.atproto.sync.subscribeRepos", Auth::None),
        426,
        "InvalidRequest",
        "plain GET",
    );
    assert_error(
        &get(
            &b,
            "/xrpc/com.atproto.sync.subscribeRepos?cursor=-4",
            Auth::None,
        ),
        400,
        "InvalidRequest",
        "bad cursor",
    );
    assert_eq!(
        post(
            &b,
            "/xrpc/com.atproto.sync.subscribeRepos",
            Auth::None,
            None
        )
        .status,
        405
    );
    relay.shutdown();
}

/// Writes `pieces` with pauses between them and reads the whole answer.
fn raw_request(relay: &Relay, pieces: &[&[u8]], pause: Duration) -> String {
    let mut s = TcpStream::connect(relay.api_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        s.write_all(p).expect("write");
        s.flush().expect("flush");
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn requests_in_pieces_oversized_bodies_and_idle_connections() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    let did = sim.world().dids()[0].clone();
    let body = format!("{{\"did\":\"{did}\"}}");
    let head = format!(
        "POST /admin/repo/takeDown HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {ADMIN_PW}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (h1, h2) = head.as_bytes().split_at(30);
    let answer = raw_request(
        &relay,
        &[h1, h2, body.as_bytes()],
        Duration::from_millis(300),
    );
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "three-piece request: {answer}"
    );
    assert!(answer.contains("\"success\""), "{answer}");
    assert_eq!(
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"),
            Auth::None
        )
        .json["status"],
        json!("takendown")
    );

    let big = format!(
        "POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n\r\n",
        4 << 20
    );
    let answer = raw_request(&relay, &[big.as_bytes()], Duration::ZERO);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "oversized body: {answer}"
    );

    // 200 idle connections: some silent, some mid-head, some mid-body.
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(relay.api_addr()).expect("connect");
        match i % 3 {
            0 => {}
            1 => s.write_all(b"GET /xrpc/com.atproto.sync.listRepos HTTP/1.1\r\nHost: x\r\n").expect("write"),
            _ => s
                .write_all(b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"host")
                .expect("write"),
        }
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        let t = Instant::now();
        let a = get(&b, "/xrpc/com.atproto.sync.listHosts", Auth::None);
        worst = worst.max(t.elapsed());
        assert_eq!(a.status, 200);
    }
    assert!(
        worst < Duration::from_millis(100),
        "slowest answer {worst:?} beside 200 idle connections"
    );
    let mut ws = subscribe(relay.api_addr(), Some(0));
    let first = ws
        .read()
        .expect("a new subscriber is served beside idle connections");
    assert!(first.is_binary());
    drop(idle);
    relay.shutdown();
}

#[test]
fn metrics_port_serves_the_documented_metrics() {
    let (sim, _dir, relay) = live_network(2, 2, &[("metrics-listen", "127.0.0.1:0")]);
    let did = sim.world().dids()[0].clone();
    sim.world().post(&did, "counted").expect("post");
    settle(&relay);
    let _ = get(
        &base(&relay),
        "/xrpc/com.atproto.sync.listRepos",
        Auth::None,
    );
    let addr = relay.metrics_addr().expect("metrics listener");
    let names = [
        "events_received_counter{pds=",
        "rlay_events_accepted_total{pds=",
        "rlay_events_sequenced_total",
        "events_sent_counter",
        "http_requests_total{",
        "http_request_duration_seconds",
        "disk_persister_current_seq",
        "rlay_ring_head_seq",
        "rlay_event_log_oldest_seq",
        "rlay_hosts{status=\"active\"}",
        "rlay_hosts_connected",
        "relay_connected_inbound",
        "atproto_directory_identity_cache_misses",
        "rlay_index_changes_written_total",
    ];
    let mut text = String::new();
    let mut ws = subscribe(relay.api_addr(), Some(0));
    let _ = ws.read();
    wait_until(15, "every documented metric exported", || {
        text = get(&format!("http://{addr}"), "/metrics", Auth::None).text;
        names.iter().all(|n| text.contains(n))
    });
    assert!(
        !text.contains("127.0.0.1:"),
        "no per-address labels in metrics"
    );
    relay.shutdown();
}
