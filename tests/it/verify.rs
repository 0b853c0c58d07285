//! `verify_commit` / `verify_sync` on real signed commits: valid chains pass, and each defect is
//! rejected by the rule that names it.

use bytes::Bytes;
use rlay::proto::car::{Car, write_car};
use rlay::proto::cbor::Value;
use rlay::proto::cid::Cid;
use rlay::proto::crypto::{Curve, PrivateKey};
use rlay::proto::frame::CommitEvent;
use rlay::proto::verify::{Chain, Options, RepoState, VerifyError, verify_commit, verify_sync};
use rlay::sim::repo::{Repo, Write};

const TIME: &str = "2025-01-01T00:00:00.000Z";

fn record(text: &str) -> Vec<u8> {
    Value::Map(vec![
        ("$type".into(), Value::Str("app.bsky.feed.post".into())),
        ("text".into(), Value::Str(text.into())),
        ("createdAt".into(), Value::Str(TIME.into())),
    ])
    .encode()
}

fn post(i: u32) -> Write {
    Write::Create {
        path: format!("app.bsky.feed.post/3k{i:011}"),
        record: record(&format!("post {i}")),
    }
}

/// A repo with `n` posts, the state a relay would have stored, and the next commit.
fn setup(curve: Curve, n: u32) -> (Repo, RepoState, CommitEvent) {
    let mut repo = Repo::new(
        "did:plc:verifytestaaaaaaaaaaaaa",
        PrivateKey::from_seed(curve, b"v"),
    );
    let mut last = None;
    for i in 0..n {
        last = Some(repo.commit(&[post(i)], TIME).expect("commit"));
    }
    let last = last.expect("at least one commit");
    let state = RepoState {
        rev: last.rev.clone(),
        commit: last.commit,
        data: repo.data(),
    };
    let next = repo.commit(&[post(n)], TIME).expect("commit");
    (repo, state, next)
}

fn opts() -> Options {
    Options::strict_now()
}

fn rule(r: Result<rlay::proto::verify::Accepted, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(e) => e.rule(),
    }
}

/// Rebuilds the event's CAR with a change applied to its blocks.
fn edit_blocks(evt: &CommitEvent, f: impl FnOnce(&mut Vec<(Cid, Vec<u8>)>)) -> CommitEvent {
    let car = Car::parse(&evt.blocks).expect("car");
    let mut blocks: Vec<(Cid, Vec<u8>)> = car.iter().map(|(c, b)| (*c, b.to_vec())).collect();
    blocks.sort_by_key(|(c, _)| *c != evt.commit);
    f(&mut blocks);
    let mut e = evt.clone();
    e.blocks = Bytes::from(write_car(
        &car.roots,
        blocks.iter().map(|(c, b)| (*c, b.as_slice())),
    ));
    e
}

#[test]
fn valid_chains_verify_on_both_curves() {
    for curve in [Curve::K256, Curve::P256] {
        let mut repo = Repo::new(
            "did:plc:chainaaaaaaaaaaaaaaaaaaa",
            PrivateKey::from_seed(curve, b"c"),
        );
        let key = repo.key().public();
        let mut state: Option<RepoState> = None;
        let mut paths = Vec::new();
        for i in 0..60u32 {
            let writes = match i % 6 {
                5 if !paths.is_empty() => vec![Write::Delete {
                    path: paths.remove(0),
                }],
                4 if !paths.is_empty() => vec![Write::Update {
                    path: paths[0].clone(),
                    record: record(&format!("edit {i}")),
                }],
                3 => vec![post(1000 + i), post(2000 + i), post(3000 + i)],
                _ => vec![post(i)],
            };
            for w in &writes {
                if let Write::Create { path, .. } = w {
                    paths.push(path.clone());
                }
            }
            let evt = repo.commit(&writes, TIME).expect("commit");
            let acc = verify_commit(&evt, &key, state.as_ref(), &opts())
                .unwrap_or_else(|e| panic!("commit {i}: {e}"));
            assert_eq!(
                acc.chain,
                if state.is_none() {
                    Chain::First
                } else {
                    Chain::Continuous
                }
            );
            assert_eq!(acc.state.data, repo.data());
            state = Some(acc.state);
        }
        // An empty commit (e.g. after key rotation) verifies too.
        let evt = repo.empty_commit(TIME).expect("empty commit");
        assert!(verify_commit(&evt, &key, state.as_ref(), &opts()).is_ok());
    }
}

#[test]
fn genesis_commit_inverts_to_the_empty_tree() {
    let mut repo = Repo::new(
        "did:plc:genesisaaaaaaaaaaaaaaaaa",
        PrivateKey::from_seed(Curve::K256, b"g"),
    );
    let evt = repo.commit(&[post(1), post(2)], TIME).expect("commit");
    assert!(evt.since.is_none() && evt.prev_data.is_none());
    assert_eq!(
        rule(verify_commit(&evt, &repo.key().public(), None, &opts())),
        "accepted"
    );
}

#[test]
fn each_defect_is_rejected_by_its_rule() {
    let (repo, state, evt) = setup(Curve::K256, 40);
    let key = repo.key().public();
    let ok = |e: &CommitEvent| rule(verify_commit(e, &key, Some(&state), &opts()));
    assert_eq!(ok(&evt), "accepted");

    let wrong = PrivateKey::from_seed(Curve::K256, b"other").public();
    assert_eq!(
        rule(verify_commit(&evt, &wrong, Some(&state), &opts())),
        "signature"
    );

    // A record block whose bytes no longer match its CID.
    let bad_hash = edit_blocks(&evt, |b| {
        let last = b.len() - 1;
        b[last].1.push(0);
    });
    assert_eq!(ok(&bad_hash), "block_hash");

    // A proof node left out.
    let missing = edit_blocks(&evt, |b| {
        let pos = b
            .iter()
            .position(|(_, d)| rlay::proto::mst::node::decode_node(d).is_ok())
            .expect("a node");
        b.remove(pos);
    });
    assert_eq!(ok(&missing), "missing_block");

    // The record itself left out.
    let no_record = edit_blocks(&evt, |b| b.retain(|(c, _)| Some(*c) != evt.ops[0].cid));
    assert_eq!(ok(&no_record), "record_missing");

    let mut e = evt.clone();
    e.prev_data = Some(Cid::dag_cbor(b"not the previous root"));
    assert_eq!(ok(&e), "inversion_mismatch");

    let mut e = evt.clone();
    e.ops[0].cid = Some(Cid::dag_cbor(b"something else"));
    assert_eq!(ok(&e), "op_mismatch");

    let mut e = evt.clone();
    e.ops.push(e.ops[0].clone());
    assert_eq!(ok(&e), "duplicate_path");

    let mut e = evt.clone();
    e.ops[0].action = "upsert".into();
    assert_eq!(ok(&e), "bad_op");

    let mut e = evt.clone();
    e.ops[0].path = "not a path".into();
    assert_eq!(ok(&e), "bad_op");

    let mut e = evt.clone();
    e.commit = Cid::dag_cbor(b"x");
    assert_eq!(ok(&e), "commit_not_root");

    let mut e = evt.clone();
    e.repo = "did:plc:someoneelseaaaaaaaaaaaaa".into();
    assert_eq!(ok(&e), "did_mismatch");

    let mut e = evt.clone();
    e.too_big = true;
    assert_eq!(ok(&e), "too_big");
    assert_eq!(
        rule(verify_commit(
            &e,
            &key,
            Some(&state),
            &Options {
                lenient: true,
                ..opts()
            }
        )),
        "accepted"
    );

    let mut e = evt.clone();
    e.rebase = true;
    assert_eq!(ok(&e), "rebase");

    let mut e = evt.clone();
    e.time = "yesterday".into();
    assert_eq!(ok(&e), "bad_time");

    let mut e = evt.clone();
    e.prev_data = None;
    assert_eq!(ok(&e), "missing_prev_data");
    assert_eq!(
        rule(verify_commit(
            &e,
            &key,
            Some(&state),
            &Options {
                lenient: true,
                ..opts()
            }
        )),
        "accepted"
    );

    let mut e = evt.clone();
    e.ops = (0..201).map(|_| evt.ops[0].clone()).collect();
    assert_eq!(ok(&e), "too_many_ops");

    // Replays and duplicates are "stale", not invalid.
    let stale = rlay::proto::verify::RepoState {
        rev: evt.rev.clone(),
        ..state.clone()
    };
    assert_eq!(
        rule(verify_commit(&evt, &key, Some(&stale), &opts())),
        "stale_rev"
    );

    // A rev far in the future.
    let future = Options {
        now_us: 0,
        ..opts()
    };
    assert_eq!(
        rule(verify_commit(&evt, &key, Some(&state), &future)),
        "future_rev"
    );

    // A chain break is accepted but reported.
    let other = RepoState {
        rev: "2222222222222".into(),
        ..state.clone()
    };
    let acc = verify_commit(&evt, &key, Some(&other), &opts()).expect("accepted");
    assert_eq!(acc.chain, Chain::Broken);
}

#[test]
fn high_s_signature_is_rejected() {
    // Re-sign the commit, then flip s to n - s: still a valid ECDSA signature mathematically.
    use k256::elliptic_curve::ops::Reduce;
    let (repo, state, evt) = setup(Curve::K256, 3);
    let key = repo.key().public();
    let flipped = edit_blocks(&evt, |b| {
        let mut v = Value::decode(&b[0].1).expect("commit");
        let Some(Value::Bytes(sig)) = v.get("sig").cloned() else {
            panic!("sig")
        };
        let s =
            <k256::Scalar as Reduce<k256::U256>>::reduce(&k256::U256::from_be_slice(&sig[32..]));
        let high = -s;
        let mut new_sig = sig[..32].to_vec();
        new_sig.extend_from_slice(&high.to_bytes());
        v.set("sig", Value::Bytes(new_sig));
        b[0].1 = v.encode();
        b[0].0 = Cid::dag_cbor(&b[0].1);
    });
    // The commit CID changed, so point the event and the CAR root at the new block.
    let car = Car::parse(&flipped.blocks).expect("car");
    let new_commit = car
        .iter()
        .find(|(_, d)| {
            Value::decode(d)
                .ok()
                .and_then(|v| v.get("sig").cloned())
                .is_some()
        })
        .map(|(c, _)| *c)
        .expect("commit");
    let mut e = flipped.clone();
    let blocks: Vec<(Cid, Vec<u8>)> = car.iter().map(|(c, d)| (*c, d.to_vec())).collect();
    e.blocks = Bytes::from(write_car(
        &[new_commit],
        blocks.iter().map(|(c, d)| (*c, d.as_slice())),
    ));
    e.commit = new_commit;
    let err = verify_commit(&e, &key, Some(&state), &opts()).expect_err("high-S must fail");
    assert!(
        matches!(
            err,
            VerifyError::Signature(rlay::proto::crypto::SigError::HighS)
        ),
        "{err}"
    );
}

#[test]
fn sync_events_verify() {
    let (repo, state, _) = setup(Curve::P256, 5);
    let key = repo.key().public();
    let sync = repo.sync_event(TIME).expect("head");
    let acc = verify_sync(&sync, &key, None, &opts()).expect("sync verifies");
    assert_eq!(acc.state.data, repo.data());
    let wrong = PrivateKey::from_seed(Curve::P256, b"nope").public();
    assert_eq!(rule(verify_sync(&sync, &wrong, None, &opts())), "signature");
    let mut s = sync.clone();
    s.rev = "2222222222222".into();
    assert_eq!(rule(verify_sync(&s, &key, None, &opts())), "rev_mismatch");
    let stored_newer = RepoState {
        rev: "7777777777777".into(),
        ..state
    };
    assert_eq!(
        rule(verify_sync(&sync, &key, Some(&stored_newer), &opts())),
        "stale_rev"
    );
}
