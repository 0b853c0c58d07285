//! Coverage (issue 15): host discovery from other relays, sibling forwarding, readiness and
//! `/status`, alerts to a webhook, and throttled accounts made whole with a `#sync`.

use crate::common::http::{Auth, admin_get, admin_post, get};
use crate::common::pg;
use crate::common::receiver::Receiver;
use crate::common::relay::{config, start, subscribe, wait_until};
use rlay::proto::frame::{self, Event};
use rlay::sim::{Sim, SimConfig};
use serde_json::json;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn sim(hosts: usize, per_host: usize) -> Sim {
    Sim::start(&SimConfig {
        hosts,
        accounts_per_host: per_host,
        ..SimConfig::default()
    })
    .expect("sim")
}

fn base(r: &rlay::relay::Relay) -> String {
    format!("http://{}", r.api_addr())
}

fn connected(r: &rlay::relay::Relay, host: &str) -> bool {
    r.host(host).is_some_and(|h| h.connected())
}

/// One post on every account, so every host has a seq to list.
fn post_everywhere(sim: &Sim) {
    for did in sim.world().dids() {
        sim.world().post(&did, "hello").expect("post");
    }
}

fn discovery_passes(b: &str) -> u64 {
    admin_get(b, "/admin/discovery/status").json["passes"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_host_the_bootstrap_relay_learns_later_is_crawled_and_a_banned_one_stays_out() {
    let sim = sim(4, 1);
    let names = sim.hostnames();
    let plc = sim.world().plc_url().to_owned();
    post_everywhere(&sim);
    // B: the bootstrap relay, which knows three of the four hosts at first.
    let dir_b = tempfile::tempdir().unwrap();
    let b = start(&config(dir_b.path(), &plc, None, &[]));
    for h in &names[..3] {
        b.crawl(h).unwrap();
    }
    // Hosts B has a seq for (the ones another relay would add).
    let listed = |n: usize| {
        let l = get(&base(&b), "/xrpc/com.atproto.sync.listHosts", Auth::None);
        l.json["hosts"].as_array().map_or(0, |h| {
            h.iter().filter(|h| h["seq"].as_i64() > Some(0)).count()
        }) >= n
    };
    wait_until(20, "B connected", || {
        names[..3].iter().all(|h| connected(&b, h))
    });
    post_everywhere(&sim);
    wait_until(20, "B lists three hosts with a seq", || listed(3));
    // A: bootstrapped from B, discovering every second.
    let dir_a = tempfile::tempdir().unwrap();
    let bu = base(&b);
    let a = start(&config(
        dir_a.path(),
        &plc,
        None,
        &[("bootstrap-host", &bu), ("discovery-interval", "1s")],
    ));
    let au = base(&a);
    wait_until(20, "A discovers B's three hosts", || {
        names[..3].iter().all(|h| connected(&a, h))
    });
    assert!(!connected(&a, &names[3]));
    // The operator of A blocks one of them; discovery must not bring it back.
    let r = admin_post(&au, &format!("/admin/pds/block?host={}", names[0]), None);
    assert_eq!(r.status, 200, "{}", r.text);
    // B learns the fourth host after A started; A crawls it within a discovery interval.
    b.crawl(&names[3]).unwrap();
    wait_until(20, "B connected to it", || connected(&b, &names[3]));
    post_everywhere(&sim);
    wait_until(20, "B lists the fourth host", || listed(4));
    let t = Instant::now();
    wait_until(20, "A crawls the host B learned", || {
        connected(&a, &names[3])
    });
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let passes = discovery_passes(&au);
    wait_until(20, "two more discovery passes", || {
        discovery_passes(&au) >= passes + 2
    });
    let h0 = a.host(&names[0]).expect("blocked host still known");
    assert_eq!(h0.status().as_str(), "banned");
    assert!(!h0.connected());
    // The status pages tell what discovery saw.
    let s = admin_get(&au, "/admin/discovery/status");
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.json["sources"][0]["url"], json!(bu));
    assert_eq!(s.json["sources"][0]["hosts_listed"], json!(4));
    assert!(s.json["hosts_added"].as_u64().unwrap() >= 4, "{}", s.text);
    // The blocked host is active at B and not connected here.
    assert_eq!(s.json["hosts_missing"], json!(1), "{}", s.text);
    // Lag against B's view of each host, worst first.
    let lag = s.json["worst_lag"].as_array().expect("worst_lag");
    assert_eq!(lag.len(), 4, "{}", s.text);
    assert!(lag.iter().all(|l| l["events_behind"].as_i64().is_some()));
    let st = get(&au, "/status", Auth::None);
    assert_eq!(st.status, 200);
    assert_eq!(st.json["hosts"]["connected"], json!(3), "{}", st.text);
    assert_eq!(
        st.json["hosts"]["by_status"]["banned"],
        json!(1),
        "{}",
        st.text
    );
    assert_eq!(st.json["discovery"]["hosts_missing"], json!(1));
    a.shutdown();
    b.shutdown();
}

#[test]
fn siblings_get_each_admin_change_once_and_do_not_send_it_back() {
    let sim = sim(2, 1);
    let names = sim.hostnames();
    let plc = sim.world().plc_url().to_owned();
    // Relay A lists B and a recorder; B lists A and another recorder. Ports are picked first
    // so each can name the other.
    let (pa, pb) = (
        crate::common::relay::free_port(),
        crate::common::relay::free_port(),
    );
    let (ra, rb) = (Receiver::start(), Receiver::start());
    let (ua, ub) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let sa = format!("{ub},{}", ra.url);
    let sb = format!("{ua},{}", rb.url);
    let a = start(&config(
        da.path(),
        &plc,
        None,
        &[("api-listen", &la), ("sibling-relays", &sa)],
    ));
    let b = start(&config(
        db.path(),
        &plc,
        None,
        &[("api-listen", &lb), ("sibling-relays", &sb)],
    ));
    for r in [&a, &b] {
        for h in &names {
            r.crawl(h).unwrap();
        }
    }
    wait_until(20, "both relays connected", || {
        names.iter().all(|h| connected(&a, h) && connected(&b, h))
    });
    let r = admin_post(&ua, &format!("/admin/pds/block?host={}", names[0]), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = admin_post(
        &ua,
        "/admin/subs/banDomain",
        Some(json!({"Domain": "spam.example"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // A refused change is not forwarded.
    let r = admin_post(&ua, "/admin/pds/block?host=nobody.example", None);
    assert_eq!(r.status, 404);
    // Public requestCrawl is forwarded too (without credentials).
    let r = crate::common::http::post(
        &ua,
        "/xrpc/com.atproto.sync.requestCrawl",
        Auth::None,
        Some(json!({"hostname": names[1]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(10, "B applied the block", || {
        b.host(&names[0])
            .is_some_and(|h| h.status().as_str() == "banned")
    });
    wait_until(10, "B applied the domain ban", || {
        admin_get(&ub, "/admin/subs/listDomainBans").json["banned_domains"]
            .as_array()
            .is_some_and(|d| d.contains(&json!("spam.example")))
    });
    // Siblings are also discovery sources: their listHosts GETs are not forwarded changes.
    let posts =
        |r: &Receiver| -> Vec<_> { r.all().into_iter().filter(|x| x.method == "POST").collect() };
    wait_until(10, "the recorder got the three changes", || {
        posts(&ra).len() >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    let got = posts(&ra);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].target, format!("/admin/pds/block?host={}", names[0]));
    assert!(
        got[0]
            .header("via")
            .is_some_and(|v| v.contains("atproto-relay"))
    );
    assert!(got[0].header("authorization").is_some());
    assert_eq!(got[1].target, "/admin/subs/banDomain");
    assert!(got[1].body.contains("spam.example"), "{:?}", got[1]);
    assert_eq!(got[2].target, "/xrpc/com.atproto.sync.requestCrawl");
    assert!(got[2].header("authorization").is_none());
    // B applied them but forwarded nothing (they came from a relay): no loop, no echo.
    assert!(posts(&rb).is_empty(), "{:?}", rb.all());
    assert!(!connected(&a, &names[0]));
    a.shutdown();
    b.shutdown();
}

fn ready(b: &str) -> (u16, Vec<String>) {
    let r = get(b, "/xrpc/_ready", Auth::None);
    let codes = r.json["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (r.status, codes)
}

#[test]
fn losing_half_the_hosts_makes_the_relay_unready_and_alerts_once_each_way() {
    let sim = sim(4, 1);
    let names = sim.hostnames();
    let hook = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(&config(
        dir.path(),
        sim.world().plc_url(),
        None,
        &[
            ("alert-webhook-url", &hook.url),
            ("alert-check-interval", "200ms"),
            ("coverage-grace", "2s"),
            ("min-coverage", "0.9"),
        ],
    ));
    let b = base(&relay);
    crate::common::relay::crawl_all(&relay, &names);
    assert_eq!(ready(&b), (200, vec![]));
    // Half the hosts go down: not ready after the grace period, with the reason.
    for h in &sim.world().hosts()[..2] {
        h.set_down(true);
    }
    wait_until(10, "two hosts disconnected", || {
        names[..2].iter().all(|h| !connected(&relay, h))
    });
    assert_eq!(ready(&b).0, 200, "one grace period first");
    wait_until(10, "not ready", || ready(&b).0 == 503);
    assert_eq!(ready(&b).1, ["coverage"]);
    let r = get(&b, "/xrpc/_ready", Auth::None);
    assert!(r.text.contains("2 of 4"), "{}", r.text);
    assert_eq!(
        get(&b, "/xrpc/_health", Auth::None).status,
        200,
        "liveness is not readiness"
    );
    wait_until(10, "the not-ready alert", || {
        !hook.texts_with("not ready").is_empty()
    });
    let st = get(&b, "/status", Auth::None);
    assert_eq!(st.json["ready"], json!(false));
    assert_eq!(st.json["hosts"]["expected"], json!(4), "{}", st.text);
    assert_eq!(
        st.json["hosts"]["expected_connected"],
        json!(2),
        "{}",
        st.text
    );
    // Back up: ready again once coverage has held for a fifth of the grace.
    for h in &sim.world().hosts()[..2] {
        h.set_down(false);
    }
    wait_until(40, "hosts reconnected", || {
        names.iter().all(|h| connected(&relay, h))
    });
    wait_until(10, "ready again", || ready(&b).0 == 200);
    wait_until(10, "the ready-again alert", || {
        !hook.texts_with("ready again").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hook.texts_with("not ready").len(), 1, "{:?}", hook.all());
    assert_eq!(hook.texts_with("ready again").len(), 1);
    let list = admin_get(&b, "/admin/alerts/list");
    let kinds: Vec<&str> = list.json["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["not_ready", "ready"], "{}", list.text);
    relay.shutdown();
}

fn limit_alerts(database_url: Option<&str>) {
    let sim = sim(2, 0);
    let names = sim.hostnames();
    for h in 0..2 {
        for _ in 0..4 {
            sim.world().create_account(h, None).expect("account");
        }
    }
    let hook = Receiver::start();
    // The state store outlives the relay's data dir: a restarted relay (in this process, a new
    // one on a fresh data dir) must find the alert state there.
    let state = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", state.path().join("state.sqlite").display());
    let database_url = database_url.unwrap_or(&sqlite).to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |dir: &tempfile::TempDir| {
        config(
            dir.path(),
            sim.world().plc_url(),
            Some(&database_url),
            &[
                ("alert-webhook-url", &hook.url),
                ("alert-check-interval", "200ms"),
                // Untrusted hosts with a limit of 5: four accounts are 80%.
                ("trusted-domains", ""),
                ("default-account-limit", "5"),
            ],
        )
    };
    let relay = start(&cfg(&dir));
    let b = base(&relay);
    let r = admin_post(
        &b,
        "/admin/alerts/silence",
        Some(json!({"host": names[1], "silenced": false})),
    );
    assert_eq!(r.status, 404, "an unknown host: {}", r.text);
    crate::common::relay::crawl_all(&relay, &names);
    // Host 1's operator asked for quiet.
    let r = admin_post(&b, "/admin/alerts/silence", Some(json!({"host": names[1]})));
    assert_eq!(r.status, 200, "{}", r.text);
    post_everywhere(&sim);
    wait_until(20, "accounts counted", || {
        names
            .iter()
            .all(|h| relay.host(h).is_some_and(|x| x.account_count() == 4))
    });
    wait_until(10, "the account-limit alert", || {
        !hook.texts_with("account limit").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let texts = hook.texts_with("account limit");
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains(&format!("{}: 4 of 5 accounts (80%)", names[0])),
        "{}",
        texts[0]
    );
    assert!(
        !texts[0].contains(&names[1]),
        "silenced host alerted: {}",
        texts[0]
    );
    let list = admin_get(&b, "/admin/alerts/list");
    assert!(
        list.text
            .contains("\"account_limit_alert_state\":\"warning\""),
        "{}",
        list.text
    );
    let pds = admin_get(&b, "/admin/pds/list");
    let silenced: Vec<bool> = pds
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["AccountLimitAlertsSilenced"].as_bool().unwrap())
        .collect();
    assert_eq!(silenced, [false, true]);
    // A restart (a deploy) does not send it again: the state is in the store.
    relay.shutdown();
    let dir2 = tempfile::tempdir().unwrap();
    let relay = start(&cfg(&dir2));
    let b = base(&relay);
    crate::common::relay::crawl_all(&relay, &names);
    post_everywhere(&sim);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        hook.texts_with("account limit").len(),
        1,
        "{:?}",
        hook.all()
    );
    // Going below the threshold recovers it, once.
    let r = admin_post(
        &b,
        "/admin/pds/changeLimits",
        Some(json!({"host": names[0], "repo_limit": 100})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_until(10, "the recovery", || {
        !hook.texts_with("back below").is_empty()
    });
    relay.shutdown();
}

#[test]
fn account_limit_alerts_are_batched_silenced_and_not_repeated_after_a_restart() {
    limit_alerts(None);
}

#[test]
fn account_limit_alert_state_survives_a_restart_on_postgres() {
    let Some(url) = pg::fresh_database() else {
        return;
    };
    limit_alerts(Some(&url));
}

/// Reads the firehose until `f` has seen what it wants or `secs` pass.
fn read_until(ws: &mut crate::common::relay::Ws, secs: u64, mut f: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        assert!(
            Instant::now() < deadline,
            "the firehose did not show it in {secs}s"
        );
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if f(&frame::decode(&b).expect("frame")) {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if rlay::util::net::ws_timed_out(&e) => {}
            Err(e) => panic!("firehose: {e}"),
        }
    }
}

fn made_whole(database_url: Option<&str>) {
    let sim = sim(1, 0);
    let host = sim.hostnames()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let relay = start(&config(
        dir.path(),
        sim.world().plc_url(),
        database_url,
        &[("trusted-domains", ""), ("default-account-limit", "1")],
    ));
    let b = base(&relay);
    crate::common::relay::crawl_all(&relay, std::slice::from_ref(&host));
    // One at a time, so the relay meets them in this order (the first gets the one place).
    let dids: Vec<String> = (0..3)
        .map(|_| {
            let d = sim.world().create_account(0, None).expect("account");
            sim.world().post(&d, "first").expect("post");
            crate::common::relay::settle(&relay);
            d
        })
        .collect();
    let status = |d: &str| {
        get(
            &b,
            &format!("/xrpc/com.atproto.sync.getRepoStatus?did={d}"),
            Auth::None,
        )
        .json
    };
    assert_eq!(status(&dids[0])["active"], json!(true));
    for d in &dids[1..] {
        assert_eq!(status(d)["status"], json!("throttled"), "{d}");
    }
    // Written while throttled: lost to the network until the account is made whole.
    for d in &dids[1..] {
        sim.world().post(d, "while throttled").expect("post");
    }
    crate::common::relay::settle(&relay);
    let mark = crate::common::metrics::Mark::now();
    let mut ws = subscribe(relay.api_addr(), None);
    let rev_of = |d: &str| {
        let a = sim
            .world()
            .account(sim.world().index_of(d).unwrap())
            .unwrap();
        a.lock().unwrap().repo().head().unwrap().1.to_owned()
    };
    let next_sync = |ws: &mut crate::common::relay::Ws| {
        let mut got = None;
        read_until(ws, 20, |e| {
            if let Event::Sync(s) = e {
                got = Some((s.did.clone(), s.rev.clone()));
            }
            got.is_some()
        });
        got.unwrap()
    };
    // A deleted account frees a place: the oldest throttled account takes it, made whole.
    sim.world()
        .set_status(&dids[0], rlay::sim::Status::Deleted)
        .expect("delete");
    assert_eq!(next_sync(&mut ws), (dids[1].clone(), rev_of(&dids[1])));
    assert_eq!(status(&dids[1])["active"], json!(true));
    assert_eq!(
        status(&dids[1])["rev"],
        json!(rev_of(&dids[1])),
        "stored state moved to the #sync"
    );
    assert_eq!(status(&dids[2])["status"], json!("throttled"));
    // A raised limit lets the rest in, each with its #sync.
    let r = admin_post(
        &b,
        "/admin/pds/changeLimits",
        Some(json!({"host": host, "repo_limit": 10})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(next_sync(&mut ws), (dids[2].clone(), rev_of(&dids[2])));
    assert_eq!(status(&dids[2])["rev"], json!(rev_of(&dids[2])));
    // Later commits of a made-whole account flow, verified against the synced state.
    sim.world().post(&dids[2], "after").expect("post");
    read_until(
        &mut ws,
        20,
        |e| matches!(e, Event::Commit(c) if c.repo == dids[2]),
    );
    assert!(mark.delta("rlay_resyncs_total", &["result=\"synced\""]) >= 2.0);
    relay.shutdown();
}

#[test]
fn raising_a_host_limit_makes_its_throttled_accounts_whole_with_a_sync() {
    made_whole(None);
}

#[test]
fn throttled_accounts_are_made_whole_on_postgres() {
    let Some(url) = pg::fresh_database() else {
        return;
    };
    made_whole(Some(&url));
}
