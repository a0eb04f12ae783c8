-- audit-index writes its documents to OpenSearch and keeps only its consumed offsets here,
-- fenced like every sink stage; it reads when subjects were erased (never their keys), so an
-- event still in its lag at erasure is indexed redacted.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditflow_index') THEN
        BEGIN
            CREATE ROLE auditflow_index NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created by a concurrent migration
        END;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO auditflow_index;
GRANT SELECT, INSERT, UPDATE ON stage_offsets TO auditflow_index;
GRANT SELECT (subject_pseudonym, erased_at) ON subject_keys TO auditflow_index;
