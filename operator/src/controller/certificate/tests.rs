//! The Certificate reconciler against the in-memory API, with a clock the tests move.

use genesis_trust::RevocationList;
use serde_json::{json, Value};

use super::*;
use crate::controller::testing::{b64, ca_secret, start, Harness, CA, CERT, NA};

const SECRET: &str = "/api/v1/namespaces/shop/secrets/billing-tls";
const REVOCATIONS: &str = "/api/v1/namespaces/genesis-system/configmaps/prod-ca-revocations";

struct World {
    h: Harness,
    ca: CertificateAuthority,
}

impl std::ops::Deref for World {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl World {
    fn new() -> Self {
        let h = Harness::new();
        let ca = h.seed_ca();
        World { h, ca }
    }

    /// One reconcile of the stored Certificate, as the controller would run it.
    fn reconcile(&self) -> Action {
        let cert: Certificate = serde_json::from_value(self.api.get(CERT).unwrap()).unwrap();
        self.run(|ctx| reconcile(Arc::new(cert), ctx)).unwrap()
    }

    fn status(&self) -> Value {
        self.h.status(CERT)
    }

    fn condition(&self, type_: &str) -> Value {
        self.h.condition(CERT, type_)
    }

    /// The leaf in the Secret, parsed.
    fn leaf(&self) -> CertInfo {
        use base64::Engine;
        let secret = self.api.get(SECRET).expect("the Secret exists");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["tls.crt"].as_str().unwrap())
            .unwrap();
        let chain = genesis_trust::certs_from_pem(&String::from_utf8(pem).unwrap()).unwrap();
        CertInfo::parse(&chain[0]).unwrap()
    }
}

#[test]
fn first_issuance_writes_the_secret_and_status_then_waits_for_the_renewal_time() {
    let w = World::new();
    let action = w.reconcile();
    let leaf = w.leaf();
    let identity = leaf.identity.clone().unwrap();
    assert_eq!(identity.uri(), "spiffe://prod.example/mesh/payments/client/billing");
    let secret = w.api.get(SECRET).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(secret["data"][key].is_string(), "{key} missing");
    }
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], "billing");
    // The leaf chains to the authority's CA.
    let store = genesis_trust::TrustStore::new(
        genesis_trust::TrustPolicy {
            trust_domain: "prod.example".into(),
            network: Some("payments".into()),
            require_fresh_crl: false,
        },
        genesis_trust::TrustBundle::new(vec![w.ca.cert_der().clone()]).unwrap(),
    );
    let chain = genesis_trust::certs_from_pem(&{
        use base64::Engine;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"]["tls.crt"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    })
    .unwrap();
    store.verify(&chain, start(), genesis_trust::PeerRole::Client).unwrap();
    let status = w.status();
    assert_eq!(status["serial"], leaf.serial.to_string());
    assert_eq!(status["revision"], 1);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(w.condition("Ready")["status"], "True");
    assert_eq!(w.condition("Ready")["reason"], "Issuing");
    // Renewal at half of 24 h.
    assert_eq!(action, Action::requeue(Duration::from_secs(12 * 3600)));
    assert_eq!(status["renewalTime"], rfc3339(start() + Duration::from_secs(12 * 3600)));
}

#[test]
fn renewal_happens_at_the_renewal_time_and_not_before() {
    let w = World::new();
    w.reconcile();
    let first = w.leaf().serial;
    w.at(start() + Duration::from_secs(6 * 3600));
    let action = w.reconcile();
    assert_eq!(w.leaf().serial, first, "renewed too early");
    assert_eq!(action, Action::requeue(Duration::from_secs(6 * 3600)));
    w.at(start() + Duration::from_secs(12 * 3600));
    w.reconcile();
    assert_ne!(w.leaf().serial, first);
    let status = w.status();
    assert_eq!(status["revision"], 2);
    assert_eq!(status["issuedSerials"].as_array().unwrap().len(), 2);
    assert_eq!(w.condition("Ready")["reason"], "Renewing");
}

#[test]
fn a_failed_issuance_backs_off_and_keeps_the_old_secret() {
    let w = World::new();
    w.reconcile();
    let first = w.leaf().serial;
    let secret_before = w.api.get(SECRET).unwrap();
    // The CA Secret becomes unusable; renewal is due.
    w.api.update(CA, json!({"data": {"tls.key": b64("garbage")}}));
    let due = start() + Duration::from_secs(12 * 3600);
    w.at(due);
    let action = w.reconcile();
    assert_eq!(action, Action::requeue(decide::backoff(1)));
    assert_eq!(w.api.get(SECRET).unwrap(), secret_before, "the valid certificate was replaced");
    assert_eq!(w.status()["failedIssuanceAttempts"], 1);
    assert_eq!(w.condition("Issuing")["status"], "False");
    assert!(w.condition("Issuing")["message"]
        .as_str()
        .unwrap()
        .contains("is not a usable CA for prod.example"));
    assert_eq!(w.condition("Ready")["status"], "True", "still valid, still ready");
    // Within the backoff: no attempt at all.
    w.at(due + Duration::from_secs(2));
    assert_eq!(w.reconcile(), Action::requeue(Duration::from_secs(3)));
    assert_eq!(w.status()["failedIssuanceAttempts"], 1);
    // The CA is repaired; after the backoff the renewal succeeds and the failures clear.
    w.api.put(ca_secret(&w.ca));
    w.at(due + Duration::from_secs(5));
    w.reconcile();
    assert_ne!(w.leaf().serial, first);
    assert!(w.status()["failedIssuanceAttempts"].is_null());
    assert_eq!(w.condition("Issuing")["status"], "True");
    // `kubectl describe` tells the story: issued, failed (why, and when it retries), renewed.
    let reasons: Vec<(String, String)> =
        w.events().into_iter().map(|(_, kind, reason, _)| (kind, reason)).collect();
    for expected in [("Normal", "Issuing"), ("Warning", "IssueFailed"), ("Normal", "Renewing")] {
        assert!(
            reasons.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not in {reasons:?}"
        );
    }
    let failed = w.events().into_iter().find(|e| e.2 == "IssueFailed").unwrap();
    assert!(
        failed.3.contains("is not a usable CA") && failed.3.contains("retrying in 5s"),
        "{failed:?}"
    );
}

#[test]
fn revoking_puts_every_issued_serial_on_the_list_once() {
    let w = World::new();
    w.reconcile();
    w.at(start() + Duration::from_secs(12 * 3600));
    w.reconcile();
    let serials: Vec<String> = w.status()["issuedSerials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    w.api.update(CERT, json!({"spec": {"revoked": true, "revocationReason": "keyCompromise"}}));
    assert_eq!(w.reconcile(), Action::await_change());
    let map = w.api.get(REVOCATIONS).expect("the revocation ConfigMap");
    let list: RevocationList =
        serde_json::from_str(map["data"]["revocations.json"].as_str().unwrap()).unwrap();
    assert_eq!(list.entries.keys().cloned().collect::<Vec<_>>(), {
        let mut s = serials.clone();
        s.sort();
        s
    });
    assert_eq!(list.number, 2, "one bump per serial");
    assert_eq!(w.condition("Ready")["status"], "False");
    assert_eq!(w.condition("Ready")["reason"], "Revoked");
    assert!(w.status()["revokedAt"].is_string());
    // Again: nothing changes (no second bump), nothing is issued.
    let secret = w.api.get(SECRET).unwrap();
    w.at(start() + Duration::from_secs(30 * 3600));
    assert_eq!(w.reconcile(), Action::await_change());
    let again: RevocationList = serde_json::from_str(
        w.api.get(REVOCATIONS).unwrap()["data"]["revocations.json"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(again.number, 2);
    assert_eq!(w.api.get(SECRET).unwrap(), secret);
}

/// Server-side apply removes what a field manager leaves out of its next apply: an up-to-date
/// reconcile that applied only observedGeneration and Ready under the manager that had applied
/// the issuance wiped serial, renewalTime and issuedSerials on a real API server, and a
/// revocation after a renewal then missed the previous, still-valid serial.
#[test]
fn up_to_date_reconciles_keep_the_issuance_record_so_a_revocation_covers_every_serial() {
    let w = World::new();
    w.reconcile();
    let first = w.leaf().serial.to_string();
    w.at(start() + Duration::from_secs(6 * 3600));
    w.reconcile(); // up to date
    let status = w.status();
    for field in ["serial", "notBefore", "notAfter", "renewalTime", "fingerprint", "revision"] {
        assert!(!status[field].is_null(), "{field} wiped by an up-to-date reconcile: {status:#}");
    }
    assert_eq!(status["issuedSerials"], json!([first]));
    assert_eq!(w.condition("Issuing")["status"], "True", "{status:#}");
    w.at(start() + Duration::from_secs(12 * 3600));
    w.reconcile(); // renewal
    let second = w.leaf().serial.to_string();
    w.at(start() + Duration::from_secs(13 * 3600));
    w.reconcile(); // up to date again
    assert_eq!(w.status()["issuedSerials"], json!([first, second]));
    assert_eq!(w.status()["revision"], 2);
    w.api.update(CERT, json!({"spec": {"revoked": true}}));
    w.reconcile();
    let list: RevocationList = serde_json::from_str(
        w.api.get(REVOCATIONS).unwrap()["data"]["revocations.json"].as_str().unwrap(),
    )
    .unwrap();
    for serial in [&first, &second] {
        assert!(list.entries.contains_key(serial), "{serial} is off the revocation list");
    }
    // The revocation's own status write keeps the record too.
    assert_eq!(w.status()["serial"], json!(second));
}

/// Once its MeshNetwork is gone, a deleted Certificate's serials still go on the list of the
/// authority that signed it (found by the issuer fingerprint), before the finalizer goes. It
/// used to drop the finalizer at once, and a serial valid for another day never reached a CRL.
#[test]
fn a_certificate_deleted_after_its_network_is_still_revoked_by_its_authority() {
    let w = World::new();
    w.reconcile();
    let serial = w.leaf().serial.to_string();
    w.api.update(NA, json!({"status": {"caFingerprint": w.ca.fingerprint()}}));
    w.api.remove("/apis/genesis-mesh.io/v1alpha1/meshnetworks/payments");
    w.api.update(
        CERT,
        json!({"metadata": {"finalizers": [FINALIZER],
                            "deletionTimestamp": "2027-01-15T08:00:00Z"}}),
    );
    w.reconcile();
    let list: RevocationList = serde_json::from_str(
        w.api.get(REVOCATIONS).expect("the revocation list")["data"]["revocations.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(list.entries.contains_key(&serial), "{serial} is not on the list: {list:?}");
    assert_eq!(w.api.get(CERT).unwrap()["metadata"]["finalizers"], json!([]));
    assert_eq!(w.condition("Ready")["reason"], "MemberGone");
    // With no authority that signed it, there is no list: the deletion just finishes.
    w.api.update(CERT, json!({"metadata": {"finalizers": [FINALIZER]}}));
    w.api.update(NA, json!({"status": {"caFingerprint": "someone-else"}}));
    w.reconcile();
    assert_eq!(w.api.get(CERT).unwrap()["metadata"]["finalizers"], json!([]));
}

#[test]
fn a_certificate_created_revoked_is_not_ready_and_never_issued() {
    let w = World::new();
    w.api.update(CERT, json!({"spec": {"revoked": true}}));
    assert_eq!(w.reconcile(), Action::await_change());
    assert!(w.api.get(SECRET).is_none(), "nothing is issued to a revoked certificate");
    let ready = w.condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("Revoked"))
    );
    assert!(w.status()["revokedAt"].is_string());
}

#[test]
fn a_certificate_of_an_unknown_network_is_not_ready_with_a_reason() {
    let w = World::new();
    w.api.update(CERT, json!({"spec": {"networkRef": {"name": "nope"}}}));
    assert_eq!(w.reconcile(), Action::requeue(Duration::from_secs(60)));
    let ready = w.condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NetworkNotFound"))
    );
    assert!(w.api.get(SECRET).is_none());
}
