//! The fleet on Kafka's authenticated listener (SASL_SSL with SCRAM-SHA-512, see
//! `scripts/stack`): events flow end to end, and the password never shows in logs or metrics.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn sasl_env(password: &str) -> Vec<(String, String)> {
    let stack = repo_root().join(".stack");
    let var = |k: &str, d: String| std::env::var(k).unwrap_or(d);
    vec![
        ("AUDITFLOW_KAFKA_BROKERS".into(), var("AUDITFLOW_STACK_SASL_BROKERS", "127.0.0.1:9094".into())),
        ("AUDITFLOW_LIBRDKAFKA_SECURITY_PROTOCOL".into(), "SASL_SSL".into()),
        ("AUDITFLOW_LIBRDKAFKA_SASL_MECHANISMS".into(), "SCRAM-SHA-512".into()),
        ("AUDITFLOW_LIBRDKAFKA_SASL_USERNAME".into(), var("AUDITFLOW_STACK_SASL_USERNAME", "auditflow".into())),
        ("AUDITFLOW_LIBRDKAFKA_SASL_PASSWORD".into(), password.into()),
        (
            "AUDITFLOW_LIBRDKAFKA_SSL_CA_LOCATION".into(),
            var("AUDITFLOW_STACK_CA", stack.join("kafka/tls/ca.pem").display().to_string()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_over_sasl_ssl_and_never_reveals_the_password() {
    let password = std::env::var("AUDITFLOW_STACK_SASL_PASSWORD").unwrap_or_else(|_| "auditflow-secret".into());
    let mut env = TestEnv::new("sasl", 2).await;
    env.extra_env = sasl_env(&password);
    let events = sample_events(500, 31);
    let enrich = env.start_stage("audit-enrich", "e1");
    let persist = env.start_stage("audit-persist", "p1");
    env.produce_events(&events); // the harness's own producer uses the plaintext listener
    env.wait_for_rows(500, Duration::from_secs(120)).await;
    for stage in [&enrich, &persist] {
        // Counters move just after the commit that made the rows visible: poll briefly.
        let addr = http_addr(stage);
        let start = Instant::now();
        let metrics = loop {
            let (_, m) = http_get(&addr, "/metrics");
            if m.contains("auditflow_consumed_total") || start.elapsed() > Duration::from_secs(15) {
                break m;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(metrics.contains("auditflow_consumed_total"), "{metrics}");
        assert!(!metrics.contains(&password), "the SASL password is not in /metrics");
        assert!(!stage.log().contains(&password), "the SASL password is not in the logs");
    }

    // A wrong password: the stage never becomes ready, and says why without the secret.
    let mut wrong = TestEnv { extra_env: sasl_env("not-the-password"), ..env };
    wrong.extra_env.push(("AUDITFLOW_GROUP_PREFIX".into(), format!("{}-wrong", wrong.id)));
    let bad = wrong.start_stage("audit-enrich", "bad");
    let addr = http_addr(&bad);
    let start = Instant::now();
    while !bad.log().to_lowercase().contains("authentication") && start.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(bad.log().to_lowercase().contains("authentication"), "{}", bad.log());
    assert_eq!(http_get(&addr, "/readyz").0, 503, "not ready without a working connection");
    assert!(!bad.log().contains("not-the-password"));
}
