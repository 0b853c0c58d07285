//! `cargo bench --bench index`: the collection index.
//!
//! Part 1: the inline path. 1,000,000 accepted commits (200,000 DIDs, a Bluesky-like mix of 12
//! collections) are handed to the index writer as the pipeline hands them; the clock stops when
//! the writer has written everything to RocksDB. Prints `index_ops_per_sec` (commits indexed per
//! second) and `index_submit_ns` (what one commit costs the pipeline thread).
//!
//! Part 2: reads. An index of 1,000,000 (collection, DID) pairs is built, a relay is started on
//! it, and 300 `listReposByCollection` pages of 1,000 DIDs are fetched over HTTP from random
//! cursors. Prints `list_repos_by_collection_ms` (mean, over HTTP) with its p99, and
//! `index_page_ms` (the RocksDB scan alone).

use base64::Engine;
use rlay::config::Config;
use rlay::index::db::CollectionDb;
use rlay::index::writer::IndexWriter;
use rlay::ingest::pipeline::Observer;
use rlay::proto::frame::RepoOp;
use rlay::relay::{Parts, Relay};
use rlay::sim::traffic::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COLLECTIONS: [&str; 12] = [
    "app.bsky.feed.like",
    "app.bsky.feed.post",
    "app.bsky.graph.follow",
    "app.bsky.feed.repost",
    "app.bsky.actor.profile",
    "app.bsky.graph.block",
    "app.bsky.feed.threadgate",
    "app.bsky.graph.listitem",
    "app.bsky.feed.postgate",
    "chat.bsky.actor.declaration",
    "app.bsky.graph.list",
    "app.bsky.feed.generator",
];

fn did(i: u64) -> String {
    format!("did:plc:{:024x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn inline_writes(dir: &std::path::Path) {
    const COMMITS: usize = 1_000_000;
    const DIDS: u64 = 200_000;
    let db = Arc::new(CollectionDb::open(&dir.join("inline")).expect("open"));
    let writer = IndexWriter::start(db).expect("writer");
    let mut rng = Rng::new(3);
    let commits: Vec<(String, Vec<RepoOp>)> = (0..COMMITS)
        .map(|i| {
            // Skewed like the network: most writes are likes and posts.
            let c = match rng.below(100) {
                0..45 => 0,
                45..70 => 1,
                70..82 => 2,
                82..92 => 3,
                n => 4 + (n as usize % 8),
            };
            let op = RepoOp {
                action: "create".into(),
                path: format!("{}/3k{i:011}", COLLECTIONS[c]),
                cid: None,
                prev: None,
            };
            (did(rng.below(DIDS)), vec![op])
        })
        .collect();
    let t = Instant::now();
    for (d, ops) in &commits {
        writer.commit(d, ops, &[]);
    }
    let submitted = t.elapsed();
    writer.stop();
    let total = t.elapsed();
    println!(
        "index_ops_per_sec: {:.0} commits/s",
        COMMITS as f64 / total.as_secs_f64()
    );
    println!(
        "index_submit_ns: {:.0} ns",
        submitted.as_nanos() as f64 / COMMITS as f64
    );
}

fn reads(dir: &std::path::Path) {
    const PER_COLLECTION: u64 = 1_000_000 / 10;
    let data = dir.join("relay");
    {
        let db = CollectionDb::open(&data.join("collections")).expect("open");
        let t = Instant::now();
        for c in &COLLECTIONS[..10] {
            let mut batch = Vec::with_capacity(10_000);
            for i in 0..PER_COLLECTION {
                batch.push(((*c).to_owned(), did(i)));
                if batch.len() == 10_000 {
                    db.add(&batch).expect("add");
                    batch.clear();
                }
            }
            db.add(&batch).expect("add");
        }
        println!(
            "index_build_pairs_per_sec: {:.0} pairs/s",
            (PER_COLLECTION * 10) as f64 / t.elapsed().as_secs_f64()
        );
        // One page straight from RocksDB (the relay below has the index open).
        let mut sorted: Vec<String> = (0..PER_COLLECTION).map(did).collect();
        sorted.sort();
        let mut rng = Rng::new(9);
        let mut scan_ms = Vec::new();
        for _ in 0..300 {
            let at = rng.below(PER_COLLECTION - 2000) as usize;
            let t = Instant::now();
            let n = db
                .page("app.bsky.feed.post", Some(&sorted[at]), 1000)
                .expect("page")
                .len();
            scan_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(n, 1000);
        }
        println!(
            "index_page_ms: {:.3} ms",
            scan_ms.iter().sum::<f64>() / scan_ms.len() as f64
        );
    }
    let argv = [
        "serve".to_owned(),
        format!("--data-dir={}", data.display()),
        "--api-listen=127.0.0.1:0".into(),
        "--metrics-listen=".into(),
        "--admin-password=bench".into(),
        "--bootstrap-host=".into(),
    ];
    let cfg = Config::from_args(argv).expect("config");
    let relay = Relay::start(&cfg, Parts::default()).expect("relay");
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let mut rng = Rng::new(9);
    let mut http_ms = Vec::new();
    let mut dids_all: Vec<String> = (0..PER_COLLECTION).map(did).collect();
    dids_all.sort();
    for _ in 0..300 {
        // A cursor somewhere before the last full page.
        let at = rng.below(PER_COLLECTION - 2000) as usize;
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&dids_all[at]);
        let url = format!(
            "http://{}/xrpc/com.atproto.sync.listReposByCollection?collection=app.bsky.feed.post&limit=1000&cursor={cursor}",
            relay.api_addr()
        );
        let t = Instant::now();
        let body = agent
            .get(&url)
            .call()
            .expect("page")
            .body_mut()
            .read_to_string()
            .expect("body");
        http_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["repos"].as_array().map(Vec::len), Some(1000), "full page");
    }
    http_ms.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("list_repos_by_collection_ms: {:.2} ms", mean(&http_ms));
    println!(
        "list_repos_by_collection_p99_ms: {:.2} ms",
        http_ms[http_ms.len() * 99 / 100]
    );
    relay.shutdown();
}

fn main() {
    let dir = tempfile::tempdir().expect("dir");
    inline_writes(dir.path());
    reads(dir.path());
}
