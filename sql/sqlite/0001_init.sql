-- rlay schema v1 (SQLite). Times are unix milliseconds.
CREATE TABLE host (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname      TEXT    NOT NULL UNIQUE,
    status        TEXT    NOT NULL DEFAULT 'active',
    last_seq      BIGINT  NOT NULL DEFAULT -1,
    account_count BIGINT  NOT NULL DEFAULT 0,
    account_limit BIGINT  NOT NULL,
    trusted       INTEGER NOT NULL DEFAULT 0,
    no_tls        INTEGER NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

CREATE TABLE account (
    uid             BIGINT PRIMARY KEY,
    did             TEXT   NOT NULL UNIQUE,
    host_id         BIGINT NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'active',
    upstream_status TEXT   NOT NULL DEFAULT 'active',
    rev             TEXT,
    commit_cid      TEXT,
    data_cid        TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX account_host_status_idx ON account (host_id, status, uid);
CREATE INDEX account_status_idx ON account (status, uid);

CREATE TABLE domain_ban (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    domain     TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE collection_backfill (
    collection TEXT PRIMARY KEY,
    cursor     TEXT,
    imported   BIGINT NOT NULL DEFAULT 0,
    state      TEXT   NOT NULL DEFAULT 'pending',
    updated_at BIGINT NOT NULL
);
