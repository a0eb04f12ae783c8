-- The ledger stays correct with any number of persist instances, and persist proves at start
-- that it holds the keys the database was written with.

-- At most one row per chain position. A chain lives inside one month, so a unique index on
-- each month partition is unique for the whole chain (PostgreSQL cannot have a unique index on
-- the partitioned parent without the partition key).
CREATE FUNCTION audit_events_index_month(part TEXT) RETURNS VOID
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I (chain_id, chain_seq)', part || '_chain_seq', part);
END;
$$;
REVOKE EXECUTE ON FUNCTION audit_events_index_month(TEXT) FROM PUBLIC;

-- As in 0001, and each new month gets the index.
CREATE OR REPLACE FUNCTION audit_events_ensure_month(at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    month_start TIMESTAMPTZ := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name TEXT := 'audit_events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                name, month_start, month_start + INTERVAL '1 month');
            PERFORM audit_events_index_month(name);
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another instance created it first
        END;
    END IF;
    RETURN name;
END;
$$;

DO $$
DECLARE
    part RECORD;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = 'audit_events'
    LOOP
        BEGIN
            PERFORM audit_events_index_month(part.relname);
        EXCEPTION WHEN unique_violation THEN
            -- A chain forked before this migration: keep the evidence, let `auditflow verify` name it.
            RAISE WARNING 'partition % holds two rows at one chain position; run auditflow verify', part.relname;
        END;
    END LOOP;
END;
$$;

-- HMACs of fixed labels under the master and pseudonym keys, written at first use.
CREATE TABLE privacy_key_check (
    id              SMALLINT    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    master_check    BYTEA       NOT NULL,
    pseudonym_check BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT ON privacy_key_check TO auditflow_writer;
