//! The persist stage's write path on its own: every column lands as enriched, a replayed batch
//! adds nothing, and a write that finds other offsets than expected is fenced. Needs the
//! local PostgreSQL (`scripts/stack up`); no Kafka involved.

use auditflow::enrich::{EnrichConfig, Enricher};
use auditflow::event::{EnrichedEvent, SourcePosition};
use auditflow::runtime::{OffsetAdvance, SinkStage, WriteOutcome};
use auditflow::ledger::LedgerSigner;
use auditflow::privacy::{PrivacyKeys, SecretKey};
use auditflow::stages::persist::{PersistSettings, PersistStage};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

fn admin_url() -> String {
    std::env::var("AUDITFLOW_DATABASE_URL").unwrap_or_else(|_| "postgres://auditflow:auditflow@127.0.0.1:5432/auditflow".into())
}

async fn fresh_database() -> (PgPool, String) {
    let name = format!("persist_write_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin = PgPool::connect(&admin_url()).await.expect("PostgreSQL reachable: run scripts/stack up");
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&admin).await.expect("create database");
    admin.close().await;
    let url = auditflow::bench::env::replace_db_name(&admin_url(), &name);
    let pool = PgPool::connect(&url).await.expect("connect");
    auditflow::db::MIGRATOR.run(&pool).await.expect("migrations");
    (pool, name)
}

async fn drop_database(pool: PgPool, name: &str) {
    pool.close().await;
    let admin = PgPool::connect(&admin_url()).await.expect("admin");
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&admin).await;
}

fn events(n: usize) -> Vec<EnrichedEvent> {
    let enricher = Enricher::new(&EnrichConfig::default()).expect("enricher");
    let mut mix = auditflow::demo::EventMix::new(9, 50);
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let mut raw = mix.next_event();
            if i == 0 {
                // Text that needs escaping on every path to the database.
                raw.error_message = Some("tab\there \"quoted\" back\\slash, ünïcödé".into());
                raw.metadata = Some(serde_json::json!({"note": "line\nbreak", "n": [1, 2.5, null], "deep": {"x": true}}));
                raw.duration = Some(7);
            }
            let payload = serde_json::to_vec(&raw).expect("json");
            let source = SourcePosition { topic: "t.audit-enriched".into(), partition: 2, offset: i as i64, timestamp_ms: Some(now.timestamp_millis()) };
            enricher.enrich(&payload, &source, now).expect("valid event")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_is_written_once_and_fenced_writes_write_nothing() {
    let (pool, name) = fresh_database().await;
    let items = events(40);
    // No field configured personal: every column is stored in clear, so each can be compared.
    let settings = PersistSettings {
        input_topic: "t.audit-enriched".into(),
        group_id: "g".into(),
        keys: PrivacyKeys { master: SecretKey([1u8; 32]), pseudonym: SecretKey([2u8; 32]) },
        personal_fields: Vec::new(),
        signer: LedgerSigner::new(&SecretKey([3u8; 32])),
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_export_dir: None,
        checkpoint_topic: "unused".into(),
    };
    let mut stage = PersistStage::new(pool.clone(), settings, tokio::runtime::Handle::current(), None);
    let advance = |expected, next| vec![OffsetAdvance { topic: "t.audit-enriched".into(), partition: 2, expected, next }];

    assert_eq!(stage.write(&items, &advance(None, 40)).await.expect("write"), WriteOutcome::Committed);

    let rows = sqlx::query(
        r#"SELECT id, "timestamp", user_id, session_id, action, resource, resource_id, method, endpoint,
                  status_code, user_agent, host(ip_address) AS ip, location, ip_facts, classification,
                  severity, metadata, success, error_message, duration, compliance, source_topic,
                  source_partition, source_offset, enriched_at
             FROM audit_events ORDER BY source_offset"#,
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), items.len());
    for (row, ev) in rows.iter().zip(&items) {
        assert_eq!(row.get::<String, _>("id"), ev.id);
        assert_eq!(row.get::<DateTime<Utc>, _>("timestamp"), ev.timestamp);
        assert_eq!(row.get::<Option<String>, _>("user_id"), ev.user_id);
        assert_eq!(row.get::<Option<String>, _>("session_id"), ev.session_id);
        assert_eq!(row.get::<String, _>("action"), ev.action);
        assert_eq!(row.get::<String, _>("resource"), ev.resource);
        assert_eq!(row.get::<Option<String>, _>("resource_id"), ev.resource_id);
        assert_eq!(row.get::<Option<String>, _>("method"), ev.method);
        assert_eq!(row.get::<Option<String>, _>("endpoint"), ev.endpoint);
        assert_eq!(row.get::<Option<i32>, _>("status_code"), ev.status_code);
        assert_eq!(row.get::<Option<String>, _>("user_agent"), ev.user_agent);
        assert_eq!(row.get::<Option<String>, _>("ip"), ev.ip_address);
        assert_eq!(
            row.get::<Option<serde_json::Value>, _>("location"),
            ev.location.as_ref().map(|l| serde_json::to_value(l).expect("json"))
        );
        assert_eq!(
            row.get::<Option<serde_json::Value>, _>("ip_facts"),
            ev.ip.as_ref().map(|f| serde_json::to_value(f).expect("json"))
        );
        assert_eq!(row.get::<String, _>("classification"), ev.classification.as_str());
        assert_eq!(row.get::<String, _>("severity"), ev.severity.as_str());
        assert_eq!(row.get::<Option<serde_json::Value>, _>("metadata"), ev.metadata);
        assert_eq!(row.get::<bool, _>("success"), ev.success);
        assert_eq!(row.get::<Option<String>, _>("error_message"), ev.error_message);
        assert_eq!(row.get::<Option<i64>, _>("duration"), ev.duration_ms);
        assert_eq!(row.get::<serde_json::Value, _>("compliance"), serde_json::to_value(ev.compliance).expect("json"));
        assert_eq!(row.get::<String, _>("source_topic"), ev.source.topic);
        assert_eq!(row.get::<i32, _>("source_partition"), ev.source.partition);
        assert_eq!(row.get::<i64, _>("source_offset"), ev.source.offset);
        assert_eq!(row.get::<DateTime<Utc>, _>("enriched_at"), ev.enriched_at);
    }

    // The same events again (an upstream replay): offsets move on, no row is added.
    assert_eq!(stage.write(&items, &advance(Some(40), 80)).await.expect("write"), WriteOutcome::Committed);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.expect("count");
    assert_eq!(count, items.len() as i64);

    // An instance that still expects the old offset has lost the partition: nothing written.
    let more = events(45);
    assert_eq!(stage.write(&more[40..], &advance(Some(40), 85)).await.expect("write"), WriteOutcome::Fenced);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.expect("count");
    assert_eq!(count, items.len() as i64);
    let stored: i64 = sqlx::query_scalar("SELECT next_offset FROM stage_offsets WHERE consumer_group = 'g'")
        .fetch_one(&pool)
        .await
        .expect("offset");
    assert_eq!(stored, 80);

    drop(stage);
    drop_database(pool, &name).await;
}
