use std::time::{Duration, SystemTime};

use genesis_trust::{
    CertificateAuthority, KeyAlgorithm, LeafPolicy, Role, TrustBundle, TrustPolicy,
};

use super::*;

fn member(name: &str, at: SystemTime) -> Node {
    let ca = CertificateAuthority::generate(
        "t.local",
        KeyAlgorithm::Ed25519,
        Duration::from_secs(86400),
        at,
    )
    .unwrap();
    let id = Identity::new("t.local", "net", Role::Client, name).unwrap();
    let policy = LeafPolicy { duration: Duration::from_secs(3600), renew_before: None };
    let (issued, key) =
        ca.issue_with_generated_key(&id, KeyAlgorithm::Ed25519, &policy, at).unwrap();
    let bundle = TrustBundle::new(vec![ca.cert_der().clone()]).unwrap();
    let policy = TrustPolicy {
        trust_domain: "t.local".into(),
        network: Some("net".into()),
        require_fresh_crl: false,
    };
    let store = Arc::new(TrustStore::new(policy, bundle));
    let config = NodeConfig {
        hello_interval: Duration::from_secs(1),
        hold_time: Duration::from_secs(3),
        routing: RoutingConfig::default(),
        peers: PeerConfig::default(),
        rbac: RbacPolicy::default(),
        anchors: vec![],
    };
    Node::new(id, config, store, Arc::new(key), issued.chain[0].to_vec(), Time::ZERO, at, 7)
}

#[test]
fn a_member_restarted_a_second_later_starts_ahead_of_its_previous_seqno() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let before = member("m1", t).seqno();
    // Its previous life may have raised its seqno a few times on request.
    let raised = before.wrapping_add(10);
    let after = member("m1", t + Duration::from_secs(1)).seqno();
    assert!(crate::routing::seqno_newer(after, raised), "{after} is not newer than {raised}");
}
