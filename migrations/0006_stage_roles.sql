-- One NOLOGIN group role per database user of the pipeline, each with only what its SQL needs.
-- Every stage logs in with its own login, a member of its group role (README, "Database
-- roles"); only the schema owner runs migrations and retention (DROP of month partitions).
--
--   auditflow_persist     audit-persist: the append-only ledger (member of auditflow_writer)
--   auditflow_compliance  audit-compliance: compliance_events, its own offsets
--   auditflow_alert       audit-alert: alert tables, its own offsets
--   auditflow_auditor     `auditflow verify`, `report`, `ops lag`: read only
--   auditflow_operator    `auditflow holds`, `erase`, `dlq replay`, `ops rewind`: auditor + those writes
-- audit-enrich and audit-rules never connect to PostgreSQL and get no role.
--
-- Roles are global to the cluster and other databases may run this at the same moment, so
-- creating a role or a membership that appeared meanwhile is not an error. Grants on tables
-- are per database and idempotent.

CREATE FUNCTION pg_temp.auditflow_ensure_role(role_name TEXT, member_of TEXT[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    parent TEXT;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created by a concurrent migration
        END;
    END IF;
    FOREACH parent IN ARRAY member_of LOOP
        IF NOT pg_has_role(role_name, parent, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', parent, role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END;
$$;

SELECT pg_temp.auditflow_ensure_role('auditflow_persist', ARRAY['auditflow_writer']);
SELECT pg_temp.auditflow_ensure_role('auditflow_compliance', ARRAY[]::TEXT[]);
SELECT pg_temp.auditflow_ensure_role('auditflow_alert', ARRAY[]::TEXT[]);
SELECT pg_temp.auditflow_ensure_role('auditflow_auditor', ARRAY[]::TEXT[]);
SELECT pg_temp.auditflow_ensure_role('auditflow_operator', ARRAY['auditflow_auditor']);

GRANT USAGE ON SCHEMA public
    TO auditflow_persist, auditflow_compliance, auditflow_alert, auditflow_auditor, auditflow_operator;

-- Partition creation runs with the owner's rights (SECURITY DEFINER) and only for the roles
-- that write the table: not for everyone, as functions are by default.
REVOKE EXECUTE ON FUNCTION audit_events_ensure_month(TIMESTAMPTZ) FROM PUBLIC;
ALTER FUNCTION compliance_events_ensure_month(TIMESTAMPTZ) SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION compliance_events_ensure_month(TIMESTAMPTZ) FROM PUBLIC;

-- audit-persist: everything through auditflow_writer (0003); nothing more.

-- audit-compliance: its records and offsets; reads audit_events only to check the schema.
GRANT SELECT, INSERT ON compliance_events TO auditflow_compliance;
GRANT SELECT, INSERT, UPDATE ON stage_offsets TO auditflow_compliance;
GRANT SELECT ON audit_events TO auditflow_compliance;
GRANT EXECUTE ON FUNCTION compliance_events_ensure_month(TIMESTAMPTZ) TO auditflow_compliance;

-- audit-alert: alerts, the matches folded into them (expired ones deleted), delivery attempts.
GRANT SELECT, INSERT, UPDATE ON audit_alerts TO auditflow_alert;
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_matches TO auditflow_alert;
GRANT SELECT, INSERT ON alert_deliveries TO auditflow_alert;
GRANT USAGE ON SEQUENCE alert_deliveries_id_seq TO auditflow_alert;
GRANT SELECT, INSERT, UPDATE ON stage_offsets TO auditflow_alert;

-- Auditors: read the ledger, its checkpoints and retention record, compliance and alerts.
GRANT SELECT ON audit_events, ledger_chain_heads, ledger_checkpoints, retention_drops, compliance_events,
    audit_alerts, alert_deliveries, legal_holds, erasure_receipts, stage_offsets, dlq_replays
    TO auditflow_auditor;

-- Operators: legal holds, crypto-shredding (keys destroyed, alerts scrubbed, signed receipt),
-- dead-letter replays and offset rewinds. Still no UPDATE or DELETE of audit_events.
GRANT INSERT, UPDATE (released_at, released_by) ON legal_holds TO auditflow_operator;
GRANT SELECT, UPDATE (wrapped_key, erased_at) ON subject_keys TO auditflow_operator;
GRANT UPDATE ON audit_alerts TO auditflow_operator;
GRANT INSERT ON erasure_receipts TO auditflow_operator;
GRANT INSERT ON dlq_replays TO auditflow_operator;
GRANT INSERT, UPDATE ON stage_offsets TO auditflow_operator;
