use std::time::{Duration, SystemTime};

use super::*;
use crate::authority::{CertificateAuthority, KeyAlgorithm};
use crate::crl::{RevocationList, RevocationReason};
use crate::fixtures::{ca, ca_for, hours, member, store, NET, TD};

fn signer(ca: &CertificateAuthority, role: Role, node: &str, now: SystemTime) -> EnvelopeSigner {
    let (issued, key) = member(ca, NET, role, node, now);
    EnvelopeSigner::new(key, issued.chain).unwrap()
}

fn envelope(verb: Verb, scope: Scope, now: SystemTime) -> ControlEnvelope {
    ControlEnvelope::new(NET, verb, scope, BTreeMap::new(), now).unwrap()
}

fn verifier(ca: &CertificateAuthority) -> ControlVerifier {
    ControlVerifier::new(store(ca, false), NET, RbacPolicy::default())
}

#[test]
fn operator_drain_is_accepted_and_names_the_rule_that_allowed_it() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "genesis-operator", now);
    let env = envelope(Verb::Drain, Scope::Node("web-1".into()), now);
    let wire = op.sign(&env).unwrap().encode();
    let accepted = verifier(&ca).verify(&wire, now).unwrap();
    assert_eq!(accepted.envelope, env);
    assert_eq!(accepted.signer, *op.identity());
    assert_eq!(accepted.rule, "operator-manages-the-network");
}

#[test]
fn replayed_control_message_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "op", now);
    let wire = op.sign(&envelope(Verb::RouteReset, Scope::Network, now)).unwrap().encode();
    let mut v = verifier(&ca);
    v.verify(&wire, now).unwrap();
    let refused = v.verify(&wire, now + Duration::from_secs(1)).unwrap_err();
    assert_eq!(refused.rule, "replay-cache");
    assert!(matches!(refused.error, Error::EnvelopeReplayed { .. }));
}

#[test]
fn an_envelope_captured_before_a_restart_is_refused_after_it() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "op", now);
    let captured = op.sign(&envelope(Verb::RouteReset, Scope::Network, now)).unwrap().encode();
    verifier(&ca).verify(&captured, now).unwrap();
    // The member restarts two seconds later with an empty replay cache.
    let restart = now + Duration::from_secs(2);
    let mut v = verifier(&ca).started_at(restart);
    let refused = v.verify(&captured, restart + Duration::from_secs(1)).unwrap_err();
    assert_eq!(refused.rule, "issued-before-start");
    assert!(refused.error.to_string().contains("send a new one"), "{}", refused.error);
    // A message issued after the restart is accepted.
    let later = restart + Duration::from_millis(500);
    let fresh = op.sign(&envelope(Verb::RouteReset, Scope::Network, later)).unwrap().encode();
    v.verify(&fresh, later).unwrap();
}

#[test]
fn client_may_not_send_an_operator_verb_and_the_refusal_names_the_default_deny() {
    let now = SystemTime::now();
    let ca = ca(now);
    let client = signer(&ca, Role::Client, "web-1", now);
    let wire = client.sign(&envelope(Verb::Shutdown, Scope::Network, now)).unwrap().encode();
    let refused = verifier(&ca).verify(&wire, now).unwrap_err();
    assert!(refused.rule.starts_with("default-deny"), "{}", refused.rule);
    assert!(
        refused.rule.contains("role client") && refused.rule.contains("shutdown"),
        "{}",
        refused.rule
    );
    match &refused.error {
        Error::EnvelopeDenied { role, verb, .. } => {
            assert_eq!(*role, Role::Client);
            assert_eq!(verb, "shutdown");
        }
        other => panic!("expected EnvelopeDenied, got {other:?}"),
    }
    assert_eq!(refused.signer.as_ref(), Some(client.identity()));
}

#[test]
fn members_may_drain_only_themselves() {
    let now = SystemTime::now();
    let ca = ca(now);
    let client = signer(&ca, Role::Client, "web-1", now);
    let mut v = verifier(&ca);
    let own = client.sign(&envelope(Verb::Drain, Scope::Node("web-1".into()), now)).unwrap();
    assert_eq!(v.verify(&own.encode(), now).unwrap().rule, "members-drain-themselves");
    let other = client.sign(&envelope(Verb::Drain, Scope::Node("web-2".into()), now)).unwrap();
    assert!(v.verify(&other.encode(), now).unwrap_err().rule.starts_with("default-deny"));
}

#[test]
fn forged_signature_and_swapped_body_are_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "op", now);
    let mut v = verifier(&ca);
    let mut signed = op.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap();
    let last = signed.signature.len() - 1;
    signed.signature[last] ^= 1;
    let refused = v.verify(&signed.encode(), now).unwrap_err();
    assert_eq!(refused.rule, "signature");
    assert!(matches!(refused.error, Error::EnvelopeForged { .. }));

    // A valid signature over one body does not cover another.
    let a = op.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap();
    let b = op.sign(&envelope(Verb::Shutdown, Scope::Network, now)).unwrap();
    let spliced = SignedEnvelope { body: b.body, signature: a.signature, chain: a.chain };
    assert_eq!(v.verify(&spliced.encode(), now).unwrap_err().rule, "signature");

    // A client's key signing with the operator's chain is a forgery too.
    let client = signer(&ca, Role::Client, "c", now);
    let stolen = SignedEnvelope {
        chain: op.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap().chain,
        ..client.sign(&envelope(Verb::Shutdown, Scope::Network, now)).unwrap()
    };
    assert_eq!(v.verify(&stolen.encode(), now).unwrap_err().rule, "signature");
}

#[test]
fn revoked_or_foreign_signer_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (issued, key) = member(&ca, NET, Role::Operator, "op", now);
    let serial = issued.serial.clone();
    let op = EnvelopeSigner::new(key, issued.chain).unwrap();
    let trust = store(&ca, false);
    let mut list = RevocationList::default();
    list.revoke(&serial, RevocationReason::KeyCompromise, now);
    trust.install_crl(&ca.sign_crl(&list, now, now + hours(1)).unwrap(), now).unwrap();
    let mut v = ControlVerifier::new(trust, NET, RbacPolicy::default());
    let refused = v
        .verify(&op.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap().encode(), now)
        .unwrap_err();
    assert_eq!(refused.rule, "signer-certificate");
    assert!(
        matches!(&refused.error, Error::EnvelopeSigner { source } if matches!(**source, Error::Revoked { .. }))
    );

    let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
    let alien = signer(&foreign, Role::Admin, "mallory", now);
    let refused = v
        .verify(&alien.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap().encode(), now)
        .unwrap_err();
    assert!(
        matches!(&refused.error, Error::EnvelopeSigner { source } if matches!(**source, Error::UnknownIssuer))
    );
}

#[test]
fn stale_future_and_other_network_messages_are_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "op", now);
    let mut v = verifier(&ca);
    let old =
        op.sign(&envelope(Verb::Drain, Scope::Network, now - Duration::from_secs(120))).unwrap();
    let refused = v.verify(&old.encode(), now).unwrap_err();
    assert_eq!(refused.rule, "freshness-window");
    assert!(matches!(refused.error, Error::EnvelopeStale { direction: "ago", age_secs: 120, .. }));
    let future =
        op.sign(&envelope(Verb::Drain, Scope::Network, now + Duration::from_secs(60))).unwrap();
    assert!(matches!(
        v.verify(&future.encode(), now).unwrap_err().error,
        Error::EnvelopeStale { direction: "in the future", .. }
    ));
    let mut env = envelope(Verb::Drain, Scope::Network, now);
    env.network = "billing".into();
    let refused = v.verify(&op.sign(&env).unwrap().encode(), now).unwrap_err();
    assert_eq!(refused.rule, "network");
    assert!(matches!(refused.error, Error::WrongNetwork { .. }));
}

#[test]
fn body_with_unknown_fields_or_bad_id_is_refused_after_the_signature_checks() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (issued, key) = member(&ca, NET, Role::Operator, "op", now);
    let env = envelope(Verb::Drain, Scope::Network, now);
    let mut json = serde_json::to_value(&env).unwrap();
    json["extra"] = serde_json::json!("smuggled");
    let body = serde_json::to_vec(&json).unwrap();
    let signature = key.sign(&signed_message(&body)).unwrap();
    let wire = SignedEnvelope { body, signature, chain: issued.chain.clone() }.encode();
    let refused = verifier(&ca).verify(&wire, now).unwrap_err();
    assert_eq!(refused.rule, "wire-format");
    assert!(refused.error.to_string().contains("unknown field"), "{}", refused.error);

    let mut bad_id = env.clone();
    bad_id.id = "not-hex".into();
    let signer = EnvelopeSigner::new(key, issued.chain).unwrap();
    let refused = verifier(&ca).verify(&signer.sign(&bad_id).unwrap().encode(), now).unwrap_err();
    assert!(refused.error.to_string().contains("32 hex digits"));
}

#[test]
fn malformed_wire_envelopes_are_refused_without_panicking() {
    let now = SystemTime::now();
    let ca = ca(now);
    let op = signer(&ca, Role::Operator, "op", now);
    let wire = op.sign(&envelope(Verb::Drain, Scope::Network, now)).unwrap().encode();
    for cut in 0..wire.len() {
        assert!(
            matches!(SignedEnvelope::decode(&wire[..cut]), Err(Error::EnvelopeMalformed { .. })),
            "cut {cut}"
        );
    }
    let mut trailing = wire.clone();
    trailing.push(0);
    assert!(SignedEnvelope::decode(&trailing).unwrap_err().to_string().contains("trailing"));
    let mut magic = wire.clone();
    magic[0] = b'X';
    assert!(SignedEnvelope::decode(&magic).unwrap_err().to_string().contains("magic"));
    let mut version = wire.clone();
    version[4] = 9;
    assert!(SignedEnvelope::decode(&version).unwrap_err().to_string().contains("version 9"));
    let mut huge_body = wire.clone();
    huge_body[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(SignedEnvelope::decode(&huge_body).unwrap_err().to_string().contains("exceeds"));
    assert!(SignedEnvelope::decode(&vec![0; MAX_ENVELOPE_BYTES + 1])
        .unwrap_err()
        .to_string()
        .contains("limit"));
    assert_eq!(SignedEnvelope::decode(&wire).unwrap().encode(), wire);
}

#[test]
fn ed25519_signer_is_verified() {
    let now = SystemTime::now();
    let ca = ca_for(TD, KeyAlgorithm::Ed25519, now);
    let id = Identity::new(TD, NET, Role::Admin, "alice").unwrap();
    let (issued, key) = ca
        .issue_with_generated_key(
            &id,
            KeyAlgorithm::Ed25519,
            &crate::authority::LeafPolicy::default(),
            now,
        )
        .unwrap();
    let admin = EnvelopeSigner::new(key, issued.chain).unwrap();
    let wire =
        admin.sign(&envelope(Verb::LogLevel, Scope::Role(Role::Client), now)).unwrap().encode();
    assert_eq!(verifier(&ca).verify(&wire, now).unwrap().rule, "admins-manage-the-network");
}

#[test]
fn replay_cache_is_bounded_and_forgotten_ids_stay_refused() {
    let mut cache = ReplayCache::new(2);
    cache.record("a", 100, 0);
    cache.record("b", 200, 0);
    cache.record("c", 300, 0);
    assert_eq!(cache.len(), 2);
    assert!(cache.is_replay("a", 100), "evicted id is still refused through the floor");
    assert!(cache.is_replay("c", 300));
    assert!(!cache.is_replay("d", 301));
    // Entries older than the freshness horizon are dropped without raising the floor.
    cache.record("d", 400, 350);
    assert_eq!(cache.len(), 1);
    assert!(!cache.is_replay("e", 360));
}

#[test]
fn scope_text_form_round_trips_and_rejects_garbage() {
    for s in ["network", "node/web-1", "role/anchor"] {
        assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
    }
    for bad in ["", "node/", "role/root", "cluster", "node"] {
        assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
    }
    let id = Identity::new(TD, NET, Role::Anchor, "a").unwrap();
    assert!(Scope::Role(Role::Anchor).targets(&id));
    assert!(!Scope::Node("b".into()).targets(&id));
}

#[test]
fn verbs_parse_from_their_wire_names_and_unknown_ones_are_named() {
    for verb in Verb::ALL {
        assert_eq!(verb.as_str().parse::<Verb>(), Ok(verb));
    }
    let err = "reboot".parse::<Verb>().unwrap_err();
    assert!(err.contains("\"reboot\"") && err.contains("log-level"), "{err}");
}
