//! The Grafana dashboard and the Prometheus alert rules only use metrics the stages really
//! export: every PromQL expression parses, and every metric it names appears (as a `# HELP`
//! line) on the `/metrics` of a running stage. `/metrics` and the logs never show the database
//! password. SIGTERM drains a stage in well under the Helm chart's grace period.
//!
//! Runs audit-enrich and audit-persist against the shared local stack (`scripts/stack up`),
//! on topics, groups and a database of their own.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value as Json;
use sqlx::PgPool;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------- metric names in the artifacts

/// Collects the metric name of every vector selector.
struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = String;
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        };
        if let Some(vs) = selector {
            match &vs.name {
                Some(name) => {
                    self.0.insert(name.clone());
                }
                None => return Err(format!("a selector without a metric name: {vs}")),
            }
        }
        Ok(true)
    }
}

/// Parse one expression (Grafana variables replaced by values Prometheus accepts) and add the
/// metric names it uses.
fn collect(origin: &str, expr: &str, names: &mut BTreeSet<String>) {
    let concrete = expr.replace("$__rate_interval", "5m").replace("${stage}", ".*").replace("$stage", ".*");
    let ast = parser::parse(&concrete).unwrap_or_else(|e| panic!("{origin}: PromQL does not parse: {e}\n{expr}"));
    let mut v = Names(BTreeSet::new());
    walk_expr(&mut v, &ast).unwrap_or_else(|e| panic!("{origin}: {e}"));
    assert!(!v.0.is_empty(), "{origin}: no metric in {expr}");
    names.extend(v.0);
}

/// Every `expr` of every panel target of the dashboard.
fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/dashboards/auditflow.json")).expect("dashboard JSON");
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"stage"), "the dashboard has a `stage` template variable");
    let mut names = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("target expr");
            assert!(expr.contains("$stage"), "panel {}: filter by the stage variable: {expr}", panel["title"]);
            collect(&format!("dashboard panel {}", panel["title"]), expr, &mut names);
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "the dashboard has {exprs} queries");
    names
}

/// Every `expr` of every rule of alerts.yml.
fn alert_metrics() -> BTreeSet<String> {
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let rules = serde_json::to_value(rules).expect("json");
    let mut names = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("alerting rules only").to_string();
            assert!(rule["labels"]["severity"].is_string(), "{alert}: a severity label");
            assert!(rule["annotations"]["summary"].is_string(), "{alert}: a summary");
            collect(&format!("alert {alert}"), rule["expr"].as_str().expect("expr"), &mut names);
            alerts.insert(alert);
        }
    }
    for needed in
        ["AuditflowConsumerLagGrowing", "AuditflowDeadLetterSpike", "AuditflowStageDown", "AuditflowSourceSilent"]
    {
        assert!(alerts.contains(needed), "alerts.yml lacks {needed}");
    }
    names
}

/// Metric families announced on a scrape: name → type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(name.to_string(), kind.to_string());
            }
        }
    }
    out
}

fn has_help(scrape: &str, name: &str) -> bool {
    scrape.lines().any(|l| l.strip_prefix("# HELP ").and_then(|r| r.split_whitespace().next()) == Some(name))
}

/// Is `name` (possibly a histogram's _bucket/_sum/_count series) exported by one of the scrapes?
fn exported(scrapes: &[String], name: &str) -> bool {
    scrapes.iter().any(|scrape| {
        if has_help(scrape, name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| {
                has_help(scrape, base) && families(scrape).get(base).map(String::as_str) == Some("histogram")
            })
        })
    })
}

// ---------------------------------------------------------------- running stages

struct Stage {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Stage {
    fn start(binary: &str, env: &HashMap<String, String>, log_dir: &Path) -> Stage {
        let exe = match binary {
            "audit-enrich" => env!("CARGO_BIN_EXE_audit-enrich"),
            "audit-persist" => env!("CARGO_BIN_EXE_audit-persist"),
            "audit-alert" => env!("CARGO_BIN_EXE_audit-alert"),
            other => panic!("unknown stage {other}"),
        };
        let log_path = log_dir.join(format!("{binary}.log"));
        let log = File::create(&log_path).expect("log file");
        let child = Command::new(exe)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn stage");
        Stage { child: Some(child), log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The address it logged (`addr` of the JSON line announcing /metrics).
    fn addr(&mut self) -> String {
        let start = Instant::now();
        loop {
            for line in self.log().lines() {
                if let Ok(Json::Object(o)) = serde_json::from_str::<Json>(line) {
                    if let Some(addr) = o.get("addr").and_then(Json::as_str) {
                        return addr.to_string();
                    }
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("stage exited ({status}) before serving http:\n{}", self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no addr logged:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the time it took to exit cleanly.
    fn terminate(&mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "exit after SIGTERM: {status}\n{}", self.log());
                return start.elapsed();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("no exit within 60 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    s.read_to_string(&mut response).ok();
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Scrape until `done` holds (or panic after `timeout` with the last scrape).
fn scrape_until(addr: &str, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = http_get(addr, "/metrics");
        if status == 200 && done(&body) {
            return body;
        }
        assert!(start.elapsed() < timeout, "after {timeout:?}, /metrics on {addr} still lacks {what}:\n{body}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Until `/readyz` answers 200: connected, schema checked, processing.
fn wait_ready(addr: &str) {
    let start = Instant::now();
    while http_get(addr, "/readyz").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "{addr} not ready after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drops the test's database and role however the test ends (roles are cluster-wide).
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let id = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = PgPool::connect(&support::admin_database_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{id}\" WITH (FORCE)")).execute(&admin).await;
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{id}\"")).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

fn with_db(url: &str, db: &str) -> String {
    let i = url.rfind('/').expect("database URL has a path");
    format!("{}/{db}", &url[..i])
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    // What the artifacts need, checked for syntax first: no stack needed for that part.
    let mut wanted = dashboard_metrics();
    wanted.extend(alert_metrics());

    // A private world on the shared stack.
    let id = format!("metrics_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let log_dir = repo().join("target/test-logs").join(&id);
    std::fs::create_dir_all(&log_dir).expect("log dir");
    // The stages log in as a role of their own whose password is unique to this run: the one
    // secret they hold, which must never show on /metrics or in the logs.
    let admin = PgPool::connect(&support::admin_database_url()).await.expect("PostgreSQL reachable: run scripts/stack up");
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDatabase(id.clone());
    sqlx::query(&format!("CREATE DATABASE \"{id}\"")).execute(&admin).await.expect("create database");
    // Like the Compose schema owner: no superuser, but CREATEROLE for the stages' group roles.
    sqlx::query(&format!("CREATE ROLE \"{id}\" LOGIN CREATEROLE NOSUPERUSER PASSWORD '{password}'"))
        .execute(&admin)
        .await
        .expect("create role");
    // As in production, the stages use the credentials the schema was migrated with: persist
    // creates month partitions of audit_events, which only the table's owner may do.
    let test_db_url = with_db(&support::admin_database_url(), &id);
    let on_test_db = PgPool::connect(&test_db_url).await.expect("connect test database");
    sqlx::query(&format!("GRANT ALL ON SCHEMA public TO \"{id}\"")).execute(&on_test_db).await.expect("grant");
    on_test_db.close().await;
    let host = test_db_url.split('@').nth(1).expect("database URL has a host");
    let database_url = format!("postgres://{id}:{password}@{host}");
    let pool = PgPool::connect(&database_url).await.expect("connect as the stages' role");
    auditflow::db::MIGRATOR.run(&pool).await.expect("migrations apply");

    let mut env: HashMap<String, String> = [
        ("AUDITFLOW_KAFKA_BROKERS", support::brokers()),
        ("AUDITFLOW_DATABASE_URL", database_url.clone()),
        ("AUDITFLOW_TOPIC_RAW", format!("{id}.audit-raw")),
        ("AUDITFLOW_TOPIC_ENRICHED", format!("{id}.audit-enriched")),
        ("AUDITFLOW_TOPIC_DLQ", format!("{id}.audit-dlq")),
        ("AUDITFLOW_TOPIC_RULE_MATCHES", format!("{id}.audit-rule-matches")),
        ("AUDITFLOW_TOPIC_PARTITIONS", "2".into()),
        ("AUDITFLOW_HTTP_LISTEN", "127.0.0.1:0".into()),
        ("AUDITFLOW_LOG_FORMAT", "json".into()),
        ("AUDITFLOW_LOG", "info,librdkafka=warn".into()),
        ("AUDITFLOW_RETRY_MAX_BACKOFF_MS", "500".into()),
        ("AUDITFLOW_DATABASE_STATEMENT_TIMEOUT_MS", "1000".into()),
        // Tracing on, towards a collector that is not there: the span counters exist, export
        // fails without holding anything up, and the collector's credentials stay secret.
        ("AUDITFLOW_OTLP_ENDPOINT", "http://127.0.0.1:9".into()),
        ("AUDITFLOW_OTLP_HEADERS", format!("authorization=Bearer {password}")),
        ("AUDITFLOW_TRACE_SAMPLE_RATIO", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = auditflow::config::Config::from_sources(None, &env).expect("test config is valid");
    auditflow::cli::topics::create_topics(&config, &config.topics.all()).await.expect("create topics: is Kafka up?");

    env.insert("AUDITFLOW_GROUP_ID".into(), format!("{id}-enrich"));
    env.insert("AUDITFLOW_INSTANCE_ID".into(), format!("{id}-e1"));
    let mut enrich = Stage::start("audit-enrich", &env, &log_dir);
    env.insert("AUDITFLOW_GROUP_ID".into(), format!("{id}-persist"));
    env.insert("AUDITFLOW_INSTANCE_ID".into(), format!("{id}-p1"));
    let mut persist = Stage::start("audit-persist", &env, &log_dir);
    env.insert("AUDITFLOW_GROUP_ID".into(), format!("{id}-alert"));
    env.insert("AUDITFLOW_INSTANCE_ID".into(), format!("{id}-a1"));
    let mut alert = Stage::start("audit-alert", &env, &log_dir);
    let (enrich_addr, persist_addr, alert_addr) = (enrich.addr(), persist.addr(), alert.addr());
    for addr in [&enrich_addr, &persist_addr, &alert_addr] {
        wait_ready(addr);
    }

    // The sink table locked: persist's write outlasts its statement timeout, fails and is
    // retried (auditflow_retries_total) until the lock goes.
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");

    // One valid event, one invalid: counters with labels appear on first increment.
    let valid = serde_json::to_vec(&support::sample_events(1, 11)[0]).expect("event JSON");
    support::produce(&env["AUDITFLOW_TOPIC_RAW"], &[(Some("u1".into()), valid), (Some("u2".into()), b"{not json".to_vec())]);

    scrape_until(&persist_addr, Duration::from_secs(60), "a retried sink write", |m| {
        has_help(m, "auditflow_retries_total")
    });
    lock.rollback().await.expect("unlock");

    let complete = |m: &str| {
        ["auditflow_consumed_total", "auditflow_dlq_total", "auditflow_produced_total"].iter().all(|n| has_help(m, n))
    };
    let enrich_metrics = scrape_until(&enrich_addr, Duration::from_secs(60), "the enrich counters", complete);
    // Lag comes from librdkafka's statistics (every 5 s) once the consumer knows its committed
    // offsets. audit-persist commits them through the consumer; audit-enrich commits them in
    // its producer's transaction, which librdkafka's consumer statistics do not see, so for a
    // new group it reports no lag at all.
    let persist_metrics = scrape_until(&persist_addr, Duration::from_secs(60), "the persisted row and lag", |m| {
        has_help(m, "auditflow_sunk_total") && has_help(m, "auditflow_consumer_lag")
    });
    for (addr, path) in [(&enrich_addr, "/healthz"), (&enrich_addr, "/readyz"), (&persist_addr, "/readyz")] {
        assert_eq!(http_get(addr, path).0, 200, "{path} on {addr}");
    }

    let alert_metrics = scrape_until(&alert_addr, Duration::from_secs(30), "the alert delivery counters", |m| {
        has_help(m, "auditflow_alert_deliveries_total")
    });
    let scrapes = vec![enrich_metrics, persist_metrics, alert_metrics];
    let synthetic: BTreeSet<&str> = ["up"].into(); // made by Prometheus, not by the stages
    let missing: Vec<&String> =
        wanted.iter().filter(|n| !synthetic.contains(n.as_str()) && !exported(&scrapes, n)).collect();
    assert!(missing.is_empty(), "used by the dashboard or alerts.yml but not exported: {missing:?}");
    for name in &wanted {
        assert!(
            synthetic.contains(name.as_str()) || name.starts_with("auditflow_") || name.starts_with("process_"),
            "unexpected metric {name}"
        );
    }
    eprintln!("dashboard and alerts use {} metric names, all exported: {wanted:?}", wanted.len());

    // The database password never leaves the process: not on /metrics, not in the logs.
    for (addr, scrape) in [(&enrich_addr, &scrapes[0]), (&persist_addr, &scrapes[1]), (&alert_addr, &scrapes[2])] {
        assert!(!scrape.contains(&password), "/metrics on {addr} shows the database password");
    }

    // SIGTERM: finish the batch, commit, leave the group, well inside the grace period.
    let drained_enrich = enrich.terminate();
    let drained_persist = persist.terminate();
    let _ = alert.terminate();
    eprintln!("SIGTERM to exit: audit-enrich {drained_enrich:?}, audit-persist {drained_persist:?}");
    for (stage, took) in [("audit-enrich", drained_enrich), ("audit-persist", drained_persist)] {
        assert!(took < Duration::from_secs(30), "{stage} took {took:?} to drain: more than the chart's 30 s minimum");
    }
    for stage in [&enrich, &persist] {
        let log = stage.log();
        assert!(!log.contains(&password), "{} logged the database password", stage.log_path.display());
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.expect("count");
    assert_eq!(rows, 1, "the valid event is persisted once the lock is gone");
    pool.close().await;
    admin.close().await;
}
