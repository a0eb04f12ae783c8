-- Tamper evidence and crypto-shredding for audit_events.
--
-- Every row is a link of a hash chain: one chain per (source topic, source partition, event
-- month), so dropping an expired month partition removes whole chains and never cuts one.
-- row_hash = SHA-256(prev_hash ‖ canonical encoding of the stored row). Signed checkpoints of
-- chain heads are kept in ledger_checkpoints and published to the audit-checkpoints topic.
-- Personal fields are stored only inside `personal`, sealed under the subject's data key.
ALTER TABLE audit_events
    ADD COLUMN chain_id          TEXT,
    ADD COLUMN chain_seq         BIGINT,
    ADD COLUMN prev_hash         BYTEA,
    ADD COLUMN row_hash          BYTEA,
    ADD COLUMN subject_pseudonym TEXT,
    ADD COLUMN user_pseudonym    TEXT,
    ADD COLUMN key_generation    INTEGER,
    ADD COLUMN personal          BYTEA;

CREATE INDEX idx_audit_events_chain ON audit_events (chain_id, chain_seq);
CREATE INDEX idx_audit_events_subject ON audit_events (subject_pseudonym) WHERE subject_pseudonym IS NOT NULL;
CREATE INDEX idx_audit_events_user_pseudonym ON audit_events (user_pseudonym) WHERE user_pseudonym IS NOT NULL;

-- The head of every chain, advanced in the same transaction as its rows.
CREATE TABLE ledger_chain_heads (
    chain_id    TEXT        PRIMARY KEY,
    month_start TIMESTAMPTZ NOT NULL,
    last_seq    BIGINT      NOT NULL,
    last_hash   BYTEA       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    checkpointed_seq BIGINT NOT NULL DEFAULT 0
);

-- Ed25519-signed statements "chain C had N rows ending in hash H".
CREATE TABLE ledger_checkpoints (
    id           BIGSERIAL   PRIMARY KEY,
    chain_id     TEXT        NOT NULL,
    month_start  TIMESTAMPTZ NOT NULL,
    seq          BIGINT      NOT NULL,
    head_hash    BYTEA       NOT NULL,
    signed_at    TIMESTAMPTZ NOT NULL,
    key_id       TEXT        NOT NULL,
    signature    BYTEA       NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX idx_ledger_checkpoints_chain ON ledger_checkpoints (chain_id, seq);
CREATE INDEX idx_ledger_checkpoints_unpublished ON ledger_checkpoints (id) WHERE published_at IS NULL;

-- One data key per subject and generation, wrapped by the master key. Erasure sets
-- wrapped_key to NULL: the key is gone, and with it every ciphertext sealed under it.
CREATE TABLE subject_keys (
    subject_pseudonym TEXT        NOT NULL,
    generation        INTEGER     NOT NULL,
    subject_kind      TEXT        NOT NULL,
    wrapped_key       BYTEA,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    erased_at         TIMESTAMPTZ,
    PRIMARY KEY (subject_pseudonym, generation)
);

-- Signed proof that a subject's keys were destroyed, for the data-protection record.
CREATE TABLE erasure_receipts (
    id                UUID        PRIMARY KEY,
    subject_pseudonym TEXT        NOT NULL,
    reason            TEXT        NOT NULL,
    erased_at         TIMESTAMPTZ NOT NULL,
    keys_destroyed    INTEGER     NOT NULL,
    events_affected   BIGINT      NOT NULL,
    statement         TEXT        NOT NULL,
    key_id            TEXT        NOT NULL,
    signature         BYTEA       NOT NULL
);

-- Append-only: no role updates or deletes ledger rows through SQL. Expired months leave only
-- by dropping their partition (retention), which this trigger does not cover on purpose.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- The role ingesting stages log in with (as members of it): insert and read the ledger, move
-- their own offsets and chain heads, never change a stored event.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditflow_writer') THEN
        CREATE ROLE auditflow_writer NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO auditflow_writer;
GRANT SELECT, INSERT ON audit_events TO auditflow_writer;
GRANT SELECT, INSERT, UPDATE ON stage_offsets, ledger_chain_heads TO auditflow_writer;
GRANT SELECT, INSERT ON subject_keys TO auditflow_writer;
GRANT SELECT, INSERT, UPDATE (published_at) ON ledger_checkpoints TO auditflow_writer;
GRANT USAGE ON SEQUENCE ledger_checkpoints_id_seq TO auditflow_writer;

-- Partition creation runs with the owner's rights so the writer needs no DDL privilege.
ALTER FUNCTION audit_events_ensure_month(TIMESTAMPTZ) SECURITY DEFINER SET search_path = public, pg_temp;
GRANT EXECUTE ON FUNCTION audit_events_ensure_month(TIMESTAMPTZ) TO auditflow_writer;
