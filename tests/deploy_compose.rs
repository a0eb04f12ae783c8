//! docker-compose.yml is a valid Compose file and only runs what this repository builds: every
//! auditflow command is a real `[[bin]]` with real subcommands and flags, and every `AUDITFLOW_*`
//! variable it sets is one the binaries read. No Docker engine needed.
//!
//! The Compose Specification schema is vendored in deploy/schema/compose-spec.json (see the
//! README there for its origin and license).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Resolve YAML merge keys (`<<: *anchor`) the way Compose does, innermost first, so anchors
/// that themselves merge other anchors come out complete. Explicit keys win over merged ones.
fn resolve_merge_keys(value: &mut Yaml) {
    match value {
        Yaml::Mapping(map) => {
            for (_, child) in map.iter_mut() {
                resolve_merge_keys(child);
            }
            if let Some(merged) = map.remove("<<") {
                let sources = match merged {
                    Yaml::Mapping(m) => vec![m],
                    Yaml::Sequence(seq) => seq
                        .into_iter()
                        .map(|v| match v {
                            Yaml::Mapping(m) => m,
                            other => panic!("merge key with a non-mapping element: {other:?}"),
                        })
                        .collect(),
                    other => panic!("merge key with a non-mapping value: {other:?}"),
                };
                for source in sources {
                    for (k, v) in source {
                        map.entry(k).or_insert(v);
                    }
                }
            }
        }
        Yaml::Sequence(seq) => seq.iter_mut().for_each(resolve_merge_keys),
        Yaml::Tagged(tagged) => resolve_merge_keys(&mut tagged.value),
        _ => {}
    }
}

/// docker-compose.yml as JSON, merge keys resolved.
fn compose() -> Json {
    let mut yaml: Yaml = serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    resolve_merge_keys(&mut yaml);
    serde_json::to_value(&yaml).expect("docker-compose.yml converts to JSON")
}

fn services(compose: &Json) -> &serde_json::Map<String, Json> {
    compose["services"].as_object().expect("services is a mapping")
}

/// The `[[bin]]` names of Cargo.toml.
fn cargo_bins() -> BTreeSet<String> {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    manifest["bin"]
        .as_array()
        .expect("Cargo.toml has [[bin]] entries")
        .iter()
        .map(|b| b["name"].as_str().expect("bin name").to_string())
        .collect()
}

/// Where cargo put the binaries of this package (next to the one it names for this test).
fn bin_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_auditflow")).with_file_name(name)
}

/// A service's command as a list of words (Compose accepts a list or a string).
fn command(service: &Json) -> Option<Vec<String>> {
    match &service["command"] {
        Json::Array(words) => Some(words.iter().map(|w| w.as_str().expect("command word").to_string()).collect()),
        Json::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        _ => None,
    }
}

/// A service's environment as (name, value) pairs (Compose accepts a mapping or a list).
fn environment(service: &Json) -> Vec<(String, String)> {
    match &service["environment"] {
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect(),
        Json::Array(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().expect("environment entry");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Services that run the auditflow image.
fn auditflow_services(compose: &Json) -> Vec<(String, Json)> {
    services(compose)
        .iter()
        .filter(|(_, s)| s["build"].is_string() || s["build"].is_object() || s["image"] == "auditflow:local")
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// Stage services: the ones whose command is a binary other than the operator command.
fn stage_services(compose: &Json) -> Vec<(String, Json)> {
    auditflow_services(compose)
        .into_iter()
        .filter(|(_, s)| command(s).is_some_and(|c| c[0] != "auditflow"))
        .collect()
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let schema: Json = serde_json::from_str(&read("deploy/schema/compose-spec.json")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the Compose schema compiles");
    let doc = compose();
    let errors: Vec<String> =
        validator.iter_errors(&doc).map(|e| format!("  at {}: {e}", e.instance_path())).collect();
    assert!(errors.is_empty(), "docker-compose.yml violates the Compose Specification:\n{}", errors.join("\n"));
}

#[test]
fn compose_commands_are_real_binaries_and_subcommands() {
    let bins = cargo_bins();
    let doc = compose();
    let services = auditflow_services(&doc);
    assert!(services.len() >= 5, "topics, migrate, two stages and the demo producer run the auditflow image");
    for (name, service) in services {
        let words = command(&service).unwrap_or_else(|| panic!("service {name} runs the auditflow image without a command"));
        assert!(bins.contains(&words[0]), "service {name} runs `{}`, which is not a [[bin]] of Cargo.toml ({bins:?})", words[0]);
        // clap parses every word before acting on --help: an unknown subcommand or flag fails.
        let out = Command::new(bin_path(&words[0]))
            .args(&words[1..])
            .arg("--help")
            .env_clear()
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", words[0]));
        assert!(
            out.status.success(),
            "service {name}: `{}` is not a valid command line:\n{}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn compose_sets_only_variables_the_binaries_read() {
    // Settings are read in src/config.rs and in each stage's own settings module.
    let config_rs = support::all_sources("src");
    let doc = compose();
    let mut seen = BTreeSet::new();
    for (_, service) in auditflow_services(&doc) {
        for (var, _) in environment(&service) {
            if var.starts_with("AUDITFLOW_") {
                seen.insert(var);
            }
        }
    }
    assert!(seen.contains("AUDITFLOW_KAFKA_BROKERS") && seen.contains("AUDITFLOW_DATABASE_URL"));
    for var in seen {
        let known = if var.starts_with("AUDITFLOW_LIBRDKAFKA_") {
            config_rs.contains("\"AUDITFLOW_LIBRDKAFKA_\"")
        } else {
            config_rs.contains(&format!("\"{var}\""))
        };
        assert!(known, "docker-compose.yml sets {var}, which no settings code under src/ reads");
    }
}

#[test]
fn stages_wait_for_setup_and_serve_metrics_on_9100() {
    let doc = compose();
    let all = services(&doc);
    let stages = stage_services(&doc);
    let stage_names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["audit-enrich", "audit-persist"] {
        assert!(stage_names.contains(&expected), "no compose service runs {expected}");
    }
    for (name, service) in &stages {
        for setup in ["topics", "migrate"] {
            assert_eq!(
                service["depends_on"][setup]["condition"], "service_completed_successfully",
                "{name} must start after the one-shot `{setup}` succeeded"
            );
        }
        let env = environment(service);
        assert!(
            env.contains(&("AUDITFLOW_HTTP_LISTEN".into(), "0.0.0.0:9100".into())),
            "{name} must serve /metrics on 0.0.0.0:9100"
        );
    }
    let needs = [("topics", "kafka"), ("migrate", "postgres")];
    for (job, dependency) in needs {
        assert_eq!(all[job]["depends_on"][dependency]["condition"], "service_healthy", "{job} waits for {dependency}");
    }
    assert_eq!(all["audit-index"]["depends_on"]["opensearch"]["condition"], "service_healthy", "audit-index waits for OpenSearch");
    for infra in ["kafka", "postgres", "redis", "opensearch"] {
        assert!(all[infra]["healthcheck"]["test"].is_array(), "{infra} needs a healthcheck");
    }
    assert_eq!(all["kafka"]["image"], "apache/kafka:4.1.1");
}

#[test]
fn prometheus_scrapes_every_stage_and_mounted_files_exist() {
    let doc = compose();
    let prometheus: Yaml = serde_yaml_ng::from_str(&read("deploy/prometheus/prometheus.yml")).expect("prometheus.yml");
    let prometheus = serde_json::to_value(&prometheus).expect("json");
    let job = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "auditflow")
        .expect("a scrape job named auditflow (alerts.yml selects job=\"auditflow\")");
    let names: Vec<&str> = job["dns_sd_configs"][0]["names"]
        .as_array()
        .expect("dns_sd_configs names")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for (stage, _) in stage_services(&doc) {
        assert!(names.contains(&stage.as_str()), "deploy/prometheus/prometheus.yml does not scrape {stage}");
    }

    for (name, service) in services(&doc) {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let Some(source) = volume.as_str().and_then(|v| v.split(':').next()) else { continue };
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "service {name} mounts {source}, which does not exist");
            }
        }
        for profile in service["profiles"].as_array().into_iter().flatten() {
            assert_eq!(profile, "monitoring", "{name}: only the monitoring profile is expected");
        }
    }
    for monitoring in ["prometheus", "grafana"] {
        assert_eq!(services(&doc)[monitoring]["profiles"][0], "monitoring", "{monitoring} belongs to the monitoring profile");
    }
}


/// No key ships in the file: a one-shot service generates them with `auditflow keys generate`
/// into a volume that only the stages needing them mount; they connect as their own logins.
#[test]
fn compose_generates_keys_and_connects_stages_as_least_privilege_logins() {
    let doc = compose();
    let all = services(&doc);
    for (name, service) in all {
        for (var, value) in environment(service) {
            assert!(
                !matches!(var.as_str(), "AUDITFLOW_MASTER_KEY" | "AUDITFLOW_PSEUDONYM_KEY" | "AUDITFLOW_SIGNING_KEY" | "AUDITFLOW_JWT_SECRET"),
                "{name} sets {var}={value}: keys must be generated at first start, not shipped"
            );
        }
    }
    let keys = &all["keys"];
    assert_eq!(command(keys).expect("keys command"), ["auditflow", "keys", "generate"]);
    let keys_volume = |s: &Json| {
        s["volumes"].as_array().into_iter().flatten().filter_map(Json::as_str).find(|v| v.starts_with("keys:")).map(str::to_string)
    };
    assert_eq!(keys_volume(keys).as_deref(), Some("keys:/run/auditflow-keys"), "keys writes into the named volume");
    assert!(doc["volumes"].get("keys").is_some(), "the keys volume is declared");
    let init = read("deploy/compose/keys-init.sh");
    assert!(init.contains("if [ -s \"$out\" ]"), "keys-init.sh must never overwrite existing keys");

    // Stages with a database: their own login, their keys from the volume, after the logins exist.
    let roles = read("migrations/0006_stage_roles.sql") + &read("migrations/0010_index_role.sql") + &read("migrations/0011_api.sql");
    let logins = read("deploy/compose/db-logins.sh");
    assert!(logins.contains("GRANT :\"grp\" TO :\"login\""), "db-logins.sh grants each login its stage's role");
    for stage in ["audit-persist", "audit-compliance", "audit-alert", "audit-index", "audit-api"] {
        let s = &all[stage];
        let env: HashMap<String, String> = environment(s).into_iter().collect();
        assert!(!env.contains_key("AUDITFLOW_DATABASE_URL"), "{stage} must not get the owner's database URL");
        let login = env.get("STAGE_DB_LOGIN").unwrap_or_else(|| panic!("{stage}: no STAGE_DB_LOGIN"));
        assert!(roles.contains(&format!("'auditflow_{login}'")), "{stage}: no migration makes the role auditflow_{login}");
        assert!(logins.contains(login.as_str()), "db-logins.sh does not create the {login} login");
        assert_eq!(keys_volume(s).as_deref(), Some("keys:/run/auditflow-keys:ro"), "{stage} reads the keys read-only");
        assert_eq!(s["depends_on"]["db-logins"]["condition"], "service_completed_successfully", "{stage} waits for its login");
        let entry = s["entrypoint"].as_array().expect("entrypoint").iter().filter_map(Json::as_str).collect::<Vec<_>>().join(" ");
        assert!(entry.contains("auditflow_$${STAGE_DB_LOGIN}_login") || entry.contains("auditflow_${STAGE_DB_LOGIN}_login"), "{stage}: {entry}");
    }
    // Stages without a database see neither the keys nor a database URL.
    for stage in ["audit-enrich", "audit-rules"] {
        assert!(keys_volume(&all[stage]).is_none(), "{stage} has no use for the keys");
        assert!(!environment(&all[stage]).iter().any(|(k, _)| k == "AUDITFLOW_DATABASE_URL"), "{stage}");
    }

    // The schema owner runs the migrations and is not the cluster's superuser.
    let pg_env: HashMap<String, String> = environment(&all["postgres"]).into_iter().collect();
    let superuser = pg_env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
    let migrate_env: HashMap<String, String> = environment(&all["migrate"]).into_iter().collect();
    let url = migrate_env.get("AUDITFLOW_DATABASE_URL").expect("migrate has a database URL");
    let user = url.trim_start_matches("postgres://").split(':').next().unwrap_or_default();
    assert_eq!(user, "auditflow", "migrate runs as the schema owner");
    assert_ne!(user, superuser, "the schema owner must not be the superuser");
    let pg_init = read("deploy/compose/postgres-init.sh");
    assert!(pg_init.contains("CREATE ROLE auditflow LOGIN CREATEROLE NOSUPERUSER"), "{pg_init}");
    assert!(
        all["postgres"]["volumes"].as_array().expect("volumes").iter().any(|v| v.as_str().is_some_and(|v| v.contains("docker-entrypoint-initdb.d"))),
        "postgres-init.sh is mounted as an init script"
    );
}

#[test]
fn compose_redis_keeps_window_state_across_restarts() {
    let doc = compose();
    let redis = &services(&doc)["redis"];
    let cmd = command(redis).expect("redis command");
    let pos = cmd.iter().position(|w| w == "--appendonly").expect("--appendonly");
    assert_eq!(cmd.get(pos + 1).map(String::as_str), Some("yes"), "{cmd:?}");
    assert!(
        redis["volumes"].as_array().into_iter().flatten().filter_map(Json::as_str).any(|v| v.ends_with(":/data")),
        "the append-only file lives on a volume"
    );
}

/// The API: its port published on the host's loopback only (as every published port here), its
/// own login, and a token secret generated with the keys, which the shared entrypoint hands to
/// the API alone.
#[test]
fn compose_api_is_local_only_with_a_generated_token_secret() {
    let doc = compose();
    let all = services(&doc);
    let api = &all["audit-api"];
    assert_eq!(command(api).expect("audit-api command"), ["audit-api"]);
    let env: HashMap<String, String> = environment(api).into_iter().collect();
    assert_eq!(env.get("AUDITFLOW_API_LISTEN").map(String::as_str), Some("0.0.0.0:8080"), "listens on every interface of its container");
    assert_eq!(env.get("STAGE_DB_LOGIN").map(String::as_str), Some("api"));
    let published: Vec<&str> = api["ports"].as_array().expect("audit-api publishes its port").iter().filter_map(Json::as_str).collect();
    assert!(published.iter().any(|p| p.ends_with(":8080")), "audit-api publishes 8080: {published:?}");
    for (name, service) in all {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap_or_else(|| panic!("{name}: use the short port syntax, host IP first: {port}"));
            assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port} beyond the host's loopback");
        }
    }
    assert!(
        services(&doc)["audit-api"]["depends_on"]["opensearch"]["condition"] == "service_healthy",
        "audit-api waits for the search store, as audit-index does"
    );

    // keys-init.sh, run for real against a scratch directory: first start, then an older file
    // made before the API existed, which must gain its entries and keep everything else.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().to_str().expect("utf-8 path");
    let script = read("deploy/compose/keys-init.sh").replace("/run/auditflow-keys", keys_dir).replace("chown ", ": chown ");
    let script_path = dir.path().join("keys-init.sh");
    std::fs::write(&script_path, script).expect("write script");
    let run = || {
        let out = Command::new("sh")
            .arg(&script_path)
            .args(["sh", "-c", "echo AUDITFLOW_MASTER_KEY=m; echo AUDITFLOW_PSEUDONYM_KEY=p; echo AUDITFLOW_SIGNING_KEY=s"])
            .output()
            .expect("run keys-init.sh");
        assert!(out.status.success(), "keys-init.sh: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.path().join("keys.env")).expect("keys.env")
    };
    let value = |text: &str, var: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{var}="))).map(str::to_string).unwrap_or_else(|| panic!("keys.env has no {var}:\n{text}"))
    };
    let first = run();
    assert!(value(&first, "AUDITFLOW_JWT_SECRET").len() >= 64, "at least 32 random bytes (hex) for HS256");
    value(&first, "STAGE_DB_PASSWORD_API");
    assert_eq!(run(), first, "a second start changes nothing");
    let older = "AUDITFLOW_MASTER_KEY=old\nSTAGE_DB_PASSWORD_PERSIST=kept\n";
    let path = dir.path().join("keys.env");
    // The script leaves it read-only (0400); the container runs it as root, this test may not.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    std::fs::write(&path, older).expect("write older keys.env");
    let upgraded = run();
    assert!(upgraded.starts_with(older), "existing keys and passwords are never changed:\n{upgraded}");
    value(&upgraded, "AUDITFLOW_JWT_SECRET");
    value(&upgraded, "STAGE_DB_PASSWORD_API");

    // The shared entrypoint, run for real: the API gets the token secret and its own login; any
    // other stage never sees the secret (whoever holds it can mint any token).
    let entry: Vec<String> = api["entrypoint"].as_array().expect("entrypoint").iter().filter_map(Json::as_str).map(str::to_string).collect();
    assert_eq!(entry[..2], ["/bin/sh", "-c"]);
    let shell = entry[2].replace("$$", "$").replace("/run/auditflow-keys/keys.env", path.to_str().expect("utf-8"));
    for login in ["api", "index"] {
        let out = Command::new("sh")
            .args(["-c", &shell, "stage", "env"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STAGE_DB_LOGIN", login)
            .output()
            .expect("run the entrypoint");
        assert!(out.status.success(), "entrypoint ({login}): {}", String::from_utf8_lossy(&out.stderr));
        let seen = String::from_utf8(out.stdout).expect("utf-8");
        let url = value(&seen, "AUDITFLOW_DATABASE_URL");
        assert!(url.starts_with(&format!("postgres://auditflow_{login}_login:")), "{login}: {url}");
        assert!(!seen.contains("STAGE_DB_PASSWORD_"), "{login}: the logins' passwords are dropped:\n{seen}");
        assert_eq!(seen.contains("AUDITFLOW_JWT_SECRET="), login == "api", "{login}: the token secret goes to the API only");
    }
}
