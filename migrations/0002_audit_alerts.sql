-- Alerts opened by audit-alert, the matches folded into them, and every delivery attempt.
--
-- An alert belongs to a group (policy + rule + group key, digested in group_hash) and to the
-- suppression window its triggering match opened. Its id is the UUIDv5 of its fingerprint
-- (group_hash + window start), so reprocessing the same matches never opens a second alert.
CREATE TABLE audit_alerts (
    id                          UUID        PRIMARY KEY,
    fingerprint                 TEXT        NOT NULL UNIQUE,
    policy_id                   TEXT        NOT NULL,
    policy_name                 TEXT        NOT NULL,
    rule_id                     TEXT        NOT NULL,
    rule_name                   TEXT        NOT NULL,
    severity                    TEXT        NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    group_key                   JSONB       NOT NULL,
    group_hash                  TEXT        NOT NULL,
    compliance                  TEXT[]      NOT NULL DEFAULT '{}',
    -- The suppression window [window_start, window_end) opened by the triggering match.
    window_start                TIMESTAMPTZ NOT NULL,
    window_end                  TIMESTAMPTZ NOT NULL,
    -- Event times of the earliest and latest folded match.
    first_seen                  TIMESTAMPTZ NOT NULL,
    last_seen                   TIMESTAMPTZ NOT NULL,
    -- Distinct matches folded in; suppressed_count = match_count - 1.
    match_count                 INTEGER     NOT NULL,
    suppressed_count            INTEGER     NOT NULL,
    evidence_event_ids          TEXT[]      NOT NULL DEFAULT '{}',
    trigger_match               JSONB       NOT NULL,
    status                      TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dispatched', 'failed')),
    -- Not sent before this (group wait), and not by two dispatchers at once (lease).
    dispatch_after              TIMESTAMPTZ NOT NULL,
    lease_until                 TIMESTAMPTZ,
    dispatch_attempts           INTEGER     NOT NULL DEFAULT 0,
    dispatched_at               TIMESTAMPTZ,
    -- What the notification said (later folds only raise suppressed_count).
    dispatched_suppressed_count INTEGER,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_audit_alerts_group ON audit_alerts (group_hash, window_start DESC);
CREATE INDEX idx_audit_alerts_due ON audit_alerts (dispatch_after) WHERE status = 'pending';
CREATE INDEX idx_audit_alerts_created ON audit_alerts (created_at DESC);

-- Every (policy, rule match) pair seen: the replay guard (a match id counts once per policy)
-- and the frequency window (matches not yet in an alert).
CREATE TABLE alert_matches (
    policy_id  TEXT        NOT NULL,
    match_id   TEXT        NOT NULL,
    group_hash TEXT        NOT NULL,
    rule_id    TEXT        NOT NULL,
    matched_at TIMESTAMPTZ NOT NULL,
    event_id   TEXT,
    alert_id   UUID        REFERENCES audit_alerts (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, match_id)
);

CREATE INDEX idx_alert_matches_pool ON alert_matches (group_hash, matched_at) WHERE alert_id IS NULL;
CREATE INDEX idx_alert_matches_alert ON alert_matches (alert_id) WHERE alert_id IS NOT NULL;
CREATE INDEX idx_alert_matches_created ON alert_matches (created_at);

-- One row per delivery attempt: channel, outcome, why.
CREATE TABLE alert_deliveries (
    id         BIGSERIAL   PRIMARY KEY,
    alert_id   UUID        NOT NULL REFERENCES audit_alerts (id) ON DELETE CASCADE,
    channel    TEXT        NOT NULL CHECK (channel IN ('email', 'slack', 'webhook', 'kafka')),
    target     TEXT,
    attempt    INTEGER     NOT NULL,
    outcome    TEXT        NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'failed')),
    detail     TEXT,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_alert_deliveries_alert ON alert_deliveries (alert_id, channel);
