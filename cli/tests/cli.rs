//! genesisctl, run as users run it: the real binary.

use std::process::Command;

use serde_json::Value;

fn genesisctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_genesisctl"))
}

#[test]
fn default_demo_runs_every_stage_cuts_the_revoked_member_off_and_leaves_nothing_running() {
    // The README's first command as a newcomer runs it: the default size (12 members).
    let dir = tempfile::tempdir().unwrap();
    let out = genesisctl()
        .args(["demo", "--json", "--subnet", "127.200.1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{summary:#}");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["nodes"], 12);
    let stages = summary["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "authority started",
            "members joined by CSR",
            "routes converged",
            "message across the mesh",
            "tunnelled HTTP request",
            "service name, nearest member first",
            "certificate rotated, no link dropped",
            "member revoked and cut off everywhere",
            "forged control message refused",
            "audit logs verified",
            "stopped, nothing left running",
        ]
    );
    assert!(stages.iter().all(|s| s["ok"] == true), "{stages:#?}");
    let f = &summary["figures"];
    assert!(f["maxHops"].as_u64().unwrap() >= 2, "{f}");
    assert_eq!(f["cutOffEverywhere"], true);
    assert!(f["revocationCutOffMs"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["leftRunning"], false);
    // Nothing of ours is left: no process mentions the directory, no member answers.
    let dir_text = dir.path().to_string_lossy().into_owned();
    assert!(processes_mentioning(&dir_text).is_empty(), "left running");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("mesh.json")).unwrap())
            .unwrap();
    for m in manifest["members"].as_array().unwrap() {
        let admin = m["admin"].as_str().unwrap();
        assert!(std::net::TcpStream::connect(admin).is_err(), "{admin} still answers");
    }
}

/// The size users run is past the demo's 12: a 50-member mesh of real processes passes every
/// stage too (issue 14; larger meshes are in docs/BENCHMARKS.md).
#[test]
fn a_fifty_member_demo_passes_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = genesisctl()
        .args(["demo", "--nodes", "50", "--json", "--subnet", "127.200.2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let failed: Vec<&Value> =
        summary["stages"].as_array().unwrap().iter().filter(|s| s["ok"] != true).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(out.status.success());
    assert_eq!(summary["nodes"], 50);
    assert_eq!(summary["leftRunning"], false);
}

/// Process ids whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

#[test]
fn demo_refuses_too_few_nodes_with_a_clear_error() {
    let out = genesisctl().args(["demo", "--nodes", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}

#[test]
fn a_small_demo_summarises_as_yaml_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = genesisctl()
        .args(["demo", "--nodes", "4", "-o", "yaml", "--subnet", "127.200.10", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let summary: Value = serde_yaml::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!((summary["ok"].as_bool(), summary["nodes"].as_u64()), (Some(true), Some(4)));
    assert_eq!(summary["leftRunning"], false);
}

#[test]
fn demo_checks_its_subnet_up_front() {
    let out = genesisctl().args(["demo", "--subnet", "127.42"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--subnet \"127.42\"") && err.contains("127.42.0"), "{err}");
    // Another demo (here: anything) holding a member's address: refused before starting.
    let _busy = std::net::TcpListener::bind("127.200.9.2:7000").unwrap();
    let out = genesisctl().args(["demo", "--subnet", "127.200.9", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.200.9.2:7000 is not free") && err.contains("--subnet"), "{err}");
    assert!(out.stdout.is_empty(), "nothing was started: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn completion_scripts_for_each_shell_and_a_clear_error_for_another() {
    for shell in ["bash", "zsh", "fish"] {
        let out = genesisctl().args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("genesisctl") && script.contains("revoke"), "{shell}: {script}");
    }
    let out = genesisctl().args(["completion", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
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
    // -o json and -o yaml, like every other command.
    let out = genesisctl().args(["audit", "verify", "-o", "json"]).arg(&path).output().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((result["ok"].as_bool(), result["records"].as_u64()), (Some(true), Some(3)));
    let out = genesisctl().args(["audit", "verify", "-o", "yaml"]).arg(&path).output().unwrap();
    let result: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(result["records"], 3);

    let text = std::fs::read_to_string(&path).unwrap().replacen("\"i\":1", "\"i\":7", 1);
    std::fs::write(&path, text).unwrap();
    let out = genesisctl().args(["audit", "verify", "-o", "json"]).arg(&path).output().unwrap();
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

#[test]
fn cluster_mode_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // An API server address where nothing listens.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
         current-context: x\n",
    )
    .unwrap();
    for (args, expected) in [
        (vec!["check"], "cannot reach the Kubernetes API server"),
        (vec!["status"], "cannot reach the Kubernetes API server"),
        (vec!["peers", "m1"], "kubectl port-forward"),
        (vec!["control", "drain"], "kubectl port-forward"),
    ] {
        let out = genesisctl().args(&args).arg("--kubeconfig").arg(&kubeconfig).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected) && err.lines().count() == 1, "{args:?}: {err}");
    }
    // No local mesh and no --kubeconfig: $KUBECONFIG is used, as kubectl would.
    let empty = tempfile::tempdir().unwrap();
    let out = genesisctl()
        .arg("status")
        .env_remove("GENESIS_MESH")
        .env("TMPDIR", empty.path())
        .env("HOME", empty.path())
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Kubernetes API server"), "{err}");
    // And with neither, the error still points at the local demo.
    let out = genesisctl()
        .arg("status")
        .env_remove("GENESIS_MESH")
        .env_remove("KUBECONFIG")
        .env("TMPDIR", empty.path())
        .env("HOME", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("genesisctl demo --keep"));
    let out =
        genesisctl().args(["status", "--kubeconfig", "/nonexistent/kubeconfig"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read kubeconfig"));
}
