//! The collection index from outside: what `listReposByCollection` and the admin collection
//! routes answer after simulated traffic, under concurrent writes, after a backfill from a second
//! rlay (killed and restarted mid-way), and what `rlay audit-collections` reports.

use crate::common;

use common::http;
use common::relay::{ADMIN_PW, free_port, live_network, settle, spawn_serve, wait_until};
use rlay::relay::Relay;
use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{Sim, Status};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::Duration;

fn get(base: &str, path: &str, admin: bool) -> (u16, Value) {
    let a = if admin {
        http::admin_get(base, path)
    } else {
        http::get(base, path, http::Auth::None)
    };
    (a.status, a.json)
}

fn admin_post(base: &str, path: &str, body: Option<Value>) -> u16 {
    http::admin_post(base, path, body).status
}

fn base(relay: &Relay) -> String {
    format!("http://{}", relay.api_addr())
}

/// Every DID the relay lists for `collection`, following cursors with pages of `limit`.
fn list_all(base: &str, collection: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10_000 {
        let (status, v) = get(
            base,
            &format!(
                "/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit={limit}{cursor}"
            ),
            false,
        );
        assert_eq!(status, 200, "listReposByCollection {collection}");
        let page = v["repos"].as_array().expect("repos");
        assert!(page.len() <= limit, "a page holds at most limit DIDs");
        out.extend(
            page.iter()
                .map(|r| r["did"].as_str().expect("did").to_owned()),
        );
        match v["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
    panic!("pagination of {collection} never ended");
}

/// collection → DIDs, from the simulator's repos: `active_only` for what listing must show,
/// otherwise every account not deleted (what the raw index holds).
fn expected(sim: &Sim, active_only: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in 0..sim.world().account_count() {
        let a = sim.world().account(i).expect("account");
        let a = a.lock().expect("lock");
        let keep = match a.status() {
            Status::Active => true,
            Status::Deleted => false,
            _ => !active_only,
        };
        if !keep {
            continue;
        }
        for path in a.repo().list_records().keys() {
            if let Some((c, _)) = path.split_once('/') {
                out.entry(c.to_owned())
                    .or_default()
                    .insert(a.did().to_owned());
            }
        }
    }
    out
}

fn counts(base: &str) -> BTreeMap<String, u64> {
    let (status, v) = get(base, "/admin/collections/list?fresh=true", true);
    assert_eq!(status, 200);
    v["collections"]
        .as_object()
        .expect("collections")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
        .collect()
}

#[test]
fn index_equals_the_simulated_repos_and_forgets_deleted_accounts() {
    let (sim, _dir, relay) = live_network(6, 5, &[]);
    let mut rng = Rng::new(7);
    for _ in 0..1500 {
        for p in random_action(sim.world(), &mut rng) {
            sim.world().emit(p);
        }
    }
    let dids = sim.world().dids();
    // Deleted at the PDS: its pairs leave the index.
    sim.world()
        .set_status(&dids[3], Status::Deleted)
        .expect("delete");
    // Taken down by the relay once it knows the account: still indexed, but not listed.
    settle(&relay);
    let taken = dids[5].clone();
    let status = admin_post(
        &base(&relay),
        "/admin/repo/takeDown",
        Some(serde_json::json!({ "did": taken })),
    );
    assert_eq!(status, 200);
    settle(&relay);

    let raw = expected(&sim, false);
    let want_counts: BTreeMap<String, u64> = raw
        .iter()
        .map(|(c, d)| (c.clone(), d.len() as u64))
        .collect();
    wait_until(20, "index counts equal the repos", || {
        counts(&base(&relay)) == want_counts
    });
    assert!(
        raw.values().all(|d| !d.contains(&dids[3])),
        "the deleted account is in no expected set"
    );

    let mut listed = expected(&sim, true);
    for d in listed.values_mut() {
        d.remove(&taken);
    }
    assert!(listed.len() >= 4, "traffic used several collections");
    for (collection, want) in &listed {
        let got = list_all(&base(&relay), collection, 7);
        let sorted: Vec<String> = got
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(got, sorted, "{collection}: listed in order, no duplicates");
        let got: BTreeSet<String> = got.into_iter().collect();
        assert_eq!(&got, want, "{collection}: listed DIDs");
    }
    relay.shutdown();
}

#[test]
fn list_repos_by_collection_checks_its_parameters() {
    let (sim, _dir, relay) = live_network(1, 3, &[]);
    let b = base(&relay);
    wait_until(20, "posts indexed", || {
        list_all(&b, "app.bsky.feed.post", 500).len() == 3
    });
    let path = "/xrpc/com.atproto.sync.listReposByCollection";
    for (q, status, error) in [
        ("", 400, "BadRequest"),
        ("?collection=not-an-nsid", 400, "BadRequest"),
        (
            "?collection=app.bsky.feed.post&limit=0",
            400,
            "InvalidRequest",
        ),
        (
            "?collection=app.bsky.feed.post&limit=2001",
            400,
            "InvalidRequest",
        ),
        (
            "?collection=app.bsky.feed.post&limit=x",
            400,
            "InvalidRequest",
        ),
        (
            "?collection=app.bsky.feed.post&cursor=%%%",
            400,
            "InvalidRequest",
        ),
    ] {
        let (s, v) = get(&b, &format!("{path}{q}"), false);
        assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{q}");
        assert!(v["message"].is_string(), "{q}: message");
    }
    let (s, v) = get(&b, &format!("{path}?collection=com.example.nothing"), false);
    assert_eq!(s, 200);
    assert_eq!(v, serde_json::json!({ "repos": [] }), "unknown collection");
    let (_, v) = get(
        &b,
        &format!("{path}?collection=app.bsky.feed.post&limit=2000"),
        false,
    );
    assert_eq!(v["repos"].as_array().map(Vec::len), Some(3));
    assert!(v.get("cursor").is_none(), "no cursor after the last page");
    let (_, v) = get(
        &b,
        &format!("{path}?collection=app.bsky.feed.post&limit=2"),
        false,
    );
    assert_eq!(v["repos"].as_array().map(Vec::len), Some(2));
    assert!(v["cursor"].is_string(), "a cursor when more follow");
    drop(sim);
    relay.shutdown();
}

#[test]
fn pagination_is_complete_and_stable_while_writes_go_on() {
    let (sim, _dir, relay) = live_network(3, 10, &[]);
    let b = base(&relay);
    let c = "app.bsky.feed.post";
    wait_until(20, "every account's posts indexed", || {
        list_all(&b, c, 500).len() == 30
    });
    let before = list_all(&b, c, 500);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let world = sim.world().clone();
        std::thread::spawn(move || {
            let mut made = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && made < 40 {
                let did = world.create_account(made % 3, None).expect("account");
                world.post(&did, "new here").expect("post");
                made += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let during = list_all(&b, c, 3);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    settle(&relay);
    let after = list_all(&b, c, 500);
    let sorted: Vec<String> = during
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(during, sorted, "pages come in DID order with no repeats");
    let during: BTreeSet<String> = during.into_iter().collect();
    let after: BTreeSet<String> = after.into_iter().collect();
    assert!(
        before.iter().all(|d| during.contains(d)),
        "every DID indexed before paging began is on some page"
    );
    assert!(during.is_subset(&after), "pages hold only indexed DIDs");
    relay.shutdown();
}

fn spawn_backfiller(
    data: &std::path::Path,
    port: u16,
    upstream: &str,
    file: &std::path::Path,
) -> Child {
    spawn_serve(
        data,
        port,
        &[
            format!("--backfill-host={upstream}"),
            format!("--backfill-collections-file={}", file.display()),
            "--backfill-page-size=3".into(),
            "--backfill-page-pause=150ms".into(),
        ],
    )
}

fn backfill_status(b: &str) -> Value {
    let (s, v) = get(b, "/admin/collections/backfill", true);
    assert_eq!(s, 200, "backfill status");
    v
}

#[test]
fn backfill_from_another_rlay_resumes_after_a_kill_and_the_audit_sees_differences() {
    let (sim, _dir, upstream) = live_network(3, 8, &[]);
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        for p in random_action(sim.world(), &mut rng) {
            sim.world().emit(p);
        }
    }
    settle(&upstream);
    let up = base(&upstream);
    let collections: Vec<String> = expected(&sim, true).into_keys().collect();
    wait_until(20, "upstream index complete", || {
        collections
            .iter()
            .all(|c| list_all(&up, c, 1000).len() == expected(&sim, true)[c].len())
    });
    let want: BTreeMap<String, BTreeSet<String>> = collections
        .iter()
        .map(|c| (c.clone(), list_all(&up, c, 1000).into_iter().collect()))
        .collect();
    let total: usize = want.values().map(BTreeSet::len).sum();

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("nsids.txt");
    std::fs::write(
        &file,
        format!("# collections\n{}\nnot an nsid\n", collections.join("\n")),
    )
    .expect("nsid file");
    let data = dir.path().join("data");
    let port = free_port();
    let b = format!("http://127.0.0.1:{port}");
    let mut child = spawn_backfiller(&data, port, &up, &file);
    assert_eq!(
        admin_post(&b, "/admin/collections/backfill", None),
        200,
        "backfill trigger"
    );
    wait_until(60, "a few pages imported", || {
        backfill_status(&b)["imported"].as_i64().unwrap_or(0) >= 9
    });
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let imported_before = {
        // Read the stored progress through a restarted relay, before it gets far.
        let mut c = spawn_backfiller(&data, port, &up, &file);
        let v = backfill_status(&b);
        let rows = v["collections"].as_array().expect("rows").clone();
        assert!(
            rows.iter()
                .any(|r| r["cursor"].is_string() && r["imported"].as_i64() > Some(0)),
            "progress survived the kill"
        );
        wait_until(120, "backfill finished", || {
            let v = backfill_status(&b);
            v["running"] == Value::Bool(false)
                && v["done"].as_u64() == Some(collections.len() as u64)
        });
        let v = backfill_status(&b);
        std::mem::swap(&mut child, &mut c);
        v["imported"].as_i64().expect("imported")
    };
    // Resumed, not restarted: at most the page in flight at the kill is imported twice.
    assert!(
        (imported_before as usize) < total + 2 * 3,
        "imported {imported_before} for {total} pairs: the backfill started over"
    );
    for (c, dids) in &want {
        let got: BTreeSet<String> = list_all(&b, c, 2).into_iter().collect();
        assert_eq!(&got, dids, "{c}: backfilled DIDs equal the upstream's");
    }

    let audit = |relay: &str, against: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rlay"))
            .args(["audit-collections", "--sample", "100"])
            .arg(format!("--against={against}"))
            .arg(format!("--relay={relay}"))
            .env("RELAY_ADMIN_PASSWORD", ADMIN_PW)
            .env("RELAY_LOG_LEVEL", "warn")
            .output()
            .expect("audit runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = audit(&b, &up);
    assert_eq!(code, Some(0), "no differences expected:\n{text}");
    assert!(text.contains("differences: 0"), "{text}");
    assert!(
        text.contains(&format!(
            "sampled {} of {}",
            collections.len(),
            collections.len()
        )),
        "{text}"
    );

    // Plant differences: the upstream takes an account down (only ours) and gains a new one
    // the backfilled relay never saw (only theirs).
    let dids = sim.world().dids();
    let gone = dids[1].clone();
    assert_eq!(
        admin_post(
            &up,
            "/admin/repo/takeDown",
            Some(serde_json::json!({ "did": gone }))
        ),
        200
    );
    let fresh = sim.world().create_account(0, None).expect("account");
    settle(&upstream);
    wait_until(20, "upstream lists the new account", || {
        list_all(&up, "app.bsky.feed.post", 1000).contains(&fresh)
    });
    let (code, text) = audit(&b, &up);
    assert_eq!(code, Some(1), "differences found:\n{text}");
    assert!(text.contains(&format!("only theirs: {fresh}")), "{text}");
    assert!(text.contains(&format!("only ours: {gone}")), "{text}");
    let gone_collections = want.values().filter(|d| d.contains(&gone)).count();
    let fresh_collections = expected(&sim, true)
        .values()
        .filter(|d| d.contains(&fresh))
        .count();
    assert!(
        text.contains(&format!(
            "differences: {}",
            gone_collections + fresh_collections
        )),
        "{text}"
    );
    child.kill().expect("kill");
    let _ = child.wait();
    upstream.shutdown();
}
