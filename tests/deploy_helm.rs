//! The Helm chart renders, for its default values and for values-full.yaml, a fleet an SRE can
//! run: per stage probes, graceful termination, hardening, a PodDisruptionBudget, an autoscaler
//! that never exceeds the input topic's partitions, Secret references instead of secrets, and
//! the migration hook. Its auditflow.toml is accepted by the real configuration loader.
//!
//! Needs a `helm` binary: $AUDITFLOW_HELM, else $AUDITFLOW_STACK_DIR/tools/bin/helm, else
//! .stack/tools/bin/helm. `scripts/helm install` builds it (.ci/run does this).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;

const CHART: &str = "helm/auditflow";
const FULL: &str = "helm/auditflow/values-full.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn helm() -> PathBuf {
    let path = match std::env::var_os("AUDITFLOW_HELM") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("AUDITFLOW_STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".stack"))
            .join("tools/bin/helm"),
    };
    assert!(
        path.is_file(),
        "no helm binary at {}: run `scripts/helm install` first (it builds the pinned Helm into \
         $AUDITFLOW_STACK_DIR/tools/bin), or point AUDITFLOW_HELM at one",
        path.display()
    );
    path
}

fn run_helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm()).args(args).current_dir(repo()).output().expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `helm template` → every manifest as JSON.
fn render(extra: &[&str]) -> Vec<Json> {
    let mut args = vec!["template", "auditflow", CHART, "--namespace", "audit"];
    args.extend_from_slice(extra);
    let text = run_helm(&args).unwrap_or_else(|e| panic!("helm template {extra:?} failed:\n{e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml_ng::Value::deserialize(doc).expect("helm output is YAML");
            serde_json::to_value(value).expect("manifest converts to JSON")
        })
        .filter(|m: &Json| !m.is_null())
        .collect()
}

/// values.yaml, optionally overlaid with another values file (maps merge, the rest replaces),
/// as Helm does.
fn values(overlay: Option<&str>) -> Json {
    fn load(path: &str) -> Json {
        let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(path)).expect("values file is YAML");
        serde_json::to_value(y).expect("json")
    }
    fn merge(base: &mut Json, over: Json) {
        match (base, over) {
            (Json::Object(b), Json::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(Json::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }
    let mut v = load(&format!("{CHART}/values.yaml"));
    if let Some(path) = overlay {
        merge(&mut v, load(path));
    }
    v
}

/// (name, stage values) of every enabled stage.
fn stages(values: &Json) -> Vec<(String, Json)> {
    values["stages"]
        .as_object()
        .expect("values.yaml has a stages: map")
        .iter()
        .filter(|(_, s)| s["enabled"].as_bool().unwrap_or(true))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

fn of_kind<'a>(docs: &'a [Json], kind: &str) -> Vec<&'a Json> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn component(doc: &Json) -> &str {
    doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap_or("")
}

fn for_stage<'a>(docs: &'a [Json], kind: &str, stage: &str) -> &'a Json {
    let found: Vec<&Json> = of_kind(docs, kind).into_iter().filter(|d| component(d) == stage).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} for stage {stage}, found {}", found.len());
    found[0]
}

fn cargo_bins() -> BTreeSet<String> {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    manifest["bin"].as_array().expect("[[bin]]").iter().map(|b| b["name"].as_str().expect("name").into()).collect()
}

/// Every pod template of the render (Deployments and Jobs), with its owner's name.
fn pod_specs(docs: &[Json]) -> Vec<(String, &Json)> {
    docs.iter()
        .filter_map(|d| {
            let spec = match d["kind"].as_str()? {
                "Deployment" | "Job" => &d["spec"]["template"]["spec"],
                "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => return None,
            };
            Some((format!("{} {}", d["kind"], d["metadata"]["name"]), spec))
        })
        .collect()
}

/// The API's values, when it is deployed.
fn api_values(values: &Json) -> Option<&Json> {
    let api = &values["api"];
    (api.is_object() && api["enabled"].as_bool().unwrap_or(true)).then_some(api)
}

/// A container's env as name → entry.
fn env_map(container: &Json) -> HashMap<String, Json> {
    container["env"].as_array().into_iter().flatten().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e.clone())).collect()
}

/// What the pod of every Deployment (each stage's and the API's) must have: a real binary,
/// /metrics and probes on 9100 `http`, time to drain, the hardening, a stable instance id, and a
/// PodDisruptionBudget and a Service selecting its pods.
fn check_pod(docs: &[Json], bins: &BTreeSet<String>, name: &str) {
    let deployment = for_stage(docs, "Deployment", name);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    let binary = container["command"][0].as_str().expect("stage container has a command");
    assert!(bins.contains(binary), "stage {name} runs {binary}, not a [[bin]] of Cargo.toml");
    assert_eq!(container["ports"][0]["containerPort"], 9100, "{name}: port 9100");
    assert_eq!(container["ports"][0]["name"], "http", "{name}: port named http");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{name}: {probe} on {path}");
        let port = &container[probe]["httpGet"]["port"];
        assert!(port == "http" || port == 9100, "{name}: {probe} on the http port, not {port}");
    }
    let grace = pod["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds set");
    assert!(grace >= 30, "{name}: terminationGracePeriodSeconds {grace} < 30 leaves no time to drain");

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}: pod runAsNonRoot");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{name}: uid 10001, as in the Dockerfile");
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: readOnlyRootFilesystem");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}: allowPrivilegeEscalation");
    assert!(sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&"ALL".into())), "{name}: drop ALL");

    let env = container["env"].as_array().expect("env");
    let instance = env.iter().find(|e| e["name"] == "AUDITFLOW_INSTANCE_ID").expect("AUDITFLOW_INSTANCE_ID set");
    assert_eq!(instance["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "{name}: instance id = pod name");
    assert!(env.iter().any(|e| e["name"] == "AUDITFLOW_HTTP_LISTEN" && e["value"] == "0.0.0.0:9100"));

    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let pdb = for_stage(docs, "PodDisruptionBudget", name);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector, "{name}: the PDB selects the stage's pods");
    let service = for_stage(docs, "Service", name);
    assert_eq!(&service["spec"]["selector"], selector, "{name}: the Service selects the stage's pods");
    let metrics = service["spec"]["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "http");
    assert!(metrics.is_some_and(|p| p["port"] == 9100 && p["targetPort"] == "http"), "{name}: /metrics on Service port http 9100 (the ServiceMonitor's)");
}

/// The API's Deployment and Service: the API port beside the stage's, listened on in the pod and
/// exposed by the Service; replicas as configured (no partitions bound them).
fn check_api(docs: &[Json], api: &Json) {
    let deployment = for_stage(docs, "Deployment", "api");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "audit-api");
    let ports = container["ports"].as_array().expect("ports");
    assert!(ports.iter().any(|p| p["name"] == "api" && p["containerPort"] == 8080), "api: container port api 8080: {ports:?}");
    let env = env_map(container);
    assert_eq!(env["AUDITFLOW_API_LISTEN"]["value"], "0.0.0.0:8080", "api: listens on the container port, on every interface");
    let service = for_stage(docs, "Service", "api");
    let port = service["spec"]["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "api").expect("the Service exposes the API");
    assert_eq!(port["targetPort"], "api");
    assert_eq!(port["port"], api["service"]["port"]);
    if api["autoscaling"]["enabled"].as_bool().unwrap_or(false) {
        assert!(deployment["spec"].get("replicas").is_none(), "api: the HPA owns replicas");
        let hpa = for_stage(docs, "HorizontalPodAutoscaler", "api");
        assert_eq!(hpa["spec"]["maxReplicas"], api["autoscaling"]["maxReplicas"]);
    } else {
        assert_eq!(deployment["spec"]["replicas"], api["replicas"], "api: replicas as configured");
    }
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().expect("grace");
    let drain = api["requestTimeoutSecs"].as_i64().expect("requestTimeoutSecs") + api["preStopSleepSeconds"].as_i64().unwrap_or(0);
    assert!(grace > drain, "api: {grace} s grace for requests of up to {drain} s");
}

/// What every render must satisfy, whatever the values.
fn check_fleet(docs: &[Json], values: &Json) {
    let bins = cargo_bins();
    let stages = stages(values);
    assert!(!stages.is_empty());
    for (name, stage) in &stages {
        check_pod(docs, &bins, name);
        let deployment = for_stage(docs, "Deployment", name);
        let service = for_stage(docs, "Service", name);
        assert_eq!(service["spec"]["ports"][0]["port"], 9100);
        let partitions = stage["partitions"].as_i64().expect("stage partitions");
        if let Some(replicas) = deployment["spec"]["replicas"].as_i64() {
            assert!(replicas <= partitions, "{name}: {replicas} replicas for {partitions} partitions");
        }
    }
    if let Some(api) = api_values(values) {
        check_pod(docs, &bins, "api");
        check_api(docs, api);
    }

    // Secrets: referenced, never rendered.
    assert!(of_kind(docs, "Secret").is_empty(), "the chart must not render Secrets, only reference them");
    for (owner, pod) in pod_specs(docs) {
        for container in pod["containers"].as_array().expect("containers") {
            for e in container["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().expect("env name");
                let secretish = ["PASSWORD", "SECRET", "TOKEN", "KEY", "DATABASE_URL", "USERNAME"]
                    .iter()
                    .any(|w| var.contains(w));
                if secretish {
                    assert!(e.get("value").is_none(), "{owner}: {var} has a literal value");
                    assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{owner}: {var} must come from a Secret");
                }
                if let Some(value) = e["value"].as_str() {
                    assert!(!(value.contains("://") && value.contains('@')), "{owner}: {var} holds credentials in a URL");
                }
            }
        }
    }
    for cm in of_kind(docs, "ConfigMap") {
        let text = cm["data"].to_string().to_ascii_lowercase();
        for word in ["password =", "sasl.password", "postgres://"] {
            assert!(!text.contains(word), "ConfigMap {} contains `{word}`", cm["metadata"]["name"]);
        }
    }

    // The schema migration runs as a hook before any stage of a new release.
    let migrate = of_kind(docs, "Job")
        .into_iter()
        .find(|j| j["spec"]["template"]["spec"]["containers"][0]["command"] == serde_json::json!(["auditflow", "migrate"]))
        .expect("a Job running `auditflow migrate`");
    let hook = migrate["metadata"]["annotations"]["helm.sh/hook"].as_str().expect("the migrate Job is a Helm hook");
    assert!(hook.contains("pre-install") && hook.contains("pre-upgrade"), "migrate hook: {hook}");
    assert!(
        of_kind(docs, "Job").iter().any(|j| j["spec"]["template"]["spec"]["containers"][0]["command"]
            == serde_json::json!(["auditflow", "topics", "create"])),
        "a Job running `auditflow topics create`"
    );
}

/// Autoscaler bounds per stage: (kind, min, max).
fn autoscaler(docs: &[Json], stage: &str) -> (String, i64, i64) {
    let hpa: Vec<&Json> = of_kind(docs, "HorizontalPodAutoscaler").into_iter().filter(|d| component(d) == stage).collect();
    let keda: Vec<&Json> = of_kind(docs, "ScaledObject").into_iter().filter(|d| component(d) == stage).collect();
    match (hpa.as_slice(), keda.as_slice()) {
        ([h], []) => (
            "HorizontalPodAutoscaler".into(),
            h["spec"]["minReplicas"].as_i64().expect("minReplicas"),
            h["spec"]["maxReplicas"].as_i64().expect("maxReplicas"),
        ),
        ([], [k]) => (
            "ScaledObject".into(),
            k["spec"]["minReplicaCount"].as_i64().expect("minReplicaCount"),
            k["spec"]["maxReplicaCount"].as_i64().expect("maxReplicaCount"),
        ),
        _ => panic!("stage {stage}: expected one HPA or one ScaledObject, found {} and {}", hpa.len(), keda.len()),
    }
}

#[test]
fn default_values_render_a_safe_fleet_with_cpu_autoscaling() {
    let docs = render(&[]);
    let values = values(None);
    check_fleet(&docs, &values);
    for (name, stage) in stages(&values) {
        let (kind, min, max) = autoscaler(&docs, &name);
        assert_eq!(kind, "HorizontalPodAutoscaler", "{name}: without KEDA an HPA scales the stage");
        let partitions = stage["partitions"].as_i64().expect("partitions");
        assert!(min <= max && max <= partitions, "{name}: HPA {min}..{max} with {partitions} partitions");
        let hpa = for_stage(&docs, "HorizontalPodAutoscaler", &name);
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
    assert!(of_kind(&docs, "ServiceMonitor").is_empty() && of_kind(&docs, "NetworkPolicy").is_empty());
}

#[test]
fn full_values_render_keda_lag_scaling_monitoring_and_network_policy() {
    let docs = render(&["-f", FULL]);
    let values = values(Some(FULL));
    check_fleet(&docs, &values);
    for (name, stage) in stages(&values) {
        let (kind, min, max) = autoscaler(&docs, &name);
        assert_eq!(kind, "ScaledObject", "{name}: with keda.enabled a ScaledObject scales the stage");
        let partitions = stage["partitions"].as_i64().expect("partitions");
        assert!(min <= max && max <= partitions, "{name}: KEDA {min}..{max} with {partitions} partitions");
        let scaled = for_stage(&docs, "ScaledObject", &name);
        let trigger = &scaled["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "kafka");
        assert_eq!(trigger["metadata"]["consumerGroup"], format!("auditflow-{name}"), "{name}: the stage's group");
        assert_eq!(trigger["metadata"]["topic"], stage["inputTopic"], "{name}: lag of its input topic");
        assert_eq!(trigger["metadata"]["bootstrapServers"], values["kafka"]["brokers"]);
        let threshold = trigger["metadata"]["lagThreshold"].as_str().expect("lagThreshold is a string");
        assert_eq!(threshold, stage["autoscaling"]["lagThreshold"].to_string());
    }
    // values-full.yaml asks for 48 enrich instances on 24 partitions: clamped.
    assert_eq!(autoscaler(&docs, "enrich").2, 24);
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&docs, "NetworkPolicy").len(), 1);
    assert_eq!(of_kind(&docs, "TriggerAuthentication").len(), 1, "KEDA reads the SASL Secret too");
}

#[test]
fn autoscaler_maximum_never_exceeds_partitions() {
    let values = values(None);
    for keda in ["false", "true"] {
        let mut args: Vec<String> = vec!["--set".into(), format!("keda.enabled={keda}")];
        for (name, _) in stages(&values) {
            args.push("--set".into());
            args.push(format!("stages.{name}.autoscaling.maxReplicas=1000"));
            args.push("--set".into());
            args.push(format!("stages.{name}.autoscaling.minReplicas=999"));
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let docs = render(&arg_refs);
        for (name, stage) in stages(&values) {
            let partitions = stage["partitions"].as_i64().expect("partitions");
            let (kind, min, max) = autoscaler(&docs, &name);
            assert_eq!((min, max), (partitions, partitions), "{kind} of {name} (keda={keda})");
        }
    }
    // Fixed replicas are clamped the same way.
    let docs = render(&["--set", "stages.enrich.autoscaling.enabled=false", "--set", "stages.enrich.replicas=500"]);
    let partitions = values["stages"]["enrich"]["partitions"].as_i64().expect("partitions");
    assert_eq!(for_stage(&docs, "Deployment", "enrich")["spec"]["replicas"].as_i64(), Some(partitions));
}

/// Every stage binary of Cargo.toml runs as a Deployment, with the outside services it needs:
/// the rules' Redis and the index's OpenSearch user from Secrets, the search store's URL in
/// auditflow.toml, the API's token secret and keys from Secrets behind a Service on its port,
/// and retention as a CronJob of the schema owner (not a stage's login).
#[test]
fn every_stage_binary_is_deployed_with_what_it_needs() {
    let docs = render(&[]);
    let deployed: BTreeSet<String> = of_kind(&docs, "Deployment")
        .iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["containers"][0]["command"][0].as_str().map(str::to_string))
        .collect();
    for bin in cargo_bins().into_iter().filter(|b| b.starts_with("audit-")) {
        assert!(deployed.contains(&bin), "no Deployment runs {bin}");
    }
    let env_of = |pod: &Json| -> HashMap<String, Json> {
        pod["containers"][0]["env"].as_array().into_iter().flatten().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e.clone())).collect()
    };
    let stage_env = |stage: &str| env_of(&for_stage(&docs, "Deployment", stage)["spec"]["template"]["spec"]);
    let from_secret = |env: &HashMap<String, Json>, var: &str| env.get(var).is_some_and(|e| e["valueFrom"]["secretKeyRef"]["name"].is_string());
    let index = stage_env("index");
    for var in ["AUDITFLOW_OPENSEARCH_USERNAME", "AUDITFLOW_OPENSEARCH_PASSWORD", "AUDITFLOW_PSEUDONYM_KEY", "AUDITFLOW_DATABASE_URL"] {
        assert!(from_secret(&index, var), "audit-index: {var} from a Secret");
    }
    assert!(!index.contains_key("AUDITFLOW_MASTER_KEY"), "audit-index never needs the master key");
    assert!(from_secret(&stage_env("rules"), "AUDITFLOW_REDIS_URL"), "audit-rules: the Redis URL (with its password) from a Secret");
    assert!(!stage_env("rules").contains_key("AUDITFLOW_DATABASE_URL"), "audit-rules has no database");
    assert_eq!(stage_env("compliance")["AUDITFLOW_RETENTION_SCHEDULE"]["value"], "false", "the stage's login cannot drop partitions");
    let api = stage_env("api");
    for var in [
        "AUDITFLOW_JWT_SECRET",
        "AUDITFLOW_DATABASE_URL",
        "AUDITFLOW_MASTER_KEY",
        "AUDITFLOW_PSEUDONYM_KEY",
        "AUDITFLOW_SIGNING_KEY",
        "AUDITFLOW_OPENSEARCH_USERNAME",
        "AUDITFLOW_OPENSEARCH_PASSWORD",
    ] {
        assert!(from_secret(&api, var), "audit-api: {var} from a Secret");
    }
    assert_eq!(api["AUDITFLOW_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"], "auditflow-api", "the token secret has a Secret of its own");
    assert_eq!(api["AUDITFLOW_JWT_ISSUER"]["value"], "auditflow");
    assert_eq!(api["AUDITFLOW_JWT_AUDIENCE"]["value"], "auditflow-api");
    assert_eq!(api["AUDITFLOW_API_TRUST_FORWARDED_FOR"]["value"], "false", "X-Forwarded-For is trusted only when asked");
    assert!(!api.contains_key("AUDITFLOW_JWKS_FILE"), "no JWKS unless one is configured");
    let service = for_stage(&docs, "Service", "api");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(
        service["spec"]["ports"].as_array().expect("ports").iter().any(|p| p["port"] == 8080 && p["targetPort"] == "api"),
        "the API Service exposes 8080: {service}"
    );
    assert!(of_kind(&docs, "HorizontalPodAutoscaler").iter().all(|h| component(h) != "api"), "fixed API replicas unless autoscaling is asked for");
    let toml_text = of_kind(&docs, "ConfigMap").into_iter().find_map(|c| c["data"]["auditflow.toml"].as_str()).expect("auditflow.toml");
    let config = auditflow::config::Config::from_sources(Some(toml_text), &HashMap::new()).expect("auditflow.toml is accepted");
    assert_eq!(config.index.url.as_deref(), Some("https://opensearch-cluster-master:9200"));
    assert_eq!(config.topics.rule_matches.partitions, 12, "audit-alert's input topic has the partitions its stage expects");
    let cron = of_kind(&docs, "CronJob").into_iter().find(|c| component(c) == "retention").expect("a retention CronJob");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["command"], serde_json::json!(["auditflow", "retention", "run"]));
    let env = env_of(pod);
    assert_eq!(env["AUDITFLOW_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"], "auditflow-database", "as the schema owner");
    assert!(from_secret(&env, "AUDITFLOW_OPENSEARCH_PASSWORD"), "retention drops the search store's expired indices too");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
}

#[test]
fn chart_refuses_values_that_would_break_a_stage() {
    let err = run_helm(&["template", "auditflow", CHART, "--set", "stages.enrich.partitions=5"]).expect_err("mismatch");
    assert!(err.contains("stages.enrich.partitions"), "{err}");
    let err = run_helm(&["template", "auditflow", CHART, "--set", "terminationGracePeriodSeconds=10"]).expect_err("grace");
    assert!(err.contains("terminationGracePeriodSeconds"), "{err}");
    // audit-api refuses to start without a way to verify tokens, so the chart refuses first.
    let err = run_helm(&["template", "auditflow", CHART, "--set", "api.secretEnv={masterKey,pseudonymKey}"]).expect_err("no token key");
    assert!(err.contains("api") && err.contains("jwtSecret") && err.contains("api.jwks"), "{err}");
    run_helm(&["template", "auditflow", CHART, "--set", "api.secretEnv={masterKey,pseudonymKey}", "--set", "api.jwks.configMap=idp-jwks"])
        .expect("a JWKS alone verifies tokens");
    let err = run_helm(&["template", "auditflow", CHART, "--set", "api.requestTimeoutSecs=120"]).expect_err("requests outlast the grace period");
    assert!(err.contains("terminationGracePeriodSeconds") && err.contains("requestTimeoutSecs"), "{err}");
    let err = run_helm(&["template", "auditflow", CHART, "--set", "api.secretEnv={jwtSecret,nope}"]).expect_err("unknown entry");
    assert!(err.contains("api.secretEnv") && err.contains("nope"), "{err}");
    let docs = render(&["--set", "api.enabled=false"]);
    assert!(docs.iter().all(|d| component(d) != "api"), "api.enabled=false renders no API");
}

/// values-full.yaml: the API autoscaled on CPU, tokens from a JWKS mounted as a directory (a key
/// rotation reaches the pods in place) and its own database login; only the allowed callers
/// reach its port, and the ServiceMonitor scrapes it like a stage.
#[test]
fn full_values_deploy_the_api_behind_an_ingress_with_a_jwks() {
    let docs = render(&["-f", FULL]);
    let deployment = for_stage(&docs, "Deployment", "api");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = env_map(container);
    let file = env["AUDITFLOW_JWKS_FILE"]["value"].as_str().expect("AUDITFLOW_JWKS_FILE");
    let mount = container["volumeMounts"].as_array().expect("mounts").iter().find(|m| m["name"] == "jwks").expect("a jwks mount");
    assert!(mount.get("subPath").is_none(), "a subPath mount is never updated in place");
    let dir = mount["mountPath"].as_str().expect("mountPath");
    let volume = pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "jwks").expect("a jwks volume");
    assert_eq!(volume["configMap"]["name"], "auditflow-jwks");
    let item = volume["configMap"]["items"][0]["path"].as_str().expect("item path");
    assert_eq!(file, format!("{dir}/{item}"), "AUDITFLOW_JWKS_FILE names the mounted file");
    assert_eq!(env["AUDITFLOW_API_TRUST_FORWARDED_FOR"]["value"], "true");
    assert_eq!(env["AUDITFLOW_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"], "auditflow-database-api", "the API's own login");
    let hpa = for_stage(&docs, "HorizontalPodAutoscaler", "api");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu", "no consumer lag to scale the API on");
    assert!(of_kind(&docs, "ScaledObject").iter().all(|d| component(d) != "api"));

    let policy = of_kind(&docs, "NetworkPolicy")[0];
    let rule = policy["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .find(|r| r["ports"][0]["port"] == "api")
        .expect("an ingress rule for the API port");
    assert_eq!(rule["from"], values(Some(FULL))["networkPolicy"]["apiFrom"], "only the allowed callers");
    let monitor = of_kind(&docs, "ServiceMonitor")[0];
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http", "the port every stage's and the API's Service names http");
}

#[test]
fn chart_lints_cleanly() {
    run_helm(&["lint", "--strict", CHART]).unwrap_or_else(|e| panic!("helm lint:\n{e}"));
    run_helm(&["lint", "--strict", CHART, "-f", FULL]).unwrap_or_else(|e| panic!("helm lint (full):\n{e}"));
}


/// The rendered auditflow.toml and AUDITFLOW_* variables are what the binaries accept: the
/// config loader denies unknown keys, so a typo in the chart fails here, not in production.
#[test]
fn chart_configuration_is_accepted_by_the_binaries() {
    // Settings are read in src/config.rs and in each stage's own settings module.
    let config_rs = support::all_sources("src");
    for extra in [&[][..], &["-f", FULL][..]] {
        let docs = render(extra);
        let cm = of_kind(&docs, "ConfigMap")
            .into_iter()
            .find(|c| c["data"]["auditflow.toml"].is_string())
            .expect("a ConfigMap with auditflow.toml");
        let toml_text = cm["data"]["auditflow.toml"].as_str().expect("toml");
        let mut env = HashMap::new();
        for (owner, pod) in pod_specs(&docs) {
            for e in pod["containers"][0]["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().expect("name");
                if !var.starts_with("AUDITFLOW_") {
                    continue;
                }
                let known = if var.starts_with("AUDITFLOW_LIBRDKAFKA_") {
                    config_rs.contains("\"AUDITFLOW_LIBRDKAFKA_\"")
                } else {
                    config_rs.contains(&format!("\"{var}\""))
                };
                assert!(known, "{owner} sets {var}, which no settings code under src/ reads");
                if let Some(v) = e["value"].as_str() {
                    if var != "AUDITFLOW_CONFIG" {
                        env.insert(var.to_string(), v.to_string());
                    }
                }
            }
        }
        let config = auditflow::config::Config::from_sources(Some(toml_text), &env)
            .unwrap_or_else(|e| panic!("the chart's auditflow.toml ({extra:?}) is refused: {e}\n{toml_text}"));
        let values = values(extra.get(1).copied());
        assert_eq!(config.kafka.brokers, values["kafka"]["brokers"].as_str().expect("brokers"));
        assert_eq!(config.http.listen, "0.0.0.0:9100");
        assert_eq!(config.api.listen, "0.0.0.0:8080");
        assert_eq!(i64::from(config.topics.raw.partitions), values["topics"]["raw"]["partitions"].as_i64().expect("p"));
        assert_eq!(config.topics.raw.max_message_bytes, 4 * 1024 * 1024, "the raw topic keeps its 4 MiB limit");
        // Tracing: off unless an endpoint is given; the full values send to a collector.
        let endpoint = values["tracing"]["otlpEndpoint"].as_str().filter(|e| !e.is_empty());
        assert_eq!(config.trace.otlp_endpoint.as_deref(), endpoint);
        assert_eq!(config.trace.sample_ratio, values["tracing"]["sampleRatio"].as_f64().expect("sampleRatio"));
        // The grace period covers the drain the configuration allows.
        let drain_ms = config.stage.batch_max_wait_ms + config.stage.transaction_timeout_ms;
        for d in of_kind(&docs, "Deployment") {
            let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().expect("grace");
            assert!(grace * 1000 > drain_ms, "{}: {grace} s grace for a {drain_ms} ms drain", d["metadata"]["name"]);
        }
    }
}

/// Start the real `audit-persist` with exactly the environment its rendered Deployment gets
/// (Secret references filled with valid generated values, the database at a closed port) and
/// tell whether it got past its configuration checks: `Ok` once it tries the database,
/// `Err(message)` if it refused a setting.
fn persist_starts_with(env: &[(String, String)], config_file: &Path) -> Result<(), String> {
    binary_starts_with(env!("CARGO_BIN_EXE_audit-persist"), env, config_file)
}

/// The same for any stage binary.
fn binary_starts_with(binary: &str, env: &[(String, String)], config_file: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("stage.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AUDITFLOW_CONFIG", config_file)
        .env("AUDITFLOW_HTTP_LISTEN", "127.0.0.1:0")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let outcome = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("database not reachable yet") {
            break Ok(());
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break Err(format!("exited ({status}):\n{text}"));
        }
        if std::time::Instant::now() > deadline {
            break Err(format!("neither refused nor reached the database in 30 s:\n{text}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// The persist Deployment as rendered gets every variable audit-persist needs to start. The
/// list is not written down here: the real binary, given only that environment, must get past
/// all of its configuration checks; and each secret it is given is shown to be needed.
#[test]
fn persist_deployment_gets_everything_persist_needs_to_start() {
    for extra in [&[][..], &["-f", FULL][..]] {
        let docs = render(extra);
        let dir = tempfile::tempdir().expect("tempdir");
        let config_file = rendered_config(&docs, dir.path());
        let deployment = for_stage(&docs, "Deployment", "persist");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let (env, from_secrets) = rendered_env(container, dir.path());
        assert!(from_secrets.iter().any(|n| n == "AUDITFLOW_DATABASE_URL"), "{extra:?}: no database URL from a Secret");
        assert!(
            !container["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str().unwrap_or("").contains("secrets")),
            "{extra:?}: secrets are mounted as files that nothing reads"
        );
        persist_starts_with(&env, &config_file)
            .unwrap_or_else(|e| panic!("{extra:?}: audit-persist does not start as rendered: {e}"));
        // Each key from a Secret is one persist refuses to start without (Kafka credentials are
        // only checked by the broker, and the database URL has a default).
        for missing in from_secrets.iter().filter(|n| *n != "AUDITFLOW_DATABASE_URL" && !n.starts_with("AUDITFLOW_LIBRDKAFKA_")) {
            let fewer: Vec<(String, String)> = env.iter().filter(|(k, _)| k != missing).cloned().collect();
            let err = persist_starts_with(&fewer, &config_file)
                .err()
                .unwrap_or_else(|| panic!("{extra:?}: persist started without {missing}; why does the chart give it?"));
            assert!(err.contains(missing.as_str()), "{extra:?}: without {missing}, persist failed for another reason: {err}");
        }
    }
}

/// The rendered `auditflow.toml` (from the chart's ConfigMap), written under `dir`.
fn rendered_config(docs: &[Json], dir: &Path) -> std::path::PathBuf {
    let text = of_kind(docs, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["auditflow.toml"].as_str())
        .expect("a ConfigMap with auditflow.toml")
        .to_string();
    let path = dir.join("auditflow.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The rendered environment of a stage's container, Secret references filled with generated
/// values (the database URL at a closed port), files it names written under `dir`: what the
/// binary would see in its pod. Returns the environment and the names that came from Secrets.
fn rendered_env(container: &Json, dir: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let mut env = Vec::new();
    let mut from_secrets = Vec::new();
    for e in container["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_string();
        if name == "AUDITFLOW_CONFIG" || name == "AUDITFLOW_HTTP_LISTEN" {
            continue;
        }
        let value = if name == "AUDITFLOW_JWKS_FILE" {
            // The mounted document, here one without keys (the HS256 secret verifies tokens).
            let path = dir.join("jwks.json");
            std::fs::write(&path, r#"{"keys": []}"#).expect("write jwks");
            path.display().to_string()
        } else if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["secretKeyRef"].is_object() {
            from_secrets.push(name.clone());
            if name == "AUDITFLOW_DATABASE_URL" {
                "postgres://stage:unused@127.0.0.1:9/auditflow".to_string()
            } else {
                hex::encode(rand_bytes())
            }
        } else if e["valueFrom"]["fieldRef"].is_object() {
            "test-pod".to_string()
        } else {
            panic!("env {name}: neither a value nor a Secret/field reference: {e}");
        };
        env.push((name, value));
    }
    (env, from_secrets)
}

/// The API Deployment as rendered gets what audit-api needs to start: given only that
/// environment, the real binary gets past its configuration, keys, token verification and
/// search client to the database; without the master key, the pseudonym key or the token
/// secret it refuses, naming it.
#[test]
fn api_deployment_gets_everything_the_api_needs_to_start() {
    for extra in [&[][..], &["-f", FULL][..]] {
        let docs = render(extra);
        let dir = tempfile::tempdir().expect("tempdir");
        let config_file = rendered_config(&docs, dir.path());
        let container = &for_stage(&docs, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0];
        let (env, from_secrets) = rendered_env(container, dir.path());
        assert!(from_secrets.iter().any(|n| n == "AUDITFLOW_DATABASE_URL"), "{extra:?}: no database URL from a Secret");
        binary_starts_with(env!("CARGO_BIN_EXE_audit-api"), &env, &config_file)
            .unwrap_or_else(|e| panic!("{extra:?}: audit-api does not start as rendered: {e}"));
        if !extra.is_empty() {
            continue;
        }
        for missing in ["AUDITFLOW_MASTER_KEY", "AUDITFLOW_PSEUDONYM_KEY", "AUDITFLOW_JWT_SECRET"] {
            assert!(from_secrets.iter().any(|n| n == missing), "{missing} from a Secret");
            let fewer: Vec<(String, String)> = env.iter().filter(|(k, _)| k != missing).cloned().collect();
            let err = binary_starts_with(env!("CARGO_BIN_EXE_audit-api"), &fewer, &config_file)
                .err()
                .unwrap_or_else(|| panic!("audit-api started without {missing}"));
            assert!(err.contains(missing), "without {missing}, audit-api failed for another reason: {err}");
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, x) in uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()).enumerate() {
        b[i] = *x;
    }
    b
}
