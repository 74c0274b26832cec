//! The sidecar's real Prometheus output passes `promtool check metrics` (Debian's prometheus
//! package; the README's test command installs it).

use std::io::Write;
use std::process::{Command, Stdio};

use genesis_e2e::{http, linked_pair, Authority, Subnet};

#[test]
fn sidecar_metrics_pass_promtool_after_real_traffic() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "metrics", "24h");
    let (a, b) = linked_pair(&auth, &net);
    assert_eq!(a.send("b", b"something to count").0, 200);
    assert_eq!(http(&a.api, "POST", "/v1/messages/nobody", b"x").unwrap().0, 404);
    let (status, body) = http(&b.admin, "GET", "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for family in [
        "genesis_sidecar_links",
        "genesis_sidecar_frames_total",
        "genesis_sidecar_messages_total",
        "genesis_sidecar_rtt_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (the README's test command installs Debian's prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool found problems:\n{report}");
}
