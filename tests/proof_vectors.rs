//! The proof format against independent implementations: the RFC 9162 hashing against a
//! Python (hashlib) reference, and the committed worked proofs against a Python verifier that
//! follows the README's byte layout. Pure: no services.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditflow::ledger::{self, Checkpoint, Hash, LedgerSigner, StoredRow};
use auditflow::merkle;
use auditflow::privacy::SecretKey;
use auditflow::proof;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3").args(args).current_dir(vectors()).output().expect("python3 runs")
}

fn h(text: &serde_json::Value) -> Hash {
    ledger::hash_from_hex("vector", text.as_str().unwrap()).unwrap()
}

fn hs(v: &serde_json::Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(h).collect()
}

#[test]
fn merkle_hashing_matches_the_python_reference() {
    let out = python(&["merkle_vectors.py"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vectors().join("merkle.json")).unwrap()).unwrap();
    assert_eq!(fresh, committed, "tests/vectors/merkle.json is what merkle_vectors.py prints");

    let leaves = hs(&committed["leaves"]);
    let roots = hs(&committed["roots"]);
    let mut frontier = merkle::Frontier::new();
    for (n, root) in roots.iter().enumerate() {
        assert_eq!(&merkle::root(&leaves[..n]), root, "root of {n}");
        assert_eq!(&frontier.root(), root, "frontier root of {n}");
        if n < leaves.len() {
            frontier.push(&leaves[n]);
        }
    }
    let inclusion = committed["inclusion"].as_array().unwrap();
    assert_eq!(inclusion.len(), 13 * 14 / 2);
    for v in inclusion {
        let (n, m) = (v["treeSize"].as_u64().unwrap(), v["leafIndex"].as_u64().unwrap());
        let path = hs(&v["path"]);
        assert_eq!(merkle::inclusion_proof(&leaves[..n as usize], m).unwrap(), path, "path of {m} in {n}");
        assert_eq!(merkle::verify_inclusion(&leaves[m as usize], m, n, &path, &roots[n as usize]), Ok(()));
    }
    for v in committed["consistency"].as_array().unwrap() {
        let (m, n) = (v["fromSize"].as_u64().unwrap(), v["toSize"].as_u64().unwrap());
        let path = hs(&v["path"]);
        assert_eq!(merkle::consistency_proof(&leaves[..n as usize], m).unwrap(), path, "{m} to {n}");
        assert_eq!(merkle::verify_consistency(m, n, &roots[m as usize], &roots[n as usize], &path), Ok(()));
    }
}

const CHAIN: &str = "audit-enriched/0/2026-12";

/// A small chain with every kind of column filled somewhere, signed with a fixed key at a
/// fixed time, so the worked proofs are reproducible byte for byte.
fn example() -> (LedgerSigner, Vec<StoredRow>, Vec<Hash>, Vec<Hash>) {
    let signer = LedgerSigner::new(&SecretKey([0x42; 32]));
    let mut prev = ledger::genesis(CHAIN);
    let (mut rows, mut prevs, mut hashes) = (vec![], vec![], vec![]);
    for i in 1..=7i64 {
        let row = StoredRow {
            id: format!("0193a0c0-0000-7000-8000-00000000000{i}"),
            timestamp_us: 1_764_547_200_000_000 + i * 1_000_000,
            user_id: None,
            session_id: None,
            action: if i == 3 { "user.login".into() } else { "document.read".into() },
            resource: "auth".into(),
            resource_id: Some(format!("doc-{i}")),
            method: Some("POST".into()),
            endpoint: Some("/login".into()),
            status_code: Some(if i == 3 { 401 } else { 200 }),
            user_agent: None,
            ip_address: None,
            location: None,
            ip_facts: Some(r#"{"private":false,"version":4}"#.into()),
            classification: "CONFIDENTIAL".into(),
            severity: if i == 3 { "HIGH".into() } else { "LOW".into() },
            metadata: None,
            success: i != 3,
            error_message: (i == 3).then(|| "bad password".into()),
            duration: Some(12 * i),
            compliance: r#"{"gdpr":true,"hipaa":false,"pci":false,"sox":false}"#.into(),
            source_topic: "audit-raw".into(),
            source_partition: 0,
            source_offset: 100 + i,
            enriched_at_us: 1_764_547_200_500_000 + i * 1_000_000,
            subject_pseudonym: Some("u_4f1c2a".into()),
            user_pseudonym: Some("u_4f1c2a".into()),
            key_generation: Some(1),
            personal: Some(vec![0xa0, 0x01, i as u8, 0xff]),
            chain_id: CHAIN.into(),
            chain_seq: i,
        };
        let hash = ledger::row_hash(&prev, &row);
        prevs.push(prev);
        hashes.push(hash);
        rows.push(row);
        prev = hash;
    }
    (signer, rows, prevs, hashes)
}

fn signed(signer: &LedgerSigner, hashes: &[Hash], n: usize) -> Checkpoint {
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:10.123456Z").unwrap().with_timezone(&chrono::Utc);
    Checkpoint::sign(signer, CHAIN, n as i64, hashes[n - 1], merkle::root(&hashes[..n]), at)
}

fn same_file(name: &str, text: &str) {
    let path = vectors().join(name);
    if std::env::var_os("AUDITFLOW_WRITE_VECTORS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{name} is reproducible (AUDITFLOW_WRITE_VECTORS=1 rewrites it)");
}

#[test]
fn the_worked_proofs_are_reproducible_and_verify_in_python() {
    let (signer, rows, prevs, hashes) = example();
    let public = signer.verifying_key();
    let keys = [public];
    let to = signed(&signer, &hashes, 7);
    let inclusion = proof::build_inclusion(rows[2].clone(), prevs[2], &hashes, &to, &public).unwrap();
    let consistency = proof::build_consistency(&hashes, &signed(&signer, &hashes, 3), &to, &public).unwrap();
    let inclusion_text = serde_json::to_string_pretty(&inclusion).unwrap() + "\n";
    let consistency_text = serde_json::to_string_pretty(&consistency).unwrap() + "\n";
    same_file("inclusion-proof.json", &inclusion_text);
    same_file("consistency-proof.json", &consistency_text);
    same_file("public-key.txt", &format!("{}\n", hex::encode(public.as_bytes())));
    assert!(proof::verify_json(&inclusion_text, &keys, None).is_ok());
    assert!(proof::verify_json(&consistency_text, &keys, None).is_ok());

    let statement = hex::encode(to.statement());
    for file in ["inclusion-proof.json", "consistency-proof.json"] {
        let out = python(&["verify_proof.py", file]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{file}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("statement {statement}\n")), "the Python statement bytes are the signed ones: {text}");
    }
    // The Python verifier is not a rubber stamp: one changed field fails it.
    let mut bad: serde_json::Value = serde_json::from_str(&inclusion_text).unwrap();
    bad["row"]["statusCode"] = 200.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, bad.to_string()).unwrap();
    let out = python(&["verify_proof.py", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(proof::verify_json(&bad.to_string(), &keys, None).is_err());
}
