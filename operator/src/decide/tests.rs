use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// A 24 h certificate issued at t(0).
fn held() -> Held {
    Held {
        serial: "0a".into(),
        not_after: t(24 * 3600),
        renewal_time: renewal_time(t(0), t(24 * 3600), None),
        identity_matches: true,
    }
}

fn decide(now: SystemTime, held: Option<&Held>, failures: Failures) -> CertificateAction {
    certificate(now, false, false, held, failures, &[], &BTreeSet::new())
}

#[test]
fn first_issuance_then_nothing_until_half_the_lifetime() {
    assert_eq!(
        decide(t(0), None, Failures::default()),
        CertificateAction::Issue(IssueReason::Missing)
    );
    let h = held();
    assert_eq!(
        decide(t(3600), Some(&h), Failures::default()),
        CertificateAction::UpToDate { renew_at: t(12 * 3600) }
    );
    assert_eq!(
        decide(t(12 * 3600), Some(&h), Failures::default()),
        CertificateAction::Issue(IssueReason::Renewal)
    );
    assert_eq!(
        decide(t(24 * 3600), Some(&h), Failures::default()),
        CertificateAction::Issue(IssueReason::Expired)
    );
}

#[test]
fn renew_before_moves_the_renewal_time_and_never_before_issuance() {
    let (from, to) = (t(0), t(24 * 3600));
    assert_eq!(renewal_time(from, to, Some(2 * HOUR)), t(22 * 3600));
    assert_eq!(renewal_time(from, to, Some(48 * HOUR)), t(0));
    assert_eq!(renewal_time(from, to, None), t(12 * 3600));
}

#[test]
fn a_changed_identity_is_reissued() {
    let h = Held { identity_matches: false, ..held() };
    assert_eq!(
        decide(t(60), Some(&h), Failures::default()),
        CertificateAction::Issue(IssueReason::SpecChanged)
    );
}

#[test]
fn failed_issuance_backs_off_exponentially_and_keeps_the_held_certificate() {
    assert_eq!(backoff(0), Duration::ZERO);
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(3), Duration::from_secs(20));
    assert_eq!(backoff(30), BACKOFF_MAX);
    let h = held();
    let failures = Failures { count: 3, last: Some(t(12 * 3600)) };
    // Renewal is due but failed 3 times, last at 12h: wait 20 s. The held certificate is not
    // touched (a Backoff never replaces anything).
    assert_eq!(
        decide(t(12 * 3600 + 10), Some(&h), failures),
        CertificateAction::Backoff { retry_at: t(12 * 3600 + 20) }
    );
    assert_eq!(
        decide(t(12 * 3600 + 20), Some(&h), failures),
        CertificateAction::Issue(IssueReason::Renewal)
    );
    // A valid certificate that is not due is left alone whatever the failure count.
    assert!(matches!(decide(t(60), Some(&h), failures), CertificateAction::UpToDate { .. }));
}

#[test]
fn revocation_covers_every_issued_serial_once() {
    let h = held();
    let issued = vec!["09".to_owned(), "0a".to_owned()];
    let listed = BTreeSet::from(["09".to_owned()]);
    assert_eq!(
        certificate(t(60), true, false, Some(&h), Failures::default(), &issued, &listed),
        CertificateAction::Revoke { serials: vec!["0a".into()], reason: "Revoked" }
    );
    let all = BTreeSet::from(["09".to_owned(), "0a".to_owned()]);
    assert_eq!(
        certificate(t(60), true, false, Some(&h), Failures::default(), &issued, &all),
        CertificateAction::StayRevoked
    );
    // A gone member pod revokes too, with its own reason; nothing is issued for it.
    assert_eq!(
        certificate(t(60), false, true, None, Failures::default(), &issued, &listed),
        CertificateAction::Revoke { serials: vec!["0a".into()], reason: "MemberGone" }
    );
}

#[test]
fn the_crl_is_resigned_at_half_its_validity_or_at_once_on_a_change() {
    let (this, next) = (t(0), t(12 * 3600));
    assert!(!crl_due(t(3600), this, next, false));
    assert!(crl_due(t(3600), this, next, true));
    assert!(crl_due(t(6 * 3600), this, next, false));
}

#[test]
fn anchors_are_stable_ready_and_preferably_volunteers() {
    let c = |node: &str, ready: bool, wants: bool| Candidate {
        node: node.into(),
        ready,
        wants_anchor: wants,
    };
    let candidates =
        vec![c("a", true, false), c("b", true, true), c("c", false, true), c("d", true, false)];
    // No anchors yet: the volunteer first, then by name.
    assert_eq!(anchors(&[], &candidates, 2), ["b", "a"]);
    // A current ready anchor stays even if others volunteer; an unready one is replaced.
    assert_eq!(anchors(&["d".into(), "c".into()], &candidates, 2), ["d", "b"]);
    // Fewer ready members than wanted: all of them.
    assert_eq!(anchors(&[], &candidates, 5), ["b", "a", "d"]);
    // No member ready yet (a sidecar is ready once it has a peer): running members bootstrap
    // the network, and stay anchors while nobody is ready.
    let starting = vec![c("x", false, false), c("y", false, true)];
    assert_eq!(anchors(&[], &starting, 1), ["y"]);
    assert_eq!(anchors(&["x".into()], &starting, 1), ["x"]);
    // Once one is ready, the ready ones take over.
    let up = vec![c("x", false, false), c("y", true, false)];
    assert_eq!(anchors(&["x".into()], &up, 1), ["y"]);
}

#[test]
fn conditions_keep_their_transition_time_until_the_status_changes() {
    let first = condition(None, "Ready", true, "Issued", "ok".into(), Some(1), t(0));
    let same = condition(Some(&first), "Ready", true, "Issued", "still ok".into(), Some(2), t(60));
    assert_eq!(same.last_transition_time, first.last_transition_time);
    assert_eq!(same.observed_generation, Some(2));
    let flipped =
        condition(Some(&same), "Ready", false, "IssueFailed", "ca down".into(), Some(2), t(120));
    assert_ne!(flipped.last_transition_time, first.last_transition_time);
    assert_eq!(flipped.status, "False");
}

#[test]
fn a_crl_has_converged_only_when_every_member_said_it_holds_it() {
    let m = |node: &str, number: Option<u64>| MemberCrl { node: node.into(), number };
    let spread = crl_spread(4, &[m("a", Some(4)), m("b", Some(5)), m("c", Some(3)), m("d", None)]);
    assert!(!spread.converged);
    assert_eq!((spread.holding, spread.lowest), (2, Some(3)));
    assert_eq!((spread.behind, spread.unreachable), (vec!["c".to_owned()], vec!["d".to_owned()]));
    let spread = crl_spread(4, &[m("a", Some(4)), m("b", Some(5))]);
    assert!(spread.converged && spread.behind.is_empty());
    assert_eq!(spread.lowest, Some(4));
    assert!(crl_spread(1, &[]).converged, "a network without members has nothing to wait for");
}

#[test]
fn a_crl_goes_to_the_anchors_first_then_directly_to_whoever_is_still_behind() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let grace = Duration::from_secs(2);
    let spread = |behind: &[&str], unreachable: &[&str]| Spread {
        behind: behind.iter().map(|s| s.to_string()).collect(),
        unreachable: unreachable.iter().map(|s| s.to_string()).collect(),
        ..Spread::default()
    };
    let anchors = ["a1".to_owned(), "a2".to_owned()];
    let s = spread(&["a1", "a2", "m1", "m2"], &[]);
    assert_eq!(crl_push_targets(&s, &anchors, None, t0, grace), ["a1", "a2"]);
    // Gossip gets its chance.
    assert!(crl_push_targets(&s, &anchors, Some(t0), t0 + Duration::from_secs(1), grace).is_empty());
    // A member gossip did not reach gets it directly.
    let s = spread(&["m2"], &[]);
    assert_eq!(crl_push_targets(&s, &anchors, Some(t0), t0 + grace, grace), ["m2"]);
    // Anchors down (or already holding it): straight to the members.
    let s = spread(&["m1"], &["a1", "a2"]);
    assert_eq!(crl_push_targets(&s, &anchors, None, t0, grace), ["m1"]);
    assert_eq!(crl_push_targets(&s, &[], None, t0, grace), ["m1"]);
}

#[test]
fn a_ca_rotation_moves_on_only_when_every_member_did() {
    let leaf = |at: u64, issuer: &str| MemberLeaf { issued: t(at), issuer: issuer.into() };
    assert_eq!(rotation_step(&Rotation::Idle, false, &[]), RotationStep::Stay);
    assert_eq!(rotation_step(&Rotation::Idle, true, &[]), RotationStep::Begin);
    // Distributing since t(100): a member issued before has only the old root.
    let distributing = Rotation::Distributing { since: t(100) };
    let members = [leaf(150, "old"), leaf(50, "old")];
    assert_eq!(rotation_step(&distributing, true, &members), RotationStep::Stay);
    let members = [leaf(150, "old"), leaf(120, "old")];
    assert_eq!(rotation_step(&distributing, false, &members), RotationStep::Promote);
    // Retiring: the old root stays until every member holds a leaf of the new one.
    let retiring = Rotation::Retiring { new_root: "new".into() };
    let members = [leaf(200, "new"), leaf(120, "old")];
    assert_eq!(rotation_step(&retiring, false, &members), RotationStep::Stay);
    let members = [leaf(200, "new"), leaf(210, "new")];
    assert_eq!(rotation_step(&retiring, false, &members), RotationStep::Finish);
    // Due at two thirds of the CA's validity.
    assert!(!ca_rotation_due(t(199), t(0), t(300)));
    assert!(ca_rotation_due(t(200), t(0), t(300)));
}
