//! What lands in `kubectl logs`: no escape codes off a terminal, and JSON lines that parse.

use std::time::Duration;

use genesis_e2e::{binaries, wait_for, Authority, Sidecar, SidecarOptions, Subnet};
use serde_json::Value;

#[test]
fn logs_carry_no_colour_off_a_terminal_and_json_logs_parse_line_by_line() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "logs", "24h");
    let json =
        SidecarOptions { extra: vec!["--log-format".into(), "json".into()], ..Default::default() };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &json);
    let text =
        SidecarOptions { anchors: vec![format!("{}:7000", net.ip(1))], ..Default::default() };
    let b = Sidecar::start(&auth, "b", &net.ip(2), &text);
    wait_for(Duration::from_secs(20), "a and b to link", || a.routes() == ["b"]);

    // Text logs (the sidecar's and the authority's), written to files: no escape codes.
    let operator_log = std::fs::read_to_string(auth.dir.path().join("operator.log")).unwrap();
    for (who, log) in [("b", b.log_text()), ("the authority", operator_log)] {
        assert!(log.lines().count() >= 1, "{who} logged nothing");
        assert!(!log.contains('\u{1b}'), "{who}'s log has escape codes:\n{log}");
    }
    assert!(b.log_text().contains("sidecar started"));

    // JSON logs: every line is one object with a time, a level and a message.
    let log = a.log_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let started = lines.iter().find(|l| l["message"] == "sidecar started").expect("started");
    assert!(started["identity"].as_str().unwrap().ends_with("/a"), "{started}");

    // A typo in the format is refused, naming the flag and the choices.
    let out = std::process::Command::new(&binaries().sidecar)
        .args(["--log-format", "jsno"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-format") && err.contains("text, json"), "{err}");
}
