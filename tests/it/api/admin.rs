//! Host routes, requestCrawl and the admin host controls and auth.

use super::{assert_error, base, crawl, network};
use crate::common;
use common::http::{Auth, admin_get, admin_post, get, post};
use common::metrics::Mark;
use common::relay::{ADMIN_PW, subscribe, wait_until};
use serde_json::json;

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
    let extra = sim.world().hosts().len();
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
    let sim_host = &sim.world().hosts()[0];
    assert_eq!(sim_host.subscribers(), 1);
    let reconnects = Mark::now();
    let a = admin_post(&b, &format!("/admin/subs/killUpstream?host={host}"), None);
    assert_eq!(a.status, 200, "{}", a.text);
    wait_until(15, "host dropped and reconnected after kill", || {
        reconnects.delta("rlay_upstream_reconnects_total", &[""]) >= 1.0
            && relay.host(host).is_some_and(|h| h.connected())
            && sim_host.subscribers() == 1
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
    let mut ws = subscribe(relay.api_addr(), None);
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
            // A Bearer caller (the dashboard) is challenged for Bearer, so a browser does not
            // put up its own Basic prompt; everyone else for Basic.
            let scheme = if matches!(auth, Auth::Bearer(_)) {
                "Bearer"
            } else {
                "Basic"
            };
            let a = get(&b, r, auth);
            assert_eq!(a.status, 401, "{r} with {what}");
            assert!(
                a.header("www-authenticate")
                    .is_some_and(|h| h.starts_with(scheme)),
                "{r}: WWW-Authenticate {scheme} with {what}"
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
