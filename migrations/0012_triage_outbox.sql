-- Triage decisions are published on security-alerts from this table (an outbox): a decision
-- whose update did not reach Kafka at once is sent again until it has.
ALTER TABLE alert_triage ADD COLUMN published_at TIMESTAMPTZ;
CREATE INDEX idx_alert_triage_unpublished ON alert_triage (id) WHERE published_at IS NULL;
GRANT UPDATE (published_at) ON alert_triage TO auditflow_api;
