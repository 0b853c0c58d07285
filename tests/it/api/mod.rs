//! Every HTTP route from outside: success, each error, pagination, limits, admin auth, the
//! takedown round trip, requests arriving in pieces, many idle connections, and metrics.

use crate::common;

mod admin;
mod wire;

use common::http::{self, Answer, Auth, admin_get, admin_post, get, post};
use common::relay::{live_network, read_until_head, settle, wait_until};
use rlay::proto::frame::Event;
use rlay::relay::Relay;
use rlay::sim::{Sim, Status};
use serde_json::json;

pub(super) fn base(relay: &Relay) -> String {
    format!("http://{}", relay.api_addr())
}

pub(super) fn assert_error(a: &Answer, status: u16, error: &str, what: &str) {
    assert_eq!(
        (a.status, a.error()),
        (status, Some(error)),
        "{what}: {}",
        a.text.chars().take(300).collect::<String>()
    );
    assert!(a.json["message"].is_string(), "{what}: an error message");
}

/// A public requestCrawl.
pub(super) fn crawl(b: &str, hostname: &str) -> Answer {
    post(
        b,
        "/xrpc/com.atproto.sync.requestCrawl",
        Auth::None,
        Some(json!({ "hostname": hostname })),
    )
}

/// A network with 3 hosts of 2 accounts, each account with a commit the relay has seen.
pub(super) fn network() -> (Sim, tempfile::TempDir, Relay) {
    let (sim, dir, relay) = live_network(3, 2, &[("admin-password", "test-admin-pw,second-pw")]);
    wait_until(20, "every account's first commit", || {
        sim.world().dids().iter().all(|d| {
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
    let mut want = sim.world().dids();
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
    let dids = sim.world().dids();
    let did = &dids[0];
    let head = {
        let a = sim.world().account(0).expect("account");
        let a = a.lock().expect("lock");
        a.repo()
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
    sim.world()
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
    sim.world()
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
    let did = sim.world().dids()[0].clone();
    settle(&relay);
    let mark = relay.head_seq();
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
    sim.world().post(&did, "while down").expect("post");
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
