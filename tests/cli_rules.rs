//! `auditflow rules validate | convert | test` on Sigma files, as an operator runs them: the
//! exit status, and messages that name the file, the rule and the reason.

use std::path::Path;
use std::process::{Command, Output};

fn auditflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow")).args(args).output().expect("run auditflow")
}

const GOOD: &str = "title: Failed login\nid: 3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9\nname: failed\nlogsource: {product: auditflow, category: audit}\ndetection:\n  s: {action: login, success: false}\n  condition: s\nlevel: high\n";

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().expect("utf-8 path")
}

#[test]
fn validate_refuses_what_auditflow_cannot_run_naming_file_rule_and_reason() {
    let cases = [
        ("logsource.yml", GOOD.replace("product: auditflow, category: audit", "product: linux, service: auditd"), "logsource {product: linux, service: auditd} is not one auditflow serves"),
        ("modifier.yml", GOOD.replace("action: login", "action|base64offset|contains: login"), "base64offset"),
        ("field.yml", GOOD.replace("action: login", "Workstation: pc-1"), "unknown field `Workstation`"),
        ("yaml.yml", GOOD.replace("condition: s", "condition: [s"), "yaml.yml:"),
    ];
    for (file, text, why) in cases {
        let dir = dir_with(&[(file, &text)]);
        let out = auditflow(&["rules", "validate", path(&dir)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(file) && err.contains(why), "{file}: {err}");
        if file != "yaml.yml" {
            assert!(err.contains("rule \"Failed login\""), "{file} names the rule: {err}");
        }
    }
    let dir = dir_with(&[("good.yml", GOOD)]);
    let out = auditflow(&["rules", "validate", path(&dir)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
}

#[test]
fn convert_prints_native_rules_that_compile_to_the_same_rule_set() {
    let dir = dir_with(&[("good.yml", GOOD)]);
    let out = auditflow(&["rules", "convert", &format!("{}/good.yml", path(&dir))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let native = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(native.contains("- id: failed") && native.contains("field: action"), "{native}");
    // The printed rules are a native rule file that validates on its own.
    let again = dir_with(&[("native.yaml", &native)]);
    let out = auditflow(&["rules", "validate", path(&again)]);
    assert!(out.status.success(), "{native}\n{}", String::from_utf8_lossy(&out.stderr));
    // And the shipped pack converts whole.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let out = auditflow(&["rules", "convert", shipped.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("- id: brute-force-then-success"));
}
