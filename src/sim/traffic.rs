//! Traffic generation: a realistic mix of repo writes and identity/account/sync events, and the
//! event-level faults (each built against a repo snapshot that is restored afterwards).

use super::fault::FaultKind;
use super::{Planned, SimAccount, Status, World, lock};
use crate::proto::car::{Car, write_car};
use crate::proto::cbor::Value;
use crate::proto::cid::Cid;
use crate::proto::crypto::PrivateKey;
use crate::proto::frame::{AccountEvent, CommitEvent, Event, IdentityEvent};
use crate::sim::repo::Write;
use bytes::Bytes;

/// xorshift64*: deterministic, dependency-free, plenty for traffic shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

fn map(entries: Vec<(&str, Value)>) -> Vec<u8> {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
    .encode()
}

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

pub fn profile(handle: &str, n: u64) -> Vec<u8> {
    map(vec![
        ("$type", s("app.bsky.actor.profile")),
        ("displayName", s(&format!("{handle} #{n}"))),
        (
            "description",
            s("a simulated account on the rlay test network"),
        ),
    ])
}

pub fn post(text: &str, time: &str) -> Vec<u8> {
    map(vec![
        ("$type", s("app.bsky.feed.post")),
        ("text", s(text)),
        ("createdAt", s(time)),
        ("langs", Value::Array(vec![s("en")])),
    ])
}

fn subject_ref(did: &str, time: &str) -> Value {
    Value::Map(vec![
        ("cid".into(), s(&Cid::dag_cbor(time.as_bytes()).to_string())),
        (
            "uri".into(),
            s(&format!("at://{did}/app.bsky.feed.post/3l2222222222a")),
        ),
    ])
}

fn like(kind: &str, subject_did: &str, time: &str) -> Vec<u8> {
    map(vec![
        ("$type", s(kind)),
        ("subject", subject_ref(subject_did, time)),
        ("createdAt", s(time)),
    ])
}

fn follow(subject: &str, time: &str) -> Vec<u8> {
    map(vec![
        ("$type", s("app.bsky.graph.follow")),
        ("subject", s(subject)),
        ("createdAt", s(time)),
    ])
}

/// One action of one random account: usually a single event, sometimes more.
pub fn random_action(w: &World, rng: &mut Rng) -> Vec<Planned> {
    let n = w.account_count();
    if n == 0 {
        return Vec::new();
    }
    let Some(acct) = w.account(rng.below(n as u64) as usize) else {
        return Vec::new();
    };
    // Another account to like or follow, looked up before taking our own lock (it may be us).
    let other = w
        .account(rng.below(n as u64) as usize)
        .map(|o| lock(&o).did.clone());
    let mut a = lock(&acct);
    let h = a.host;
    let host = &w.hosts[h];
    let count = host
        .generated
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if let Some((kind, every)) = host.fault().filter(|(k, _)| !k.is_connection_level())
        && count.is_multiple_of(every.max(1))
    {
        drop(a);
        return defect(w, acct, kind, rng);
    }
    match a.status {
        Status::Deleted | Status::Takendown => return Vec::new(),
        Status::Deactivated => {
            // A deactivated account's next action is coming back, followed by an empty commit.
            a.status = Status::Active;
            let time = w.time_now();
            let mut out = vec![Planned::Valid(
                h,
                Event::Account(AccountEvent {
                    seq: 0,
                    did: a.did.clone(),
                    time,
                    active: true,
                    status: None,
                }),
            )];
            if let Ok(c) = a.repo.empty_commit(&w.time_now()) {
                out.push(Planned::Valid(h, Event::Commit(c)));
            }
            return out;
        }
        Status::Active => {}
    }
    let roll = rng.below(1000);
    let time = w.time_now();
    let did = a.did.clone();
    let other = other.unwrap_or_else(|| did.clone());
    let writes: Vec<Write> = match roll {
        0..380 => vec![create(
            &mut a,
            "app.bsky.feed.like",
            like("app.bsky.feed.like", &other, &time),
        )],
        380..580 => vec![create(
            &mut a,
            "app.bsky.feed.post",
            post(&format!("post at {time}"), &time),
        )],
        580..680 => vec![create(
            &mut a,
            "app.bsky.graph.follow",
            follow(&other, &time),
        )],
        680..780 => vec![create(
            &mut a,
            "app.bsky.feed.repost",
            like("app.bsky.feed.repost", &other, &time),
        )],
        780..860 if a.paths.len() > 2 => {
            // Delete a random record other than the profile.
            let i = 1 + rng.below(a.paths.len() as u64 - 1) as usize;
            let path = a.paths.swap_remove(i);
            vec![Write::Delete { path }]
        }
        860..910 => {
            let r = profile(&a.handle, rng.next_u64());
            if a.paths.iter().any(|p| p == "app.bsky.actor.profile/self") {
                vec![Write::Update {
                    path: "app.bsky.actor.profile/self".into(),
                    record: r,
                }]
            } else {
                a.paths.push("app.bsky.actor.profile/self".into());
                vec![Write::Create {
                    path: "app.bsky.actor.profile/self".into(),
                    record: r,
                }]
            }
        }
        910..950 => {
            let rkey = a.next_rkey();
            let p = format!("app.bsky.feed.post/{rkey}");
            let g = format!("app.bsky.feed.threadgate/{rkey}");
            a.paths.push(p.clone());
            a.paths.push(g.clone());
            vec![
                Write::Create {
                    path: p,
                    record: post("a thread", &time),
                },
                Write::Create {
                    path: g,
                    record: map(vec![
                        ("$type", s("app.bsky.feed.threadgate")),
                        ("createdAt", s(&time)),
                    ]),
                },
            ]
        }
        950..970 => {
            return vec![Planned::Valid(
                h,
                Event::Identity(IdentityEvent {
                    seq: 0,
                    did,
                    time,
                    handle: Some(a.handle.clone()),
                }),
            )];
        }
        970..985 => {
            a.status = Status::Deactivated;
            return vec![Planned::Valid(
                h,
                Event::Account(AccountEvent {
                    seq: 0,
                    did,
                    time,
                    active: false,
                    status: Some("deactivated".into()),
                }),
            )];
        }
        985..1000 => {
            a.repo.resign();
            return a
                .repo
                .sync_event(&time)
                .map(|e| Planned::Valid(h, Event::Sync(e)))
                .into_iter()
                .collect();
        }
        _ => vec![create(
            &mut a,
            "app.bsky.feed.like",
            like("app.bsky.feed.like", &other, &time),
        )],
    };
    match a.repo.commit(&writes, &time) {
        Ok(c) => {
            a.repo.gc();
            vec![Planned::Valid(h, Event::Commit(c))]
        }
        Err(e) => {
            log::warn!("sim: commit for {did} failed: {e}");
            Vec::new()
        }
    }
}

fn create(a: &mut SimAccount, collection: &str, record: Vec<u8>) -> Write {
    let path = format!("{collection}/{}", a.next_rkey());
    a.paths.push(path.clone());
    Write::Create { path, record }
}

/// Rebuilds a commit event's CAR after `edit` changes its blocks (root first).
fn edit_car(c: &mut CommitEvent, edit: impl FnOnce(&mut Vec<(Cid, Vec<u8>)>)) {
    let Ok(car) = Car::parse(&c.blocks) else {
        return;
    };
    let mut blocks: Vec<(Cid, Vec<u8>)> = car.iter().map(|(k, v)| (*k, v.to_vec())).collect();
    blocks.sort_by_key(|(k, _)| *k != c.commit);
    edit(&mut blocks);
    let root = blocks.first().map(|(k, _)| *k).unwrap_or(c.commit);
    c.commit = root;
    c.blocks = Bytes::from(write_car(
        &[root],
        blocks.iter().map(|(k, v)| (*k, v.as_slice())),
    ));
}

/// A defective event on the account's host (or, for impersonation, another account's commit
/// emitted on this account's host). Repo state is rolled back so only the defect differs.
fn defect(
    w: &World,
    acct: std::sync::Arc<std::sync::Mutex<SimAccount>>,
    kind: FaultKind,
    rng: &mut Rng,
) -> Vec<Planned> {
    let h = lock(&acct).host;
    match kind {
        FaultKind::RepeatedSeq => return vec![Planned::RepeatLast(h)],
        FaultKind::Restart => return vec![Planned::Restart(h)],
        _ => {}
    }
    // Impersonation: a real commit of an account that lives on another host.
    let target = if kind == FaultKind::Impersonation {
        let n = w.account_count() as u64;
        let mut found = None;
        for _ in 0..32 {
            if let Some(o) = w.account(rng.below(n) as usize)
                && lock(&o).host != h
            {
                found = Some(o);
                break;
            }
        }
        match found {
            Some(o) => o,
            None => return Vec::new(),
        }
    } else {
        acct
    };
    let mut a = lock(&target);
    if a.status != Status::Active {
        return Vec::new();
    }
    let snap = a.repo.snapshot();
    let time = w.time_now();
    let rkey = a.next_rkey();
    let writes = [Write::Create {
        path: format!("app.bsky.feed.like/{rkey}"),
        record: like("app.bsky.feed.like", &a.did, &time),
    }];
    let result = match kind {
        FaultKind::WrongKey => {
            let real = a.repo.key().clone();
            a.repo.set_key(PrivateKey::from_seed(
                real.public().curve(),
                b"not the account's key",
            ));
            let r = a.repo.commit(&writes, &time);
            a.repo.set_key(real);
            r
        }
        FaultKind::RevBackwards => {
            let older = a
                .repo
                .head()
                .and_then(|(_, r)| crate::proto::syntax::tid_to_u64(r))
                .map(|v| {
                    let micros = (v >> 10).saturating_sub(1_000);
                    crate::proto::syntax::tid_from_parts(micros, (v & 0x3ff) as u16)
                });
            a.repo.commit_with_rev(&writes, &time, older)
        }
        _ => a.repo.commit(&writes, &time),
    };
    a.repo.restore(snap);
    let Ok(mut c) = result else { return Vec::new() };
    match kind {
        FaultKind::ForgedSignature => edit_car(&mut c, |b| {
            if let Some(commit) = b.first_mut()
                && let Ok(mut v) = Value::decode(&commit.1)
            {
                v.set(
                    "sig",
                    Value::Bytes(Cid::dag_cbor(&commit.1).as_bytes()[4..].repeat(2)),
                );
                commit.1 = v.encode();
                commit.0 = Cid::dag_cbor(&commit.1);
            }
        }),
        FaultKind::BadBlockHash => {
            let rec = c.ops.first().and_then(|o| o.cid);
            edit_car(&mut c, |b| {
                if let Some(blk) = b.iter_mut().find(|(k, _)| Some(*k) == rec) {
                    blk.1.push(0);
                }
            })
        }
        FaultKind::MissingBlocks => {
            let root = Car::parse(&c.blocks).ok().and_then(|car| {
                car.get(&c.commit)
                    .and_then(|b| crate::proto::commit::SignedCommit::decode(b).ok())
                    .map(|sc| sc.commit.data)
            });
            edit_car(&mut c, |b| b.retain(|(k, _)| Some(*k) != root));
        }
        FaultKind::WrongPrevData => c.prev_data = Some(Cid::dag_cbor(time.as_bytes())),
        _ => {}
    }
    vec![Planned::Defect(h, Event::Commit(c))]
}
