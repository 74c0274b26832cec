//! The NetworkAuthority reconciler against the in-memory API, alone and together with the
//! Certificate reconciler (revoke on flag → a new CRL with the serial on it).

use genesis_crds::Certificate;
use genesis_trust::{KeyAlgorithm, Serial};
use serde_json::{json, Value};

use super::*;
use crate::controller::testing::{start, Harness, CA, CERT, NA};

const CRL: &str = "/api/v1/namespaces/genesis-system/configmaps/prod-ca-crl";
const BUNDLE: &str = "/api/v1/namespaces/genesis-system/configmaps/prod-ca-bundle";

struct World(Harness);

impl std::ops::Deref for World {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl World {
    fn new() -> Self {
        World(Harness::new())
    }

    fn authority(&self) -> Action {
        let na: NetworkAuthority = serde_json::from_value(self.api.get(NA).unwrap()).unwrap();
        self.run(|ctx| reconcile(Arc::new(na), ctx)).unwrap()
    }

    fn certificate(&self) -> Action {
        let cert: Certificate = serde_json::from_value(self.api.get(CERT).unwrap()).unwrap();
        self.run(|ctx| super::super::certificate::reconcile(Arc::new(cert), ctx)).unwrap()
    }

    fn status(&self) -> Value {
        self.0.status(NA)
    }

    fn crl(&self) -> Crl {
        Crl::from_pem(self.api.get(CRL).unwrap()["data"]["crl.pem"].as_str().unwrap()).unwrap()
    }
}

#[test]
fn first_sight_creates_the_ca_bundle_and_crl_and_reports_them() {
    let w = World::new();
    let action = w.authority();
    let secret = w.api.get(CA).expect("a CA Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], "prod-ca");
    let bundle = w.api.get(BUNDLE).unwrap()["data"]["ca.crt"].as_str().unwrap().to_owned();
    let status = w.status();
    assert_eq!(status["trustBundle"], bundle.as_str());
    assert_eq!(status["crlNumber"], 0);
    assert_eq!(status["revokedCount"], 0);
    assert!(status["caNotAfter"].is_string() && status["caFingerprint"].is_string());
    assert_eq!(status["conditions"][0]["status"], "True");
    // The CRL is signed by the CA in the bundle.
    let crl = w.crl();
    let ca = genesis_trust::certs_from_pem(&bundle).unwrap();
    crl.verify_signed_by(&ca[0]).unwrap();
    // Next look: half way through the 12 h validity.
    assert_eq!(action, Action::requeue(Duration::from_secs(6 * 3600)));
    // Again, before that: the same CA and CRL (nothing regenerated).
    let ca_before = w.api.get(CA).unwrap();
    w.at(start() + Duration::from_secs(60));
    w.authority();
    assert_eq!(w.api.get(CA).unwrap(), ca_before);
    assert_eq!(w.crl().number(), 0);
}

#[test]
fn the_crl_is_resigned_with_a_new_number_at_half_its_validity() {
    let w = World::new();
    w.authority();
    w.at(start() + Duration::from_secs(6 * 3600));
    w.authority();
    let crl = w.crl();
    assert_eq!(crl.number(), 1);
    assert!(crl.next_update() > start() + Duration::from_secs(17 * 3600));
    assert_eq!(w.status()["crlNumber"], 1);
}

#[test]
fn revoking_a_certificate_bumps_the_crl_number_and_lists_its_serial() {
    let w = World::new();
    w.authority();
    w.certificate();
    let serial = w.api.get(CERT).unwrap()["status"]["serial"].as_str().unwrap().to_owned();
    w.api.update(CERT, json!({"spec": {"revoked": true}}));
    w.at(start() + Duration::from_secs(120));
    w.certificate();
    w.authority();
    let crl = w.crl();
    assert_eq!(crl.number(), 1);
    assert!(crl.is_revoked(&Serial::from_hex(&serial).unwrap()));
    assert_eq!(w.status()["crlNumber"], 1);
    assert_eq!(w.status()["revokedCount"], 1);
    let published =
        w.events().into_iter().find(|e| e.2 == "CRLPublished" && e.3.starts_with("CRL 1 "));
    assert!(published.is_some_and(|e| e.0 == "prod-ca" && e.3.contains("lists 1 serials")));
}

#[test]
fn an_adopted_ca_signs_the_crl_and_the_certificates() {
    let w = World::new();
    let corp = CertificateAuthority::generate(
        "prod.example",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400 * 365),
        start() - Duration::from_secs(3600),
    )
    .unwrap();
    let mut secret = crate::controller::testing::ca_secret(&corp);
    secret["metadata"] = json!({"name": "corp-ca", "namespace": "pki"});
    w.api.put(secret);
    w.api.update(NA, json!({"spec": {"caSecretRef": {"name": "corp-ca", "namespace": "pki"}}}));
    w.authority();
    assert_eq!(w.status()["caFingerprint"], json!(corp.fingerprint()));
    w.crl().verify_signed_by(corp.cert_der()).unwrap();
    assert!(w.api.get(CA).is_none(), "no CA of our own was generated");
    // Before the fix the Certificate controller read only <authority>-ca, so an adopted CA
    // issued nothing ("does not exist yet").
    w.certificate();
    let issued = w.0.condition(CERT, "Ready");
    assert_eq!(issued["status"], "True", "{issued}");
    let secret = w.api.get("/api/v1/namespaces/shop/secrets/billing-tls").unwrap();
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["tls.crt"].as_str().unwrap())
        .unwrap();
    let chain = genesis_trust::certs_from_pem(&String::from_utf8(pem).unwrap()).unwrap();
    let store = genesis_trust::TrustStore::new(
        genesis_trust::TrustPolicy {
            trust_domain: "prod.example".into(),
            network: Some("payments".into()),
            require_fresh_crl: false,
        },
        genesis_trust::TrustBundle::new(vec![corp.cert_der().clone()]).unwrap(),
    );
    store.verify(&chain, start(), genesis_trust::PeerRole::Client).unwrap();
}

#[test]
fn an_adopted_ca_whose_key_does_not_match_is_refused_with_a_reason() {
    let w = World::new();
    let generate = || {
        CertificateAuthority::generate(
            "prod.example",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(86400 * 365),
            start(),
        )
        .unwrap()
    };
    let (corp, other) = (generate(), generate());
    use base64::Engine;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    w.api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "corp-ca", "namespace": "pki"},
        "data": {"tls.crt": b64(corp.cert_pem()), "tls.key": b64(other.key_pem())}
    }));
    w.api.update(NA, json!({"spec": {"caSecretRef": {"name": "corp-ca", "namespace": "pki"}}}));
    assert_eq!(w.authority(), Action::requeue(Duration::from_secs(60)));
    let cond = &w.status()["conditions"][0];
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("CAUnavailable"))
    );
    assert!(
        cond["message"].as_str().unwrap().contains("does not belong to the CA certificate"),
        "{cond}"
    );
    assert!(w.api.get(CA).is_none(), "no CA of our own was generated instead");
}

#[test]
fn a_member_certificate_is_revoked_when_its_pod_goes_and_the_crl_number_bumps() {
    use crate::controller::mesh_network::FINALIZER;
    let w = World::new();
    w.authority();
    let member = "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/api-0";
    let pod = "/api/v1/namespaces/shop/pods/api-0";
    let serial = "01f2e3d4c5b6a798";
    w.api.put(json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "api-0", "namespace": "shop", "uid": "p-1"}}));
    w.api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "api-0", "namespace": "shop", "uid": "c-2", "generation": 1,
                     "finalizers": [FINALIZER],
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "api-0",
                                          "uid": "p-1", "controller": true}]},
        "spec": {"networkRef": {"name": "payments"}, "nodeName": "api-0.shop", "delivery": "csr"},
        "status": {"serial": serial},
    }));
    let reconcile_member = || {
        let cert: Certificate = serde_json::from_value(w.api.get(member).unwrap()).unwrap();
        w.run(|ctx| super::super::certificate::reconcile(Arc::new(cert), ctx)).unwrap()
    };
    // The pod lives: nothing to do.
    assert_eq!(reconcile_member(), Action::await_change());
    w.authority();
    assert_eq!(w.crl().number(), 0);

    // The pod is gone (the Certificate's deletion by the garbage collector may lag): the
    // serial goes on the list at once, and the next CRL carries it.
    w.api.remove(pod);
    w.at(start() + Duration::from_secs(30));
    reconcile_member();
    let ready = &w.api.get(member).unwrap()["status"]["conditions"][0];
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("MemberGone"))
    );
    w.authority();
    assert_eq!(w.crl().number(), 1);
    assert!(w.crl().is_revoked(&Serial::from_hex(serial).unwrap()));

    // The garbage collector deletes the Certificate: the finalizer is released, and
    // nothing is revoked twice.
    w.api.update(member, json!({"metadata": {"deletionTimestamp": "2027-01-15T08:00:00Z"}}));
    reconcile_member();
    assert_eq!(w.api.get(member).unwrap()["metadata"]["finalizers"], json!([]));
    w.authority();
    assert_eq!(w.crl().number(), 1);

    // A pod of the same name is another pod: the old Certificate's uid no longer matches.
    w.api.put(json!({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "api-0", "namespace": "shop", "uid": "p-2"}}));
    let cert: Certificate = serde_json::from_value(w.api.get(member).unwrap()).unwrap();
    assert!(w
        .run(|ctx| async move { super::super::certificate::member_pod_gone(&ctx, &cert).await })
        .unwrap());
}

fn roots(pem: &str) -> Vec<String> {
    genesis_trust::certs_from_pem(pem)
        .unwrap()
        .iter()
        .map(|c| genesis_trust::CertInfo::parse(c).unwrap().fingerprint)
        .collect()
}

#[test]
fn a_ca_rotation_keeps_both_roots_until_every_member_moved_to_the_new_one() {
    let w = World::new();
    w.authority();
    w.certificate();
    let old = w.status()["caFingerprint"].as_str().unwrap().to_owned();
    // A sidecar member, issued by the identity service at time zero.
    let member_issued = |at: SystemTime, issuer: &str| {
        w.api.put(json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "api-0", "namespace": "shop"},
            "spec": {"networkRef": {"name": "payments"}, "nodeName": "api-0.shop", "delivery": "csr"},
            "status": {"serial": format!("{:x}", 1000 + at.duration_since(start()).unwrap_or_default().as_secs()),
                       "notBefore": crate::controller::rfc3339(at), "issuerFingerprint": issuer}
        }));
    };
    member_issued(start(), &old);
    let bundle = || w.api.get(BUNDLE).unwrap()["data"]["ca.crt"].as_str().unwrap().to_owned();
    let rotating = || w.0.condition(NA, "Rotating");
    assert_eq!(rotating()["status"], "False");

    // Asked for: the new root joins the bundle; the old CA still signs.
    w.api
        .update(NA, json!({"metadata": {"annotations": {"genesis-mesh.io/rotate-ca": "2026-11"}}}));
    w.at(start() + Duration::from_secs(60));
    w.authority();
    let both = roots(&bundle());
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], old, "the old CA still signs");
    let new = both[1].clone();
    assert_eq!(
        (rotating()["status"].as_str(), rotating()["reason"].as_str()),
        (Some("True"), Some("Distributing"))
    );
    assert_eq!(w.status()["bundleFingerprints"], json!([old, new]));
    let crl_map = w.api.get(CRL).unwrap();
    assert!(crl_map["data"]["rotation.pem"].is_string(), "the new root's CRL");
    // Members that have not renewed since hold only the old root: no promotion yet.
    w.at(start() + Duration::from_secs(120));
    w.authority();
    assert_eq!(rotating()["reason"], "Distributing");
    assert!(rotating()["message"].as_str().unwrap().contains("2 of 2 members have not renewed"));

    // Both renew (with the two-root bundle): the new CA signs from now on.
    let renewal = start() + Duration::from_secs(12 * 3600);
    w.at(renewal);
    w.certificate();
    let secret = w.api.get("/api/v1/namespaces/shop/secrets/billing-tls").unwrap();
    let ca_crt = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            secret["data"]["ca.crt"].as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(roots(&ca_crt), [old.clone(), new.clone()], "the Secret's ca.crt is the bundle");
    member_issued(renewal, &old);
    w.authority();
    assert_eq!(rotating()["reason"], "Retiring");
    assert_eq!(w.status()["caFingerprint"], json!(new));
    assert_eq!(roots(&bundle()), [new.clone(), old.clone()], "both roots until members move");
    let ca_secret = w.api.get(CA).unwrap();
    assert!(
        ca_secret["data"]["previous.key"].is_string() && ca_secret["data"]["next.crt"].is_null()
    );
    let crl = w.crl();
    let new_root = genesis_trust::certs_from_pem(&bundle()).unwrap()[0].clone();
    crl.verify_signed_by(&new_root).unwrap();
    w.authority();
    assert!(rotating()["message"].as_str().unwrap().contains("2 of 2 members hold a leaf of it"));

    // Both move to leaves of the new CA: the old root goes.
    let moved = renewal + Duration::from_secs(12 * 3600);
    w.at(moved);
    w.certificate();
    assert_eq!(w.0.status(CERT)["issuerFingerprint"], json!(new));
    w.authority();
    assert_eq!(rotating()["reason"], "Retiring", "api-0 still holds a leaf of the old root");
    member_issued(moved, &new);
    w.authority();
    assert_eq!(
        (rotating()["status"].as_str(), rotating()["reason"].as_str()),
        (Some("False"), Some("Rotated"))
    );
    assert_eq!(roots(&bundle()), std::slice::from_ref(&new));
    let ca_secret = w.api.get(CA).unwrap();
    assert!(ca_secret["data"]["previous.crt"].is_null(), "{ca_secret}");
    let reasons: Vec<String> = w.events().into_iter().map(|e| e.2).collect();
    for r in ["RotationStarted", "RotationPromoted", "RotationFinished"] {
        assert!(reasons.contains(&r.to_owned()), "{r} not in {reasons:?}");
    }
    // The same request is not acted on twice.
    w.authority();
    assert_eq!(roots(&bundle()), [new]);
}
