//! Jetstream v1 on `/subscribe` (issue 16): parameters, filters, records as data-model JSON,
//! `options_update`, `requireHello`, cursor replay by `time_us`, and zstd with the dictionary.

use crate::common::relay::{live_network, settle, wait_until};
use rlay::proto::cbor::value::Value;
use rlay::sim::repo::Write;
use serde_json::{Value as Json, json};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(addr: std::net::SocketAddr, query: &str) -> Ws {
    let (mut ws, resp) =
        tungstenite::connect(format!("ws://{addr}/subscribe{query}")).expect("jetstream upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    ws
}

/// A consumer whose receive buffer is 4 KiB (set before connecting, so it holds).
fn connect_small_window(addr: std::net::SocketAddr) -> Ws {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let tcp: TcpStream = s.into();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (ws, resp) =
        tungstenite::client(format!("ws://{addr}/subscribe"), MaybeTlsStream::Plain(tcp))
            .expect("jetstream upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Reads events (decompressing with the v1 dictionary if binary) until `n` arrived or `secs`.
fn read(ws: &mut Ws, n: usize, secs: u64) -> Vec<Json> {
    let dict = std::fs::read(crate::common::shared("jetstream/legacy_subscribe.zdict")).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while out.len() < n && Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => out.push(serde_json::from_str(t.as_str()).expect("JSON")),
            Ok(Message::Binary(b)) => {
                let mut d = zstd::bulk::Decompressor::with_dictionary(&dict).unwrap();
                let json = d
                    .decompress(&b, 1 << 22)
                    .expect("a zstd frame with the v1 dictionary");
                out.push(serde_json::from_slice(&json).expect("JSON"));
            }
            Ok(_) => {}
            Err(e) if rlay::util::net::ws_timed_out(&e) => {}
            Err(e) => panic!("jetstream read: {e}"),
        }
    }
    out
}

fn get_status(addr: std::net::SocketAddr, query: &str) -> (u16, String) {
    let r = crate::common::http::get(
        &format!("http://{addr}"),
        &format!("/subscribe{query}"),
        crate::common::http::Auth::None,
    );
    (r.status, r.text)
}

#[test]
fn bad_parameters_get_a_400_naming_them_before_the_upgrade() {
    let (_sim, _dir, relay) = live_network(1, 0, &[]);
    let a = relay.api_addr();
    for (q, says) in [
        (
            "?wantedCollections=app.bsky.fo*",
            "invalid collection: app.bsky.fo*",
        ),
        ("?wantedCollections=", "invalid collection"),
        ("?wantedDids=nope", "invalid DID: nope"),
        ("?cursor=abc", "invalid cursor"),
        ("?cursor=-5", "invalid cursor: negative value -5"),
    ] {
        let (status, text) = get_status(a, q);
        assert_eq!(status, 400, "{q}: {text}");
        assert!(text.contains(says), "{q}: {text}");
    }
    let many: Vec<String> = (0..101)
        .map(|i| format!("wantedCollections=com.example.c{i}"))
        .collect();
    let (status, text) = get_status(a, &format!("?{}", many.join("&")));
    assert_eq!(status, 400);
    assert!(text.contains("too many wanted collections"), "{text}");
    // Good parameters without an upgrade: 426.
    assert_eq!(get_status(a, "?wantedCollections=app.bsky.*").0, 426);
    relay.shutdown();
}

/// A record with every data-model type: bytes, a CID link, a blob, nested arrays, non-ASCII.
fn rich_record() -> (Vec<u8>, Json) {
    let link = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
    let j = json!({
        "$type": "com.example.rich",
        "text": "héllo wörld ✓ 日本語 \"quoted\" <tag>",
        "bytes": {"$bytes": "AAECAwQF/w"},
        "ref": {"$link": link},
        "image": {"$type": "blob", "ref": {"$link": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"}, "mimeType": "image/jpeg", "size": 720303},
        "nested": [[1, 2, [3]], [], [{"a": null, "b": true, "c": -7}]],
        "createdAt": "2026-12-01T00:00:00.000Z",
    });
    (Value::from_json(&j).expect("data model").encode(), j)
}

#[test]
fn events_are_the_verified_ops_as_json_filtered_and_compressed() {
    let (sim, _dir, relay) = live_network(1, 2, &[]);
    settle(&relay);
    let dids = sim.world().dids();
    let a = relay.api_addr();
    let mut all = connect(a, "");
    let mut posts = connect(a, "?wantedCollections=app.bsky.feed.post");
    let mut graph = connect(
        a,
        &format!("?wantedCollections=com.example.*&wantedDids={}", dids[0]),
    );
    let mut zstd = connect(a, "?compress=true");
    wait_until(5, "consumers registered", || relay.consumer_count() == 4);
    let (record, record_json) = rich_record();
    sim.world().post(&dids[0], "a post").unwrap();
    sim.world()
        .write(
            &dids[0],
            &[Write::Create {
                path: "com.example.rich/3kaaaaaaaaa22".into(),
                record: record.clone(),
            }],
        )
        .unwrap();
    sim.world()
        .write(
            &dids[1],
            &[Write::Create {
                path: "com.example.rich/3kaaaaaaaaa23".into(),
                record,
            }],
        )
        .unwrap();
    sim.world().set_handle(&dids[1], "renamed.test").unwrap();
    settle(&relay);
    let got = read(&mut all, 4, 10);
    assert_eq!(got.len(), 4, "{got:?}");
    // Relay order keeps each DID's order; two DIDs may interleave (they verify in parallel).
    let of = |did: &str| -> Vec<&Json> { got.iter().filter(|e| e["did"] == json!(did)).collect() };
    let kinds = |evs: &[&Json]| -> Vec<String> {
        evs.iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let (first, second) = (of(&dids[0]), of(&dids[1]));
    assert_eq!(kinds(&first), ["commit", "commit"], "{got:?}");
    assert_eq!(kinds(&second), ["commit", "identity"], "{got:?}");
    let c = &first[1]["commit"];
    assert_eq!(c["operation"], "create");
    assert_eq!(c["collection"], "com.example.rich");
    assert_eq!(c["rkey"], "3kaaaaaaaaa22");
    assert_eq!(
        c["record"], record_json,
        "the record in data-model JSON, exactly"
    );
    assert!(c["cid"].as_str().unwrap().starts_with("bafyrei"));
    assert!(c["rev"].is_string());
    assert_eq!(second[1]["identity"]["handle"], "renamed.test");
    // time_us: strictly increasing.
    let times: Vec<i64> = got.iter().map(|e| e["time_us"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    // Filters: collection only for commits; DIDs for everything.
    let p = read(&mut posts, 2, 3);
    assert_eq!(p.len(), 2, "{p:?}");
    let post = p.iter().find(|e| e["kind"] == "commit").expect("the post");
    assert_eq!(post["commit"]["collection"], "app.bsky.feed.post");
    assert!(
        p.iter().any(|e| e["kind"] == "identity"),
        "identity events pass the collection filter: {p:?}"
    );
    let g = read(&mut graph, 2, 3);
    assert_eq!(g.len(), 1, "only did 0's com.example.* commit: {g:?}");
    assert_eq!(g[0]["commit"]["rkey"], "3kaaaaaaaaa22");
    // Compressed frames decode with the dictionary to the same JSON.
    let z = read(&mut zstd, 4, 5);
    assert_eq!(z, got);
    relay.shutdown();
}

#[test]
fn options_update_replaces_the_filter_and_require_hello_waits_for_it() {
    let (sim, _dir, relay) = live_network(1, 2, &[]);
    settle(&relay);
    let dids = sim.world().dids();
    let a = relay.api_addr();
    let mut ws = connect(a, "?wantedCollections=app.bsky.feed.post");
    let mut hello = connect(a, "?requireHello=true");
    wait_until(5, "consumers registered", || relay.consumer_count() == 2);
    // Operators tell consumer threads apart (`top -H`): each runs under the name "jetstream".
    let named = crate::procstat::threads_named(None, "jetstream");
    assert!(named >= 2, "{named} threads named jetstream");
    sim.world().post(&dids[0], "before").unwrap();
    settle(&relay);
    assert_eq!(read(&mut ws, 1, 5).len(), 1);
    assert!(
        read(&mut hello, 1, 1).is_empty(),
        "nothing before the hello"
    );
    let update =
        json!({"type": "options_update", "payload": {"wantedDids": [dids[1]]}}).to_string();
    ws.send(Message::Text(update.clone().into())).unwrap();
    hello.send(Message::Text(update.into())).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    sim.world().post(&dids[0], "filtered out").unwrap();
    sim.world().post(&dids[1], "wanted").unwrap();
    settle(&relay);
    for c in [&mut ws, &mut hello] {
        let got = read(c, 2, 3);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["did"], json!(dids[1]));
    }
    // An invalid update closes with 1008; a malformed one with 1007.
    ws.send(Message::Text(
        r#"{"type":"options_update","payload":{"wantedCollections":["app.bsky.fo*"]}}"#.into(),
    ))
    .unwrap();
    hello.send(Message::Text("not json".into())).unwrap();
    for (c, code) in [(&mut ws, 1008u16), (&mut hello, 1007)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut closed = None;
        while closed.is_none() && Instant::now() < deadline {
            match c.read() {
                Ok(Message::Close(Some(f))) => closed = Some(u16::from(f.code)),
                Ok(_) => {}
                Err(e) if rlay::util::net::ws_timed_out(&e) => {}
                Err(_) => break,
            }
        }
        assert_eq!(closed, Some(code));
    }
    relay.shutdown();
}

#[test]
fn a_time_us_cursor_replays_exactly_what_the_live_stream_showed() {
    let (sim, _dir, relay) = live_network(2, 2, &[]);
    settle(&relay);
    let a = relay.api_addr();
    let mut live = connect(a, "");
    wait_until(5, "registered", || relay.consumer_count() == 1);
    for d in sim.world().dids() {
        sim.world()
            .write(
                &d,
                &[
                    Write::Create {
                        path: "app.bsky.feed.post/3kaaaaaaaaa32".into(),
                        record: rlay::sim::traffic::post("one", "2026-12-01T00:00:00.000Z"),
                    },
                    Write::Create {
                        path: "app.bsky.feed.post/3kaaaaaaaaa33".into(),
                        record: rlay::sim::traffic::post("two", "2026-12-01T00:00:00.000Z"),
                    },
                ],
            )
            .unwrap();
        sim.world().post(&d, "three").unwrap();
    }
    settle(&relay);
    let shown = read(&mut live, 12, 10);
    assert_eq!(shown.len(), 12);
    // From the start of the stream: the same events with the same time_us.
    let first = shown[0]["time_us"].as_i64().unwrap();
    let mut replay = connect(a, &format!("?cursor={first}"));
    let again = read(&mut replay, 12, 10);
    assert_eq!(again, shown);
    // Inclusive, and a cursor in the middle of a commit starts at that op.
    let mid = shown[1]["time_us"].as_i64().unwrap();
    let mut from_mid = connect(a, &format!("?cursor={mid}"));
    let tail = read(&mut from_mid, 11, 10);
    assert_eq!(tail, shown[1..]);
    // Older than the log: from the oldest event; in the future: live.
    let mut old = connect(a, "?cursor=0");
    let everything = read(&mut old, 10_000, 3);
    assert!(everything.len() > shown.len() && everything.ends_with(&shown));
    let mut future = connect(a, &format!("?cursor={}", first * 2));
    assert!(read(&mut future, 1, 1).is_empty());
    relay.shutdown();
}

/// Posts `n` times as each of `dids`.
fn post_all(sim: &rlay::sim::Sim, dids: &[String], n: usize, text: &str) {
    for i in 0..n {
        for d in dids {
            sim.world().post(d, &format!("{text} {i}")).unwrap();
        }
    }
}

#[test]
fn replay_across_a_relay_restart_shows_the_same_time_us_as_live() {
    use crate::common::relay::{ADMIN_PW, free_port, spawn_serve};
    let sim = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts: 1,
        accounts_per_host: 0,
        ..rlay::sim::SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let flags = [format!("--plc-host={}", sim.world().plc_url())];
    let admin = rlay::sim::admin::RelayAdmin::new(&format!("http://127.0.0.1:{port}"), ADMIN_PW);
    let connected =
        |want: usize| wait_until(20, "the host connected", || admin.connected().len() == want);
    let mut relay = spawn_serve(dir.path(), port, &flags);
    admin.request_crawl(&sim.hostnames()[0]).unwrap();
    connected(1);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut live = connect(addr, "");
    for _ in 0..2 {
        sim.world().create_account(0, None).unwrap();
    }
    let dids = sim.world().dids();
    post_all(&sim, &dids, 3, "before");
    // Each account: #identity, #account, a profile or none, then 3 posts; read until quiet.
    let before = read(&mut live, 10_000, 5);
    assert!(before.len() >= 6, "{before:?}");

    // SIGKILL: the times must come back from the log, not from memory.
    relay.kill().unwrap();
    relay.wait().unwrap();
    let mut relay = spawn_serve(dir.path(), port, &flags);
    connected(1);
    let mut live = connect(addr, "");
    post_all(&sim, &dids, 2, "after");
    let after = read(&mut live, 4, 15);
    assert_eq!(after.len(), 4, "{after:?}");
    let t = |e: &Json| e["time_us"].as_i64().unwrap();
    assert!(
        t(&after[0]) > t(before.last().unwrap()),
        "time_us keeps growing after a restart"
    );

    let mut replay = connect(addr, &format!("?cursor={}", t(&before[0])));
    let all = read(&mut replay, before.len() + after.len(), 15);
    assert_eq!(
        all[..before.len()],
        before[..],
        "replayed = live, same time_us"
    );
    assert_eq!(all[before.len()..], after[..]);
    relay.kill().unwrap();
    let _ = relay.wait();
}

#[test]
fn a_slow_consumer_falls_back_to_the_log_and_does_not_delay_a_fast_one() {
    // A ring of 64 frames: the stalled consumer is soon served from the disk log.
    let (sim, _dir, relay) = live_network(1, 2, &[("ring-capacity", "64")]);
    settle(&relay);
    let dids = sim.world().dids();
    let a = relay.api_addr();
    let mut slow = connect_small_window(a);
    let mut fast = connect(a, "?compress=true");
    wait_until(5, "consumers registered", || relay.consumer_count() == 2);
    // ~6 MB of JSON: more than the socket buffers hold, so the slow consumer's thread is held up
    // writing and falls behind the ring.
    let long = "x".repeat(3000);
    let reader = std::thread::spawn(move || read(&mut fast, 2000, 90));
    post_all(&sim, &dids, 1000, &long);
    let posted = Instant::now();
    let fast_got = reader.join().unwrap();
    let fast_lag = posted.elapsed().as_secs_f64();
    assert_eq!(fast_got.len(), 2000, "the fast consumer got every post");
    // The slow one has not read a byte yet; now it does, and gets every post in order.
    let slow_got = read(&mut slow, 2000, 60);
    assert_eq!(slow_got.len(), 2000);
    assert_eq!(slow_got, fast_got, "the same events, from the log");
    assert!(
        fast_lag < 5.0,
        "the fast consumer had the last post {fast_lag:.1} s after it was made"
    );
    relay.shutdown();
}
