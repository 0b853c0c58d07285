//! Runs indigo's relay scenarios (real captured frames) through the real validation path:
//! every file in `../shared/fixtures/indigo/scenarios/`, plus every `*.json` in the folder named
//! by `RLAY_EXTRA_SCENARIOS` when set.
//!
//! Format: `{lenient, accounts: [{identity, status}], messages: [{frame: {header, body}, drop,
//! invalid, update}]}`. Each message that is not `drop` must come out as exactly one event equal
//! to the input ignoring seq and time (fields compared as indigo's runner does); a `drop` message
//! must produce nothing.

use crate::common;

use bytes::Bytes;
use rlay::identity::doc::{Identity, endpoint_host};
use rlay::identity::{Resolution, Resolver, ResolverConfig, StaticFetch};
use rlay::ingest::accounts::Accounts;
use rlay::ingest::hosts::{HostHandle, Hosts};
use rlay::ingest::pipeline::{Pipeline, PipelineConfig};
use rlay::ingest::upstream::Session;
use rlay::proto::crypto::{Curve, PublicKey};
use rlay::proto::frame::{self, Event};
use rlay::store::{NewHost, SqliteStore, Store};
use rlay::stream::{Stream, StreamConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn identity(v: &Value) -> Identity {
    let did = v["did"].as_str().expect("identity.did").to_owned();
    let key = &v["keys"]["atproto"];
    let mb = key["publicKeyMultibase"].as_str().unwrap_or("");
    let key = match key["type"].as_str() {
        Some("Multikey") => PublicKey::from_multikey(mb).ok(),
        Some(t) => {
            Curve::from_legacy_type(t).and_then(|c| PublicKey::from_legacy_multibase(c, mb).ok())
        }
        None => None,
    };
    let handle = v["alsoKnownAs"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .find_map(|s| s.strip_prefix("at://"))
        })
        .or_else(|| v["handle"].as_str())
        .map(str::to_ascii_lowercase);
    Identity {
        did,
        handle,
        key,
        pds: v["services"]["atproto_pds"]["url"]
            .as_str()
            .map(str::to_owned),
    }
}

/// The fields indigo's runner compares, for one event.
fn comparable(e: &Event) -> Value {
    match e {
        Event::Commit(c) => serde_json::json!({
            "t": "#commit", "repo": c.repo, "commit": c.commit.to_string(), "blocks": c.blocks.to_vec(),
            "blobs": c.blobs.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
            "ops": c.ops.iter().map(|o| (o.action.clone(), o.path.clone(), o.cid.map(|x| x.to_string()), o.prev.map(|x| x.to_string()))).collect::<Vec<_>>(),
            "since": c.since, "prevData": c.prev_data.map(|p| p.to_string()), "rebase": c.rebase, "rev": c.rev, "tooBig": c.too_big,
        }),
        Event::Sync(s) => {
            serde_json::json!({"t": "#sync", "did": s.did, "blocks": s.blocks.to_vec(), "rev": s.rev})
        }
        Event::Identity(i) => {
            serde_json::json!({"t": "#identity", "did": i.did, "handle": i.handle})
        }
        Event::Account(a) => {
            serde_json::json!({"t": "#account", "did": a.did, "active": a.active, "status": a.status})
        }
        other => serde_json::json!({"t": other.type_name()}),
    }
}

struct Harness {
    pipeline: Arc<Pipeline>,
    stream: Stream,
    sessions: HashMap<String, Session>,
    /// DID → its PDS hostname.
    host_of: HashMap<String, String>,
    default_host: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(accounts: &[Identity], lenient: bool) -> Harness {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).expect("store"));
        store.migrate().expect("migrate");
        let stream =
            Stream::open(&dir.path().join("events"), StreamConfig::default()).expect("stream");
        let fetch = Arc::new(StaticFetch::default());
        let hosts = Arc::new(Hosts::default());
        let mut sessions = HashMap::new();
        let mut host_of = HashMap::new();
        for id in accounts {
            fetch.insert(&id.did, Resolution::Found(Arc::new(id.clone())));
            let hostname = id
                .pds
                .as_deref()
                .and_then(endpoint_host)
                .unwrap_or_else(|| "pds.invalid".into());
            host_of.insert(id.did.clone(), hostname.clone());
            if !sessions.contains_key(&hostname) {
                let row = store
                    .insert_host(&NewHost {
                        hostname: hostname.clone(),
                        account_limit: 1000,
                        trusted: true,
                        no_tls: false,
                    })
                    .expect("host");
                let h = Arc::new(HostHandle::from_row(&row));
                hosts.insert(h.clone());
                sessions.insert(hostname.clone(), Session::new(h));
            }
        }
        let default_host = host_of
            .values()
            .next()
            .cloned()
            .unwrap_or_else(|| "pds.invalid".into());
        let resolver = Resolver::start(fetch, ResolverConfig::with_threads(2)).expect("resolver");
        let pipeline = Pipeline::new(
            Accounts::new(store.clone(), 10_000).expect("accounts"),
            resolver,
            stream.sequencer().clone(),
            hosts,
            stream.hub().hidden().clone(),
            PipelineConfig::new(lenient, false),
            None,
        )
        .expect("pipeline");
        Harness {
            pipeline,
            stream,
            sessions,
            host_of,
            default_host,
            _dir: dir,
        }
    }

    /// Feeds a frame and returns what the relay emitted because of it.
    fn send(&mut self, bytes: Bytes, did: Option<&str>) -> Vec<Event> {
        let before = self.stream.head();
        let host = did
            .and_then(|d| self.host_of.get(d))
            .cloned()
            .unwrap_or_else(|| self.default_host.clone());
        let session = self.sessions.get_mut(&host).expect("session");
        let _ = session.handle(&self.pipeline, &bytes);
        // Wait until the pipeline is idle and the sequencer has published everything.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut quiet = 0;
        let mut last = self.stream.head();
        while quiet < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let _ = self.stream.sequencer().barrier(Duration::from_secs(5));
            let idle = self.pipeline.is_idle();
            let head = self.stream.head();
            if idle && head == last {
                quiet += 1;
            } else {
                quiet = 0;
                last = head;
            }
        }
        let mut out = Vec::new();
        for seq in before + 1..=self.stream.head() {
            if let rlay::stream::ring::Lookup::Ready(f) = self.stream.hub().ring().get(seq) {
                out.push(frame::decode(&f.bytes).expect("relay output decodes"));
            }
        }
        out
    }
}

fn run_scenario(path: &Path) {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let s: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let lenient = s["lenient"]
        .as_bool()
        .or_else(|| s["Lenient"].as_bool())
        .unwrap_or(false);
    let accounts: Vec<Identity> = s["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| identity(&a["identity"]))
        .collect();
    let mut h = Harness::new(&accounts, lenient);
    let messages = s["messages"].as_array().cloned().unwrap_or_default();
    assert!(!messages.is_empty(), "{name}: no messages");
    for (i, m) in messages.iter().enumerate() {
        let bytes = Bytes::from(common::frame_from_json(
            &m["frame"]["header"],
            &m["frame"]["body"],
        ));
        let input = frame::decode(&bytes)
            .unwrap_or_else(|e| panic!("{name} #{i}: the fixture frame does not decode: {e}"));
        let drop = m["drop"].as_bool().unwrap_or(false);
        let out = h.send(bytes, input.did());
        if drop {
            assert!(
                out.is_empty(),
                "{name} #{i} ({}): should be dropped, relay emitted {:?}",
                input.type_name(),
                out.iter().map(comparable).collect::<Vec<_>>()
            );
        } else {
            assert_eq!(
                out.len(),
                1,
                "{name} #{i} ({}): expected exactly one event, got {}",
                input.type_name(),
                out.len()
            );
            assert_eq!(
                comparable(&out[0]),
                comparable(&input),
                "{name} #{i}: output differs from input (ignoring seq and time)"
            );
        }
    }
    h.stream.shutdown();
}

fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

#[test]
fn indigo_scenarios() {
    let files = scenario_files(&common::shared("fixtures/indigo/scenarios"));
    assert_eq!(files.len(), 5, "the five shared scenario files");
    for f in files {
        run_scenario(&f);
    }
}

#[test]
fn extra_scenarios() {
    let Ok(dir) = std::env::var("RLAY_EXTRA_SCENARIOS") else {
        eprintln!("RLAY_EXTRA_SCENARIOS not set; no extra scenarios to run");
        return;
    };
    let files = scenario_files(Path::new(&dir));
    assert!(
        !files.is_empty(),
        "RLAY_EXTRA_SCENARIOS={dir} holds no .json files"
    );
    for f in files {
        run_scenario(&f);
    }
}
