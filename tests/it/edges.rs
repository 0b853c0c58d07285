//! The relay's edges under attack, on loopback: ambiguous and malformed HTTP, connection floods
//! and slow clients, empty query values, and hostile upstreams (trickling frames, ping floods).

use crate::common;

use common::http::{Auth, admin_post, get};
use common::metrics::Mark;
use common::relay::{config, start, wait_until};
use rlay::sim::hostile::{HostilePds, Misbehaviour};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn relay_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, rlay::relay::Relay) {
    let dir = tempfile::tempdir().expect("dir");
    let relay = start(&config(dir.path(), "http://127.0.0.1:9", None, extra));
    (dir, relay)
}

/// Sends raw bytes and returns the whole answer (the relay closes after one).
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `n` connections that send the start of a request head and no more (yet), once the relay has
/// taken them.
fn slow_heads(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let slow = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /xrpc/_he").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    slow
}

/// Health answers, and quickly.
fn healthy(relay: &rlay::relay::Relay) -> Duration {
    let t = Instant::now();
    let a = get(
        &format!("http://{}", relay.api_addr()),
        "/xrpc/_health",
        Auth::None,
    );
    assert_eq!(a.status, 200, "health: {}", a.text);
    t.elapsed()
}

#[test]
fn ambiguous_or_malformed_requests_get_an_answer_that_says_why() {
    let (_dir, relay) = relay_with(&[]);
    let addr = relay.api_addr();
    // Both framings at once: this used to leave a worker waiting for chunks forever; ten of
    // them stopped the whole API.
    for _ in 0..12 {
        let a = raw(
            addr,
            b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(status_of(&a), 400, "{a}");
        assert!(a.contains("ambiguous framing"), "{a}");
    }
    assert!(healthy(&relay) < Duration::from_secs(1));
    let cases: [(&[u8], u16, &str); 6] = [
        (
            b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}",
            400,
            "Content-Length",
        ),
        (
            b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            400,
            "more than one Content-Length",
        ),
        (
            b"POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
            "Content-Length",
        ),
        (
            b"GET /xrpc/_health\xc3\xa9 HTTP/1.1\r\n\r\n",
            400,
            "ASCII",
        ),
        (
            b"GET /xrpc/_health HTTP/1.1\r\nX-Thing: \xff\xfe\r\n\r\n",
            400,
            "UTF-8",
        ),
    ];
    for (req, status, says) in cases {
        let a = raw(addr, req);
        assert_eq!(
            status_of(&a),
            status,
            "{:?} → {a}",
            String::from_utf8_lossy(req)
        );
        assert!(a.contains(says), "{:?} → {a}", String::from_utf8_lossy(req));
    }
    assert!(healthy(&relay) < Duration::from_secs(1));
    relay.shutdown();
}

#[test]
fn connection_caps_answer_503_and_slow_requests_are_cut() {
    let (_dir, relay) = relay_with(&[
        ("max-connections-per-address", "8"),
        ("request-timeout", "2s"),
    ]);
    let addr = relay.api_addr();
    let mark = Mark::now();
    // Eight clients that send a byte now and then never finish their heads.
    let mut slow = slow_heads(addr, 8);
    // The ninth from the same address is refused at once, with a reason.
    let a = raw(addr, b"GET /xrpc/_health HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&a), 503, "{a}");
    assert!(
        a.contains("too many open connections from your address"),
        "{a}"
    );
    assert!(
        mark.delta(
            "rlay_api_connections_refused_total",
            &["reason=\"per_address\""]
        ) >= 1.0
    );
    // However they trickle, the slow ones are answered 408 and closed at the request timeout.
    let started = Instant::now();
    for s in &mut slow {
        let _ = s.write_all(b"a");
    }
    let mut answers = Vec::new();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        answers.push(String::from_utf8_lossy(&out).into_owned());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow requests cut by the 2s timeout, not held"
    );
    for a in &answers {
        assert_eq!(status_of(a), 408, "{a}");
    }
    // Their places are free again.
    assert!(healthy(&relay) < Duration::from_secs(1));
    relay.shutdown();
}

#[test]
fn slow_clients_cannot_fill_the_port() {
    let (_dir, relay) = relay_with(&[("max-api-connections", "8")]);
    let addr = relay.api_addr();
    let mark = Mark::now();
    let mut slow = slow_heads(addr, 8);
    // Every place holds a slow request; a quick request still gets in, in place of the slow
    // one waiting longest, which is closed without an answer.
    assert!(healthy(&relay) < Duration::from_millis(500));
    assert_eq!(
        mark.delta(
            "rlay_api_connections_evicted_total",
            &["reason=\"slow_head\""]
        ),
        1.0
    );
    let first = &mut slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut out = Vec::new();
    let closed = first.read_to_end(&mut out);
    assert!(
        closed.is_ok() && out.is_empty(),
        "the oldest closed without an answer: {closed:?} {out:?}"
    );
    relay.shutdown();
}

#[test]
fn empty_query_values_count_as_absent() {
    let (_dir, relay) = relay_with(&[]);
    let b = format!("http://{}", relay.api_addr());
    let a = get(
        &b,
        "/xrpc/com.atproto.sync.listRepos?cursor=&limit=",
        Auth::None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let a = get(&b, "/xrpc/com.atproto.sync.listHosts?cursor=", Auth::None);
    assert_eq!(a.status, 200, "{}", a.text);
    // What @atproto/sync's Firehose sends before it has a cursor: a live subscription.
    let (mut ws, resp) = tungstenite::connect(format!(
        "ws://{}/xrpc/com.atproto.sync.subscribeRepos?cursor=",
        relay.api_addr()
    ))
    .expect("subscribe with an empty cursor");
    assert_eq!(resp.status().as_u16(), 101);
    wait_until(5, "consumer registered", || relay.consumer_count() == 1);
    let _ = ws.close(None);
    relay.shutdown();
}

#[test]
fn a_trickling_upstream_is_cut_and_block_closes_it_at_once() {
    let pds = HostilePds::start(Misbehaviour::Trickle);
    let (_dir, relay) = relay_with(&[]);
    let b = format!("http://{}", relay.api_addr());
    relay.crawl(&pds.hostname()).expect("crawl");
    // Stall timeout 3s (test default): the watchdog cuts the connection although bytes keep
    // coming, and the relay reconnects.
    wait_until(15, "the trickling connection cut and redialled", || {
        pds.closed() >= 1 && pds.connections() >= 2
    });
    // Block drops the connection now, not when the frame would have finished (60 s).
    wait_until(5, "connected again", || {
        relay.host(&pds.hostname()).is_some_and(|h| h.connected())
    });
    let closed = pds.closed();
    let t = Instant::now();
    let a = admin_post(
        &b,
        &format!("/admin/pds/block?host={}", pds.hostname()),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    wait_until(3, "blocked host's connection closed", || {
        pds.closed() > closed
    });
    assert!(t.elapsed() < Duration::from_secs(3));
    let n = pds.connections();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pds.connections(), n, "no redial after block");
    // The largest limit an operator can type does not overflow the release arithmetic.
    let a = admin_post(
        &b,
        "/admin/pds/changeLimits",
        Some(serde_json::json!({"host": pds.hostname(), "repo_limit": i64::MAX})),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(healthy(&relay) < Duration::from_secs(1));
    relay.shutdown();
}

#[test]
fn a_ping_flood_is_dropped_and_backs_off() {
    let pds = HostilePds::start(Misbehaviour::PingFlood);
    let (_dir, relay) = relay_with(&[]);
    let mark = Mark::now();
    relay.crawl(&pds.hostname()).expect("crawl");
    wait_until(10, "the flood dropped", || pds.closed() >= 1);
    std::thread::sleep(Duration::from_secs(6));
    let n = pds.connections();
    // Pings are not progress: redials back off (1 s, 2 s, 4 s, ... with jitter) instead of
    // hammering at 100 ms.
    assert!(n <= 6, "{n} connections in ~7 s");
    assert!(mark.delta("rlay_bad_frames_total", &["reason=\"control_flood\""]) >= 1.0);
    assert!(healthy(&relay) < Duration::from_secs(1));
    relay.shutdown();
}

#[test]
fn a_flood_of_unknown_dids_from_one_host_delays_no_one_else_and_block_drops_it() {
    use rlay::proto::frame::{Event, IdentityEvent};
    let (sim, _dir, relay) = common::relay::crawled_network(2, 1, None, &[]);
    let b = format!("http://{}", relay.api_addr());
    // Every lookup of the flood's DIDs takes 200 ms (a slow did:web server, say).
    sim.world().plc().slow_unknown(Duration::from_millis(200));
    let mark = Mark::now();
    for n in 0..3_000 {
        let e = Event::Identity(IdentityEvent {
            seq: 0,
            did: rlay::sim::hostile::made_up_did(n),
            time: sim.world().time_now(),
            handle: None,
        });
        sim.world().emit(rlay::sim::Planned::Defect(0, e));
    }
    // Meanwhile the other host gets a new account, which needs lookups of its own.
    let started = Instant::now();
    let newcomer = sim.world().create_account(1, None).expect("account");
    sim.world().post(&newcomer, "hello").expect("post");
    // 3,000 lookups of 200 ms on 2 resolver threads would take minutes if they all queued ahead
    // of the newcomer's; each host's lookups under way are bounded, so they cannot.
    wait_until(20, "the other host's new account on the firehose", || {
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getLatestCommit?did={newcomer}"),
            Auth::None,
        )
        .status
            == 200
    });
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(mark.delta("rlay_identity_lookups_deferred_total", &[""]) >= 1.0);
    assert!(healthy(&relay) < Duration::from_secs(1));
    // Blocking the flooding host drops its backlog at once, instead of minutes of lookups.
    assert!(!relay.is_idle(), "the flood's events are still waiting");
    let flooder = &sim.hostnames()[0];
    let a = admin_post(&b, &format!("/admin/pds/block?host={flooder}"), None);
    assert_eq!(a.status, 200, "{}", a.text);
    wait_until(5, "the blocked host's backlog discarded", || {
        relay.is_idle()
    });
    assert!(mark.delta("rlay_gate_events_discarded_total", &[""]) >= 100.0);
    relay.shutdown();
}

/// A public requestCrawl of `hostname` sent from the loopback address `from`: (status, body).
fn crawl_from(
    relay: std::net::SocketAddr,
    from: std::net::Ipv4Addr,
    hostname: &str,
) -> (u16, String) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.bind(&std::net::SocketAddr::new(from.into(), 0).into())
        .expect("bind a loopback client address");
    sock.connect_timeout(&relay.into(), Duration::from_secs(5))
        .expect("connect");
    let body = format!("{{\"hostname\":\"{hostname}\"}}");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "POST /xrpc/com.atproto.sync.requestCrawl HTTP/1.1\r\nHost: r\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (status_of(&text), text)
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

#[test]
fn a_request_crawl_flood_is_answered_at_once_on_bounded_threads() {
    let (_dir, relay) = relay_with(&[]);
    let addr = relay.api_addr();
    // Hosts that take the connection and never answer: each check waits out its 5 s timeout.
    let holes: Vec<TcpListener> = (0..100)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let names: Arc<Vec<String>> = Arc::new(
        holes
            .iter()
            .map(|l| format!("localhost:{}", l.local_addr().expect("addr").port()))
            .collect(),
    );
    let mark = Mark::now();
    let threads_before = thread_count();
    // 1,000 calls from 200 client addresses, 8 at a time, while health is polled.
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..8u8)
        .map(|t| {
            let (names, statuses) = (names.clone(), statuses.clone());
            std::thread::spawn(move || {
                for client in (t..200).step_by(8) {
                    let from = std::net::Ipv4Addr::new(127, 0, 1, client);
                    for k in 0..5 {
                        let name = &names[(usize::from(client) * 5 + k) % names.len()];
                        let (status, _) = crawl_from(addr, from, name);
                        statuses.lock().expect("statuses").push(status);
                    }
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while !senders.iter().all(|s| s.is_finished()) {
        slowest = slowest.max(healthy(&relay));
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in senders {
        s.join().expect("sender");
    }
    assert!(
        slowest < Duration::from_millis(100),
        "health took {slowest:?} during the flood"
    );
    let statuses = statuses.lock().expect("statuses").clone();
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "every call answered at once with 200 (queued) or 503 (queue full): {statuses:?}"
    );
    assert!(
        mark.delta(
            "rlay_crawl_requests_refused_total",
            &["reason=\"queue_full\""]
        ) >= 1.0,
        "the check queue reached its bound"
    );
    assert!(
        thread_count() <= threads_before + 8,
        "threads grew from {threads_before} to {}",
        thread_count()
    );
    // Failed checks are counted, and no such host was added.
    wait_until(20, "failed checks counted", || {
        mark.delta("rlay_crawl_checks_total", &["result=\"host_not_found\""]) >= 4.0
    });
    let hosts = get(
        &format!("http://{addr}"),
        "/xrpc/com.atproto.sync.listHosts",
        Auth::None,
    );
    assert_eq!(hosts.json["hosts"], serde_json::json!([]), "{}", hosts.text);

    // One address gets ten calls a minute; the next is refused with a reason.
    let from = std::net::Ipv4Addr::new(127, 0, 2, 1);
    for _ in 0..10 {
        assert_ne!(crawl_from(addr, from, &names[0]).0, 429);
    }
    let (status, text) = crawl_from(addr, from, &names[0]);
    assert_eq!(status, 429, "{text}");
    assert!(
        text.contains("too many requestCrawl calls from this address"),
        "{text}"
    );
    drop(holes);
    relay.shutdown();
}
