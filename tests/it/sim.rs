//! The simulated network: everything it emits verifies with the protocol core, its getRepo CARs
//! rebuild to the commit's root, each fault produces exactly its defect, and 3,000 hosts idle
//! in one process.

use bytes::Bytes;
use rlay::identity::doc;
use rlay::proto::car::Car;
use rlay::proto::commit::SignedCommit;
use rlay::proto::crypto::PublicKey;
use rlay::proto::frame::{self, Event, FrameError};
use rlay::proto::mst::Tree;
use rlay::proto::verify::{Chain, Options, RepoState, VerifyError, verify_commit, verify_sync};
use rlay::sim::fault::FaultKind;
use rlay::sim::traffic::{Rng, random_action};
use rlay::sim::{Sim, SimConfig, Status};
use std::collections::HashMap;
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut r = agent.get(url).call().expect("http get");
    let status = r.status().as_u16();
    (
        status,
        r.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .expect("body"),
    )
}

fn resolve(sim: &Sim, did: &str) -> doc::Identity {
    let (status, body) = http_get(&format!("{}/{did}", sim.world().plc_url()));
    assert_eq!(status, 200, "PLC resolves {did}");
    doc::parse(did, &serde_json::from_slice(&body).expect("json")).expect("valid document")
}

fn subscribe(host: &str, cursor: Option<u64>) -> Ws {
    let url = match cursor {
        Some(c) => format!("ws://{host}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("ws://{host}/xrpc/com.atproto.sync.subscribeRepos"),
    };
    let mut cfg = tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(5 << 20);
    cfg.max_frame_size = Some(5 << 20);
    let (mut ws, _) =
        tungstenite::client::connect_with_config(url, Some(cfg), 3).expect("subscribe");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    ws
}

/// Raw frames until the stream goes quiet or fails; the error (if any) ends the list.
fn drain(ws: &mut Ws) -> (Vec<Bytes>, Option<tungstenite::Error>) {
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => out.push(b),
            Ok(Message::Close(_)) => return (out, None),
            Ok(_) => {}
            Err(e) if rlay::util::net::ws_timed_out(&e) => {
                return (out, Some(e));
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Verifies a stream of events the way a relay would, keeping per-account state.
struct Checker {
    keys: HashMap<String, PublicKey>,
    states: HashMap<String, RepoState>,
}

impl Checker {
    fn new() -> Self {
        Checker {
            keys: HashMap::new(),
            states: HashMap::new(),
        }
    }

    fn key(&mut self, sim: &Sim, did: &str) -> PublicKey {
        self.keys
            .entry(did.to_owned())
            .or_insert_with(|| resolve(sim, did).key.expect("key"))
            .clone()
    }

    fn check(&mut self, sim: &Sim, e: &Event) -> Result<(), VerifyError> {
        let opts = Options::strict_now();
        match e {
            Event::Commit(c) => {
                let key = self.key(sim, &c.repo);
                let acc = verify_commit(c, &key, self.states.get(&c.repo), &opts)?;
                if self.states.contains_key(&c.repo) {
                    assert_eq!(acc.chain, Chain::Continuous, "commits chain without gaps");
                }
                self.states.insert(c.repo.clone(), acc.state);
            }
            Event::Sync(s) => {
                let key = self.key(sim, &s.did);
                let acc = verify_sync(s, &key, self.states.get(&s.did), &opts)?;
                self.states.insert(s.did.clone(), acc.state);
            }
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn every_emitted_event_verifies_and_get_repo_rebuilds() {
    let mut sim = Sim::start(&SimConfig {
        hosts: 3,
        accounts_per_host: 4,
        ..SimConfig::default()
    })
    .expect("sim");
    let hosts = sim.hostnames();
    let mut subs: Vec<Ws> = hosts.iter().map(|h| subscribe(h, Some(0))).collect();
    // Keys as a relay watching live would have them: resolved before the rotation below.
    let mut checker = Checker::new();
    for did in sim.world().dids() {
        checker.key(&sim, &did);
    }
    let mut rng = Rng::new(42);
    for _ in 0..600 {
        for p in random_action(sim.world(), &mut rng) {
            sim.world().emit(p);
        }
    }
    // Explicit lifecycle operations on top of the random mix.
    let dids = sim.world().dids();
    sim.world()
        .set_handle(&dids[0], "renamed.h0.test")
        .expect("handle");
    sim.world().sync(&dids[1]).expect("sync");
    sim.world()
        .set_status(&dids[2], Status::Deactivated)
        .expect("deactivate");
    sim.world()
        .set_status(&dids[2], Status::Active)
        .expect("reactivate");
    sim.world().post(&dids[2], "back").expect("post");
    sim.world().rotate_key(&dids[3]).expect("rotate");
    sim.world()
        .post(&dids[3], "signed with the new key")
        .expect("post");
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    let mut total = 0;
    for ws in subs.iter_mut() {
        let (frames, _) = drain(ws);
        let mut last_seq = 0;
        for f in frames {
            let e = frame::decode(&f).expect("every frame decodes strictly");
            let seq = e.seq().expect("seq");
            assert!(seq > last_seq, "host seqs increase");
            last_seq = seq;
            *kinds.entry(e.type_name()).or_default() += 1;
            if let Event::Commit(c) = &e
                && c.repo == dids[3]
            {
                // The key rotated mid-stream; re-resolve once, as a relay would.
                if checker.check(&sim, &e).is_err() {
                    checker.keys.remove(&c.repo);
                } else {
                    total += 1;
                    continue;
                }
            }
            checker.check(&sim, &e).unwrap_or_else(|err| {
                panic!("{} from {}: {err}", e.type_name(), e.did().unwrap_or("?"))
            });
            total += 1;
        }
    }
    assert!(total > 600, "saw the whole stream ({total})");
    for k in ["#commit", "#identity", "#account", "#sync"] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "the mix includes {k}: {kinds:?}"
        );
    }
    assert_eq!(
        sim.world().ledger().len(),
        total,
        "the ledger lists exactly the valid events"
    );

    // getRepo: a full CAR whose tree rebuilds to the commit's data root; getLatestCommit agrees.
    for (i, did) in dids.iter().enumerate() {
        let host = &hosts[i / 4];
        let (status, car_bytes) = http_get(&format!(
            "http://{host}/xrpc/com.atproto.sync.getRepo?did={did}"
        ));
        assert_eq!(status, 200, "getRepo {did}");
        let car = Car::parse(&car_bytes).expect("CAR verifies");
        let sc =
            SignedCommit::decode(car.get(&car.roots[0]).expect("commit")).expect("commit decodes");
        assert!(
            sc.verify(&checker.key(&sim, did)).is_ok(),
            "head commit verifies"
        );
        let entries = Tree::load(&car, sc.commit.data)
            .entries()
            .expect("every node present");
        let empty: HashMap<rlay::proto::cid::Cid, Vec<u8>> = HashMap::new();
        let rebuilt = Tree::from_sorted(&empty, &entries)
            .expect("rebuild")
            .root_cid()
            .expect("root");
        assert_eq!(
            rebuilt, sc.commit.data,
            "rebuilding the tree reproduces data"
        );
        for (_, v) in &entries {
            assert!(car.get(v).is_some(), "record blocks included");
        }
        let (_, latest) = http_get(&format!(
            "http://{host}/xrpc/com.atproto.sync.getLatestCommit?did={did}"
        ));
        let latest: serde_json::Value = serde_json::from_slice(&latest).expect("json");
        assert_eq!(latest["cid"], car.roots[0].to_string());
        let (_, st) = http_get(&format!(
            "http://{host}/xrpc/com.atproto.sync.getRepoStatus?did={did}"
        ));
        let st: serde_json::Value = serde_json::from_slice(&st).expect("json");
        assert_eq!(st["active"], true);
    }
    let (status, _) = http_get(&format!(
        "http://{}/xrpc/com.atproto.sync.getRepo?did={}",
        hosts[1], dids[0]
    ));
    assert_eq!(status, 404, "a repo is only served by its own host");
    let (_, list) = http_get(&format!(
        "http://{}/xrpc/com.atproto.sync.listRepos?limit=3",
        hosts[0]
    ));
    let list: serde_json::Value = serde_json::from_slice(&list).expect("json");
    assert_eq!(list["repos"].as_array().map(Vec::len), Some(3));
    assert!(list["cursor"].is_string());
    let (_, ds) = http_get(&format!(
        "http://{}/xrpc/com.atproto.server.describeServer",
        hosts[0]
    ));
    assert!(String::from_utf8_lossy(&ds).contains("availableUserDomains"));
    let (status, _) = http_get(&format!(
        "{}/did:plc:doesnotexistaaaaaaaaaaaaa",
        sim.world().plc_url()
    ));
    assert_eq!(status, 404);
    sim.world()
        .set_status(&dids[5], Status::Deleted)
        .expect("delete");
    let (status, _) = http_get(&format!("{}/{}", sim.world().plc_url(), dids[5]));
    assert_eq!(status, 410, "deleted accounts are tombstoned");
    sim.stop_traffic();
}

/// Runs traffic on a 2-host network where host 0 has `kind` every 4 events, and returns the
/// frames host 0 sent plus how its connection ended.
fn faulty(kind: FaultKind) -> (Sim, Vec<Bytes>, Option<tungstenite::Error>) {
    let sim = Sim::start(&SimConfig {
        hosts: 2,
        accounts_per_host: 3,
        ..SimConfig::default()
    })
    .expect("sim");
    sim.world().hosts()[0].set_fault(Some((kind, 4)));
    let host = sim.hostnames()[0].clone();
    let mut ws = subscribe(&host, Some(0));
    let mut rng = Rng::new(7);
    let mut emitted_on_0 = 0;
    while emitted_on_0 < 60 {
        for p in random_action(sim.world(), &mut rng) {
            if let rlay::sim::Planned::Valid(0, _)
            | rlay::sim::Planned::Defect(0, _)
            | rlay::sim::Planned::RepeatLast(0) = &p
            {
                emitted_on_0 += 1;
            }
            sim.world().emit(p);
        }
    }
    let (frames, end) = drain(&mut ws);
    (sim, frames, end)
}

#[test]
fn event_faults_produce_exactly_their_defect() {
    let cases: [(FaultKind, &str); 6] = [
        (FaultKind::ForgedSignature, "signature"),
        (FaultKind::WrongKey, "signature"),
        (FaultKind::BadBlockHash, "block_hash"),
        (FaultKind::MissingBlocks, "missing_block"),
        (FaultKind::WrongPrevData, "inversion_mismatch"),
        (FaultKind::RevBackwards, "stale_rev"),
    ];
    for (kind, rule) in cases {
        let (sim, frames, _) = faulty(kind);
        let mut checker = Checker::new();
        let mut defects = 0;
        for f in &frames {
            let e = frame::decode(f).expect("event faults keep frames well-formed");
            if let Err(err) = checker.check(&sim, &e) {
                assert_eq!(
                    err.rule(),
                    rule,
                    "{}: only the intended defect ({err})",
                    kind.name()
                );
                defects += 1;
            }
        }
        assert!(
            defects >= 3,
            "{}: defects were injected ({defects})",
            kind.name()
        );
    }
}

#[test]
fn repeated_seq_and_impersonation() {
    let (sim, frames, _) = faulty(FaultKind::RepeatedSeq);
    let mut checker = Checker::new();
    let (mut last, mut repeats) = (0, 0);
    for f in &frames {
        let e = frame::decode(f).expect("decodes");
        let seq = e.seq().expect("seq");
        if seq <= last {
            repeats += 1;
            continue;
        }
        last = seq;
        checker.check(&sim, &e).expect("everything else verifies");
    }
    assert!(repeats >= 3, "repeated seqs were injected");

    let (sim, frames, _) = faulty(FaultKind::Impersonation);
    let here = sim.hostnames()[0].clone();
    let mut foreign = 0;
    let mut checker = Checker::new();
    for f in &frames {
        let e = frame::decode(f).expect("decodes");
        let did = e.did().expect("did").to_owned();
        if resolve(&sim, &did).pds_host().as_deref() != Some(here.as_str()) {
            assert!(
                matches!(e, Event::Commit(_)),
                "only commits are impersonated"
            );
            // Properly signed by the real account: the only defect is the host.
            let mut fresh = Checker::new();
            let Event::Commit(c) = &e else { unreachable!() };
            let key = fresh.key(&sim, &c.repo);
            assert!(verify_commit(c, &key, None, &Options::strict_now()).is_ok());
            foreign += 1;
        } else {
            checker.check(&sim, &e).expect("own accounts verify");
        }
    }
    assert!(foreign >= 3, "impersonated commits were injected");
}

#[test]
fn connection_faults_break_the_connection_as_specified() {
    // Garbage and non-canonical frames are fatal decode errors; an oversize frame is > 5 MB.
    let (_sim, frames, _) = faulty(FaultKind::Garbage);
    let bad: Vec<FrameError> = frames
        .iter()
        .filter_map(|f| frame::decode(f).err())
        .collect();
    assert_eq!(bad.len(), 1, "one garbage frame per connection");
    assert!(bad[0].is_fatal());

    let (_sim, frames, _) = faulty(FaultKind::NonCanonical);
    let bad: Vec<FrameError> = frames
        .iter()
        .filter_map(|f| frame::decode(f).err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert!(
        matches!(
            bad[0],
            FrameError::Cbor(rlay::proto::cbor::CborError::NonMinimal)
        ),
        "{:?}",
        bad[0]
    );

    let (_sim, _frames, end) = faulty(FaultKind::OversizeFrame);
    assert!(
        matches!(end, Some(tungstenite::Error::Capacity(_))),
        "client refuses the > 5 MB frame: {end:?}"
    );

    // A stall leaves half a frame and silence: the reader times out mid-frame.
    let (_sim, frames, end) = faulty(FaultKind::Stall);
    assert_eq!(frames.len(), 3, "three good frames, then the stall");
    assert!(
        matches!(end, Some(tungstenite::Error::Io(_))),
        "read times out: {end:?}"
    );

    // A disconnect drops the connection without a close frame.
    let (_sim, frames, end) = faulty(FaultKind::Disconnect);
    assert_eq!(frames.len(), 3);
    assert!(
        matches!(
            end,
            Some(tungstenite::Error::Protocol(_))
                | Some(tungstenite::Error::Io(_))
                | Some(tungstenite::Error::ConnectionClosed)
        ),
        "{end:?}"
    );
}

#[test]
fn restart_resets_seq_and_answers_future_cursor() {
    let sim = Sim::start(&SimConfig {
        hosts: 1,
        accounts_per_host: 2,
        ..SimConfig::default()
    })
    .expect("sim");
    let host = sim.hostnames()[0].clone();
    let did = sim.world().dids()[0].clone();
    for i in 0..5 {
        sim.world().post(&did, &format!("p{i}")).expect("post");
    }
    let before = sim.world().hosts()[0].last_seq();
    assert!(before >= 5);
    let mut ws = subscribe(&host, None);
    sim.world().emit(rlay::sim::Planned::Restart(0));
    let (_, end) = drain(&mut ws);
    let timed_out = end.as_ref().is_some_and(rlay::util::net::ws_timed_out);
    assert!(
        !timed_out,
        "the restart closed the subscriber's connection (got {end:?})"
    );
    assert_eq!(sim.world().hosts()[0].last_seq(), 0);
    let mut ws = subscribe(&host, Some(before));
    let (frames, _) = drain(&mut ws);
    match frames.first().map(frame::decode) {
        Some(Ok(Event::Error(e))) => assert_eq!(e.error, "FutureCursor"),
        other => panic!(
            "expected FutureCursor after a reset, got {:?}",
            other.map(|r| r.map(|e| e.type_name()))
        ),
    }
    sim.world().post(&did, "after restart").expect("post");
    assert_eq!(
        sim.world().hosts()[0].last_seq(),
        1,
        "seq starts again at 1"
    );
}

#[test]
fn migration_moves_the_account_and_rotates_its_key() {
    let sim = Sim::start(&SimConfig {
        hosts: 2,
        accounts_per_host: 1,
        ..SimConfig::default()
    })
    .expect("sim");
    let hosts = sim.hostnames();
    let did = sim.world().dids()[0].clone();
    let before = resolve(&sim, &did);
    let mut new_host = subscribe(&hosts[1], None);
    sim.world().migrate(&did, 1).expect("migrate");
    sim.world().post(&did, "from the new host").expect("post");
    let after = resolve(&sim, &did);
    assert_eq!(after.pds_host().as_deref(), Some(hosts[1].as_str()));
    assert_ne!(after.key, before.key, "the key rotated");
    let (frames, _) = drain(&mut new_host);
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| frame::decode(f).expect("decodes").type_name())
        .collect();
    assert_eq!(kinds, vec!["#identity", "#account", "#sync", "#commit"]);
    let key = after.key.expect("key");
    let Ok(Event::Sync(s)) = frame::decode(&frames[2]) else {
        panic!("sync")
    };
    assert!(
        verify_sync(&s, &key, None, &Options::strict_now()).is_ok(),
        "#sync signed with the new key"
    );
}

#[test]
fn three_thousand_hosts_idle_at_no_cpu() {
    let sim = Sim::start(&SimConfig {
        hosts: 3000,
        accounts_per_host: 1,
        initial_records: 0,
        ..SimConfig::default()
    })
    .expect("3,000 hosts start");
    assert_eq!(sim.hostnames().len(), 3000);
    std::thread::sleep(Duration::from_millis(500));
    // The hosts' own (accept) threads: other tests share this process and its CPU.
    let c0 = crate::procstat::threads_cpu_seconds(None, "sim-host-");
    std::thread::sleep(Duration::from_secs(3));
    let used = crate::procstat::threads_cpu_seconds(None, "sim-host-") - c0;
    assert!(used < 0.15, "idle hosts burned {used:.2}s of CPU in 3s");
    for i in [0, 1499, 2999] {
        let (status, body) = http_get(&format!(
            "http://{}/xrpc/com.atproto.server.describeServer",
            sim.hostnames()[i]
        ));
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("availableUserDomains"));
    }
}

#[test]
fn plc_directory_registers_operations_posted_by_a_real_pds() {
    let sim = Sim::start(&SimConfig::default()).expect("sim");
    let key =
        rlay::proto::crypto::PrivateKey::from_seed(rlay::proto::crypto::Curve::K256, b"posted")
            .public();
    let did = "did:plc:postedpostedpostedposted";
    let op = serde_json::json!({
        "type": "plc_operation",
        "rotationKeys": [key.to_did_key()],
        "verificationMethods": {"atproto": key.to_did_key()},
        "alsoKnownAs": ["at://posted.test"],
        "services": {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "http://localhost:2583"}},
        "prev": null,
        "sig": "unchecked",
    });
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let r = agent
        .post(&format!("{}/{did}", sim.world().plc_url()))
        .send_json(&op)
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let ident = resolve(&sim, did);
    assert_eq!(ident.key, Some(key));
    assert_eq!(ident.pds.as_deref(), Some("http://localhost:2583"));
    assert_eq!(ident.handle.as_deref(), Some("posted.test"));
    let (status, body) = http_get(&format!("{}/{did}/log/last", sim.world().plc_url()));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
        op
    );
    let r = agent
        .post(&format!("{}/{did}", sim.world().plc_url()))
        .send_json(serde_json::json!({"type": "plc_tombstone", "prev": "x", "sig": "y"}))
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(http_get(&format!("{}/{did}", sim.world().plc_url())).0, 410);
    let r = agent
        .post(&format!("{}/{did}", sim.world().plc_url()))
        .send_json(serde_json::json!({"type": "plc_operation"}))
        .expect("post");
    assert_eq!(
        r.status().as_u16(),
        400,
        "an operation without keys is refused"
    );
}
