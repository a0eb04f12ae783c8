-- A subject's timeline lists the alerts about them: those their user or address was the group
-- of, or whose triggering event was theirs. Expression indexes keep that lookup off a scan of
-- every alert.
CREATE INDEX idx_audit_alerts_group_user ON audit_alerts ((group_key ->> 'user_id'));
CREATE INDEX idx_audit_alerts_group_ip ON audit_alerts ((group_key ->> 'ip_address'));
CREATE INDEX idx_audit_alerts_trigger_user ON audit_alerts ((trigger_match -> 'event' ->> 'userId'));
CREATE INDEX idx_audit_alerts_trigger_ip ON audit_alerts ((trigger_match -> 'event' ->> 'ipAddress'));
-- The console's live view asks for alerts changed since its last look.
CREATE INDEX idx_audit_alerts_updated ON audit_alerts (updated_at);
-- An event's page lists the alerts it is evidence for.
CREATE INDEX idx_audit_alerts_evidence ON audit_alerts USING gin (evidence_event_ids);
