//! Account limits, handles, live consumers and the identity queue, end to end.

use crate::common;

use crate::relay_e2e::{Key, account_event, key};
use common::metrics::Mark;
use common::relay::{crawled_network, read_until_head, settle, subscribe, wait_until};
use rlay::proto::frame::Event;
use rlay::relay::Relay;
use rlay::sim::{LedgerEntry, Sim, Status};

/// One untrusted host with `accounts` accounts and an account limit of 2; every account has
/// posted once and the first two commits are through.
fn host_limited_to_two(accounts: usize) -> (Sim, tempfile::TempDir, Relay, Vec<String>) {
    let (sim, dir, relay) = crawled_network(
        1,
        accounts,
        None,
        &[("trusted-domains", ""), ("default-account-limit", "2")],
    );
    let dids = sim.world().dids();
    for d in &dids {
        sim.world().post(d, "hello").expect("post");
    }
    wait_until(10, "two accounts' commits", || relay.head_seq() >= 2);
    (sim, dir, relay, dids)
}

#[test]
fn accounts_over_the_host_limit_are_throttled_until_the_limit_rises() {
    let (sim, _dir, relay, dids) = host_limited_to_two(4);
    settle(&relay);
    let out = read_until_head(&relay, 0);
    assert_eq!(
        out.len(),
        2,
        "only the first two accounts pass; the others are throttled"
    );
    let throttled: Vec<String> = dids
        .iter()
        .filter(|d| !out.iter().any(|e| e.did() == Some(d.as_str())))
        .cloned()
        .collect();
    assert_eq!(throttled.len(), 2);
    let status = common::http::get(
        &format!("http://{}", relay.api_addr()),
        &format!("/xrpc/com.atproto.sync.getRepoStatus?did={}", throttled[0]),
        common::http::Auth::None,
    );
    assert_eq!(
        (
            status.json["active"].as_bool(),
            status.json["status"].as_str()
        ),
        (Some(false), Some("throttled")),
        "{}",
        status.text
    );
    // Raise the limit through the admin API: throttled accounts are released with #account.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .post(&format!(
            "http://{}/admin/pds/changeLimits",
            relay.api_addr()
        ))
        .header(
            "Authorization",
            &format!("Bearer {}", common::relay::ADMIN_PW),
        )
        .send_json(serde_json::json!({"host": sim.hostnames()[0], "repo_limit": 10}))
        .expect("changeLimits");
    assert_eq!(r.status().as_u16(), 200);
    for d in &throttled {
        sim.world().post(d, "now visible").expect("post");
    }
    wait_until(10, "released accounts", || relay.head_seq() >= 6);
    settle(&relay);
    let out = read_until_head(&relay, 2);
    for d in &throttled {
        assert_eq!(
            account_event(&out, d),
            vec![(true, None)],
            "#account for the released account"
        );
        // Its commit, or the #sync that made it whole (which may already cover that commit).
        assert!(out.iter().any(|e| match e {
            Event::Commit(c) => &c.repo == d,
            Event::Sync(s) => &s.did == d,
            _ => false,
        }));
    }
    relay.shutdown();
}

/// Unlike indigo, whose count includes deleted accounts forever, a deletion frees its place.
#[test]
fn a_deleted_account_frees_its_place_under_the_host_limit() {
    let (sim, _dir, relay, dids) = host_limited_to_two(2);
    let host_count = || {
        let url = format!(
            "http://{}/xrpc/com.atproto.sync.getHostStatus?hostname={}",
            relay.api_addr(),
            sim.hostnames()[0]
        );
        let body: serde_json::Value = ureq::get(&url)
            .call()
            .expect("getHostStatus")
            .body_mut()
            .read_json()
            .expect("json");
        body["accountCount"].as_i64()
    };
    settle(&relay);
    assert_eq!(host_count(), Some(2));

    sim.world()
        .set_status(&dids[0], Status::Deleted)
        .expect("delete");
    wait_until(10, "the deletion", || relay.head_seq() >= 3);
    let newcomer = sim.world().create_account(0, None).expect("account");
    sim.world().post(&newcomer, "room for me").expect("post");
    wait_until(10, "the newcomer's commit", || {
        read_until_head(&relay, 3)
            .iter()
            .any(|e| matches!(e, Event::Commit(c) if c.repo == newcomer))
    });
    settle(&relay);
    assert_eq!(host_count(), Some(2), "one deleted, one new");
    relay.shutdown();
}

#[test]
fn identity_handles_pass_only_when_the_did_document_agrees() {
    let (sim, _dir, relay) = crawled_network(2, 1, None, &[]);
    let did = sim.world().dids()[0].clone();
    sim.world()
        .set_handle(&did, "renamed.h0.test")
        .expect("handle");
    // The other host claims an identity event for this DID with a bogus handle.
    sim.world().emit(rlay::sim::Planned::Defect(
        1,
        Event::Identity(rlay::proto::frame::IdentityEvent {
            seq: 0,
            did: did.clone(),
            time: sim.world().time_now(),
            handle: Some("bogus.h1.test".into()),
        }),
    ));
    wait_until(10, "identity events", || relay.head_seq() >= 2);
    settle(&relay);
    let out = read_until_head(&relay, 0);
    // The two events came from different hosts, so their relative order is not defined.
    let mut handles: Vec<Option<String>> = out
        .iter()
        .filter_map(|e| match e {
            Event::Identity(i) => Some(i.handle.clone()),
            _ => None,
        })
        .collect();
    handles.sort();
    assert_eq!(
        handles,
        vec![None, Some("renamed.h0.test".into())],
        "a handle from the wrong host is withheld"
    );
    relay.shutdown();
}

#[test]
fn live_consumer_sees_new_events() {
    let (sim, _dir, relay) = crawled_network(1, 1, None, &[]);
    let mut ws = subscribe(relay.api_addr(), None);
    wait_until(5, "consumer registered", || relay.consumer_count() == 1);
    sim.world()
        .post(&sim.world().dids()[0], "live")
        .expect("post");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "live event arrives");
        if let Ok(tungstenite::Message::Binary(b)) = ws.read() {
            assert!(matches!(
                rlay::proto::frame::decode(&b),
                Ok(Event::Commit(_))
            ));
            break;
        }
    }
    relay.shutdown();
}

/// While the PLC directory is slow, a new account's events wait in order in a queue of 1,000;
/// past that they are dropped and counted, and the first 1,000 go out in order once the
/// identity arrives. The host's other accounts are not held up meanwhile.
#[test]
fn events_waiting_for_a_slow_identity_are_bounded_and_never_dropped() {
    let (sim, _dir, relay) = crawled_network(1, 1, None, &[]);
    let known = sim.world().dids()[0].clone();
    sim.world()
        .post(&known, "warm the identity cache")
        .expect("post");
    wait_until(10, "the known account's commit", || relay.head_seq() >= 1);
    let pds = format!("pds=\"{}\"", sim.hostnames()[0]);
    let mark = Mark::now();

    sim.world().plc().hold(true);
    let start_at = sim.world().ledger().len();
    let newcomer = sim.world().create_account(0, None).expect("account");
    for i in 0..1_020 {
        sim.world()
            .post(&newcomer, &format!("queued {i}"))
            .expect("post");
    }
    sim.world()
        .post(&known, "behind the newcomer")
        .expect("post");
    let mine: Vec<LedgerEntry> = sim.world().ledger()[start_at..]
        .iter()
        .filter(|e| e.did == newcomer)
        .cloned()
        .collect();
    assert!(mine.len() > 1_000);
    // The newcomer's queue fills (1,000): the host thread stops reading instead of dropping.
    wait_until(20, "the host paused", || {
        mark.delta("rlay_host_backpressure_total", &[&pds]) >= 1.0
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Nothing of the newcomer's left unverified while its identity was unknown.
    assert_eq!(relay.head_seq(), 1);
    sim.world().plc().hold(false);
    wait_until(30, "every queued event", || {
        relay.head_seq() as usize > 1 + mine.len()
    });
    settle(&relay);
    let out = read_until_head(&relay, 0);
    let delivered: Vec<Key> = out
        .iter()
        .filter_map(LedgerEntry::key_of)
        .filter(|k| k.0 == newcomer)
        .collect();
    let expected: Vec<Key> = mine.iter().map(key).collect();
    assert!(
        delivered == expected,
        "every event of the newcomer, in order"
    );
    assert_eq!(
        out.iter()
            .filter(|e| e.did() == Some(known.as_str()))
            .count(),
        2,
        "the known account's commits, the second after the pause"
    );
    assert_eq!(
        mark.delta("rlay_events_dropped_total", &[&pds]),
        0.0,
        "nothing dropped"
    );
    relay.shutdown();
}

/// Validation threads are shared by every host, but a host whose events wait for an identity
/// pauses on its own thread: while one host is paused, another host's events still go out.
/// One validation thread, so both hosts' events pass through it.
#[test]
fn a_host_paused_for_identities_does_not_hold_up_another_host() {
    let (sim, _dir, relay) = crawled_network(2, 0, None, &[("verify-threads", "1")]);
    let other = sim.world().create_account(1, None).expect("account");
    sim.world()
        .post(&other, "warm the identity cache")
        .expect("post");
    wait_until(10, "the other host's first commit", || {
        relay.head_seq() >= 1
    });
    let paused = format!("pds=\"{}\"", sim.hostnames()[0]);
    let mark = Mark::now();

    sim.world().plc().hold(true);
    let newcomer = sim.world().create_account(0, None).expect("account");
    for i in 0..1_100 {
        sim.world()
            .post(&newcomer, &format!("queued {i}"))
            .expect("post");
    }
    wait_until(20, "the newcomer's host paused", || {
        mark.delta("rlay_host_backpressure_total", &[&paused]) >= 1.0
    });
    let commits_of = |did: &str| {
        read_until_head(&relay, 0)
            .iter()
            .filter(|e| matches!(e, Event::Commit(_)) && e.did() == Some(did))
            .count()
    };
    let before = commits_of(&other);
    for i in 0..20 {
        sim.world()
            .post(&other, &format!("while the newcomer's host is paused {i}"))
            .expect("post");
    }
    wait_until(10, "the other host's 20 commits", || {
        commits_of(&other) == before + 20
    });
    assert_eq!(
        commits_of(&newcomer),
        0,
        "nothing of the newcomer's went out unverified"
    );
    sim.world().plc().hold(false);
    // Its first commit (the account's creation) and the 1,100 posts.
    wait_until(30, "the newcomer's events", || {
        commits_of(&newcomer) == 1_101
    });
    relay.shutdown();
}
