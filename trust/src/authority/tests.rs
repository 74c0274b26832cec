use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::*;
use crate::fixtures::{ca, ca_for, hours, member, store, NET, TD};
use crate::identity::Role;
use crate::verify::PeerRole;

fn csr_with(params: CertificateParams, key: &PrivateKey) -> Vec<u8> {
    params.serialize_request(key.key_pair()).unwrap().der().to_vec()
}

#[test]
fn leaf_issued_from_csr_carries_identity_usages_and_policy_validity() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (leaf, _key) = member(&ca, NET, Role::Client, "web-1", now);
    assert_eq!(leaf.identity.uri(), format!("spiffe://{TD}/mesh/{NET}/client/web-1"));
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.chain[1], *ca.cert_der());
    let info = CertInfo::parse(leaf.leaf()).unwrap();
    assert!(!info.is_ca);
    assert_eq!(info.identity.as_ref(), Some(&leaf.identity));
    assert_eq!(info.serial, leaf.serial);
    let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
    assert_eq!(lifetime, hours(24) + CLOCK_SKEW_ALLOWANCE);
    // Renewal at half the lifetime from issuance (the skew allowance does not count).
    let expected = leaf.not_after - hours(12);
    let off = leaf.renewal_time.duration_since(expected).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(1), "renewal {off:?} away from half-life after issuance");
    // Both client and server auth: a member is both ends of its links.
    let store = store(&ca, false);
    store.verify(&leaf.chain, now, PeerRole::Client).unwrap();
    store.verify(&leaf.chain, now, PeerRole::Server).unwrap();
}

#[test]
fn ed25519_authority_issues_ed25519_and_p256_members() {
    let now = SystemTime::now();
    let ca = ca_for(TD, KeyAlgorithm::Ed25519, now);
    let id = Identity::new(TD, NET, Role::Anchor, "a-0").unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let issued = ca
        .issue_from_csr(&create_csr(&id, &key).unwrap(), &id, &LeafPolicy::default(), now)
        .unwrap();
    let (p256, _) = member(&ca, NET, Role::Client, "c-0", now);
    let store = store(&ca, false);
    assert_eq!(store.verify(&issued.chain, now, PeerRole::Client).unwrap().identity, id);
    store.verify(&p256.chain, now, PeerRole::Client).unwrap();
}

#[test]
fn csr_for_another_identity_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let asked = Identity::new(TD, NET, Role::Admin, "web-1").unwrap();
    let entitled = Identity::new(TD, NET, Role::Client, "web-1").unwrap();
    let err = ca
        .issue_from_csr(&create_csr(&asked, &key).unwrap(), &entitled, &LeafPolicy::default(), now)
        .unwrap_err();
    match err {
        Error::CsrNotEntitled { asked: a, entitled: e } => {
            assert!(a.contains("/admin/web-1"), "{a}");
            assert_eq!(e, entitled.uri());
        }
        other => panic!("expected CsrNotEntitled, got {other:?}"),
    }
}

#[test]
fn csr_asking_for_a_ca_or_extra_names_or_purposes_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = Identity::new(TD, NET, Role::Client, "web-1").unwrap();
    let base = || {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![uri_san(&id).unwrap()];
        p
    };
    let mut as_ca = base();
    as_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dns = base();
    dns.subject_alt_names.push(SanType::DnsName("evil.example".try_into().unwrap()));
    let mut signer = base();
    signer.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let mut code = base();
    code.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    for (what, params) in
        [("a CA", as_ca), ("DnsName", dns), ("KeyCertSign", signer), ("CodeSigning", code)]
    {
        let err = ca
            .issue_from_csr(&csr_with(params, &key), &id, &LeafPolicy::default(), now)
            .unwrap_err();
        match err {
            Error::CsrNotEntitled { asked, .. } => assert!(asked.contains(what), "{what}: {asked}"),
            other => panic!("{what}: expected CsrNotEntitled, got {other:?}"),
        }
    }
    // A CSR naming nothing asks for nothing beyond its identity and is fine.
    ca.issue_from_csr(
        &csr_with(CertificateParams::default(), &key),
        &id,
        &LeafPolicy::default(),
        now,
    )
    .unwrap();
}

#[test]
fn garbage_or_tampered_csr_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let id = Identity::new(TD, NET, Role::Client, "web-1").unwrap();
    let policy = LeafPolicy::default();
    assert!(matches!(
        ca.issue_from_csr(b"not a csr", &id, &policy, now),
        Err(Error::InvalidCsr { reason }) if reason.contains("does not parse")
    ));
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut csr = create_csr(&id, &key).unwrap();
    // Flip a bit inside the subject (the signed part): the self-signature no longer verifies.
    let pos = csr.windows(7).position(|w| w == b"Genesis").unwrap();
    csr[pos] ^= 0x20;
    assert!(matches!(
        ca.issue_from_csr(&csr, &id, &policy, now),
        Err(Error::InvalidCsr { reason }) if reason.contains("self-signature")
    ));
    assert!(matches!(ca.issue_from_csr(&[], &id, &policy, now), Err(Error::InvalidCsr { .. })));
}

#[test]
fn identity_from_another_trust_domain_is_not_issued() {
    let now = SystemTime::now();
    let ca = ca(now);
    let id = Identity::new("other.local", NET, Role::Client, "x").unwrap();
    let err = ca
        .issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &LeafPolicy::default(), now)
        .unwrap_err();
    assert!(matches!(err, Error::WrongTrustDomain { .. }), "{err:?}");
}

#[test]
fn serial_numbers_never_repeat() {
    let now = SystemTime::now();
    let ca = ca(now);
    let id = Identity::new(TD, NET, Role::Client, "x").unwrap();
    let mut seen = HashSet::new();
    for _ in 0..2000 {
        let s = ca.serials.next().unwrap();
        assert_eq!(s.as_bytes().len(), 16);
        assert!(
            s.as_bytes()[0] != 0 && s.as_bytes()[0] & 0x80 == 0,
            "not a minimal positive INTEGER"
        );
        assert!(seen.insert(s));
    }
    for _ in 0..50 {
        let (leaf, _) = ca
            .issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &LeafPolicy::default(), now)
            .unwrap();
        assert!(seen.insert(leaf.serial));
    }
}

#[test]
fn secret_delivery_returns_a_key_matching_the_leaf() {
    let now = SystemTime::now();
    let ca = ca(now);
    let id = Identity::new(TD, NET, Role::Admin, "alice").unwrap();
    let (leaf, key) = ca
        .issue_with_generated_key(&id, KeyAlgorithm::Ed25519, &LeafPolicy::default(), now)
        .unwrap();
    let reloaded = PrivateKey::from_pem(&key.to_pem()).unwrap();
    assert_eq!(reloaded.algorithm(), KeyAlgorithm::Ed25519);
    let spki = x509_public_key(leaf.leaf()).unwrap();
    assert_eq!(spki, reloaded.key_pair().public_key_raw());
    assert!(!format!("{key:?}").contains("BEGIN"), "Debug leaks key material");
}

#[test]
fn authority_reloads_from_pem_and_keeps_issuing_into_the_same_trust() {
    let now = SystemTime::now();
    let ca1 = ca(now);
    let ca2 = CertificateAuthority::from_pem(TD, &ca1.cert_pem(), &ca1.key_pem()).unwrap();
    assert_eq!(ca1.fingerprint(), ca2.fingerprint());
    let (leaf, _) = member(&ca2, NET, Role::Client, "after-restart", now);
    store(&ca1, false).verify(&leaf.chain, now, PeerRole::Client).unwrap();
    // A key that is not the CA's is refused.
    let other = ca(now);
    let err = CertificateAuthority::from_pem(TD, &ca1.cert_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    // A leaf is not a CA.
    let err = CertificateAuthority::from_pem(TD, &leaf.chain_pem(), &ca1.key_pem()).unwrap_err();
    assert!(matches!(err, Error::InvalidBundle { .. }), "{err:?}");
    assert!(!format!("{ca1:?}").contains("BEGIN"));
}

#[test]
fn leaf_never_outlives_its_ca() {
    let now = SystemTime::now();
    let ca = CertificateAuthority::generate(TD, KeyAlgorithm::EcdsaP256, hours(2), now).unwrap();
    let id = Identity::new(TD, NET, Role::Client, "x").unwrap();
    let (leaf, _) = ca
        .issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &LeafPolicy::default(), now)
        .unwrap();
    assert!(leaf.not_after <= ca.not_after());
}

#[test]
fn certificate_without_identity_is_refused_by_the_verifier() {
    let now = SystemTime::now();
    let ca = ca(now);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::new(vec!["web.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = (now - hours(1)).into();
    params.not_after = (now + hours(1)).into();
    let leaf = params.signed_by(key.key_pair(), &ca.issuer).unwrap().der().clone();
    let err = store(&ca, false).verify(&[leaf], now, PeerRole::Client).unwrap_err();
    assert!(matches!(err, Error::MissingIdentity { .. }), "{err:?}");
}

#[test]
fn renewal_time_defaults_to_half_life_and_is_capped_by_the_lifetime() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let day = hours(24);
    let cases = [
        (None, t0 + hours(12)),
        (Some(hours(6)), t0 + hours(18)),
        (Some(hours(48)), t0),
        (Some(Duration::ZERO), t0 + day),
    ];
    for (renew_before, expected) in cases {
        assert_eq!(renewal_time(t0, t0 + day, renew_before), expected, "{renew_before:?}");
    }
}

#[test]
fn short_lived_leaves_renew_in_the_future_not_at_once() {
    let now = SystemTime::now();
    let ca = ca(now);
    let id = Identity::new(TD, NET, Role::Client, "short").unwrap();
    let policy = LeafPolicy { duration: Duration::from_secs(12), renew_before: None };
    let (leaf, _) =
        ca.issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &policy, now).unwrap();
    let leaf_secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(leaf_secs(leaf.renewal_time), leaf_secs(now + Duration::from_secs(6)));
}

#[test]
fn the_serial_read_alone_is_the_serial_the_full_parse_finds_and_junk_is_refused() {
    let now = SystemTime::now();
    for ca in [ca(now), ca_for(TD, KeyAlgorithm::Ed25519, now)] {
        let (leaf, _key) = member(&ca, NET, Role::Client, "web-1", now);
        for der in [leaf.leaf(), &ca.cert_der()[..]] {
            let full = CertInfo::parse(der).unwrap().serial;
            assert_eq!(Serial::of_certificate(der).unwrap(), full);
        }
        assert_eq!(Serial::of_certificate(leaf.leaf()).unwrap(), leaf.serial);
        // Cut short anywhere inside the TBS header and serial: an error, never a panic or a
        // wrong serial.
        for cut in 0..24 {
            let err = Serial::of_certificate(&leaf.leaf()[..cut]).unwrap_err();
            assert!(matches!(err, Error::InvalidCertificate { .. }), "{cut}: {err}");
        }
    }
    for junk in
        [&b""[..], b"\x02\x01\x05", b"\x30\x03\x02\x01\x05", b"\x30\x05\x30\x03\x04\x01\x05"]
    {
        let err = Serial::of_certificate(junk).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}
