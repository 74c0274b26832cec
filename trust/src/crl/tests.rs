use std::time::SystemTime;

use super::*;
use crate::fixtures::{ca, hours, member, NET};
use crate::identity::Role;

#[test]
fn signed_crl_parses_back_with_number_serials_and_validity() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (a, _) = member(&ca, NET, Role::Client, "a", now);
    let (b, _) = member(&ca, NET, Role::Client, "b", now);
    let mut list = RevocationList::default();
    assert!(list.revoke(&a.serial, RevocationReason::KeyCompromise, now));
    let crl = ca.sign_crl(&list, now, now + hours(12)).unwrap();
    assert_eq!(crl.number(), 1);
    assert!(crl.is_revoked(&a.serial));
    assert!(!crl.is_revoked(&b.serial));
    crl.verify_signed_by(ca.cert_der()).unwrap();
    let reparsed = Crl::from_pem(&crl.to_pem()).unwrap();
    assert_eq!(reparsed.number(), 1);
    assert_eq!(reparsed.revoked(), crl.revoked());
    assert!(crl.check_fresh(now + hours(11)).is_ok());
    assert!(matches!(crl.check_fresh(now + hours(13)), Err(Error::CrlExpired { number: 1, .. })));
}

#[test]
fn every_change_bumps_the_crl_number_and_unrevoke_exists() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (a, _) = member(&ca, NET, Role::Client, "a", now);
    let mut list = RevocationList::default();
    assert!(list.revoke(&a.serial, RevocationReason::Unspecified, now));
    assert!(
        !list.revoke(&a.serial, RevocationReason::Unspecified, now),
        "second revoke is a no-op"
    );
    assert_eq!(list.number, 1);
    assert!(list.unrevoke(&a.serial));
    assert!(!list.unrevoke(&a.serial));
    assert_eq!(list.number, 2);
    let crl = ca.sign_crl(&list, now, now + hours(1)).unwrap();
    assert_eq!(crl.number(), 2);
    assert!(!crl.is_revoked(&a.serial));
    // The state persists as JSON and comes back identical.
    list.revoke(&a.serial, RevocationReason::CessationOfOperation, now);
    let json = serde_json::to_string(&list).unwrap();
    assert_eq!(serde_json::from_str::<RevocationList>(&json).unwrap(), list);
}

#[test]
fn crl_numbers_encode_as_minimal_positive_integers() {
    for (n, bytes) in [
        (0u64, vec![0u8]),
        (1, vec![1]),
        (127, vec![127]),
        (128, vec![0, 128]),
        (256, vec![1, 0]),
        (u64::MAX, vec![0, 255, 255, 255, 255, 255, 255, 255, 255]),
    ] {
        assert_eq!(crl_number_bytes(n), bytes, "{n}");
    }
    let now = SystemTime::now();
    let ca = ca(now);
    let list = RevocationList { number: u64::MAX, entries: Default::default() };
    assert_eq!(ca.sign_crl(&list, now, now + hours(1)).unwrap().number(), u64::MAX);
}

#[test]
fn garbage_and_truncated_crls_are_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let crl = ca.sign_crl(&RevocationList::default(), now, now + hours(1)).unwrap();
    assert!(matches!(Crl::parse(b"garbage"), Err(Error::CrlMalformed { .. })));
    assert!(matches!(Crl::parse(&[]), Err(Error::CrlMalformed { .. })));
    for cut in [1, 10, crl.der().len() / 2, crl.der().len() - 1] {
        assert!(
            matches!(Crl::parse(&crl.der()[..cut]), Err(Error::CrlMalformed { .. })),
            "cut {cut}"
        );
    }
    let mut trailing = crl.der().to_vec();
    trailing.push(0);
    assert!(
        matches!(Crl::parse(&trailing), Err(Error::CrlMalformed { reason }) if reason.contains("trailing"))
    );
    assert!(matches!(Crl::parse(&vec![0x30; MAX_CRL_BYTES + 1]), Err(Error::CrlMalformed { .. })));
    assert!(matches!(
        Crl::from_pem("-----BEGIN X509 CRL-----\n!!\n-----END X509 CRL-----\n"),
        Err(Error::InvalidPem { .. })
    ));
}

#[test]
fn crl_from_another_authority_fails_signature_check() {
    let now = SystemTime::now();
    let ours = ca(now);
    let theirs = ca(now);
    let crl = theirs.sign_crl(&RevocationList::default(), now, now + hours(1)).unwrap();
    assert!(matches!(crl.verify_signed_by(ours.cert_der()), Err(Error::CrlSignature { .. })));
}

/// Nothing outside the signed bytes may be encoded another way: the outer signatureAlgorithm
/// (here its SEQUENCE tag flipped to an application tag), the outer SEQUENCE's own tag (0x30
/// as 0xb0) and the signature BIT STRING's unused-bits byte. The parser accepts the first two,
/// each a second, still verifying encoding of one CRL (the hostile-input test found both).
#[test]
fn a_crl_encoded_otherwise_outside_its_signed_bytes_is_refused() {
    let now = SystemTime::now();
    let ca = ca(now);
    let crl = ca.sign_crl(&RevocationList::default(), now, now + hours(12)).unwrap();
    let der = crl.der().to_vec();
    let tbs_end = {
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        header_len(&der).unwrap() + parsed.tbs_cert_list.as_ref().len()
    };
    assert_eq!(der[tbs_end], 0x30, "the outer AlgorithmIdentifier SEQUENCE");
    let refused = |at: usize, byte: u8| {
        let mut other = der.clone();
        other[at] = byte;
        let e = Crl::parse(&other).unwrap_err().to_string();
        assert!(e.contains("not the DER encoding of its parts"), "{e}");
    };
    refused(tbs_end, 0x70);
    refused(0, 0xb0);
    let unused_bits = der.len() - crl_signature_len(&der) - 1;
    assert_eq!(der[unused_bits], 0, "no unused bits in the signature");
    let mut other = der.clone();
    other[unused_bits] = 1; // the parser refuses this one itself
    assert!(Crl::parse(&other).is_err());
    assert!(Crl::parse(&der).is_ok());
}

/// The signature's length, from the BIT STRING that ends `der`.
fn crl_signature_len(der: &[u8]) -> usize {
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    parsed.signature_value.data.len()
}
