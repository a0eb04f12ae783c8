//! Shared harness for integration tests against the real local stack (`scripts/stack up`).
//!
//! Every test gets fresh topics, fresh consumer groups and a fresh PostgreSQL database, so
//! tests never see each other's data. Stage binaries run as real child processes, which tests
//! may SIGKILL, and the stack's services can be stopped and restarted through `scripts/stack`.
#![allow(dead_code)]

pub mod smtp;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditflow::config::Config;
use auditflow::event::RawEvent;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sqlx::PgPool;

pub fn brokers() -> String {
    std::env::var("AUDITFLOW_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Plain SQL as the database superuser with triggers off, the way an insider with full
/// access would tamper.
pub fn superuser_sql(db: &str, sql: &str) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", db, "-c"])
        .arg(format!("SET session_replication_role = replica; {sql}"))
        .output()
        .expect("run psql as postgres");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn opensearch_url() -> String {
    std::env::var("AUDITFLOW_OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

pub fn admin_database_url() -> String {
    std::env::var("AUDITFLOW_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://auditflow:auditflow@127.0.0.1:5432/auditflow".into())
}

/// Fixed keys for tests (32 bytes each, hex): never used outside tests.
pub const TEST_MASTER_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
pub const TEST_PSEUDONYM_KEY: &str = "0202020202020202020202020202020202020202020202020202020202020202";
pub const TEST_SIGNING_KEY: &str = "0303030303030303030303030303030303030303030303030303030303030303";

pub fn test_keys() -> auditflow::privacy::PrivacyKeys {
    auditflow::privacy::PrivacyKeys {
        master: auditflow::privacy::SecretKey::parse("k", TEST_MASTER_KEY).expect("key"),
        pseudonym: auditflow::privacy::SecretKey::parse("k", TEST_PSEUDONYM_KEY).expect("key"),
    }
}

/// How an alert names a user (see `auditflow::alert::disclose`): their pseudonym.
pub fn alert_pseudonym(user: &str) -> String {
    let p = test_keys().pseudonym(auditflow::privacy::SubjectKind::User, user);
    format!("{}{p}", auditflow::alert::disclose::PSEUDONYM_PREFIX)
}

/// xorshift: a generated stream is reproduced from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/stack <args>`; panics if it fails (a fault test cannot go on without its fault).
pub fn stack(args: &[&str]) {
    let status = Command::new(repo_root().join("scripts/stack")).args(args).status().expect("run scripts/stack");
    assert!(status.success(), "scripts/stack {args:?} failed");
}

/// One test's private world: topics, groups, database.
pub struct TestEnv {
    pub id: String,
    pub raw: String,
    pub enriched: String,
    pub dlq: String,
    pub database_url: String,
    pub pool: PgPool,
    pub log_dir: PathBuf,
    pub partitions: i32,
    pub extra_env: Vec<(String, String)>,
}

impl TestEnv {
    pub async fn new(name: &str, partitions: i32) -> TestEnv {
        let id = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let raw = format!("{id}.audit-raw");
        let enriched = format!("{id}.audit-enriched");
        let dlq = format!("{id}.audit-dlq");

        // Fresh database with the real migrations.
        let admin = PgPool::connect(&admin_database_url()).await.expect("PostgreSQL reachable: run scripts/stack up");
        sqlx::query(&format!("CREATE DATABASE \"{id}\"")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let database_url = replace_db_name(&admin_database_url(), &id);
        let pool = PgPool::connect(&database_url).await.expect("connect test database");
        auditflow::db::MIGRATOR.run(&pool).await.expect("migrations apply");

        let log_dir = repo_root().join("target/test-logs").join(&id);
        std::fs::create_dir_all(&log_dir).expect("log dir");

        let env = TestEnv {
            id,
            raw,
            enriched,
            dlq,
            database_url,
            pool,
            log_dir,
            partitions,
            extra_env: Vec::new(),
        };
        let config = env.config();
        auditflow::cli::topics::create_topics(&config, &config.topics.all()).await.expect("create topics: is Kafka up?");
        env
    }

    /// Environment every process of this test runs with.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("AUDITFLOW_KAFKA_BROKERS".into(), brokers()),
            ("AUDITFLOW_DATABASE_URL".into(), self.database_url.clone()),
            ("AUDITFLOW_TOPIC_RAW".into(), self.raw.clone()),
            ("AUDITFLOW_TOPIC_ENRICHED".into(), self.enriched.clone()),
            ("AUDITFLOW_TOPIC_DLQ".into(), self.dlq.clone()),
            ("AUDITFLOW_TOPIC_RULE_MATCHES".into(), format!("{}.audit-rule-matches", self.id)),
            ("AUDITFLOW_TOPIC_SECURITY_ACTIONS".into(), format!("{}.security-actions", self.id)),
            ("AUDITFLOW_TOPIC_SECURITY_ALERTS".into(), format!("{}.security-alerts", self.id)),
            ("AUDITFLOW_TOPIC_ALERT_DLQ".into(), format!("{}.audit-alert-dlq", self.id)),
            ("AUDITFLOW_TOPIC_COMPLIANCE_EVENTS".into(), format!("{}.compliance-events", self.id)),
            ("AUDITFLOW_TOPIC_CHECKPOINTS".into(), format!("{}.audit-checkpoints", self.id)),
            ("AUDITFLOW_TOPIC_PARTITIONS".into(), self.partitions.to_string()),
            ("AUDITFLOW_HTTP_LISTEN".into(), "127.0.0.1:0".into()),
            // Stage groups are `<test id>-<stage>`, for the stages and the operator commands alike.
            ("AUDITFLOW_GROUP_PREFIX".into(), self.id.clone()),
            ("AUDITFLOW_LOG".into(), "info,librdkafka=warn".into()),
            ("AUDITFLOW_BATCH_MAX_MESSAGES".into(), "1000".into()),
            ("AUDITFLOW_RETRY_MAX_BACKOFF_MS".into(), "1000".into()),
            ("AUDITFLOW_MASTER_KEY".into(), TEST_MASTER_KEY.into()),
            ("AUDITFLOW_PSEUDONYM_KEY".into(), TEST_PSEUDONYM_KEY.into()),
            ("AUDITFLOW_SIGNING_KEY".into(), TEST_SIGNING_KEY.into()),
            ("AUDITFLOW_CHECKPOINT_INTERVAL_SECS".into(), "1".into()),
            ("AUDITFLOW_OPENSEARCH_URL".into(), opensearch_url()),
            // One index family per test: `<id>-YYYY.MM`.
            ("AUDITFLOW_INDEX_PREFIX".into(), self.index_prefix()),
        ];
        v.extend(self.extra_env.iter().cloned());
        v
    }

    pub fn index_prefix(&self) -> String {
        format!("ev-{}", self.id.to_lowercase())
    }

    pub fn config(&self) -> Config {
        let env: HashMap<String, String> = self.env_vars().into_iter().collect();
        Config::from_sources(None, &env).expect("test config is valid")
    }

    /// Start a stage binary (`audit-enrich`, `audit-persist`, `audit-alert`) as instance `instance`.
    /// Start a stage binary (`audit-enrich`, `audit-persist`, `audit-compliance`) as instance
    /// `instance`.
    pub fn start_stage(&self, binary: &str, instance: &str) -> StageProcess {
        self.start_stage_with(binary, instance, &[])
    }

    /// Same, with extra environment (e.g. a changed setting for this one process).
    pub fn start_stage_with(&self, binary: &str, instance: &str, extra: &[(&str, &str)]) -> StageProcess {
        let exe = match binary {
            "audit-enrich" => env!("CARGO_BIN_EXE_audit-enrich"),
            "audit-persist" => env!("CARGO_BIN_EXE_audit-persist"),
            "audit-alert" => env!("CARGO_BIN_EXE_audit-alert"),
            "audit-compliance" => env!("CARGO_BIN_EXE_audit-compliance"),
            "audit-rules" => env!("CARGO_BIN_EXE_audit-rules"),
            "audit-index" => env!("CARGO_BIN_EXE_audit-index"),
            other => panic!("unknown stage binary {other}"),
        };
        self.spawn_logged(exe, &[], binary, instance, extra)
    }

    /// Start an `auditflow` command that runs until stopped (e.g. `witness`), logged like a stage.
    pub fn start_command(&self, args: &[&str], instance: &str, extra: &[(&str, &str)]) -> StageProcess {
        self.spawn_logged(env!("CARGO_BIN_EXE_auditflow"), args, args.first().copied().unwrap_or("auditflow"), instance, extra)
    }

    /// Start any binary of the package (e.g. `audit-api`), logged like a stage.
    pub fn start_binary(&self, exe: &str, name: &str, instance: &str, extra: &[(&str, &str)]) -> StageProcess {
        self.spawn_logged(exe, &[], name, instance, extra)
    }

    fn spawn_logged(&self, exe: &str, args: &[&str], name: &str, instance: &str, extra: &[(&str, &str)]) -> StageProcess {
        let log_path = self.log_dir.join(format!("{name}-{instance}.log"));
        let log = File::options().create(true).append(true).open(&log_path).expect("log file");
        let child = Command::new(exe)
            .args(args)
            .envs(self.env_vars())
            .env("AUDITFLOW_INSTANCE_ID", instance)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn stage");
        StageProcess { child: Some(child), log_path }
    }

    /// Produce payloads to the raw topic and wait for every acknowledgement.
    pub fn produce_raw(&self, records: &[(Option<String>, Vec<u8>)]) {
        produce(&self.raw, records);
    }

    pub fn produce_events(&self, events: &[RawEvent]) {
        let records: Vec<(Option<String>, Vec<u8>)> = events
            .iter()
            .map(|e| (e.user_id.clone(), serde_json::to_vec(e).expect("serialize")))
            .collect();
        self.produce_raw(&records);
    }

    pub async fn row_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&self.pool).await.unwrap_or(-1)
    }

    /// Wait until `audit_events` holds `expected` rows; panics with the last count on timeout.
    pub async fn wait_for_rows(&self, expected: i64, timeout: Duration) {
        let start = Instant::now();
        let mut last = -1;
        while start.elapsed() < timeout {
            last = self.row_count().await;
            if last >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(last, expected, "audit_events rows after {:?} (logs in {})", start.elapsed(), self.log_dir.display());
    }

    pub async fn persisted_ids(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id").fetch_all(&self.pool).await.expect("ids")
    }
}

fn replace_db_name(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => {
            let query = url[i..].find('?').map(|q| &url[i + q..]).unwrap_or("");
            format!("{}/{db}{query}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

pub fn produce(topic: &str, records: &[(Option<String>, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        // room for the oversized events the DLQ test sends
        .set("message.max.bytes", "5000000")
        .create()
        .expect("producer");
    for (key, payload) in records {
        let mut r = BaseRecord::to(topic).payload(payload.as_slice());
        if let Some(k) = key {
            r = r.key(k.as_str());
        }
        let mut r = r;
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("all records acknowledged");
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Read every committed record of `topic` (read_committed), stopping once nothing new arrives
/// for `quiet`.
pub fn read_topic(topic: &str, partitions: i32, quiet: Duration) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// A running stage binary; killed when dropped.
pub struct StageProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl StageProcess {
    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("process running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!("stage did not stop within 60 s of SIGTERM ({})", self.log_path.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id while it runs (to send it a signal).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `auditflow verify --json` on this test's database: the report, and whether it passed.
pub fn verify_ledger(env: &TestEnv) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .args(["verify", "--json"])
        .envs(env.env_vars())
        .output()
        .expect("run auditflow verify");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        serde_json::json!({"unparsable": String::from_utf8_lossy(&out.stdout), "stderr": String::from_utf8_lossy(&out.stderr)})
    });
    (out.status.success() && report["ok"] == true, report)
}

/// `n` realistic events with unique ids.
pub fn sample_events(n: usize, seed: u64) -> Vec<RawEvent> {
    let mut mix = auditflow::demo::EventMix::new(seed, 500);
    (0..n).map(|_| mix.next_event()).collect()
}

/// A plain HTTP/1.1 GET against a stage's health/metrics server: (status, whole response).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    s.read_to_string(&mut body).ok();
    (body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body)
}

/// The base URL `audit-api` logged for its API listener ("serving the API … addr=…").
pub fn api_base(api: &StageProcess) -> String {
    let start = Instant::now();
    loop {
        let log = api.log();
        if let Some(line) = log.lines().find(|l| l.contains("serving the API")) {
            let at = line.find("addr=").expect("addr in the log line") + 5;
            let rest = &line[at..];
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            return format!("http://{}", rest[..end].trim_matches('"'));
        }
        assert!(start.elapsed() < Duration::from_secs(60), "audit-api did not start:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address a stage logged for its HTTP server (`addr=…` at start).
pub fn http_addr(stage: &StageProcess) -> String {
    let start = Instant::now();
    loop {
        let log = stage.log();
        if let Some(i) = log.find("addr=") {
            let rest = &log[i + 5..];
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            return rest[..end].trim_matches('"').to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "stage never logged its http address:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every Rust source under `dir` (relative to the repository), concatenated: the deploy tests
/// look there for the settings the code really reads.
pub fn all_sources(dir: &str) -> String {
    fn walk(path: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&p).expect("read source"));
            }
        }
    }
    let mut out = String::new();
    walk(&repo_root().join(dir), &mut out);
    out
}
