//! The relay's SQL state: hosts, accounts (status and repo state), domain bans and collection
//! backfill progress. PostgreSQL in production, SQLite as the zero-set-up default; both behind
//! one trait so the rest of the relay never knows which it talks to.
//!
//! The hot path never waits on this: account state lives in memory and reaches the store in
//! batches ([`Batch`]) that commit together with the host cursors they cover.

mod pg_tls;
mod pool;
mod postgres;
mod sql;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("cannot connect to the database ({url}): {why}")]
    Connect { url: String, why: String },
    #[error("unsupported DATABASE_URL {0:?}: use postgres://... or sqlite://PATH")]
    Url(String),
    #[error("stored value is invalid: {0}")]
    Invalid(String),
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// `com.atproto.sync.defs#hostStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    Active,
    Idle,
    Offline,
    Throttled,
    Banned,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Idle => "idle",
            HostStatus::Offline => "offline",
            HostStatus::Throttled => "throttled",
            HostStatus::Banned => "banned",
        }
    }

    pub fn parse(s: &str) -> Option<HostStatus> {
        Some(match s {
            "active" => HostStatus::Active,
            "idle" => HostStatus::Idle,
            "offline" => HostStatus::Offline,
            "throttled" => HostStatus::Throttled,
            "banned" => HostStatus::Banned,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub(crate) id: i64,
    pub(crate) hostname: String,
    pub(crate) status: HostStatus,
    /// Last upstream seq persisted (-1: never).
    pub(crate) last_seq: i64,
    pub(crate) account_count: i64,
    pub(crate) account_limit: i64,
    pub(crate) trusted: bool,
    pub(crate) no_tls: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl HostRow {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn status(&self) -> HostStatus {
        self.status
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHost {
    pub hostname: String,
    pub account_limit: i64,
    pub trusted: bool,
    pub no_tls: bool,
}

/// One account as stored. `status` is the relay's own (local) status, `upstream_status` the
/// last one its PDS announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub uid: i64,
    pub did: String,
    pub host_id: i64,
    pub status: String,
    pub upstream_status: String,
    pub rev: Option<String>,
    pub commit_cid: Option<String>,
    pub data_cid: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Account changes plus the host cursors and counts they cover, committed atomically.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub accounts: Vec<AccountRow>,
    /// (host id, last upstream seq)
    pub host_cursors: Vec<(i64, i64)>,
    /// (host id, account count)
    pub host_counts: Vec<(i64, i64)>,
    /// Relay key/value state written in the same transaction.
    pub meta: Vec<(String, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.host_cursors.is_empty()
            && self.host_counts.is_empty()
            && self.meta.is_empty()
    }
}

/// A host's alert state (`alerts`): kept so that a restart does not alert again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAlertRow {
    pub host_id: i64,
    /// The operator silenced its account-limit alerts.
    pub silenced: bool,
    /// `ok` or `warning` (an account-limit alert was sent and still holds).
    pub limit_state: String,
    pub limit_sent_at: Option<i64>,
    pub offline_sent_at: Option<i64>,
}

impl HostAlertRow {
    pub fn new(host_id: i64) -> HostAlertRow {
        HostAlertRow {
            host_id,
            silenced: false,
            limit_state: "ok".to_owned(),
            limit_sent_at: None,
            offline_sent_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRow {
    pub(crate) collection: String,
    pub(crate) cursor: Option<String>,
    pub(crate) imported: i64,
    /// pending | running | done | failed
    pub(crate) state: String,
    pub(crate) updated_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackfillTotals {
    pub(crate) collections: i64,
    pub(crate) done: i64,
    pub(crate) imported: i64,
}

pub trait Store: Send + Sync {
    /// "postgres" or "sqlite".
    fn backend(&self) -> &'static str;
    /// A trivial round trip (health checks).
    fn ping(&self) -> Result<()>;
    /// Applies pending migrations in one transaction; returns how many were applied.
    fn migrate(&self) -> Result<usize>;

    /// Inserts a host, or returns the existing row with that hostname.
    fn insert_host(&self, h: &NewHost) -> Result<HostRow>;
    fn host_by_name(&self, hostname: &str) -> Result<Option<HostRow>>;
    fn host_by_id(&self, id: i64) -> Result<Option<HostRow>>;
    /// Hosts with id > `after_id`, oldest first.
    fn list_hosts(&self, after_id: i64, limit: usize) -> Result<Vec<HostRow>>;
    fn set_host_status(&self, id: i64, status: HostStatus) -> Result<()>;
    fn set_host_account_limit(&self, id: i64, limit: i64) -> Result<()>;

    fn account_by_did(&self, did: &str) -> Result<Option<AccountRow>>;
    /// The stored accounts among `dids` (unknown ones are absent), in any order.
    fn accounts_by_dids(&self, dids: &[String]) -> Result<Vec<AccountRow>>;
    /// Accounts with uid > `after_uid` in uid order.
    fn list_accounts(&self, after_uid: i64, limit: usize) -> Result<Vec<AccountRow>>;
    /// Accounts with a given local status, in uid order (takedown lists, un-throttling).
    fn list_accounts_by_status(
        &self,
        status: &str,
        host_id: Option<i64>,
        after_uid: i64,
        limit: usize,
    ) -> Result<Vec<AccountRow>>;
    fn max_account_uid(&self) -> Result<i64>;
    /// Number of accounts associated with a host.
    fn count_host_accounts(&self, host_id: i64) -> Result<i64>;

    /// Upserts accounts (by uid) and updates host cursors and counts, all or nothing.
    fn write_batch(&self, b: &Batch) -> Result<()>;

    fn get_meta(&self, key: &str) -> Result<Option<String>>;

    fn domain_bans(&self) -> Result<Vec<String>>;
    fn ban_domain(&self, domain: &str) -> Result<()>;
    /// Returns whether a ban was removed.
    fn unban_domain(&self, domain: &str) -> Result<bool>;

    /// Every host's stored alert state (hosts never alerted on have none).
    fn host_alerts(&self) -> Result<Vec<HostAlertRow>>;
    fn set_host_alert(&self, row: &HostAlertRow) -> Result<()>;

    fn backfill_get(&self, collection: &str) -> Result<Option<BackfillRow>>;
    fn backfill_list(&self) -> Result<Vec<BackfillRow>>;
    fn backfill_upsert(&self, row: &BackfillRow) -> Result<()>;
    fn backfill_totals(&self) -> Result<BackfillTotals>;
}

/// DIDs per `IN (...)` query.
pub const DIDS_PER_QUERY: usize = 500;

/// Opens the store named by `DATABASE_URL` (default: SQLite in the data dir) and migrates it.
pub fn open(url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>> {
    let default = format!("sqlite://{}", data_dir.join("rlay.sqlite").display());
    let url = url.filter(|u| !u.is_empty()).unwrap_or(&default);
    let store: Arc<dyn Store> =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Arc::new(PgStore::connect(url)?)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Arc::new(SqliteStore::open(Path::new(path))?)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
    store.migrate()?;
    Ok(store)
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
