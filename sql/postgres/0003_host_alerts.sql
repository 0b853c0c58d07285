-- Alert state per host, kept so a restart does not alert again: account-limit alerts (silenced
-- by an operator, last state and when it was sent) and the offline alert.
CREATE TABLE host_alert (
    host_id          BIGINT  PRIMARY KEY,
    silenced         BOOLEAN NOT NULL DEFAULT FALSE,
    limit_state      TEXT    NOT NULL DEFAULT 'ok',
    limit_sent_at    BIGINT,
    offline_sent_at  BIGINT
);
