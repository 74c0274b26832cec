//! Every everyday command against a real local mesh: `genesisctl demo --keep` runs the
//! authority and five sidecar processes; the commands read and change it as an admin would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn genesisctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_genesisctl"))
}

/// `genesisctl demo --keep` in the background; stopped (SIGTERM) on drop.
struct KeptMesh {
    child: Child,
    dir: tempfile::TempDir,
    summary: Value,
}

impl KeptMesh {
    fn start(subnet: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = genesisctl()
            .args(["demo", "--nodes", "5", "--keep", "--json", "--subnet", subnet, "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // With --keep --json the summary is printed once the stages are done.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let summary: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        assert_eq!(summary["ok"], true, "the demo failed: {line}");
        KeptMesh { child, dir, summary }
    }

    fn run(&self, args: &[&str]) -> Output {
        genesisctl().args(args).arg("--mesh").arg(self.dir.path()).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: {e}: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code(), value)
    }

    fn revoked(&self) -> String {
        self.summary["figures"]["revoked"].as_str().unwrap().to_owned()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for KeptMesh {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(value: &Value, name: &str) -> Value {
    value["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no check {name} in {value:#}"))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_peers_routes_control_revoke_check_and_audit_against_a_running_mesh() {
    let mut mesh = KeptMesh::start("127.200.2");
    let first_revoked = mesh.revoked();
    let members: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let live: Vec<&String> = members.iter().filter(|m| **m != first_revoked).collect();

    // status: every live member ready (those that lost a link to the revoked member find
    // another peer first), the demo's revoked member listed, converged.
    wait_for("every live member to be ready", || mesh.json(&["status"]).1["ready"] == 4);
    let (code, status) = mesh.json(&["status"]);
    assert_eq!(code, Some(0));
    assert_eq!(status["live"], 4);
    assert_eq!(status["ready"], 4, "{status:#}");
    assert_eq!(status["converged"], true, "{status:#}");
    assert_eq!(status["revoked"], serde_json::json!([first_revoked]));
    let table = stdout(&mesh.run(&["status"]));
    assert!(table.contains("NODE") && table.contains("converged: yes"), "{table}");
    for m in &members {
        assert!(table.contains(m.as_str()), "{m} missing from\n{table}");
    }

    // peers and routes of one member, as JSON and as a table.
    let (a, b) = (live[0].as_str(), live[1].as_str());
    let (code, peers) = mesh.json(&["peers", a]);
    assert_eq!(code, Some(0));
    let connected: Vec<&Value> =
        peers.as_array().unwrap().iter().filter(|p| p["connected"] == true).collect();
    assert!(!connected.is_empty(), "{peers:#}");
    assert!(connected.iter().all(|p| p["score"].as_u64().is_some() && p["level"].is_string()));
    let (_, routes) = mesh.json(&["routes", a]);
    assert!(routes[0]["nextHop"].is_string(), "camelCase keys: {routes}");
    assert!(peers[0].get("rtt_ms").is_none(), "camelCase keys: {peers}");
    let dests: Vec<&str> =
        routes.as_array().unwrap().iter().map(|r| r["dest"].as_str().unwrap()).collect();
    for m in &live {
        assert!(m.as_str() == a || dests.contains(&m.as_str()), "{a} has no route to {m}");
    }
    assert!(!dests.contains(&first_revoked.as_str()), "a route to the revoked member");
    assert!(stdout(&mesh.run(&["routes", a])).starts_with("DEST"));
    // services: the demo's stage left `web` offered by two members; every live member knows
    // the offers of the live ones, nearest first.
    let (code, services) = mesh.json(&["services", a]);
    assert_eq!(code, Some(0));
    let web: Vec<&Value> =
        services.as_array().unwrap().iter().filter(|s| s["name"] == "web").collect();
    assert!(!web.is_empty(), "{services:#}");
    assert!(web.iter().all(|s| s["port"] == 8080 && s["member"].is_string()), "{services:#}");
    let metrics: Vec<u64> = web.iter().filter_map(|s| s["metric"].as_u64()).collect();
    assert!(metrics.windows(2).all(|w| w[0] <= w[1]), "nearest first: {services:#}");
    assert!(stdout(&mesh.run(&["services", a])).starts_with("NAME"));

    // A healthy mesh passes every check.
    let (code, report) = mesh.json(&["check"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert!(stdout(&mesh.run(&["check"])).contains("Status check results are"));

    // control: the admin principal's log-level reaches one member; a client's shutdown is
    // refused by RBAC.
    let (code, answer) = mesh.json(&[
        "control",
        "log-level",
        "--scope",
        &format!("node/{b}"),
        "--arg",
        "level=debug",
    ]);
    assert_eq!(code, Some(0), "{answer:#}");
    assert_eq!((answer["applied"].as_u64(), answer["expected"].as_u64()), (Some(1), Some(1)));
    let dir = mesh.dir.path().to_owned();
    let (cert, key) = (dir.join("demo-client.crt"), dir.join("demo-client.key"));
    let (code, answer) = mesh.json(&[
        "control",
        "shutdown",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(answer["accepted"], false);
    assert!(answer["answer"]["rule"].as_str().unwrap().starts_with("default-deny"), "{answer}");
    // Every everyday command answers the same document as JSON and as YAML.
    for args in [
        vec!["status"],
        vec!["peers", a],
        vec!["routes", a],
        vec!["services", a],
        vec!["check"],
        vec!["version"],
    ] {
        let (code, as_json) = mesh.json(&args);
        let mut yaml_args = args.clone();
        yaml_args.extend(["-o", "yaml"]);
        let out = mesh.run(&yaml_args);
        assert_eq!(out.status.code(), code, "{args:?}");
        let as_yaml: Value = serde_yaml::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} -o yaml does not parse ({e}): {}", stdout(&out)));
        // Same keys (values such as RTTs move between two calls).
        let keys = |v: &Value| -> Vec<String> {
            match v {
                Value::Object(m) => m.keys().cloned().collect(),
                Value::Array(a) => a
                    .first()
                    .map(|f| f.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
                    .unwrap_or_default(),
                _ => vec![],
            }
        };
        assert_eq!(keys(&as_json), keys(&as_yaml), "{args:?}");
    }
    // version: the client's, and each member's own.
    let (code, version) = mesh.json(&["version"]);
    assert_eq!(code, Some(0));
    assert_eq!(version["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["members"][b], env!("CARGO_PKG_VERSION"), "{version}");
    // A scope that addresses nobody is an error, not "0/0 applied".
    let out = mesh.run(&["control", "log-level", "--scope", "node/m99", "--arg", "level=debug"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("addresses no member") && err.contains("m0"), "{err}");
    // A duration flag without a unit names the flag.
    let out = mesh.run(&["revoke", "m3", "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--timeout") && err.contains("30s"), "{err}");

    // revoke: a second member, cut off everywhere; the mesh still converges and checks green.
    let victim = live[3].as_str();
    let (code, r) = mesh.json(&["revoke", victim]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["stillReaching"], serde_json::json!([]));
    assert_eq!(r["unreachable"], serde_json::json!([]));
    assert!(r["cutOffEverywhereMs"].as_f64().unwrap() > 0.0);
    let (_, status) = mesh.json(&["status"]);
    assert_eq!(status["revoked"].as_array().unwrap().len(), 2);
    // Members that lost a link to it find another peer, then every check is green again.
    wait_for("check to pass after the revocation", || mesh.json(&["check"]).0 == Some(0));
    let out = mesh.run(&["revoke", victim]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already revoked"));

    // A stale CRL: the authority signs a fresh one that nobody pushed.
    let out = genesisctl()
        .args(["internal-operator", "local", "publish-crl", "--dir"])
        .arg(dir.join("authority"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, report) = mesh.json(&["check"]);
    assert_eq!(code, Some(1), "{report:#}");
    let crl = check(&report, "CRL fresh");
    assert!(crl["detail"].as_str().unwrap().contains("holds"), "{crl}");
    assert_eq!(crl["ok"], false);
    assert!(crl["hint"].as_str().unwrap().contains("genesisctl crl push"), "{crl}");
    assert_eq!(check(&report, "certificates far from expiry")["ok"], true);
    let text = stdout(&mesh.run(&["check"]));
    assert!(text.contains("\u{2718} CRL fresh") && text.contains("hint:"), "{text}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mesh.json")).unwrap()).unwrap();
    // Following the hint, word for word, heals it: every live member holds the new CRL.
    let hint = crl["hint"].as_str().unwrap().trim_start_matches("push it: ").to_owned();
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[..2], ["genesisctl", "crl"], "{hint}");
    let out = genesisctl().args(&words[1..]).args(["-o", "yaml"]).output().unwrap();
    assert!(out.status.success(), "{hint}: {}", String::from_utf8_lossy(&out.stderr));
    let pushed: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(pushed["converged"], true, "{pushed}");
    assert_eq!(pushed["members"], 3, "every live member, the revoked two left out: {pushed}");
    wait_for("check to pass after the push", || mesh.json(&["check"]).0 == Some(0));
    // crl sign: the authority signs the next CRL; the members are behind until it is pushed.
    let before = mesh.json(&["status"]).1["crlNumber"].as_u64().unwrap();
    let (code, signed) = mesh.json(&["crl", "sign"]);
    assert_eq!(code, Some(0), "{signed}");
    assert_eq!(signed["crlNumber"].as_u64(), Some(before + 1), "{signed}");
    let (code, report) = mesh.json(&["check"]);
    assert_eq!(code, Some(1), "members hold the previous CRL: {report:#}");
    let hint = check(&report, "CRL fresh")["hint"].as_str().unwrap().to_owned();
    let push: Vec<&str> = hint.trim_start_matches("push it: ").split_whitespace().skip(1).collect();
    assert!(genesisctl().args(&push).output().unwrap().status.success(), "{hint}");
    wait_for("check to pass after the second push", || mesh.json(&["check"]).0 == Some(0));

    // Near expiry: 24 h certificates fail a 48 h threshold, naming every member.
    let (code, report) = mesh.json(&["check", "--min-cert-validity", "48h"]);
    assert_eq!(code, Some(1));
    let certs = check(&report, "certificates far from expiry");
    assert_eq!(certs["ok"], false);
    assert!(certs["detail"].as_str().unwrap().contains(a), "{certs}");

    // audit verify on a member's real audit log.
    let out = genesisctl()
        .args(["audit", "verify"])
        .arg(dir.join(format!("{a}.audit.jsonl")))
        .output()
        .unwrap();
    assert!(out.status.success() && stdout(&out).contains("chain intact"));

    // A member that does not answer is reported as unconfirmed, not as still reaching.
    let manifest_path = dir.join("mesh.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let silent = live[1].as_str();
    let mut edited: Value = serde_json::from_str(&original).unwrap();
    for m in edited["members"].as_array_mut().unwrap() {
        if m["name"] == silent {
            m["admin"] = Value::from("127.0.0.1:1");
        }
    }
    std::fs::write(&manifest_path, edited.to_string()).unwrap();
    let out = mesh.run(&["revoke", live[2].as_str(), "--timeout", "2s", "-o", "json"]);
    std::fs::write(&manifest_path, original).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unreachable"], serde_json::json!([silent]), "{r}");
    assert_eq!(r["stillReaching"], serde_json::json!([]), "{r}");

    // Clear one-line errors.
    let out = mesh.run(&["peers", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no member nosuch") && err.lines().count() == 1, "{err}");
    let out = genesisctl().args(["status", "--mesh", "/nonexistent/mesh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("genesisctl demo --keep"));

    // SIGTERM stops the kept mesh and everything it started.
    mesh.stop();
    for m in manifest["members"].as_array().unwrap() {
        let admin = m["admin"].as_str().unwrap();
        assert!(std::net::TcpStream::connect(admin).is_err(), "{admin} still answers");
    }
    // A stopped mesh: status says so and fails; peers says who did not answer and why.
    let stopped = |args: &[&str]| genesisctl().args(args).arg("--mesh").arg(&dir).output().unwrap();
    let out = stopped(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the mesh is not running"));
    let out = stopped(&["peers", "m1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("m1's admin API") && err.contains("is the member running"), "{err}");
    assert!(Path::new(&dir.join("mesh.json")).exists());
}
