-- audit-api: analysts' triage of alerts, the ledger verifications it runs, and its own login.
--
-- Triage is a state next to dispatch: `status` says whether the notification went out,
-- `triage_status` what a person decided. Every decision is kept in alert_triage (who, when, why).
ALTER TABLE audit_alerts
    ADD COLUMN triage_status TEXT NOT NULL DEFAULT 'open'
        CHECK (triage_status IN ('open', 'acknowledged', 'resolved')),
    ADD COLUMN assignee      TEXT,
    ADD COLUMN triaged_by    TEXT,
    ADD COLUMN triaged_at    TIMESTAMPTZ;

CREATE TABLE alert_triage (
    id         BIGSERIAL   PRIMARY KEY,
    alert_id   UUID        NOT NULL REFERENCES audit_alerts (id) ON DELETE CASCADE,
    status     TEXT        NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    assignee   TEXT,
    note       TEXT,
    actor      TEXT        NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_alert_triage_alert ON alert_triage (alert_id, at);

-- One row per verification run through the API, with its report.
CREATE TABLE ledger_verifications (
    id          UUID        PRIMARY KEY,
    started_by  TEXT        NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    ok          BOOLEAN,
    report      JSONB
);
CREATE INDEX idx_ledger_verifications_started ON ledger_verifications (started_at DESC);

-- The API's login is an operator (holds, erasure, replays) that can also triage alerts and
-- record verification runs. It never writes audit_events: ingest goes through audit-raw.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditflow_api') THEN
        BEGIN
            CREATE ROLE auditflow_api NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created by a concurrent migration
        END;
    END IF;
    IF NOT pg_has_role('auditflow_api', 'auditflow_operator', 'MEMBER') THEN
        BEGIN
            GRANT auditflow_operator TO auditflow_api;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO auditflow_api;
GRANT SELECT ON alert_matches TO auditflow_api;
GRANT SELECT, INSERT ON alert_triage TO auditflow_api;
GRANT USAGE ON SEQUENCE alert_triage_id_seq TO auditflow_api;
GRANT SELECT, INSERT, UPDATE ON ledger_verifications TO auditflow_api;
GRANT SELECT, INSERT ON privacy_key_check TO auditflow_api;
GRANT SELECT ON alert_triage, ledger_verifications TO auditflow_auditor;

-- Ingest retries: an Idempotency-Key names the receive time of its first attempt, so a resent
-- request gets the same event ids and times, and persist stores each event once.
CREATE TABLE api_idempotency_keys (
    caller      TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    body_sha256 BYTEA       NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX idx_api_idempotency_received ON api_idempotency_keys (received_at);
GRANT SELECT, INSERT, DELETE ON api_idempotency_keys TO auditflow_api;
