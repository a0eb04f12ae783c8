-- The W3C trace context of the match that opened an alert: its dispatch and deliveries join
-- the trace of the event behind it, and the alert's record, e-mail and webhook name that trace.
ALTER TABLE audit_alerts ADD COLUMN trace_parent text;
