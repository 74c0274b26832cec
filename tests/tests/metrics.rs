//! The real Prometheus output of a sidecar and of the operator passes `promtool check metrics`
//! (Debian's prometheus package; the README's test command installs it).

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
    promtool(&text);
    assert!(
        metric_value(&text, "genesis_sidecar_messages_received_total{kind=\"message\"}") >= 1.0
    );

    // The operator: the two joins are counted, and its text passes too.
    let (status, body) = http(&auth.metrics, "GET", "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(
        metric_value(&text, "genesis_operator_certificates_issued_total{kind=\"join\"}"),
        2.0,
        "{text}"
    );
    assert!(text.contains("genesis_operator_crl_number"));
    promtool(&text);
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn promtool(text: &str) {
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
