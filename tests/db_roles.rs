//! The per-stage database roles of migration 0006, with real logins on the local PostgreSQL
//! (`scripts/stack up`): each can do its stage's work and is refused everything else.

use auditflow::enrich::{EnrichConfig, Enricher};
use auditflow::event::{EnrichedEvent, SourcePosition};
use auditflow::ledger::LedgerSigner;
use auditflow::privacy::{PersonalField, PrivacyKeys, SecretKey};
use auditflow::runtime::{OffsetAdvance, SinkStage, WriteOutcome};
use auditflow::stages::persist::{PersistSettings, PersistStage};
use chrono::Utc;
use sqlx::PgPool;

fn admin_url() -> String {
    std::env::var("AUDITFLOW_DATABASE_URL").unwrap_or_else(|_| "postgres://auditflow:auditflow@127.0.0.1:5432/auditflow".into())
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// A fresh, migrated database and logins made members of the given group roles.
struct Fixture {
    admin: PgPool,
    database: String,
    logins: Vec<String>,
}

impl Fixture {
    async fn new() -> Fixture {
        let database = format!("db_roles_{}", suffix());
        let admin = PgPool::connect(&admin_url()).await.expect("PostgreSQL reachable: run scripts/stack up");
        sqlx::query(&format!("CREATE DATABASE \"{database}\"")).execute(&admin).await.expect("create database");
        let owner = PgPool::connect(&auditflow::bench::env::replace_db_name(&admin_url(), &database)).await.expect("connect");
        auditflow::db::MIGRATOR.run(&owner).await.expect("migrations");
        owner.close().await;
        Fixture { admin, database, logins: Vec::new() }
    }

    /// A login in `group`, and a pool connected as it to the test database.
    async fn login(&mut self, group: &str) -> PgPool {
        let name = format!("t_{group}_{}", suffix());
        sqlx::query(&format!("CREATE ROLE \"{name}\" LOGIN PASSWORD 'test-only' IN ROLE {group}"))
            .execute(&self.admin)
            .await
            .expect("create login");
        self.logins.push(name.clone());
        let url = auditflow::bench::env::replace_db_name(&admin_url(), &self.database);
        let url = url.replacen("auditflow:auditflow@", &format!("{name}:test-only@"), 1);
        assert!(url.contains(&name), "admin URL not of the form user:password@…: {url}");
        PgPool::connect(&url).await.expect("connect as the stage login")
    }

    async fn close(self) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database)).execute(&self.admin).await;
        for login in &self.logins {
            let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{login}\"")).execute(&self.admin).await;
        }
    }
}

/// `Ok` if the statement ran, else the server's message.
async fn run(pool: &PgPool, sql: &str) -> Result<(), String> {
    sqlx::query(sql).execute(pool).await.map(|_| ()).map_err(|e| e.to_string())
}

/// The statement must fail for lack of a privilege (not, say, a trigger or a syntax error).
async fn denied(pool: &PgPool, sql: &str) -> Result<(), String> {
    match run(pool, sql).await {
        Ok(()) => Err(format!("allowed, but must be refused: {sql}")),
        Err(e) if e.contains("permission denied") => Ok(()),
        Err(e) => Err(format!("refused for another reason than a privilege ({e}): {sql}")),
    }
}

async fn allowed(pool: &PgPool, sql: &str) -> Result<(), String> {
    run(pool, sql).await.map_err(|e| format!("refused, but the stage needs it ({e}): {sql}"))
}

fn events(n: usize) -> Vec<EnrichedEvent> {
    let enricher = Enricher::new(&EnrichConfig::default()).expect("enricher");
    let mut mix = auditflow::demo::EventMix::new(5, 20);
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let payload = serde_json::to_vec(&mix.next_event()).expect("json");
            let source = SourcePosition { topic: "t.audit-enriched".into(), partition: 0, offset: i as i64, timestamp_ms: Some(now.timestamp_millis()) };
            enricher.enrich(&payload, &source, now).expect("valid event")
        })
        .collect()
}

async fn persist_checks(pool: &PgPool) -> Result<(), String> {
    // Persist's real write path: month partition, subject keys, ledger chain, COPY, offsets.
    let settings = PersistSettings {
        input_topic: "t.audit-enriched".into(),
        group_id: "g".into(),
        keys: PrivacyKeys { master: SecretKey([1u8; 32]), pseudonym: SecretKey([2u8; 32]) },
        personal_fields: PersonalField::ALL.to_vec(),
        signer: LedgerSigner::new(&SecretKey([3u8; 32])),
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_export_dir: None,
        checkpoint_topic: "unused".into(),
    };
    let mut stage = PersistStage::new(pool.clone(), settings, tokio::runtime::Handle::current(), None);
    let advance = vec![OffsetAdvance { topic: "t.audit-enriched".into(), partition: 0, expected: None, next: 10 }];
    match stage.write(&events(10), &advance).await {
        Ok(WriteOutcome::Committed) => {}
        other => return Err(format!("persist could not write as its login: {other:?}")),
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(pool).await.map_err(|e| e.to_string())?;
    if stored != 10 {
        return Err(format!("{stored} rows stored, expected 10"));
    }
    allowed(pool, "INSERT INTO ledger_checkpoints (chain_id, month_start, seq, head_hash, signed_at, key_id, signature)
                   VALUES ('c', now(), 1, '\\x00', now(), 'k', '\\x00')").await?;
    allowed(pool, "UPDATE ledger_checkpoints SET published_at = now()").await?;
    // Never change or remove a stored event, even before the append-only trigger is reached.
    denied(pool, "UPDATE audit_events SET action = 'tampered'").await?;
    denied(pool, "DELETE FROM audit_events").await?;
    denied(pool, "TRUNCATE audit_events").await?;
    denied(pool, "UPDATE ledger_checkpoints SET signature = '\\x01'").await?;
    denied(pool, "DELETE FROM ledger_checkpoints").await?;
    denied(pool, "UPDATE subject_keys SET wrapped_key = NULL").await?;
    // Nothing of the other stages.
    denied(pool, "SELECT 1 FROM audit_alerts LIMIT 1").await?;
    denied(pool, "SELECT 1 FROM alert_matches LIMIT 1").await?;
    denied(pool, "DELETE FROM alert_matches").await?;
    denied(pool, "SELECT 1 FROM compliance_events LIMIT 1").await?;
    denied(pool, "SELECT 1 FROM legal_holds LIMIT 1").await?;
    denied(pool, "SELECT compliance_events_ensure_month(now())").await?;
    denied(pool, "CREATE TABLE intruder (x int)").await?;
    Ok(())
}

async fn compliance_checks(pool: &PgPool) -> Result<(), String> {
    allowed(pool, "SELECT 1 FROM audit_events LIMIT 0").await?;
    allowed(pool, "SELECT compliance_events_ensure_month(now())").await?;
    allowed(pool, "INSERT INTO compliance_events (event_id, event_time, framework, control, control_name, privileged,
                   action, resource, success, severity, classification)
                   VALUES ('e', now(), 'SOX', 'c', 'n', false, 'a', 'r', true, 'LOW', 'PUBLIC') ON CONFLICT DO NOTHING").await?;
    allowed(pool, "INSERT INTO stage_offsets (consumer_group, topic, partition, next_offset) VALUES ('g', 't', 0, 1)
                   ON CONFLICT DO NOTHING").await?;
    denied(pool, "UPDATE compliance_events SET control = 'x'").await?;
    denied(pool, "DELETE FROM compliance_events").await?;
    denied(pool, "INSERT INTO audit_events (id) VALUES ('x')").await?;
    denied(pool, "SELECT audit_events_ensure_month(now())").await?;
    denied(pool, "SELECT 1 FROM audit_alerts LIMIT 1").await?;
    denied(pool, "SELECT 1 FROM subject_keys LIMIT 1").await?;
    Ok(())
}

async fn alert_checks(pool: &PgPool) -> Result<(), String> {
    allowed(pool, "SELECT 1 FROM audit_alerts LIMIT 1").await?;
    allowed(pool, "DELETE FROM alert_matches WHERE created_at < now() - interval '1 day'").await?;
    allowed(pool, "SELECT 1 FROM alert_deliveries LIMIT 1").await?;
    allowed(pool, "SELECT nextval('alert_deliveries_id_seq')").await?;
    denied(pool, "DELETE FROM audit_alerts").await?;
    denied(pool, "SELECT 1 FROM audit_events LIMIT 1").await?;
    denied(pool, "SELECT 1 FROM subject_keys LIMIT 1").await?;
    denied(pool, "SELECT 1 FROM compliance_events LIMIT 1").await?;
    Ok(())
}

async fn auditor_checks(pool: &PgPool) -> Result<(), String> {
    for table in ["audit_events", "ledger_chain_heads", "ledger_checkpoints", "retention_drops", "compliance_events", "audit_alerts"] {
        allowed(pool, &format!("SELECT 1 FROM {table} LIMIT 1")).await?;
    }
    denied(pool, "SELECT 1 FROM subject_keys LIMIT 1").await?;
    denied(pool, "INSERT INTO legal_holds (subject_pseudonym, reason, created_by) VALUES ('s', 'r', 'me')").await?;
    denied(pool, "UPDATE stage_offsets SET next_offset = 0").await?;
    denied(pool, "INSERT INTO ledger_checkpoints (chain_id, month_start, seq, head_hash, signed_at, key_id, signature)
                  VALUES ('c', now(), 1, '\\x00', now(), 'k', '\\x00')").await?;
    Ok(())
}

async fn operator_checks(pool: &PgPool) -> Result<(), String> {
    allowed(pool, "SELECT 1 FROM audit_events LIMIT 1").await?;
    allowed(pool, "INSERT INTO legal_holds (subject_pseudonym, reason, created_by) VALUES ('s', 'r', 'me')").await?;
    allowed(pool, "UPDATE legal_holds SET released_at = now(), released_by = 'me'").await?;
    allowed(pool, "UPDATE subject_keys SET wrapped_key = NULL, erased_at = now() WHERE false").await?;
    denied(pool, "DELETE FROM legal_holds").await?;
    denied(pool, "UPDATE audit_events SET action = 'tampered'").await?;
    denied(pool, "DELETE FROM subject_keys").await?;
    Ok(())
}

async fn api_checks(pool: &PgPool) -> Result<(), String> {
    operator_checks(pool).await?;
    allowed(pool, "UPDATE audit_alerts SET triage_status = 'acknowledged', triaged_by = 'me', triaged_at = now() WHERE false").await?;
    allowed(pool, "SELECT 1 FROM alert_triage LIMIT 1").await?;
    allowed(pool, "INSERT INTO api_idempotency_keys (caller, key, body_sha256, received_at) VALUES ('c', 'k', '\\x00', now())").await?;
    allowed(pool, "DELETE FROM api_idempotency_keys WHERE received_at < now() - interval '1 day'").await?;
    allowed(pool, "INSERT INTO ledger_verifications (id, started_by) VALUES (gen_random_uuid(), 'me')").await?;
    allowed(pool, "SELECT 1 FROM privacy_key_check LIMIT 1").await?;
    denied(pool, "INSERT INTO audit_events (id, \"timestamp\", action, resource, classification, severity, success, compliance, source_topic, source_partition, source_offset, enriched_at)
                  VALUES ('x', now(), 'a', 'r', 'PUBLIC', 'LOW', true, '{}', 't', 0, 0, now())").await?;
    denied(pool, "DELETE FROM alert_triage").await?;
    denied(pool, "UPDATE ledger_checkpoints SET signature = '\\x00'").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_login_has_exactly_its_privileges() {
    let mut fx = Fixture::new().await;
    let persist = fx.login("auditflow_persist").await;
    let compliance = fx.login("auditflow_compliance").await;
    let alert = fx.login("auditflow_alert").await;
    let auditor = fx.login("auditflow_auditor").await;
    let operator = fx.login("auditflow_operator").await;
    let api = fx.login("auditflow_api").await;
    // Persist first: the others then find rows and partitions to be refused or allowed on.
    let outcome = async {
        persist_checks(&persist).await.map_err(|e| format!("auditflow_persist: {e}"))?;
        compliance_checks(&compliance).await.map_err(|e| format!("auditflow_compliance: {e}"))?;
        alert_checks(&alert).await.map_err(|e| format!("auditflow_alert: {e}"))?;
        auditor_checks(&auditor).await.map_err(|e| format!("auditflow_auditor: {e}"))?;
        operator_checks(&operator).await.map_err(|e| format!("auditflow_operator: {e}"))?;
        api_checks(&api).await.map_err(|e| format!("auditflow_api: {e}"))
    }
    .await;
    for pool in [persist, compliance, alert, auditor, operator, api] {
        pool.close().await;
    }
    fx.close().await;
    outcome.unwrap();
}

#[tokio::test]
async fn the_roles_migration_runs_again_without_error() {
    // Roles outlive a database: a second database migrating finds them and must not fail.
    let a = Fixture::new().await;
    let b = Fixture::new().await;
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
          JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'auditflow_writer'",
    )
    .fetch_all(&a.admin)
    .await
    .unwrap();
    a.close().await;
    b.close().await;
    assert!(members.iter().any(|m| m == "auditflow_persist"), "auditflow_persist is not a member of auditflow_writer: {members:?}");
}
