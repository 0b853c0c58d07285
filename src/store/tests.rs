//! One conformance suite, run against both store backends: SQLite in a temp dir and PostgreSQL
//! in a throwaway cluster (`tests/it/common/pg.rs`, shared with the integration tests). It is a
//! unit test of the store layer, so it sees the row types' fields.

#[path = "../../tests/it/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use crate::store::{
    AccountRow, BackfillRow, Batch, HostAlertRow, HostStatus, NewHost, PgStore, SqliteStore, Store,
};
use std::sync::Arc;

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = SqliteStore::open(&dir.path().join("t.sqlite")).expect("open sqlite");
    (dir, Arc::new(s))
}

fn postgres() -> Option<Arc<dyn Store>> {
    let url = pg::fresh_database()?;
    Some(Arc::new(PgStore::connect(&url).expect("connect postgres")))
}

/// Generates `<name>::sqlite` and `<name>::postgres` tests from one function.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                let (_dir, s) = super::sqlite();
                super::$name(&*s);
            }
            #[test]
            fn postgres() {
                if let Some(s) = super::postgres() {
                    super::$name(&*s);
                }
            }
        }
    };
}

fn host(name: &str) -> NewHost {
    NewHost {
        hostname: name.into(),
        account_limit: 100,
        trusted: false,
        no_tls: true,
    }
}

fn account(uid: i64, host_id: i64) -> AccountRow {
    AccountRow {
        uid,
        did: format!("did:plc:acct{uid:020}"),
        host_id,
        status: "active".into(),
        upstream_status: "active".into(),
        rev: Some(format!("3k{uid:011}")),
        commit_cid: Some("bafyreicommit".into()),
        data_cid: Some("bafyreidata".into()),
        created_at: 1000 + uid,
        updated_at: 0,
    }
}

fn migrations(s: &dyn Store) {
    assert_eq!(
        s.migrate().expect("first migrate"),
        3,
        "applies every migration on an empty database"
    );
    assert_eq!(
        s.migrate().expect("re-run"),
        0,
        "re-running applies nothing"
    );
    s.ping().expect("ping");
}
both!(migrations);

fn hosts(s: &dyn Store) {
    s.migrate().expect("migrate");
    let a = s.insert_host(&host("a.example.com")).expect("insert");
    assert_eq!(a.status, HostStatus::Active);
    assert_eq!(a.last_seq, -1);
    assert!(a.no_tls && !a.trusted);
    let again = s.insert_host(&host("a.example.com")).expect("insert again");
    assert_eq!(
        again.id, a.id,
        "duplicate hostname returns the existing row"
    );
    for i in 0..24 {
        s.insert_host(&host(&format!("h{i:02}.example.com")))
            .expect("insert");
    }
    // Pagination: complete, ordered by id, no overlap.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.list_hosts(after, 10).expect("list");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().expect("row").id;
        seen.extend(page.into_iter().map(|h| h.id));
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    s.set_host_status(a.id, HostStatus::Banned).expect("status");
    s.set_host_account_limit(a.id, 5000).expect("limit");
    let a2 = s.host_by_id(a.id).expect("by id").expect("exists");
    assert_eq!((a2.status, a2.account_limit), (HostStatus::Banned, 5000));
    assert_eq!(
        s.host_by_name("a.example.com")
            .expect("by name")
            .map(|h| h.id),
        Some(a.id)
    );
    assert!(
        s.host_by_name("missing.example.com")
            .expect("query")
            .is_none()
    );
    assert!(s.host_by_id(999_999).expect("query").is_none());
}
both!(hosts);

fn accounts_and_batches(s: &dyn Store) {
    s.migrate().expect("migrate");
    let h = s.insert_host(&host("pds.example.com")).expect("host");
    let h2 = s.insert_host(&host("pds2.example.com")).expect("host");
    assert_eq!(s.max_account_uid().expect("max"), 0);
    let mut b = Batch::default();
    for uid in 1..=120 {
        let mut a = account(uid, if uid % 4 == 0 { h2.id } else { h.id });
        if uid % 10 == 0 {
            a.status = "takendown".into();
        }
        b.accounts.push(a);
    }
    b.host_cursors = vec![(h.id, 4242), (h2.id, 7)];
    b.meta = vec![("flushed_seq".into(), "99".into())];
    b.host_counts = vec![(h.id, 90), (h2.id, 30)];
    s.write_batch(&b).expect("batch");
    assert_eq!(s.max_account_uid().expect("max"), 120);
    assert_eq!(
        s.get_meta("flushed_seq").expect("meta").as_deref(),
        Some("99")
    );
    assert_eq!(s.get_meta("nothing").expect("meta"), None);
    let hr = s.host_by_id(h.id).expect("host").expect("exists");
    assert_eq!((hr.last_seq, hr.account_count), (4242, 90));
    assert_eq!(s.count_host_accounts(h2.id).expect("count"), 30);

    let got = s
        .account_by_did(&account(7, h.id).did)
        .expect("get")
        .expect("exists");
    assert_eq!(got.uid, 7);
    assert_eq!(got.rev.as_deref(), Some("3k00000000007"));
    assert!(s.account_by_did("did:plc:nobody").expect("get").is_none());

    // Upsert changes state but keeps created_at.
    let mut upd = account(7, h2.id);
    upd.rev = Some("3k99999999999".into());
    upd.upstream_status = "deactivated".into();
    upd.created_at = 1;
    s.write_batch(&Batch {
        accounts: vec![upd],
        ..Batch::default()
    })
    .expect("update");
    let got = s
        .account_by_did(&account(7, h.id).did)
        .expect("get")
        .expect("exists");
    assert_eq!(
        (
            got.host_id,
            got.upstream_status.as_str(),
            got.rev.as_deref()
        ),
        (h2.id, "deactivated", Some("3k99999999999"))
    );
    assert_eq!(got.created_at, 1007);
    assert!(got.updated_at > 0);

    // Pagination in uid order.
    let mut uids = Vec::new();
    let mut after = 0;
    loop {
        let page = s.list_accounts(after, 50).expect("list");
        let Some(last) = page.last() else { break };
        after = last.uid;
        uids.extend(page.iter().map(|a| a.uid));
    }
    assert_eq!(uids, (1..=120).collect::<Vec<_>>());

    let td = s
        .list_accounts_by_status("takendown", None, 0, 100)
        .expect("by status");
    assert_eq!(
        td.iter().map(|a| a.uid).collect::<Vec<_>>(),
        vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]
    );
    let td_h2 = s
        .list_accounts_by_status("takendown", Some(h2.id), 30, 2)
        .expect("by status on host");
    assert_eq!(
        td_h2.iter().map(|a| a.uid).collect::<Vec<_>>(),
        vec![40, 60]
    );
}
both!(accounts_and_batches);

fn interrupted_batch_leaves_nothing(s: &dyn Store) {
    s.migrate().expect("migrate");
    let h = s.insert_host(&host("pds.example.com")).expect("host");
    s.write_batch(&Batch {
        accounts: vec![account(1, h.id)],
        host_cursors: vec![(h.id, 10)],
        ..Batch::default()
    })
    .expect("first batch");
    // The third row reuses uid 1's DID under another uid: the unique constraint fails mid-batch.
    let mut dup = account(3, h.id);
    dup.did = account(1, h.id).did;
    let bad = Batch {
        accounts: vec![account(2, h.id), account(4, h.id), dup],
        host_cursors: vec![(h.id, 99)],
        host_counts: vec![(h.id, 3)],
        meta: vec![("k".into(), "v".into())],
    };
    assert!(s.write_batch(&bad).is_err(), "the batch must fail");
    assert!(
        s.account_by_did(&account(2, h.id).did)
            .expect("get")
            .is_none(),
        "no row of a failed batch is visible"
    );
    assert!(
        s.account_by_did(&account(4, h.id).did)
            .expect("get")
            .is_none()
    );
    let hr = s.host_by_id(h.id).expect("host").expect("exists");
    assert_eq!(
        (hr.last_seq, hr.account_count),
        (10, 0),
        "cursor and count untouched"
    );
    assert_eq!(s.get_meta("k").expect("meta"), None, "meta untouched");
    assert_eq!(s.max_account_uid().expect("max"), 1);
}
both!(interrupted_batch_leaves_nothing);

fn concurrent_writers(s: &dyn Store) {
    s.migrate().expect("migrate");
    let h = s.insert_host(&host("pds.example.com")).expect("host");
    std::thread::scope(|scope| {
        for t in 0..8i64 {
            scope.spawn(move || {
                for round in 0..10i64 {
                    let accounts = (0..25)
                        .map(|i| account(t * 10_000 + round * 100 + i + 1, h.id))
                        .collect();
                    s.write_batch(&Batch {
                        accounts,
                        host_cursors: vec![(h.id, t * 100 + round)],
                        ..Batch::default()
                    })
                    .expect("concurrent batch");
                }
            });
        }
    });
    let mut n = 0;
    let mut after = 0;
    loop {
        let page = s.list_accounts(after, 500).expect("list");
        let Some(last) = page.last() else { break };
        after = last.uid;
        n += page.len();
    }
    assert_eq!(n, 8 * 10 * 25, "every row of every writer is there");
}
both!(concurrent_writers);

fn domain_bans(s: &dyn Store) {
    s.migrate().expect("migrate");
    assert!(s.domain_bans().expect("list").is_empty());
    s.ban_domain("spam.example").expect("ban");
    s.ban_domain("bad.example").expect("ban");
    s.ban_domain("bad.example").expect("ban twice is fine");
    assert_eq!(
        s.domain_bans().expect("list"),
        vec!["bad.example".to_owned(), "spam.example".to_owned()]
    );
    assert!(s.unban_domain("bad.example").expect("unban"));
    assert!(!s.unban_domain("bad.example").expect("unban again"));
    assert_eq!(
        s.domain_bans().expect("list"),
        vec!["spam.example".to_owned()]
    );
}
both!(domain_bans);

fn host_alerts(s: &dyn Store) {
    s.migrate().expect("migrate");
    assert!(s.host_alerts().expect("list").is_empty());
    let mut a = HostAlertRow::new(7);
    a.limit_state = "warning".into();
    a.limit_sent_at = Some(1_700_000_000_000);
    s.set_host_alert(&a).expect("insert");
    let mut b = HostAlertRow::new(3);
    b.silenced = true;
    b.offline_sent_at = Some(5);
    s.set_host_alert(&b).expect("insert");
    assert_eq!(s.host_alerts().expect("list"), vec![b.clone(), a.clone()]);
    a.limit_state = "ok".into();
    a.limit_sent_at = None;
    s.set_host_alert(&a).expect("update");
    assert_eq!(s.host_alerts().expect("list"), vec![b, a]);
}
both!(host_alerts);

fn backfill_progress(s: &dyn Store) {
    s.migrate().expect("migrate");
    assert_eq!(s.backfill_totals().expect("totals").collections, 0);
    let row = |c: &str, imported, state: &str| BackfillRow {
        collection: c.into(),
        cursor: Some(format!("cur-{c}")),
        imported,
        state: state.into(),
        updated_at: 5,
    };
    s.backfill_upsert(&row("app.bsky.feed.post", 1000, "running"))
        .expect("upsert");
    s.backfill_upsert(&row("app.bsky.feed.like", 2500, "done"))
        .expect("upsert");
    s.backfill_upsert(&row("app.bsky.feed.post", 3000, "done"))
        .expect("upsert again");
    let got = s
        .backfill_get("app.bsky.feed.post")
        .expect("get")
        .expect("exists");
    assert_eq!(
        (got.imported, got.state.as_str(), got.cursor.as_deref()),
        (3000, "done", Some("cur-app.bsky.feed.post"))
    );
    assert!(s.backfill_get("x.y.z").expect("get").is_none());
    let list = s.backfill_list().expect("list");
    assert_eq!(
        list.iter()
            .map(|r| r.collection.as_str())
            .collect::<Vec<_>>(),
        vec!["app.bsky.feed.like", "app.bsky.feed.post"]
    );
    let t = s.backfill_totals().expect("totals");
    assert_eq!((t.collections, t.done, t.imported), (2, 2, 5500));
}
both!(backfill_progress);

#[test]
fn open_selects_backend_from_url() {
    let dir = tempfile::tempdir().expect("dir");
    let s = crate::store::open(None, dir.path()).expect("default sqlite");
    assert_eq!(s.backend(), "sqlite");
    assert!(dir.path().join("rlay.sqlite").exists());
    assert!(crate::store::open(Some("mysql://x"), dir.path()).is_err());
    if let Some(url) = pg::fresh_database() {
        let p = crate::store::open(Some(&url), dir.path()).expect("postgres");
        assert_eq!(p.backend(), "postgres");
        p.ping().expect("ping");
    }
    assert_eq!(
        crate::store::redact_url("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
}

/// Managed databases require TLS: the store speaks it and verifies the server's certificate.
#[test]
fn postgres_over_tls_verifies_the_server_certificate() {
    let Some((url, ca)) = pg::fresh_tls_database() else {
        return;
    };
    // The cluster refuses TCP without TLS.
    assert!(PgStore::connect(&format!("{url}?sslmode=disable")).is_err());
    // TLS to a server signed by a CA we were not given: refused, saying why.
    let unknown = PgStore::connect(&format!("{url}?sslmode=require"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        unknown.contains("UnknownIssuer"),
        "an unknown CA is refused with a reason: {unknown:?}"
    );
    // With the CA, every kind of write and read works over TLS.
    let s = PgStore::connect(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.display()
    ))
    .expect("postgres over TLS");
    migrations(&s);
    accounts_and_batches(&s);
}
