//! SQLite backend (bundled `rusqlite`): the default, so `rlay serve` needs no set-up. WAL mode,
//! `synchronous=NORMAL`, a busy timeout, and a small pool of connections.

use super::pool::Pool;
use super::sql;
use super::{
    AccountRow, BackfillRow, BackfillTotals, Batch, HostAlertRow, HostRow, HostStatus, NewHost,
    Result, Store, StoreError,
};
use crate::util::now_ms;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../sql/sqlite/0001_init.sql")),
    (
        2,
        "relay_meta",
        include_str!("../../sql/sqlite/0002_relay_meta.sql"),
    ),
    (
        3,
        "host_alerts",
        include_str!("../../sql/sqlite/0003_host_alerts.sql"),
    ),
];

pub struct SqliteStore {
    pool: Pool<Connection>,
}

fn host_row(r: &Row<'_>) -> rusqlite::Result<HostRow> {
    let status: String = r.get(2)?;
    Ok(HostRow {
        id: r.get(0)?,
        hostname: r.get(1)?,
        // An unknown stored status is surfaced as offline rather than failing every listing.
        status: HostStatus::parse(&status).unwrap_or(HostStatus::Offline),
        last_seq: r.get(3)?,
        account_count: r.get(4)?,
        account_limit: r.get(5)?,
        trusted: r.get(6)?,
        no_tls: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        uid: r.get(0)?,
        did: r.get(1)?,
        host_id: r.get(2)?,
        status: r.get(3)?,
        upstream_status: r.get(4)?,
        rev: r.get(5)?,
        commit_cid: r.get(6)?,
        data_cid: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn backfill_row(r: &Row<'_>) -> rusqlite::Result<BackfillRow> {
    Ok(BackfillRow {
        collection: r.get(0)?,
        cursor: r.get(1)?,
        imported: r.get(2)?,
        state: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn open_conn(path: &Path) -> Result<Connection> {
    let c = Connection::open(path).map_err(|e| StoreError::Connect {
        url: format!("sqlite://{}", path.display()),
        why: e.to_string(),
    })?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Connect {
                url: format!("sqlite://{}", path.display()),
                why: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let owned: PathBuf = path.to_owned();
        open_conn(&owned)?;
        let pool = Pool::new(4, Box::new(move || open_conn(&owned)), |_| true);
        Ok(SqliteStore { pool })
    }

    fn rows<T>(
        &self,
        q: &str,
        p: impl rusqlite::Params,
        f: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(q)?;
            let v = st.query_map(p, f)?.collect::<rusqlite::Result<Vec<T>>>()?;
            Ok(v)
        })
    }

    fn one<T>(
        &self,
        q: &str,
        p: impl rusqlite::Params,
        f: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        self.pool
            .with(|c| Ok(c.prepare_cached(q)?.query_row(p, f).optional()?))
    }

    fn exec(&self, q: &str, p: impl rusqlite::Params) -> Result<usize> {
        self.pool.with(|c| Ok(c.prepare_cached(q)?.execute(p)?))
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn ping(&self) -> Result<()> {
        self.pool
            .with(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
    }

    fn migrate(&self) -> Result<usize> {
        self.pool.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql::MIGRATIONS_TABLE)?;
            let applied: Vec<i64> = {
                let mut st = tx.prepare(sql::APPLIED_VERSIONS)?;
                st.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut n = 0;
            for (version, name, text) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                tx.execute_batch(text)?;
                tx.execute(sql::RECORD_MIGRATION, params![version, name, now_ms()])?;
                n += 1;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn insert_host(&self, h: &NewHost) -> Result<HostRow> {
        let now = now_ms();
        self.exec(
            sql::INSERT_HOST,
            params![h.hostname, h.account_limit, h.trusted, h.no_tls, now, now],
        )?;
        self.host_by_name(&h.hostname)?
            .ok_or_else(|| StoreError::Db(format!("host {} vanished after insert", h.hostname)))
    }

    fn host_by_name(&self, hostname: &str) -> Result<Option<HostRow>> {
        self.one(&sql::host_by_name(), [hostname], host_row)
    }

    fn host_by_id(&self, id: i64) -> Result<Option<HostRow>> {
        self.one(&sql::host_by_id(), [id], host_row)
    }

    fn list_hosts(&self, after_id: i64, n: usize) -> Result<Vec<HostRow>> {
        self.rows(&sql::list_hosts(), params![after_id, limit(n)], host_row)
    }

    fn set_host_status(&self, id: i64, status: HostStatus) -> Result<()> {
        self.exec(sql::SET_HOST_STATUS, params![status.as_str(), now_ms(), id])
            .map(|_| ())
    }

    fn set_host_account_limit(&self, id: i64, account_limit: i64) -> Result<()> {
        self.exec(sql::SET_HOST_LIMIT, params![account_limit, now_ms(), id])
            .map(|_| ())
    }

    fn account_by_did(&self, did: &str) -> Result<Option<AccountRow>> {
        self.one(&sql::account_by_did(), [did], account_row)
    }

    fn accounts_by_dids(&self, dids: &[String]) -> Result<Vec<AccountRow>> {
        let mut out = Vec::new();
        for chunk in dids.chunks(super::DIDS_PER_QUERY) {
            out.extend(self.rows(
                &sql::accounts_by_dids(chunk.len()),
                rusqlite::params_from_iter(chunk.iter()),
                account_row,
            )?);
        }
        Ok(out)
    }

    fn list_accounts(&self, after_uid: i64, n: usize) -> Result<Vec<AccountRow>> {
        self.rows(
            &sql::list_accounts(),
            params![after_uid, limit(n)],
            account_row,
        )
    }

    fn list_accounts_by_status(
        &self,
        status: &str,
        host_id: Option<i64>,
        after_uid: i64,
        n: usize,
    ) -> Result<Vec<AccountRow>> {
        match host_id {
            Some(h) => self.rows(
                &sql::list_host_accounts_by_status(),
                params![h, status, after_uid, limit(n)],
                account_row,
            ),
            None => self.rows(
                &sql::list_accounts_by_status(),
                params![status, after_uid, limit(n)],
                account_row,
            ),
        }
    }

    fn max_account_uid(&self) -> Result<i64> {
        Ok(self.one(sql::MAX_UID, [], |r| r.get(0))?.unwrap_or(0))
    }

    fn count_host_accounts(&self, host_id: i64) -> Result<i64> {
        Ok(self
            .one(sql::COUNT_HOST_ACCOUNTS, [host_id], |r| r.get(0))?
            .unwrap_or(0))
    }

    fn write_batch(&self, b: &Batch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.pool.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut up = tx.prepare_cached(&sql::upsert_account())?;
                for a in &b.accounts {
                    up.execute(params![
                        a.uid,
                        a.did,
                        a.host_id,
                        a.status,
                        a.upstream_status,
                        a.rev,
                        a.commit_cid,
                        a.data_cid,
                        a.created_at,
                        now
                    ])?;
                }
                let mut cur = tx.prepare_cached(sql::SET_HOST_CURSOR)?;
                for (id, seq) in &b.host_cursors {
                    cur.execute(params![seq, now, id])?;
                }
                let mut cnt = tx.prepare_cached(sql::SET_HOST_COUNT)?;
                for (id, n) in &b.host_counts {
                    cnt.execute(params![n, now, id])?;
                }
                let mut meta = tx.prepare_cached(sql::SET_META)?;
                for (k, v) in &b.meta {
                    meta.execute(params![k, v])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.one(sql::GET_META, [key], |r| r.get(0))
    }

    fn domain_bans(&self) -> Result<Vec<String>> {
        self.rows(sql::DOMAIN_BANS, [], |r| r.get(0))
    }

    fn ban_domain(&self, domain: &str) -> Result<()> {
        self.exec(sql::BAN_DOMAIN, params![domain, now_ms()])
            .map(|_| ())
    }

    fn unban_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.exec(sql::UNBAN_DOMAIN, [domain])? > 0)
    }

    fn host_alerts(&self) -> Result<Vec<HostAlertRow>> {
        self.rows(sql::HOST_ALERTS, [], |r| {
            Ok(HostAlertRow {
                host_id: r.get(0)?,
                silenced: r.get(1)?,
                limit_state: r.get(2)?,
                limit_sent_at: r.get(3)?,
                offline_sent_at: r.get(4)?,
            })
        })
    }

    fn set_host_alert(&self, a: &HostAlertRow) -> Result<()> {
        self.exec(
            sql::SET_HOST_ALERT,
            params![
                a.host_id,
                a.silenced,
                a.limit_state,
                a.limit_sent_at,
                a.offline_sent_at
            ],
        )
        .map(|_| ())
    }

    fn backfill_get(&self, collection: &str) -> Result<Option<BackfillRow>> {
        self.one(&sql::backfill_get(), [collection], backfill_row)
    }

    fn backfill_list(&self) -> Result<Vec<BackfillRow>> {
        self.rows(&sql::backfill_list(), [], backfill_row)
    }

    fn backfill_upsert(&self, r: &BackfillRow) -> Result<()> {
        self.exec(
            sql::BACKFILL_UPSERT,
            params![r.collection, r.cursor, r.imported, r.state, r.updated_at],
        )
        .map(|_| ())
    }

    fn backfill_totals(&self) -> Result<BackfillTotals> {
        Ok(self
            .one(sql::BACKFILL_TOTALS, [], |r| {
                Ok(BackfillTotals {
                    collections: r.get(0)?,
                    done: r.get(1)?,
                    imported: r.get(2)?,
                })
            })?
            .unwrap_or_default())
    }
}
