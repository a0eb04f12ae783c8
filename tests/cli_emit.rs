//! `auditflow emit` against the real broker: good input is sent and its id printed; bad input
//! exits with code 2 and sends nothing.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn emit(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_auditflow"))
        .arg("emit")
        .args(args)
        .envs(env.env_vars())
        .output()
        .expect("run auditflow emit")
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_sends_valid_events_and_refuses_bad_input_with_exit_code_2() {
    let env = TestEnv::new("emit", 1).await;

    let bad: [(&[&str], &str); 4] = [
        (&["--action=login", "--resource=r", "--severity=URGENT"], "severity"),
        (&["--action=login", "--resource=r", "--classification=SECRET"], "classification"),
        (&["--action=login", "--resource=r", "--ip-address=999.1.1.1"], "ip"),
        (&["--action=login", "--resource=r", "--metadata={not json"], "metadata"),
    ];
    for (args, what) in bad {
        let out = emit(&env, args);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains(what), "the message names the problem ({what}): {stderr}");
    }
    assert!(read_topic(&env.raw, 1, Duration::from_secs(2)).is_empty(), "bad input sends nothing");

    let out = emit(
        &env,
        &[
            "--action=delete_user",
            "--resource=user_management",
            "--resource-id=user789",
            "--user-id=admin123",
            "--ip-address=172.16.0.10",
            "--classification=CONFIDENTIAL",
            "--severity=MEDIUM",
            "--method=DELETE",
            "--endpoint=/api/users/user789",
            "--status-code=200",
            "--duration=250",
            "--success=false",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sent = read_topic(&env.raw, 1, Duration::from_secs(2));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key.as_deref(), Some(&b"admin123"[..]), "keyed by user");
    let raw: serde_json::Value = serde_json::from_slice(&sent[0].payload).expect("JSON event");
    assert_eq!(raw["id"], serde_json::Value::String(id));
    assert_eq!(raw["action"], "delete_user");
    assert_eq!(raw["success"], false);
    assert_eq!(raw["statusCode"], 200);

    // Bulk from a file: one bad line stops everything, nothing sent.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        "{\"action\":\"login\",\"resource\":\"a\"}\n{\"action\":\"login\",\"resource\":\"b\",\"severity\":\"NOPE\"}\n",
    )
    .expect("write");
    let out = emit(&env, &["--file", file.to_str().expect("utf8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    assert_eq!(read_topic(&env.raw, 1, Duration::from_secs(2)).len(), 1, "still only the single event");

    std::fs::write(&file, "{\"action\":\"login\",\"resource\":\"a\"}\n{\"action\":\"logout\",\"resource\":\"b\"}\n")
        .expect("write");
    let out = emit(&env, &["--file", file.to_str().expect("utf8 path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_topic(&env.raw, 1, Duration::from_secs(2)).len(), 3);
}
