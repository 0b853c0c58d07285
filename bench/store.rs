//! `cargo bench --bench store`: batched account-state writes (the write-behind path), as upserts
//! into a table that already holds 100,000 accounts, in batches of 5,000 with host cursors.
//!
//! PostgreSQL runs with its default durability (fsync on), SQLite in WAL with synchronous=NORMAL
//! (what the relay uses). Prints `account_updates_per_sec_postgres: N` and
//! `account_updates_per_sec_sqlite: N`.

#[path = "../tests/it/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use rlay::store::{AccountRow, Batch, NewHost, PgStore, SqliteStore, Store};
use std::time::Instant;

const ACCOUNTS: i64 = 100_000;
const BATCH: i64 = 5_000;
const ROUNDS: i64 = 40;

fn row(uid: i64, host: i64, round: i64) -> AccountRow {
    AccountRow {
        uid,
        did: format!("did:plc:{uid:024}"),
        host_id: host,
        status: "active".into(),
        upstream_status: "active".into(),
        rev: Some(format!("3l{:011}", round * 1_000_000 + uid)),
        commit_cid: Some("bafyreihvay6pazw3dfa47u5d2tn3rd6pa57sr37bo5bqyvjuqc73ib65my".into()),
        data_cid: Some("bafyreicraprx2xwnico4tuqir3ozsxpz46qkcpox3obf5bagicqwurghpy".into()),
        created_at: 1,
        updated_at: 1,
    }
}

fn run(s: &dyn Store) -> f64 {
    s.migrate().expect("migrate");
    let host = s
        .insert_host(&NewHost {
            hostname: "pds.example.com".into(),
            account_limit: 100,
            trusted: false,
            no_tls: false,
        })
        .expect("host");
    for chunk in 0..ACCOUNTS / BATCH {
        let accounts = (0..BATCH)
            .map(|i| row(chunk * BATCH + i + 1, host.id(), 0))
            .collect();
        s.write_batch(&Batch {
            accounts,
            ..Batch::default()
        })
        .expect("seed");
    }
    let batches: Vec<Batch> = (0..ROUNDS)
        .map(|r| Batch {
            accounts: (0..BATCH)
                .map(|i| row((r * 7919 + i * 13) % ACCOUNTS + 1, host.id(), r + 1))
                .collect(),
            host_cursors: vec![(host.id(), r)],
            host_counts: vec![(host.id(), ACCOUNTS)],
            meta: vec![("flushed_seq".into(), r.to_string())],
        })
        .collect();
    let start = Instant::now();
    for b in &batches {
        s.write_batch(b).expect("batch");
    }
    (ROUNDS * BATCH) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    match pg::fresh_durable_database() {
        Some(url) => {
            let s = PgStore::connect(&url).expect("postgres");
            println!("account_updates_per_sec_postgres: {:.0}", run(&s));
        }
        None => println!("account_updates_per_sec_postgres: skipped (no PostgreSQL binaries)"),
    }
    let dir = tempfile::tempdir().expect("dir");
    let s = SqliteStore::open(&dir.path().join("bench.sqlite")).expect("sqlite");
    println!("account_updates_per_sec_sqlite: {:.0}", run(&s));
}
