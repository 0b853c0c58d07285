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
    let kinds: Vec<&str> = got.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["commit", "commit", "commit", "identity"], "{got:?}");
    let c = &got[1]["commit"];
    assert_eq!(got[1]["did"], json!(dids[0]));
    assert_eq!(c["operation"], "create");
    assert_eq!(c["collection"], "com.example.rich");
    assert_eq!(c["rkey"], "3kaaaaaaaaa22");
    assert_eq!(
        c["record"], record_json,
        "the record in data-model JSON, exactly"
    );
    assert!(c["cid"].as_str().unwrap().starts_with("bafyrei"));
    assert!(c["rev"].is_string());
    assert_eq!(got[3]["identity"]["handle"], "renamed.test");
    // time_us: strictly increasing.
    let times: Vec<i64> = got.iter().map(|e| e["time_us"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    // Filters: collection only for commits; DIDs for everything.
    let p = read(&mut posts, 2, 3);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0]["commit"]["collection"], "app.bsky.feed.post");
    assert_eq!(
        p[1]["kind"], "identity",
        "identity events pass the collection filter"
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
