//! Independent check: Debian's `openssl verify -crl_check` must agree with our verifier on
//! every case — a good leaf, a revoked one, one from a foreign CA, an expired one — for both
//! key algorithms. CI installs openssl (see the README's test command).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use genesis_trust::{
    create_csr, CertificateAuthority, Identity, IssuedCertificate, KeyAlgorithm, LeafPolicy,
    PeerRole, PrivateKey, RevocationList, RevocationReason, Role, TrustBundle, TrustPolicy,
    TrustStore,
};

const TD: &str = "cluster.local";
const NET: &str = "payments";

fn issue(
    ca: &CertificateAuthority,
    node: &str,
    alg: KeyAlgorithm,
    now: SystemTime,
) -> IssuedCertificate {
    let id = Identity::new(TD, NET, Role::Client, node).unwrap();
    let key = PrivateKey::generate(alg).unwrap();
    ca.issue_from_csr(&create_csr(&id, &key).unwrap(), &id, &LeafPolicy::default(), now).unwrap()
}

/// Runs `openssl verify` at time `at`; returns (accepted, combined output).
fn openssl_verify(dir: &Path, leaf: &IssuedCertificate, at: SystemTime) -> (bool, String) {
    let leaf_path = dir.join(format!("{}.pem", leaf.serial));
    std::fs::write(&leaf_path, genesis_trust::certs_to_pem(&leaf.chain[..1])).unwrap();
    let at = at.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-crl_check", "-purpose", "sslclient", "-attime", &at])
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .arg("-CRLfile")
        .arg(dir.join("crl.pem"))
        .arg(&leaf_path)
        .output()
        .expect("openssl must be installed (the README's test command installs it)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn agree_for(alg: KeyAlgorithm) {
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 86400);
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate(TD, alg, year, now).unwrap();
    let foreign = CertificateAuthority::generate(TD, alg, year, now).unwrap();
    let good = issue(&ca, "good", alg, now);
    let revoked = issue(&ca, "revoked", alg, now);
    let alien = issue(&foreign, "alien", alg, now);
    let mut list = RevocationList::default();
    list.revoke(&revoked.serial, RevocationReason::KeyCompromise, now);
    // The CRL outlives the leaves so that the expiry case is about the leaf alone.
    let crl = ca.sign_crl(&list, now - Duration::from_secs(60), now + 2 * year / 365).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl.to_pem()).unwrap();

    let store = TrustStore::new(
        TrustPolicy { trust_domain: TD.into(), network: Some(NET.into()), require_fresh_crl: true },
        TrustBundle::from_pem(&ca.cert_pem()).unwrap(),
    );
    store.install_crl(&crl, now).unwrap();

    let in_an_hour = now + Duration::from_secs(3600);
    let after_expiry = now + Duration::from_secs(25 * 3600);
    let cases = [
        ("good leaf", &good, in_an_hour, true, "OK"),
        ("revoked leaf", &revoked, in_an_hour, false, "certificate revoked"),
        ("foreign CA", &alien, in_an_hour, false, "unable to get local issuer certificate"),
        ("expired leaf", &good, after_expiry, false, "certificate has expired"),
    ];
    for (name, leaf, at, expect_ok, openssl_says) in cases {
        let (openssl_ok, text) = openssl_verify(dir.path(), leaf, at);
        let ours = store.verify(&leaf.chain, at, PeerRole::Client);
        assert_eq!(openssl_ok, expect_ok, "{alg:?} {name}: openssl said {text}");
        assert_eq!(ours.is_ok(), openssl_ok, "{alg:?} {name}: ours {ours:?}, openssl {text}");
        assert!(text.contains(openssl_says), "{alg:?} {name}: openssl said {text}");
    }
    // openssl reads our CRL and sees the CRL Number, the reason and the revoked serial.
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(dir.path().join("crl.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(out.status.success());
    assert!(text.contains("X509V3 CRL NUMBER") && text.contains("KEY COMPROMISE"), "{text}");
    assert!(text.contains(&revoked.serial.to_string().to_uppercase()), "{text}");
}

#[test]
fn openssl_agrees_with_the_verifier_for_p256() {
    agree_for(KeyAlgorithm::EcdsaP256);
}

#[test]
fn openssl_agrees_with_the_verifier_for_ed25519() {
    agree_for(KeyAlgorithm::Ed25519);
}
