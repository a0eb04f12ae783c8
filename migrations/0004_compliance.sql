-- Compliance records, legal holds and the log of retention drops.

-- One row per (event, framework, control), written by audit-compliance. No plaintext personal
-- data: the actor is the keyed pseudonym of the event's subject. Partitioned by month on the
-- event time, like audit_events, so retention drops the same months of both tables. The
-- partition key must be part of the primary key; an event's time is fixed by its id, so the key
-- is, in effect, (event_id, framework, control).
CREATE TABLE compliance_events (
    event_id          TEXT        NOT NULL,
    event_time        TIMESTAMPTZ NOT NULL,
    framework         TEXT        NOT NULL CHECK (framework IN ('GDPR', 'SOX', 'HIPAA', 'PCI')),
    control           TEXT        NOT NULL,
    control_name      TEXT        NOT NULL,
    privileged        BOOLEAN     NOT NULL,
    action            TEXT        NOT NULL,
    resource          TEXT        NOT NULL,
    success           BOOLEAN     NOT NULL,
    severity          TEXT        NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    classification    TEXT        NOT NULL CHECK (classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'RESTRICTED')),
    subject_pseudonym TEXT,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, framework, control, event_time)
) PARTITION BY RANGE (event_time);

CREATE INDEX idx_compliance_events_framework_time ON compliance_events (framework, event_time);
CREATE INDEX idx_compliance_events_subject ON compliance_events (subject_pseudonym) WHERE subject_pseudonym IS NOT NULL;

-- Creates the month partition holding `at` if it is missing. Idempotent and safe to race.
CREATE FUNCTION compliance_events_ensure_month(at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start TIMESTAMPTZ := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name TEXT := 'compliance_events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF compliance_events FOR VALUES FROM (%L) TO (%L)',
                name, month_start, month_start + INTERVAL '1 month');
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another instance created it first
        END;
    END IF;
    RETURN name;
END;
$$;

-- Legal holds match audit_events.subject_pseudonym (added and indexed by migration 0003).

-- Legal holds: while a hold is active (released_at IS NULL), retention never drops a month
-- holding rows of its subject (within its time range, if it has one), nor a month overlapping
-- its time range. The subject is kept only as its keyed pseudonym.
CREATE TABLE legal_holds (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_pseudonym TEXT,
    from_ts           TIMESTAMPTZ,
    to_ts             TIMESTAMPTZ,
    reason            TEXT        NOT NULL CHECK (btrim(reason) <> ''),
    created_by        TEXT        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at       TIMESTAMPTZ,
    released_by       TEXT,
    CHECK (subject_pseudonym IS NOT NULL OR (from_ts IS NOT NULL AND to_ts IS NOT NULL)),
    CHECK (from_ts IS NULL OR to_ts IS NULL OR from_ts < to_ts)
);

CREATE INDEX idx_legal_holds_active ON legal_holds (id) WHERE released_at IS NULL;

-- Every month partition retention dropped, so the ledger verifier knows which months are gone
-- on purpose. One row per dropped partition.
CREATE TABLE retention_drops (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name     TEXT        NOT NULL,
    partition_name TEXT        NOT NULL,
    month_start    TIMESTAMPTZ NOT NULL,
    month_end      TIMESTAMPTZ NOT NULL,
    rows_dropped   BIGINT      NOT NULL,
    retention_days INTEGER     NOT NULL,
    dropped_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_retention_drops_table_month ON retention_drops (table_name, month_start);
