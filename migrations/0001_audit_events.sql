-- Audit events as persisted by audit-persist: the seed's columns, plus where each event came
-- from in Kafka. Partitioned by month on the event time so retention can drop whole months.
CREATE TABLE audit_events (
    id               TEXT        NOT NULL,
    "timestamp"      TIMESTAMPTZ NOT NULL,
    user_id          TEXT,
    session_id       TEXT,
    action           TEXT        NOT NULL,
    resource         TEXT        NOT NULL,
    resource_id      TEXT,
    method           TEXT,
    endpoint         TEXT,
    status_code      INTEGER,
    user_agent       TEXT,
    ip_address       INET,
    location         JSONB,
    ip_facts         JSONB,
    classification   TEXT        NOT NULL CHECK (classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'RESTRICTED')),
    severity         TEXT        NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    metadata         JSONB,
    success          BOOLEAN     NOT NULL,
    error_message    TEXT,
    duration         BIGINT,
    compliance       JSONB       NOT NULL,
    source_topic     TEXT        NOT NULL,
    source_partition INTEGER     NOT NULL,
    source_offset    BIGINT      NOT NULL,
    enriched_at      TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The partition key must be part of the primary key; an event id is unique per event time.
    PRIMARY KEY (id, "timestamp")
) PARTITION BY RANGE ("timestamp");

CREATE INDEX idx_audit_events_timestamp ON audit_events ("timestamp" DESC);
CREATE INDEX idx_audit_events_user_id ON audit_events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX idx_audit_events_severity ON audit_events (severity);

-- Creates the month partition holding `at` if it is missing. Idempotent and safe to race.
CREATE FUNCTION audit_events_ensure_month(at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start TIMESTAMPTZ := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name TEXT := 'audit_events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                name, month_start, month_start + INTERVAL '1 month');
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another instance created it first
        END;
    END IF;
    RETURN name;
END;
$$;

-- Offsets consumed by sink stages, written in the same transaction as their rows.
CREATE TABLE stage_offsets (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    next_offset    BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
