//! SQL shared by both backends, written with `?` placeholders (PostgreSQL's are derived from it)
//! and portable casts: every aggregate is `CAST(... AS BIGINT)`, because the Postgres driver does
//! not coerce `numeric` (zlay learned this in production).

pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS rlay_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
pub const APPLIED_VERSIONS: &str = "SELECT version FROM rlay_migrations ORDER BY version";
pub const RECORD_MIGRATION: &str =
    "INSERT INTO rlay_migrations (version, name, applied_at) VALUES (?, ?, ?)";

pub const HOST_COLS: &str = "id, hostname, status, last_seq, account_count, account_limit, trusted, no_tls, created_at, updated_at";
pub const INSERT_HOST: &str =
    "INSERT INTO host (hostname, account_limit, trusted, no_tls, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hostname) DO NOTHING";
pub const SET_HOST_STATUS: &str = "UPDATE host SET status = ?, updated_at = ? WHERE id = ?";
pub const SET_HOST_LIMIT: &str = "UPDATE host SET account_limit = ?, updated_at = ? WHERE id = ?";
pub const SET_HOST_CURSOR: &str = "UPDATE host SET last_seq = ?, updated_at = ? WHERE id = ?";
pub const SET_HOST_COUNT: &str = "UPDATE host SET account_count = ?, updated_at = ? WHERE id = ?";

pub const ACCOUNT_COLS: &str =
    "uid, did, host_id, status, upstream_status, rev, commit_cid, data_cid, created_at, updated_at";
pub const MAX_UID: &str = "SELECT CAST(COALESCE(MAX(uid), 0) AS BIGINT) FROM account";
pub const COUNT_HOST_ACCOUNTS: &str =
    "SELECT CAST(COUNT(*) AS BIGINT) FROM account WHERE host_id = ?";
pub const UPSERT_ACCOUNT_SET: &str = "ON CONFLICT (uid) DO UPDATE SET did = excluded.did, host_id = excluded.host_id,
    status = excluded.status, upstream_status = excluded.upstream_status, rev = excluded.rev,
    commit_cid = excluded.commit_cid, data_cid = excluded.data_cid, updated_at = excluded.updated_at";

pub const GET_META: &str = "SELECT value FROM relay_meta WHERE key = ?";
pub const SET_META: &str = "INSERT INTO relay_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

pub const HOST_ALERTS: &str = "SELECT host_id, silenced, limit_state, limit_sent_at, offline_sent_at FROM host_alert ORDER BY host_id";
pub const SET_HOST_ALERT: &str =
    "INSERT INTO host_alert (host_id, silenced, limit_state, limit_sent_at, offline_sent_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET silenced = excluded.silenced,
    limit_state = excluded.limit_state, limit_sent_at = excluded.limit_sent_at,
    offline_sent_at = excluded.offline_sent_at";

pub const DOMAIN_BANS: &str = "SELECT domain FROM domain_ban ORDER BY domain";
pub const BAN_DOMAIN: &str =
    "INSERT INTO domain_ban (domain, created_at) VALUES (?, ?) ON CONFLICT (domain) DO NOTHING";
pub const UNBAN_DOMAIN: &str = "DELETE FROM domain_ban WHERE domain = ?";

pub const BACKFILL_COLS: &str = "collection, cursor, imported, state, updated_at";
pub const BACKFILL_UPSERT: &str =
    "INSERT INTO collection_backfill (collection, cursor, imported, state, updated_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor,
    imported = excluded.imported, state = excluded.state, updated_at = excluded.updated_at";
pub const BACKFILL_TOTALS: &str = "SELECT CAST(COUNT(*) AS BIGINT),
    CAST(COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT),
    CAST(COALESCE(SUM(imported), 0) AS BIGINT) FROM collection_backfill";

pub fn host_by_name() -> String {
    format!("SELECT {HOST_COLS} FROM host WHERE hostname = ?")
}
pub fn host_by_id() -> String {
    format!("SELECT {HOST_COLS} FROM host WHERE id = ?")
}
pub fn list_hosts() -> String {
    format!("SELECT {HOST_COLS} FROM host WHERE id > ? ORDER BY id LIMIT ?")
}
pub fn account_by_did() -> String {
    format!("SELECT {ACCOUNT_COLS} FROM account WHERE did = ?")
}
/// `n` DIDs in one query (callers keep `n` in the hundreds).
pub fn accounts_by_dids(n: usize) -> String {
    let marks = vec!["?"; n.max(1)].join(", ");
    format!("SELECT {ACCOUNT_COLS} FROM account WHERE did IN ({marks})")
}
pub fn list_accounts() -> String {
    format!("SELECT {ACCOUNT_COLS} FROM account WHERE uid > ? ORDER BY uid LIMIT ?")
}
pub fn list_accounts_by_status() -> String {
    format!("SELECT {ACCOUNT_COLS} FROM account WHERE status = ? AND uid > ? ORDER BY uid LIMIT ?")
}
pub fn list_host_accounts_by_status() -> String {
    format!(
        "SELECT {ACCOUNT_COLS} FROM account WHERE host_id = ? AND status = ? AND uid > ? ORDER BY uid LIMIT ?"
    )
}
pub fn upsert_account() -> String {
    format!(
        "INSERT INTO account ({ACCOUNT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {UPSERT_ACCOUNT_SET}"
    )
}
pub fn backfill_get() -> String {
    format!("SELECT {BACKFILL_COLS} FROM collection_backfill WHERE collection = ?")
}
pub fn backfill_list() -> String {
    format!("SELECT {BACKFILL_COLS} FROM collection_backfill ORDER BY collection")
}

/// Rewrites `?` placeholders as PostgreSQL's `$1, $2, ...`.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}
