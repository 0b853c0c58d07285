//! Every HTTP route from outside: success, each error, pagination, limits, admin auth, the
//! takedown round trip, requests arriving in pieces, many idle connections, and metrics.

mod common;

use common::http::{self, Answer, Auth, admin_get, admin_post, get, post};
use common::relay::{ADMIN_PW, live_network, read_until_head, settle, subscribe, wait_until};
use rlay::frame::Event;
use rlay::relay::Relay;
use rlay::sim::{Sim, Status};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn base(relay: &Relay) -> String {
    format!("http://{}", relay.api_addr)
}

fn assert_error(a: &Answer, status: u16, error: &str, what: &str) {
    assert_eq!(
        (a.status, a.error()),
        (status, Some(error)),
        "{what}: {}",
        a.text.chars().take(300).collect::<String>()
    );
    assert!(a.json["message"].is_string(), "{what}: an error message");
}

/// A public requestCrawl.
fn crawl(b: &str, hostname: &str) -> Answer {
    post(
        b,
        "/xrpc/com.atproto.sync.requestCrawl",
        Auth::None,
        Some(json!({ "hostname": hostname })),
    )
}

/// A network with 3 hosts of 2 accounts, each account with a commit the relay has seen.
fn network() -> (Sim, tempfile::TempDir, Relay) {
    let (sim, dir, relay) = live_network(3, 2, &[("admin-password", "test-admin-pw,second-pw")]);
    wait_until(20, "every account's first commit", || {
        sim.world.dids().iter().all(|d| {
            get(
                &base(&relay),
                &format!("/xrpc/com.atproto.sync.getLatestCommit?did={d}"),
                Auth::None,
            )
            .status
                == 200
        })
    });
    (sim, dir, relay)
}

#[test]
fn banner_health_cors_and_unknown_routes() {
    let (_sim, _dir, relay) = network();
    let b = base(&relay);
    let a = get(&b, "/", Auth::None);
    assert_eq!(a.status, 200);
    assert!(a.text.contains("subscribeRepos"), "banner: {}", a.text);
    let server = format!("rlay/{} (atproto-relay)", env!("CARGO_PKG_VERSION"));
    assert_eq!(a.header("server"), Some(server.as_str()));
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    // One request per connection, and clients are told so: a keep-alive client never sends a
    // request down a connection the relay is closing.
    assert_eq!(a.header("connection"), Some("close"));
    let keep_alive = http::agent();
    for _ in 0..50 {
        let r = keep_alive
            .get(&format!("{b}/xrpc/_health"))
            .call()
            .expect("sequential requests on a keep-alive client");
        assert_eq!(r.status().as_u16(), 200);
    }
    for p in ["/_health", "/xrpc/_health"] {
        let a = get(&b, p, Auth::None);
        assert_eq!((a.status, &a.json), (200, &json!({"status": "ok"})), "{p}");
    }
    let pre = http::agent()
        .options(&format!("{b}/xrpc/com.atproto.sync.listRepos"))
        .call()
        .expect("OPTIONS");
    assert_eq!(pre.status().as_u16(), 204);
    assert!(pre.headers().get("access-control-allow-methods").is_some());
    assert_error(
        &get(&b, "/xrpc/com.example.nope", Auth::None),
        501,
        "MethodNotImplemented",
        "unknown xrpc method",
    );
    assert_error(
        &get(&b, "/nope", Auth::None),
        404,
        "NotFound",
        "unknown path",
    );
    assert_error(
        &post(&b, "/xrpc/com.atproto.sync.listRepos", Auth::None, None),
        501,
        "MethodNotImplemented",
        "POST to a GET route",
    );
    relay.shutdown();
}

#[test]
fn list_repos_pages_through_every_account() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    // listRepos reads the store, which trails the relay's memory by up to a second.
    wait_until(10, "accounts written to the store", || {
        get(&b, "/xrpc/com.atproto.sync.listRepos", Auth::None).json["repos"]
            .as_array()
            .map(Vec::len)
            == Some(6)
    });
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let a = get(
            &b,
            &format!("/xrpc/com.atproto.sync.listRepos?limit=4{cursor}"),
            Auth::None,
        );
        assert_eq!(a.status, 200);
        let repos = a.json["repos"].as_array().expect("repos").clone();
        assert!(repos.len() <= 4);
        for r in &repos {
            assert!(
                r["head"].as_str().is_some_and(|h| h.starts_with("bafy")),
                "head CID"
            );
            assert!(r["rev"].is_string() && r["active"] == json!(true), "{r}");
        }
        seen.extend(
            repos
                .iter()
                .map(|r| r["did"].as_str().expect("did").to_owned()),
        );
        match a.json["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut want = sim.world.dids();
    want.sort();
    seen.sort();
    assert_eq!(seen, want, "every account exactly once");
    for q in ["limit=0", "limit=1001", "limit=ten", "cursor=abc"] {
        assert_error(
            &get(
                &b,
                &format!("/xrpc/com.atproto.sync.listRepos?{q}"),
                Auth::None,
            ),
            400,
            "InvalidRequest",
            q,
        );
    }
    relay.shutdown();
}

#[test]
fn repo_routes_answer_and_refuse_as_the_spec_says() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    let dids = sim.world.dids();
    let did = &dids[0];
    let head = {
        let a = sim.world.account(0).expect("account");
        let a = a.lock().expect("lock");
        a.repo
            .head()
            .map(|(c, r)| (c.to_string(), r.to_owned()))
            .expect("head")
    };
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"),
        Auth::None,
    );
    assert_eq!(a.json, json!({"cid": head.0, "rev": head.1}));
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"),
        Auth::None,
    );
    assert_eq!(a.json, json!({"did": did, "active": true, "rev": head.1}));
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getRepo?did={did}&since={}", head.1),
        Auth::None,
    );
    assert_eq!(a.status, 302);
    let host = &sim.hostnames()[0];
    assert_eq!(
        a.header("location"),
        Some(
            format!(
                "http://{host}/xrpc/com.atproto.sync.getRepo?did={did}&since={}",
                head.1
            )
            .as_str()
        )
    );

    let unknown = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    for route in ["getRepoStatus", "getLatestCommit", "getRepo"] {
        let p = format!("/xrpc/com.atproto.sync.{route}");
        assert_error(
            &get(&b, &p, Auth::None),
            400,
            "InvalidRequest",
            &format!("{route} without did"),
        );
        assert_error(
            &get(&b, &format!("{p}?did=nope"), Auth::None),
            400,
            "InvalidRequest",
            &format!("{route} bad did"),
        );
        assert_error(
            &get(&b, &format!("{p}?did={unknown}"), Auth::None),
            404,
            "RepoNotFound",
            &format!("{route} unknown"),
        );
    }
    assert_error(
        &get(
            &b,
            &format!("/xrpc/com.atproto.sync.getRepo?did={did}&since=yesterday"),
            Auth::None,
        ),
        400,
        "InvalidRequest",
        "getRepo bad since",
    );

    // Deactivated at the PDS.
    sim.world
        .set_status(&dids[1], Status::Deactivated)
        .expect("deactivate");
    wait_until(10, "deactivation seen", || {
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", dids[1]),
            Auth::None,
        )
        .json["active"]
            == json!(false)
    });
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", dids[1]),
        Auth::None,
    );
    assert_eq!(
        a.json,
        json!({"did": dids[1], "active": false, "status": "deactivated"})
    );
    for route in ["getLatestCommit", "getRepo"] {
        assert_error(
            &get(
                &b,
                &format!("/xrpc/com.atproto.sync.{route}?did={}", dids[1]),
                Auth::None,
            ),
            403,
            "RepoDeactivated",
            route,
        );
    }
    // Deleted at the PDS.
    sim.world
        .set_status(&dids[2], Status::Deleted)
        .expect("delete");
    wait_until(10, "deletion seen", || {
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", dids[2]),
            Auth::None,
        )
        .json["status"]
            == json!("deleted")
    });
    assert_error(
        &get(
            &b,
            &format!("/xrpc/com.atproto.sync.getLatestCommit?did={}", dids[2]),
            Auth::None,
        ),
        404,
        "RepoNotFound",
        "deleted",
    );
    relay.shutdown();
}

#[test]
fn takedown_round_trip_through_the_admin_api() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    let did = sim.world.dids()[0].clone();
    settle(&relay);
    let mark = relay.hub.ring.head();
    let a = admin_post(&b, "/admin/repo/takeDown", Some(json!({"did": did})));
    assert_eq!((a.status, &a.json), (200, &json!({"success": "true"})));
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"),
        Auth::None,
    );
    assert_eq!(
        a.json,
        json!({"did": did, "active": false, "status": "takendown"})
    );
    for route in ["getLatestCommit", "getRepo"] {
        assert_error(
            &get(
                &b,
                &format!("/xrpc/com.atproto.sync.{route}?did={did}"),
                Auth::None,
            ),
            403,
            "RepoTakendown",
            route,
        );
    }
    let a = admin_get(&b, "/admin/repo/takedowns");
    wait_until(10, "takedown listed", || {
        admin_get(&b, "/admin/repo/takedowns").json["dids"]
            .as_array()
            .is_some_and(|d| d.contains(&json!(did)))
    });
    assert_eq!(a.status, 200);
    sim.world.post(&did, "while down").expect("post");
    let a = admin_post(&b, "/admin/repo/reverseTakedown", Some(json!({"did": did})));
    assert_eq!(a.status, 200);
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={did}"),
        Auth::None,
    );
    assert_eq!(a.json["active"], json!(true));
    assert_eq!(
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getLatestCommit?did={did}"),
            Auth::None
        )
        .status,
        200
    );
    settle(&relay);
    let out = read_until_head(&relay, mark);
    let statuses: Vec<(bool, Option<String>)> = out
        .iter()
        .filter_map(|e| match e {
            Event::Account(a) if a.did == did => Some((a.active, a.status.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![(false, Some("takendown".into())), (true, None)],
        "the firehose announces the takedown and its reversal"
    );
    assert_error(
        &admin_post(
            &b,
            "/admin/repo/takeDown",
            Some(json!({"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"})),
        ),
        404,
        "RepoNotFound",
        "takeDown of an unknown account",
    );
    assert_error(
        &admin_post(&b, "/admin/repo/takeDown", Some(json!({"did": "nope"}))),
        400,
        "InvalidRequest",
        "takeDown of a non-DID",
    );
    assert_error(
        &admin_post(&b, "/admin/repo/takeDown", Some(json!({"who": did}))),
        400,
        "InvalidRequest",
        "takeDown without did",
    );
    relay.shutdown();
}

#[test]
fn host_routes_and_request_crawl() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    let names = sim.hostnames();
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let a = get(
            &b,
            &format!("/xrpc/com.atproto.sync.listHosts?limit=2{cursor}"),
            Auth::None,
        );
        assert_eq!(a.status, 200);
        for h in a.json["hosts"].as_array().expect("hosts") {
            assert_eq!(h["status"], json!("active"), "{h}");
            assert!(h["seq"].is_i64() && h["accountCount"] == json!(2), "{h}");
            listed.push(h["hostname"].as_str().expect("hostname").to_owned());
        }
        match a.json["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(listed, names, "every host, oldest first");
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getHostStatus?hostname={}", names[0]),
        Auth::None,
    );
    assert_eq!(a.json["hostname"], json!(names[0]));
    assert_eq!(a.json["status"], json!("active"));
    assert_error(
        &get(&b, "/xrpc/com.atproto.sync.getHostStatus", Auth::None),
        400,
        "InvalidRequest",
        "no hostname",
    );
    assert_error(
        &get(
            &b,
            "/xrpc/com.atproto.sync.getHostStatus?hostname=nowhere.example",
            Auth::None,
        ),
        404,
        "HostNotFound",
        "unknown host",
    );
    assert_error(
        &get(
            &b,
            "/xrpc/com.atproto.sync.listHosts?limit=1001",
            Auth::None,
        ),
        400,
        "InvalidRequest",
        "limit",
    );

    // requestCrawl: a new host, the deprecated alias, bans, bad bodies, the switch and the limit.
    let extra = sim.world.hosts.len();
    let more = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts: 2,
        accounts_per_host: 0,
        ..Default::default()
    })
    .expect("sim");
    let new_hosts = more.hostnames();
    let a = crawl(&b, &new_hosts[0]);
    assert_eq!(a.status, 200, "{}", a.text);
    let a = post(
        &b,
        "/xrpc/com.atproto.sync.notifyOfUpdate",
        Auth::None,
        Some(json!({"hostname": new_hosts[1]})),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    wait_until(10, "new hosts listed", || {
        get(&b, "/xrpc/com.atproto.sync.listHosts", Auth::None).json["hosts"]
            .as_array()
            .map(Vec::len)
            == Some(extra + 2)
    });
    assert_error(
        &post(
            &b,
            "/xrpc/com.atproto.sync.requestCrawl",
            Auth::None,
            Some(json!({"host": "x"})),
        ),
        400,
        "InvalidRequest",
        "requestCrawl without hostname",
    );
    assert_error(
        &crawl(&b, "not a host!"),
        400,
        "InvalidRequest",
        "requestCrawl of a bad hostname",
    );
    assert_eq!(
        admin_post(
            &b,
            "/admin/subs/banDomain",
            Some(json!({"Domain": "banned.example"}))
        )
        .status,
        200
    );
    assert_eq!(
        admin_get(&b, "/admin/subs/listDomainBans").json,
        json!({"banned_domains": ["banned.example"]})
    );
    assert_error(
        &crawl(&b, "pds.banned.example"),
        400,
        "HostBanned",
        "banned domain",
    );
    assert_eq!(
        admin_post(
            &b,
            "/admin/subs/unbanDomain",
            Some(json!({"Domain": "banned.example"}))
        )
        .status,
        200
    );
    assert_eq!(
        admin_get(&b, "/admin/subs/listDomainBans").json,
        json!({"banned_domains": []})
    );

    let third = rlay::sim::Sim::start(&rlay::sim::SimConfig {
        hosts: 1,
        accounts_per_host: 0,
        ..Default::default()
    })
    .expect("sim");
    assert_eq!(
        admin_post(&b, "/admin/subs/setPerDayLimit?limit=0", None).status,
        200
    );
    assert_eq!(
        admin_get(&b, "/admin/subs/perDayLimit").json,
        json!({"limit": 0})
    );
    assert_error(
        &crawl(&b, &third.hostnames()[0]),
        429,
        "RateLimitExceeded",
        "over the daily limit",
    );
    assert_error(
        &admin_post(&b, "/admin/subs/setPerDayLimit?limit=-1", None),
        400,
        "InvalidRequest",
        "bad limit",
    );
    assert_eq!(
        admin_post(&b, "/admin/subs/setEnabled?enabled=false", None).status,
        200
    );
    assert_eq!(
        admin_get(&b, "/admin/subs/getEnabled").json,
        json!({"enabled": false})
    );
    assert_error(
        &crawl(&b, &third.hostnames()[0]),
        403,
        "Forbidden",
        "crawl requests disabled",
    );
    assert_error(
        &admin_post(&b, "/admin/subs/setEnabled?enabled=maybe", None),
        400,
        "InvalidRequest",
        "bad flag",
    );
    // The admin route ignores both the switch and the daily limit.
    let a = admin_post(
        &b,
        "/admin/pds/requestCrawl",
        Some(json!({"hostname": third.hostnames()[0]})),
    );
    assert_eq!(
        (a.status, &a.json),
        (200, &json!({"success": "true"})),
        "{}",
        a.text
    );
    relay.shutdown();
}

#[test]
fn admin_host_controls() {
    let (sim, _dir, relay) = network();
    let b = base(&relay);
    let names = sim.hostnames();
    let conns = admin_get(&b, "/admin/subs/getUpstreamConns").json;
    let mut conns: Vec<String> = serde_json::from_value(conns).expect("list of hosts");
    conns.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(conns, want);

    let list = admin_get(&b, "/admin/pds/list").json;
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), names.len());
    for r in rows {
        assert!(
            r["Host"].is_string() && r["HasActiveConnection"] == json!(true),
            "{r}"
        );
        assert_eq!(r["RepoCount"], json!(2));
    }

    // killUpstream drops the connection; the host reconnects on its own.
    let host = &names[0];
    let a = admin_post(&b, &format!("/admin/subs/killUpstream?host={host}"), None);
    assert_eq!(a.status, 200, "{}", a.text);
    wait_until(15, "host reconnected after kill", || {
        relay
            .hosts
            .by_name(host)
            .is_some_and(|h| h.connected.load(std::sync::atomic::Ordering::SeqCst))
    });
    assert_error(
        &admin_post(&b, "/admin/subs/killUpstream?host=nowhere.example", None),
        400,
        "InvalidRequest",
        "kill of an unknown host",
    );
    assert_error(
        &admin_post(&b, "/admin/subs/killUpstream", None),
        400,
        "InvalidRequest",
        "kill without host",
    );

    // block bans and disconnects; unblock reconnects.
    assert_eq!(
        admin_post(&b, &format!("/admin/pds/block?host={host}"), None).status,
        200
    );
    wait_until(10, "blocked host disconnected", || {
        !admin_get(&b, "/admin/subs/getUpstreamConns")
            .json
            .as_array()
            .expect("list")
            .contains(&json!(host))
    });
    let a = get(
        &b,
        &format!("/xrpc/com.atproto.sync.getHostStatus?hostname={host}"),
        Auth::None,
    );
    assert_eq!(a.json["status"], json!("banned"));
    assert_error(
        &crawl(&b, host),
        400,
        "HostBanned",
        "crawl of a blocked host",
    );
    assert_eq!(
        admin_post(&b, &format!("/admin/pds/unblock?host={host}"), None).status,
        200
    );
    wait_until(15, "unblocked host reconnected", || {
        admin_get(&b, "/admin/subs/getUpstreamConns")
            .json
            .as_array()
            .expect("list")
            .contains(&json!(host))
    });
    assert_error(
        &admin_post(&b, "/admin/pds/block?host=nowhere.example", None),
        404,
        "HostNotFound",
        "block unknown",
    );
    assert_error(
        &admin_post(&b, "/admin/pds/unblock?host=nowhere.example", None),
        404,
        "HostNotFound",
        "unblock unknown",
    );

    // changeLimits.
    let a = admin_post(
        &b,
        "/admin/pds/changeLimits",
        Some(json!({"host": host, "repo_limit": 7})),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let list = admin_get(&b, "/admin/pds/list").json;
    let row = list
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["Host"] == json!(host))
        .cloned()
        .expect("row");
    assert_eq!(row["RepoLimit"], json!(7));
    assert_error(
        &admin_post(
            &b,
            "/admin/pds/changeLimits",
            Some(json!({"host": "nowhere.example", "repo_limit": 7})),
        ),
        404,
        "HostNotFound",
        "limits of an unknown host",
    );
    assert_error(
        &admin_post(
            &b,
            "/admin/pds/changeLimits",
            Some(json!({"host": host, "repo_limit": -3})),
        ),
        400,
        "InvalidRequest",
        "negative limit",
    );
    assert_error(
        &admin_post(&b, "/admin/pds/changeLimits", None),
        400,
        "InvalidRequest",
        "no body",
    );

    // consumers/list shows a live subscriber.
    let mut ws = subscribe(relay.api_addr, None);
    wait_until(10, "consumer listed", || {
        admin_get(&b, "/admin/consumers/list")
            .json
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    let c = admin_get(&b, "/admin/consumers/list").json[0].clone();
    assert!(
        c["id"].is_u64()
            && c["remote_addr"]
                .as_str()
                .is_some_and(|r| r.starts_with("127.0.0.1")),
        "{c}"
    );
    let _ = ws.close(None);
    relay.shutdown();
}

#[test]
fn admin_auth_none_wrong_and_right() {
    let (_sim, _dir, relay) = network();
    let b = base(&relay);
    let routes = [
        "/admin/subs/getUpstreamConns",
        "/admin/subs/getEnabled",
        "/admin/subs/perDayLimit",
        "/admin/subs/listDomainBans",
        "/admin/repo/takedowns",
        "/admin/pds/list",
        "/admin/consumers/list",
        "/admin/collections/list",
        "/admin/collections/backfill",
    ];
    for r in routes {
        for (auth, what) in [
            (Auth::None, "no credentials"),
            (Auth::Bearer("wrong"), "wrong bearer"),
            (Auth::Basic("admin", "wrong"), "wrong basic password"),
            (Auth::Basic("root", ADMIN_PW), "wrong basic user"),
        ] {
            let a = get(&b, r, auth);
            assert_eq!(a.status, 401, "{r} with {what}");
            assert!(
                a.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Basic")),
                "{r}: WWW-Authenticate"
            );
        }
        for auth in [
            Auth::Bearer(ADMIN_PW),
            Auth::Basic("admin", ADMIN_PW),
            Auth::Bearer("second-pw"),
            Auth::Basic("admin", "second-pw"),
        ] {
            assert_eq!(get(&b, r, auth).status, 200, "{r} with the right password");
        }
    }
    for r in [
        "/admin/repo/takeDown",
        "/admin/pds/requestCrawl",
        "/admin/subs/setEnabled?enabled=true",
    ] {
        assert_eq!(
            post(&b, r, Auth::None, Some(json!({}))).status,
            401,
            "POST {r}"
        );
    }
    assert_error(
        &admin_get(&b, "/admin/nothing"),
        404,
        "NotFound",
        "unknown admin route",
    );
    relay.shutdown();
}

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
    let mut s = TcpStream::connect(relay.api_addr).expect("connect");
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
    let did = sim.world.dids()[0].clone();
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
        let mut s = TcpStream::connect(relay.api_addr).expect("connect");
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
    let mut ws = subscribe(relay.api_addr, Some(0));
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
    let did = sim.world.dids()[0].clone();
    sim.world.post(&did, "counted").expect("post");
    settle(&relay);
    let _ = get(
        &base(&relay),
        "/xrpc/com.atproto.sync.listRepos",
        Auth::None,
    );
    let addr = relay.metrics_addr.expect("metrics listener");
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
    let mut ws = subscribe(relay.api_addr, Some(0));
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
