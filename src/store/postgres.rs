//! PostgreSQL backend (synchronous `postgres` crate). Batches are written with one `unnest`
//! statement per table, so a batch of any size costs a handful of round trips.

use super::pool::Pool;
use super::sql::{self, numbered};
use super::{
    AccountRow, BackfillRow, BackfillTotals, Batch, HostAlertRow, HostRow, HostStatus, NewHost,
    Result, Store, StoreError, redact_url,
};
use crate::util::now_ms;
use postgres::{Client, Row};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../sql/postgres/0001_init.sql")),
    (
        2,
        "relay_meta",
        include_str!("../../sql/postgres/0002_relay_meta.sql"),
    ),
    (
        3,
        "host_alerts",
        include_str!("../../sql/postgres/0003_host_alerts.sql"),
    ),
];

/// Serialises concurrent `migrate` calls from several relay processes.
const MIGRATION_LOCK: i64 = 0x726c_6179;

pub struct PgStore {
    pool: Pool<Client>,
}

fn host_row(r: &Row) -> Result<HostRow> {
    let status: String = r.try_get(2)?;
    Ok(HostRow {
        id: r.try_get(0)?,
        hostname: r.try_get(1)?,
        status: HostStatus::parse(&status)
            .ok_or_else(|| StoreError::Invalid(format!("host status {status:?}")))?,
        last_seq: r.try_get(3)?,
        account_count: r.try_get(4)?,
        account_limit: r.try_get(5)?,
        trusted: r.try_get(6)?,
        no_tls: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

fn account_row(r: &Row) -> Result<AccountRow> {
    Ok(AccountRow {
        uid: r.try_get(0)?,
        did: r.try_get(1)?,
        host_id: r.try_get(2)?,
        status: r.try_get(3)?,
        upstream_status: r.try_get(4)?,
        rev: r.try_get(5)?,
        commit_cid: r.try_get(6)?,
        data_cid: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

fn backfill_row(r: &Row) -> Result<BackfillRow> {
    Ok(BackfillRow {
        collection: r.try_get(0)?,
        cursor: r.try_get(1)?,
        imported: r.try_get(2)?,
        state: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

/// The error and its causes: a TLS failure's reason (say, an unknown CA) is only in the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects (failing fast with an actionable message) and keeps up to 8 connections.
    pub fn connect(url: &str) -> Result<PgStore> {
        let opts = super::pg_tls::split_options(url);
        let tls = if opts.tls {
            Some(super::pg_tls::connector(opts.root_cert.as_deref())?)
        } else {
            None
        };
        let owned = opts.url;
        let connect = move || -> Result<Client> {
            let client = match &tls {
                Some(t) => Client::connect(&owned, t.clone()),
                None => Client::connect(&owned, postgres::NoTls),
            };
            client.map_err(|e| {
                let mut why = error_chain(&e);
                if why.contains("peer certificate") {
                    why.push_str(
                        " (give the server's CA as sslrootcert=PATH in DATABASE_URL, or sslmode=disable on a trusted network)",
                    );
                }
                StoreError::Connect {
                    url: redact_url(&owned),
                    why,
                }
            })
        };
        let first = connect()?;
        let pool = Pool::new(8, Box::new(connect), |c: &Client| !c.is_closed());
        pool.with(|_| Ok(()))?;
        drop(first);
        Ok(PgStore { pool })
    }

    fn query<F: Fn(&Row) -> Result<T>, T>(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        f: F,
    ) -> Result<Vec<T>> {
        let q = numbered(sql);
        self.pool
            .with(|c| c.query(q.as_str(), params)?.iter().map(&f).collect())
    }

    fn exec(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<u64> {
        let q = numbered(sql);
        self.pool.with(|c| Ok(c.execute(q.as_str(), params)?))
    }
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> Result<()> {
        self.pool
            .with(|c| c.simple_query("SELECT 1").map(|_| ()).map_err(Into::into))
    }

    fn migrate(&self) -> Result<usize> {
        self.pool.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(sql::MIGRATIONS_TABLE)?;
            let applied: Vec<i64> = tx
                .query(sql::APPLIED_VERSIONS, &[])?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            let mut n = 0;
            for (version, name, text) in MIGRATIONS {
                if applied.contains(version) {
                    continue;
                }
                tx.batch_execute(text)?;
                tx.execute(
                    numbered(sql::RECORD_MIGRATION).as_str(),
                    &[version, name, &now_ms()],
                )?;
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
            &[
                &h.hostname,
                &h.account_limit,
                &h.trusted,
                &h.no_tls,
                &now,
                &now,
            ],
        )?;
        self.host_by_name(&h.hostname)?
            .ok_or_else(|| StoreError::Db(format!("host {} vanished after insert", h.hostname)))
    }

    fn host_by_name(&self, hostname: &str) -> Result<Option<HostRow>> {
        Ok(self
            .query(&sql::host_by_name(), &[&hostname], host_row)?
            .pop())
    }

    fn host_by_id(&self, id: i64) -> Result<Option<HostRow>> {
        Ok(self.query(&sql::host_by_id(), &[&id], host_row)?.pop())
    }

    fn list_hosts(&self, after_id: i64, n: usize) -> Result<Vec<HostRow>> {
        self.query(&sql::list_hosts(), &[&after_id, &limit(n)], host_row)
    }

    fn set_host_status(&self, id: i64, status: HostStatus) -> Result<()> {
        self.exec(sql::SET_HOST_STATUS, &[&status.as_str(), &now_ms(), &id])
            .map(|_| ())
    }

    fn set_host_account_limit(&self, id: i64, account_limit: i64) -> Result<()> {
        self.exec(sql::SET_HOST_LIMIT, &[&account_limit, &now_ms(), &id])
            .map(|_| ())
    }

    fn account_by_did(&self, did: &str) -> Result<Option<AccountRow>> {
        Ok(self
            .query(&sql::account_by_did(), &[&did], account_row)?
            .pop())
    }

    fn accounts_by_dids(&self, dids: &[String]) -> Result<Vec<AccountRow>> {
        let mut out = Vec::new();
        for chunk in dids.chunks(super::DIDS_PER_QUERY) {
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> = chunk
                .iter()
                .map(|d| d as &(dyn postgres::types::ToSql + Sync))
                .collect();
            out.extend(self.query(&sql::accounts_by_dids(chunk.len()), &params, account_row)?);
        }
        Ok(out)
    }

    fn list_accounts(&self, after_uid: i64, n: usize) -> Result<Vec<AccountRow>> {
        self.query(&sql::list_accounts(), &[&after_uid, &limit(n)], account_row)
    }

    fn list_accounts_by_status(
        &self,
        status: &str,
        host_id: Option<i64>,
        after_uid: i64,
        n: usize,
    ) -> Result<Vec<AccountRow>> {
        match host_id {
            Some(h) => self.query(
                &sql::list_host_accounts_by_status(),
                &[&h, &status, &after_uid, &limit(n)],
                account_row,
            ),
            None => self.query(
                &sql::list_accounts_by_status(),
                &[&status, &after_uid, &limit(n)],
                account_row,
            ),
        }
    }

    fn max_account_uid(&self) -> Result<i64> {
        Ok(self
            .query(sql::MAX_UID, &[], |r| Ok(r.try_get(0)?))?
            .pop()
            .unwrap_or(0))
    }

    fn count_host_accounts(&self, host_id: i64) -> Result<i64> {
        Ok(self
            .query(sql::COUNT_HOST_ACCOUNTS, &[&host_id], |r| Ok(r.try_get(0)?))?
            .pop()
            .unwrap_or(0))
    }

    fn write_batch(&self, b: &Batch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let a = &b.accounts;
        let uids: Vec<i64> = a.iter().map(|x| x.uid).collect();
        let dids: Vec<&str> = a.iter().map(|x| x.did.as_str()).collect();
        let hosts: Vec<i64> = a.iter().map(|x| x.host_id).collect();
        let status: Vec<&str> = a.iter().map(|x| x.status.as_str()).collect();
        let upstream: Vec<&str> = a.iter().map(|x| x.upstream_status.as_str()).collect();
        let revs: Vec<Option<&str>> = a.iter().map(|x| x.rev.as_deref()).collect();
        let commits: Vec<Option<&str>> = a.iter().map(|x| x.commit_cid.as_deref()).collect();
        let datas: Vec<Option<&str>> = a.iter().map(|x| x.data_cid.as_deref()).collect();
        let created: Vec<i64> = a.iter().map(|x| x.created_at).collect();
        let updated: Vec<i64> = a.iter().map(|_| now).collect();
        let (cur_ids, cur_seqs): (Vec<i64>, Vec<i64>) = b.host_cursors.iter().copied().unzip();
        let (cnt_ids, cnt_vals): (Vec<i64>, Vec<i64>) = b.host_counts.iter().copied().unzip();
        self.pool.with(|c| {
            let mut tx = c.transaction()?;
            if !a.is_empty() {
                let q = format!(
                    "INSERT INTO account ({}) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[],
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[]) {}",
                    sql::ACCOUNT_COLS,
                    sql::UPSERT_ACCOUNT_SET
                );
                tx.execute(
                    q.as_str(),
                    &[&uids, &dids, &hosts, &status, &upstream, &revs, &commits, &datas, &created, &updated],
                )?;
            }
            if !cur_ids.is_empty() {
                tx.execute(
                    "UPDATE host SET last_seq = u.seq, updated_at = $3 FROM unnest($1::bigint[], $2::bigint[]) AS u(id, seq) WHERE host.id = u.id",
                    &[&cur_ids, &cur_seqs, &now],
                )?;
            }
            if !cnt_ids.is_empty() {
                tx.execute(
                    "UPDATE host SET account_count = u.n, updated_at = $3 FROM unnest($1::bigint[], $2::bigint[]) AS u(id, n) WHERE host.id = u.id",
                    &[&cnt_ids, &cnt_vals, &now],
                )?;
            }
            for (k, v) in &b.meta {
                tx.execute(numbered(sql::SET_META).as_str(), &[k, v])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .query(sql::GET_META, &[&key], |r| Ok(r.try_get(0)?))?
            .pop())
    }

    fn domain_bans(&self) -> Result<Vec<String>> {
        self.query(sql::DOMAIN_BANS, &[], |r| Ok(r.try_get(0)?))
    }

    fn ban_domain(&self, domain: &str) -> Result<()> {
        self.exec(sql::BAN_DOMAIN, &[&domain, &now_ms()])
            .map(|_| ())
    }

    fn unban_domain(&self, domain: &str) -> Result<bool> {
        Ok(self.exec(sql::UNBAN_DOMAIN, &[&domain])? > 0)
    }

    fn host_alerts(&self) -> Result<Vec<HostAlertRow>> {
        self.query(sql::HOST_ALERTS, &[], |r| {
            Ok(HostAlertRow {
                host_id: r.try_get(0)?,
                silenced: r.try_get(1)?,
                limit_state: r.try_get(2)?,
                limit_sent_at: r.try_get(3)?,
                offline_sent_at: r.try_get(4)?,
            })
        })
    }

    fn set_host_alert(&self, a: &HostAlertRow) -> Result<()> {
        self.exec(
            sql::SET_HOST_ALERT,
            &[
                &a.host_id,
                &a.silenced,
                &a.limit_state,
                &a.limit_sent_at,
                &a.offline_sent_at,
            ],
        )
        .map(|_| ())
    }

    fn backfill_get(&self, collection: &str) -> Result<Option<BackfillRow>> {
        Ok(self
            .query(&sql::backfill_get(), &[&collection], backfill_row)?
            .pop())
    }

    fn backfill_list(&self) -> Result<Vec<BackfillRow>> {
        self.query(&sql::backfill_list(), &[], backfill_row)
    }

    fn backfill_upsert(&self, r: &BackfillRow) -> Result<()> {
        self.exec(
            sql::BACKFILL_UPSERT,
            &[
                &r.collection,
                &r.cursor,
                &r.imported,
                &r.state,
                &r.updated_at,
            ],
        )
        .map(|_| ())
    }

    fn backfill_totals(&self) -> Result<BackfillTotals> {
        let mut rows = self.query(sql::BACKFILL_TOTALS, &[], |r| {
            Ok(BackfillTotals {
                collections: r.try_get(0)?,
                done: r.try_get(1)?,
                imported: r.try_get(2)?,
            })
        })?;
        Ok(rows.pop().unwrap_or_default())
    }
}
