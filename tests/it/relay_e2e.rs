//! The relay end to end: the simulated network → the relay → firehose consumers.

use crate::common;

use common::metrics::Mark;
use common::relay::{
    config, crawl_all, crawled_network, read_until_head, settle, start, wait_until,
};
use rlay::proto::frame::Event;
use rlay::relay::Relay;
use rlay::sim::fault::FaultKind;
use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{LedgerEntry, Sim, SimConfig, Status};
use rlay::store::HostStatus;
use std::collections::HashMap;

pub(crate) type Key = (String, &'static str, String);

pub(crate) fn key(e: &LedgerEntry) -> Key {
    (e.did.clone(), e.kind, e.key.clone())
}

/// Checks that the relay's stream holds each expected event exactly once, nothing else, with
/// increasing seqs and each account's events in the order its PDS emitted them.
pub(crate) fn assert_delivered_exactly(out: &[Event], expected: &[LedgerEntry]) {
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut last_seq = 0;
    let mut per_did_out: HashMap<String, Vec<Key>> = HashMap::new();
    for e in out {
        let seq = e.seq().expect("seq");
        assert!(
            seq > last_seq,
            "relay seqs increase ({last_seq} then {seq})"
        );
        last_seq = seq;
        let (did, kind, k) = LedgerEntry::key_of(e).expect("persisted event");
        *seen.entry((did.clone(), kind, k.clone())).or_default() += 1;
        per_did_out
            .entry(did.clone())
            .or_default()
            .push((did, kind, k));
    }
    let mut per_did_exp: HashMap<String, Vec<Key>> = HashMap::new();
    for x in expected {
        let n = seen.get(&key(x)).copied().unwrap_or(0);
        assert_eq!(n, 1, "{} {} {} delivered {n} times", x.kind, x.did, x.key);
        per_did_exp.entry(x.did.clone()).or_default().push(key(x));
    }
    assert_eq!(out.len(), expected.len(), "no event beyond the valid ones");
    for (did, exp) in per_did_exp {
        assert_eq!(
            per_did_out.get(&did),
            Some(&exp),
            "per-account order for {did}"
        );
    }
}

pub(crate) fn run_traffic(sim: &Sim, actions: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..actions {
        for p in random_action(sim.world(), &mut rng) {
            sim.world().emit(p);
        }
    }
}

/// A host that sends faster than the relay verifies is read only a little ahead of
/// verification (the rest waits in TCP, where its PDS feels it), and loses nothing for it.
#[test]
fn a_host_faster_than_verification_waits_and_loses_nothing() {
    let (sim, _dir, relay) = crawled_network(1, 3, None, &[]);
    let pds = format!("pds=\"{}\"", sim.hostnames()[0]);
    let before = sim.world().ledger().len();
    // Signed ahead, then sent at once: far faster than 2 cores verify them.
    let mut rng = Rng::new(11);
    let mut planned = Vec::new();
    while planned.len() < 3000 {
        planned.extend(random_action(sim.world(), &mut rng));
    }
    let mark = Mark::now();
    for p in planned {
        sim.world().emit(p);
    }
    let expected: Vec<LedgerEntry> = sim.world().ledger()[before..].to_vec();
    wait_until(120, "every valid event sequenced", || {
        relay.head_seq() as usize >= expected.len()
    });
    settle(&relay);
    assert!(
        mark.delta("rlay_host_read_ahead_waits_total", &[&pds]) >= 1.0,
        "the host thread stopped reading, 256 events ahead of verification"
    );
    let out = read_until_head(&relay, 0);
    assert_delivered_exactly(&out, &expected);
    relay.shutdown();
}

fn exactly_once(db: Option<String>) {
    exactly_once_with(db, 3, &[], |_| {});
}

/// `finally` runs on the settled relay before it shuts down.
fn exactly_once_with(
    db: Option<String>,
    accounts_per_host: usize,
    extra: &[(&str, &str)],
    finally: impl FnOnce(&Relay),
) {
    let (sim, _dir, relay) = crawled_network(20, accounts_per_host, db.as_deref(), extra);
    let before = sim.world().ledger().len();
    run_traffic(&sim, 1500, 1);
    let expected: Vec<LedgerEntry> = sim.world().ledger()[before..].to_vec();
    wait_until(60, "every valid event sequenced", || {
        relay.head_seq() as usize >= expected.len()
    });
    settle(&relay);
    let out = read_until_head(&relay, 0);
    assert_delivered_exactly(&out, &expected);
    for kind in ["#commit", "#identity", "#account", "#sync"] {
        assert!(
            out.iter().any(|e| e.type_name() == kind),
            "the stream carried {kind}"
        );
    }
    finally(&relay);
    relay.shutdown();
}

/// With room for one account per shard, accounts are evicted and reloaded from the store all
/// the time; the stream must be exactly what it is with everything in memory.
#[test]
fn a_tiny_account_cache_loses_nothing() {
    // 200 accounts over 64 shards; once everything is flushed, a shard keeps one. The
    // write-behind runs every second, so the last events' accounts go at its next round.
    exactly_once_with(None, 10, &[("account-cache-size", "1")], |relay| {
        wait_until(10, "at most one account in memory per shard", || {
            relay.accounts_in_memory() <= 64
        });
    });
}

#[test]
fn every_valid_event_exactly_once_in_order_sqlite() {
    exactly_once(None);
}

#[test]
fn every_valid_event_exactly_once_in_order_postgres() {
    if let Some(url) = common::pg::fresh_database() {
        exactly_once(Some(url));
    }
}

#[test]
fn faults_are_dropped_and_counted_and_nothing_else_is_lost() {
    // Every fault but a PDS restart, which the next test covers.
    let kinds: Vec<FaultKind> = rlay::sim::fault::ALL
        .into_iter()
        .filter(|k| *k != FaultKind::Restart)
        .collect();
    let sim = Sim::start(&SimConfig {
        hosts: kinds.len() + 3,
        accounts_per_host: 3,
        ..SimConfig::default()
    })
    .expect("sim");
    for (i, k) in kinds.iter().enumerate() {
        sim.world().hosts()[i].set_fault(Some((*k, if k.is_connection_level() { 40 } else { 6 })));
    }
    let dir = tempfile::tempdir().expect("dir");
    let relay = start(&config(dir.path(), sim.world().plc_url(), None, &[]));
    let mark = Mark::now();
    crawl_all(&relay, &sim.hostnames());
    let before = sim.world().ledger().len();
    run_traffic(&sim, 1800, 2);
    let expected: Vec<LedgerEntry> = sim.world().ledger()[before..].to_vec();
    // Stalled connections recover after the 3s stall timeout; wait for every valid event.
    wait_until(90, "every valid event sequenced", || {
        relay.head_seq() as usize >= expected.len()
    });
    settle(&relay);
    let out = read_until_head(&relay, 0);
    assert_delivered_exactly(&out, &expected);
    for (rule, label) in [
        ("rlay_validation_failures_total", "rule=\"signature\""),
        ("rlay_validation_failures_total", "rule=\"block_hash\""),
        ("rlay_validation_failures_total", "rule=\"missing_block\""),
        (
            "rlay_validation_failures_total",
            "rule=\"inversion_mismatch\"",
        ),
        ("rlay_events_ignored_total", "reason=\"stale_rev\""),
        ("rlay_events_dropped_total", "reason=\"seq_not_increasing\""),
        ("rlay_events_dropped_total", "reason=\"wrong_host\""),
        ("rlay_bad_frames_total", "reason=\"invalid_cbor\""),
        ("rlay_bad_frames_total", "reason=\"too_large\""),
        ("rlay_upstream_reconnects_total", ""),
    ] {
        assert!(
            mark.delta(rule, &[label]) > 0.0,
            "{rule}{{{label}}} was counted"
        );
    }
    // Refusals are attributed to the host that sent them, and only to it.
    let host_of = |kind: FaultKind| {
        let i = kinds.iter().position(|k| *k == kind).expect("kind");
        format!("pds=\"{}\"", sim.hostnames()[i])
    };
    let impostor = host_of(FaultKind::Impersonation);
    let forger = host_of(FaultKind::ForgedSignature);
    let healthy = format!("pds=\"{}\"", sim.hostnames()[kinds.len()]);
    let dropped = |pds: &str, reason: &str| {
        mark.delta(
            "rlay_events_dropped_total",
            &[pds, &format!("reason=\"{reason}\"")],
        )
    };
    assert!(
        dropped(&impostor, "wrong_host") > 0.0,
        "wrong_host counted for the impostor"
    );
    assert!(
        dropped(&forger, "invalid") > 0.0,
        "invalid counted for the forger"
    );
    assert_eq!(
        mark.delta("rlay_events_dropped_total", &[&healthy]),
        0.0,
        "nothing dropped from a healthy host"
    );
    assert!(mark.delta("rlay_events_accepted_total", &[&healthy]) > 0.0);
    relay.shutdown();
}

#[test]
fn restarted_pds_goes_idle_then_comes_back() {
    let (sim, _dir, relay) = crawled_network(1, 2, None, &[]);
    let did = sim.world().dids()[0].clone();
    for i in 0..5 {
        sim.world()
            .post(&did, &format!("before {i}"))
            .expect("post");
    }
    let host = relay.host(&sim.hostnames()[0]).expect("host");
    wait_until(10, "events read", || host.safe_cursor() >= 5);
    // The PDS loses its sequence; the relay's cursor is now in its future.
    sim.world().emit(rlay::sim::Planned::Restart(0));
    wait_until(10, "host marked idle", || host.status() == HostStatus::Idle);
    wait_until(15, "host re-probed and active", || {
        host.status() == HostStatus::Active && host.connected()
    });
    let before = relay.head_seq();
    sim.world().post(&did, "after the restart").expect("post");
    wait_until(10, "new events flow again", || relay.head_seq() > before);
    relay.shutdown();
}

#[test]
fn a_new_accounts_first_commit_is_verified_before_it_is_emitted() {
    let (sim, _dir, relay) = crawled_network(1, 1, None, &[]);
    // A genuine new account: identity, account, first commit, all emitted after verification.
    let did = sim.world().create_account(0, None).expect("account");
    wait_until(10, "new account's events", || relay.head_seq() >= 3);
    settle(&relay);
    let out = read_until_head(&relay, 0);
    let kinds: Vec<&str> = out
        .iter()
        .filter(|e| e.did() == Some(did.as_str()))
        .map(|e| e.type_name())
        .collect();
    assert_eq!(kinds, vec!["#identity", "#account", "#commit"]);

    // A brand-new DID whose first commit is signed by a key its DID document does not list.
    let forged_did = rlay::sim::plc_did("forged-newcomer");
    let real =
        rlay::proto::crypto::PrivateKey::from_seed(rlay::proto::crypto::Curve::K256, b"real");
    let other =
        rlay::proto::crypto::PrivateKey::from_seed(rlay::proto::crypto::Curve::K256, b"other");
    sim.world().plc().set(
        &forged_did,
        rlay::sim::plc::did_document(
            &forged_did,
            "forged.h0.test",
            &real.public(),
            &sim.world().hosts()[0].url(),
        ),
    );
    let mut repo = rlay::sim::repo::Repo::new(&forged_did, other);
    let c = repo
        .commit(
            &[rlay::sim::repo::Write::Create {
                path: "app.bsky.feed.post/3l2222222222a".into(),
                record: rlay::sim::traffic::post("hi", "2025-01-01T00:00:00Z"),
            }],
            "2025-01-01T00:00:00Z",
        )
        .expect("commit");
    let head = relay.head_seq();
    sim.world()
        .emit(rlay::sim::Planned::Defect(0, Event::Commit(c)));
    sim.world().post(&did, "marker").expect("post");
    wait_until(10, "marker event", || relay.head_seq() > head);
    settle(&relay);
    let out = read_until_head(&relay, head);
    assert!(
        out.iter().all(|e| e.did() != Some(forged_did.as_str())),
        "the forged first commit was not emitted"
    );
    assert_eq!(out.len(), 1, "only the marker");
    relay.shutdown();
}

pub(crate) fn account_event(out: &[Event], did: &str) -> Vec<(bool, Option<String>)> {
    out.iter()
        .filter_map(|e| match e {
            Event::Account(a) if a.did == did => Some((a.active, a.status.clone())),
            _ => None,
        })
        .collect()
}

/// An admin call on one account, as an operator makes it.
fn admin_did(relay: &Relay, route: &str, did: &str) {
    let a = common::http::admin_post(
        &format!("http://{}", relay.api_addr()),
        route,
        Some(serde_json::json!({ "did": did })),
    );
    assert_eq!(a.status, 200, "{route} for {did}: {}", a.text);
}

fn takedown_round_trip(relay: &Relay, sim: &Sim) {
    let did = sim.world().dids()[0].clone();
    sim.world().post(&did, "visible").expect("post");
    wait_until(10, "first post", || relay.head_seq() >= 1);
    settle(relay);
    let mark = relay.head_seq();
    admin_did(relay, "/admin/repo/takeDown", &did);
    sim.world().post(&did, "hidden").expect("post");
    sim.world()
        .post(&sim.world().dids()[1], "someone else")
        .expect("post");
    wait_until(10, "events after takedown", || relay.head_seq() >= mark + 2);
    settle(relay);
    let out = read_until_head(relay, mark);
    assert_eq!(
        account_event(&out, &did),
        vec![(false, Some("takendown".into()))],
        "#account announces the takedown"
    );
    assert!(
        !out.iter()
            .any(|e| matches!(e, Event::Commit(c) if c.repo == did)),
        "no commits while taken down"
    );
    // Replay hides the account's earlier commits too.
    let replay = read_until_head(relay, 0);
    assert!(
        !replay
            .iter()
            .any(|e| matches!(e, Event::Commit(c) if c.repo == did)),
        "replay hides taken-down commits"
    );
    let mark = relay.head_seq();
    admin_did(relay, "/admin/repo/reverseTakedown", &did);
    sim.world().post(&did, "back").expect("post");
    wait_until(10, "events after reversal", || relay.head_seq() >= mark + 2);
    settle(relay);
    let out = read_until_head(relay, mark);
    assert_eq!(account_event(&out, &did), vec![(true, None)]);
    assert!(
        out.iter()
            .any(|e| matches!(e, Event::Commit(c) if c.repo == did)),
        "commits flow again"
    );
}

#[test]
fn takedown_deactivation_and_migration_follow_the_spec() {
    if std::env::var("RLAY_TEST_LOG").is_ok() {
        rlay::logging::init("debug");
    }
    let (sim, _dir, relay) = crawled_network(2, 2, None, &[]);
    takedown_round_trip(&relay, &sim);

    // Deactivation at the PDS: passed through; commits while deactivated are dropped.
    let did = sim.world().dids()[1].clone();
    let mark = relay.head_seq();
    sim.world()
        .set_status(&did, Status::Deactivated)
        .expect("deactivate");
    sim.world()
        .force_commit(&did)
        .expect("commit while deactivated");
    sim.world()
        .set_status(&did, Status::Active)
        .expect("reactivate");
    sim.world().post(&did, "back again").expect("post");
    wait_until(10, "reactivation", || relay.head_seq() >= mark + 3);
    settle(&relay);
    let out = read_until_head(&relay, mark);
    let kinds: Vec<&str> = out.iter().map(|e| e.type_name()).collect();
    assert_eq!(
        kinds,
        vec!["#account", "#account", "#commit"],
        "the commit sent while deactivated was dropped"
    );
    assert_eq!(
        account_event(&out, &did),
        vec![(false, Some("deactivated".into())), (true, None)]
    );

    // Migration: the new host's events are accepted (new key), the old host's are ignored.
    let did = sim.world().dids()[0].clone();
    let mark = relay.head_seq();
    sim.world().migrate(&did, 1).expect("migrate");
    sim.world().post(&did, "from the new host").expect("post");
    wait_until(10, "migration events", || relay.head_seq() >= mark + 4);
    settle(&relay);
    let out = read_until_head(&relay, mark);
    let kinds: Vec<&str> = out.iter().map(|e| e.type_name()).collect();
    assert_eq!(
        kinds,
        vec!["#identity", "#account", "#sync", "#commit"],
        "old host's deactivation ignored"
    );
    assert_eq!(relay.account_host(&did), Some(sim.hostnames()[1].clone()));
    relay.shutdown();
}

#[test]
fn takedown_round_trip_on_postgres() {
    let Some(url) = common::pg::fresh_database() else {
        return;
    };
    let (sim, _dir, relay) = crawled_network(1, 2, Some(&url), &[]);
    takedown_round_trip(&relay, &sim);
    relay.shutdown();
}
