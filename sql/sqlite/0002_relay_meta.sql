-- Small key/value state of the relay itself (e.g. the event-log position that stored account
-- state covers, used for crash recovery).
CREATE TABLE relay_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
