//! Certificate rotation: members renew with a fresh key at half-life, live links stay up past
//! the expiry of the certificates they were opened with.

use std::time::{Duration, Instant};

use genesis_e2e::{http, linked_pair, wait_for, Authority, Sidecar, SidecarOptions, Subnet};

#[test]
fn certificates_rotate_without_dropping_links() {
    let net = Subnet::new();
    // 12s certificates: renewed at 6s, the first ones expire at 12s (+60s backdating).
    let auth = Authority::start(&net, "rotate", "12s");
    let (a, b) = linked_pair(&auth, &net);
    wait_for(Duration::from_secs(20), "a and b to link", || {
        a.routes() == ["b"] && b.routes() == ["a"]
    });
    let started = Instant::now();
    let serial =
        |s: &Sidecar| s.admin_json("/admin/identity")["serial"].as_str().unwrap().to_owned();
    let not_after = |s: &Sidecar| s.admin_json("/admin/identity")["notAfter"].as_u64().unwrap();
    let (first_a, first_b) = (serial(&a), serial(&b));
    let first_expiry = not_after(&a).max(not_after(&b));
    let links_opened = |s: &Sidecar| s.metric("genesis_sidecar_handshakes_total", "result=\"ok\"");
    let (opened_a, opened_b) = (links_opened(&a), links_opened(&b));

    wait_for(Duration::from_secs(30), "both members to renew", || {
        serial(&a) != first_a && serial(&b) != first_b
    });
    assert!(a.metric("genesis_sidecar_certificate_renewals_total", "result=\"ok\"") >= 1.0);
    // Wait until the certificates the link was opened with have expired.
    let now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    wait_for(Duration::from_secs(30), "the first certificates to expire", || {
        now() > first_expiry + 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(links_opened(&a), opened_a, "a re-established its link: rotation dropped it");
    assert_eq!(links_opened(&b), opened_b, "b re-established its link: rotation dropped it");
    assert_eq!(a.routes(), ["b"]);
    assert_eq!(a.send("b", b"after rotation").0, 200);
    eprintln!("rotated and outlived the first certificates in {:?}", started.elapsed());
}

#[test]
fn sigterm_drains_neighbours_hear_goodbye_and_the_process_exits_cleanly() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "drain", "24h");
    let (a, mut b) = linked_pair(&auth, &net);
    let status = b.terminate();
    assert!(status.success(), "exit status {status:?}");
    wait_for(Duration::from_secs(5), "a to drop the route to b", || a.routes().is_empty());
    assert!(a.log_text().contains("draining"), "a did not hear b's goodbye");
    let peers = a.admin_json("/admin/peers");
    let b_view = peers.as_array().unwrap().iter().find(|p| p["node"] == "b").unwrap().clone();
    assert_eq!(b_view["connected"], false);
    assert!(
        b_view["score"].as_u64().unwrap() >= 50,
        "a graceful goodbye costs no reputation: {b_view}"
    );
}

#[test]
fn a_failed_renewal_keeps_the_valid_certificate_and_recovers_when_the_authority_returns() {
    let net = Subnet::new();
    let mut auth = Authority::start(&net, "renewfail", "20s");
    let (a, _b) = linked_pair(&auth, &net);
    let serial =
        |s: &Sidecar| s.admin_json("/admin/identity")["serial"].as_str().unwrap().to_owned();
    // Stop the authority first: from then on no renewal can succeed, so the serial read next
    // is the one that must be kept.
    auth.stop();
    let first = serial(&a);
    // Renewal is due at half-life (10s); with the authority gone it fails and is retried.
    wait_for(Duration::from_secs(30), "a renewal attempt to fail", || {
        a.metric("genesis_sidecar_certificate_renewals_total", "result=\"error\"") >= 1.0
    });
    assert_eq!(serial(&a), first, "the valid certificate was kept");
    assert_eq!(a.send("b", b"still trusted").0, 200, "traffic flows on the kept certificate");
    assert_ne!(a.admin_json("/readyz")["status"], "unhealthy");
    auth.restart();
    wait_for(Duration::from_secs(30), "the retried renewal to succeed", || serial(&a) != first);
    assert!(a.metric("genesis_sidecar_certificate_renewals_total", "result=\"ok\"") >= 1.0);
    assert_eq!(a.send("b", b"renewed").0, 200);
}

#[test]
fn a_newer_crl_that_comes_with_a_renewal_is_applied_audited_and_passed_on() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "renewcrl", "24h");
    let (a, b) = linked_pair(&auth, &net);
    wait_for(Duration::from_secs(20), "a and b to link", || {
        a.routes() == ["b"] && b.routes() == ["a"]
    });
    // A third member is revoked at the authority, and nobody pushes the new CRL: a renewal is
    // the first to bring it.
    let c = Sidecar::start(&auth, "c", &net.ip(3), &SidecarOptions::default());
    let crl = |s: &Sidecar| s.admin_json("/admin/identity")["crlNumber"].as_u64().unwrap_or(0);
    let held = crl(&a);
    auth.revoke(&c.node);
    let applied = |s: &Sidecar| s.metric("genesis_sidecar_crl_updates_total", "result=\"applied\"");
    let (applied_a, applied_b) = (applied(&a), applied(&b));

    let (status, body) = http(&a.admin, "POST", "/admin/renew", b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // It enters a's node as every CRL does (before, the renewal installed it quietly), and a
    // passes it to b at once.
    wait_for(Duration::from_secs(10), "a to apply the CRL its renewal brought", || {
        applied(&a) > applied_a
    });
    assert!(crl(&a) > held, "a holds CRL {} (had {held})", crl(&a));
    wait_for(Duration::from_secs(5), "b to apply it from a", || applied(&b) > applied_b);
    let audit = std::fs::read_to_string(auth.dir.path().join("a.audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("crl-applied") && l.contains("identity-service")),
        "a's audit log does not record the CRL: {audit}"
    );
}
