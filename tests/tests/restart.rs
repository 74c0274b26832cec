//! Restarts in local mode: a member restarts with the very same command line (its join token is
//! spent by then) because it keeps its key in its state directory, and a member that cannot
//! take its ports fails before it spends its token.

use std::time::Duration;

use genesis_e2e::{wait_for, Authority, Sidecar, SidecarOptions, Subnet};

#[test]
fn a_member_restarts_with_the_same_command_and_keeps_its_identity() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "again", "24h");
    let state = auth.dir.path().join("b-state");
    let opts = SidecarOptions { min_peers: 1, max_peers: 4, ..Default::default() };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &opts);
    let b_opts = SidecarOptions {
        anchors: vec![format!("{}:7000", net.ip(1))],
        extra: vec!["--state-dir".into(), state.display().to_string()],
        ..opts
    };
    let mut b = Sidecar::start(&auth, "b", &net.ip(2), &b_opts);
    wait_for(Duration::from_secs(20), "a and b to link", || a.routes() == ["b"]);
    let serial = |s: &Sidecar| s.admin_json("/admin/identity")["serial"].clone();
    let first = serial(&b);

    for round in 0..2 {
        b.restart_same_command();
        wait_for(Duration::from_secs(20), "a to route to the restarted b", || {
            a.routes() == ["b"] && b.routes() == ["a"]
        });
        let (status, receipt) = a.send("b", format!("after restart {round}").as_bytes());
        assert_eq!(status, 200, "{receipt}");
    }
    assert_ne!(serial(&b), first, "each restart renews: a fresh key and serial");
    let resumed = b
        .log_text()
        .lines()
        .filter(|l| l.contains("identity kept for restarts") && l.trim_end().ends_with("true"))
        .count();
    assert_eq!(resumed, 2, "both restarts renewed with the kept key:\n{}", b.log_text());

    // Revoked while it was down: the kept certificate does not bring it back.
    b.kill();
    auth.revoke("b");
    let out = std::process::Command::new(&genesis_e2e::binaries().sidecar)
        .args(b_args_for_revoked(&auth, &net, &state))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot renew with the certificate kept in"), "{err}");
    assert!(err.contains("revoked") && err.contains("un-revoke"), "{err}");
}

/// b's command line, pointed at its state directory, for the revoked case.
fn b_args_for_revoked(auth: &Authority, net: &Subnet, state: &std::path::Path) -> Vec<String> {
    [
        "--node",
        "b",
        "--network",
        &auth.network,
        "--trust-domain",
        "test.local",
        "--identity-service",
        &auth.addr,
        "--join-token",
        "spent",
        "--trust-bundle",
        &auth.bundle_path().display().to_string(),
        "--listen",
        &format!("{}:7000", net.ip(2)),
        "--api-listen",
        &format!("{}:7001", net.ip(2)),
        "--admin-listen",
        &format!("{}:7002", net.ip(2)),
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_member_that_cannot_take_its_port_fails_before_spending_its_token() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "busy", "24h");
    let token = auth.token("m", "client");
    let busy = std::net::TcpListener::bind(format!("{}:7000", net.ip(1))).unwrap();
    let mut m = Sidecar::spawn(&auth, "m", &net.ip(1), &SidecarOptions::default(), &token);
    wait_for(Duration::from_secs(20), "m to give up on the busy port", || m.exited().is_some());
    assert!(m.log_text().contains("cannot listen for peer links"), "{}", m.log_text());
    drop(busy);
    // The same token still works.
    let m = Sidecar::start_with_token(&auth, "m", &net.ip(1), &SidecarOptions::default(), &token);
    assert_eq!(m.admin_json("/admin/identity")["node"], "m");
}
