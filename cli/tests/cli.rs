//! genesisctl, run as users run it: the real binary.

use std::process::Command;

fn genesisctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_genesisctl"))
}

#[test]
fn demo_json_summary_reports_every_stage_passed_and_the_revoked_member_cut_off() {
    let out = genesisctl().args(["demo", "--nodes", "4", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["nodes"], 4);
    let stages = summary["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for expected in [
        "members joined by CSR",
        "mutual TLS 1.3 over loopback",
        "member revoked and cut off",
        "forged control messages refused",
        "audit chain verified",
    ] {
        assert!(names.contains(&expected), "missing stage {expected}: {names:?}");
    }
    assert!(stages.iter().all(|s| s["ok"] == true), "{stages:?}");
    let revoked = stages.iter().find(|s| s["name"] == "member revoked and cut off").unwrap();
    assert!(revoked["detail"].as_str().unwrap().contains("Revoked"), "{revoked}");
    assert!(summary["audit_records"].as_u64().unwrap() >= 4);
}

#[test]
fn demo_refuses_too_few_nodes_with_a_clear_error() {
    let out = genesisctl().args(["demo", "--nodes", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}

#[test]
fn audit_verify_accepts_an_intact_log_and_names_the_first_broken_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = genesis_trust::AuditLog::open(&path).unwrap();
    for i in 0..3 {
        log.append(
            "link-refused",
            "peer",
            serde_json::json!({"i": i}),
            std::time::SystemTime::now(),
        )
        .unwrap();
    }
    let out = genesisctl().args(["audit", "verify"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 records, chain intact"));

    let text = std::fs::read_to_string(&path).unwrap().replacen("\"i\":1", "\"i\":7", 1);
    std::fs::write(&path, text).unwrap();
    let out = genesisctl().args(["audit", "verify", "--json"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], false);
    assert_eq!(result["line"], 2);
    assert!(result["error"].as_str().unwrap().contains("edited"));

    let out =
        genesisctl().args(["audit", "verify"]).arg(dir.path().join("missing")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check the path"));
}
