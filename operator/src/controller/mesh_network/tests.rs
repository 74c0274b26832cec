//! The MeshNetwork reconciler against the in-memory API: members, their Certificates,
//! anchors, the signed genesis document in every member namespace, and status.

use genesis_trust::CertificateAuthority;
use serde_json::{json, Value};

use super::*;
use crate::controller::testing::{Harness, NA, OPS};
use crate::decide::network::INJECT_ANNOTATION;

const MN: &str = "/apis/genesis-mesh.io/v1alpha1/meshnetworks/payments";

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

fn pod(ns: &str, name: &str, labels: Value, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn anchor_labels() -> Value {
    json!({NETWORK_LABEL: "payments", "genesis-mesh.io/role": "anchor"})
}

impl World {
    /// Namespaces `shop` (labelled for payments), `web` and `blog`; pods:
    /// shop/api-0 (ready), web/anchor-0 (label, role anchor, ready), web/worker (label, not
    /// ready); and non-members: web/blog-0 (another network), web/done (Succeeded),
    /// shop/leaving (terminating), shop/batch (opted out: `genesis-mesh.io/inject: "false"`,
    /// so never injected and never ready as a member).
    fn new() -> Self {
        let h = Harness::new();
        let ca = h.seed_ca();
        h.api.update(MN, json!({"metadata": {"uid": "mn-1", "generation": 1}}));
        for (ns, labels) in
            [("shop", json!({NETWORK_LABEL: "payments"})), ("web", json!({})), ("blog", json!({}))]
        {
            h.api.put(json!({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": ns, "labels": labels}}));
        }
        let member = json!({NETWORK_LABEL: "payments"});
        h.api.put(pod("shop", "api-0", json!({"app": "api"}), "10.0.0.1", true));
        h.api.put(pod("web", "anchor-0", anchor_labels(), "10.0.0.2", true));
        h.api.put(pod("web", "worker", member.clone(), "10.0.0.3", false));
        h.api.put(pod("web", "blog-0", json!({NETWORK_LABEL: "blog"}), "10.0.0.4", true));
        let mut done = pod("web", "done", member, "10.0.0.5", false);
        done["status"]["phase"] = json!("Succeeded");
        h.api.put(done);
        let mut leaving = pod("shop", "leaving", json!({}), "10.0.0.6", true);
        leaving["metadata"]["deletionTimestamp"] = json!("2027-01-15T08:00:00Z");
        h.api.put(leaving);
        let mut opted_out = pod("shop", "batch", json!({}), "10.0.0.7", false);
        opted_out["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "false"});
        h.api.put(opted_out);
        World { h, ca }
    }

    fn reconcile(&self) -> Action {
        let mn: MeshNetwork = serde_json::from_value(self.api.get(MN).unwrap()).unwrap();
        self.run(|ctx| reconcile(Arc::new(mn), ctx)).unwrap()
    }

    fn status(&self) -> Value {
        self.h.status(MN)
    }

    fn condition(&self, type_: &str) -> Value {
        self.h.condition(MN, type_)
    }

    fn genesis(&self, ns: &str) -> Option<Value> {
        self.api.get(&format!("/api/v1/namespaces/{ns}/configmaps/genesis-mesh-payments"))
    }

    fn document(&self, ns: &str) -> SignedDocument {
        let map = self.genesis(ns).unwrap();
        serde_json::from_str(map["data"]["genesis.json"].as_str().unwrap()).unwrap()
    }

    fn configmap_patches(&self) -> usize {
        let patches = self.api.patches.lock().unwrap();
        patches.iter().filter(|(p, _)| p.contains("/configmaps/genesis-mesh-payments")).count()
    }

    fn cert(&self, ns: &str, name: &str) -> Option<Value> {
        self.api.get(&format!("/apis/genesis-mesh.io/v1alpha1/namespaces/{ns}/certificates/{name}"))
    }
}

#[test]
fn members_get_certificates_anchors_and_a_signed_genesis_document() {
    let w = World::new();
    w.reconcile();

    // One csr Certificate per member, owned by its pod, with the revoke-on-delete finalizer.
    let api = w.cert("shop", "api-0").expect("a Certificate for shop/api-0");
    assert_eq!(api["spec"]["nodeName"], "api-0.shop");
    assert_eq!(api["spec"]["role"], "client");
    assert_eq!(api["spec"]["delivery"], "csr");
    assert_eq!(api["metadata"]["ownerReferences"][0]["uid"], "uid-api-0");
    assert_eq!(api["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(w.cert("web", "anchor-0").unwrap()["spec"]["role"], "anchor");
    assert!(w.cert("web", "worker").is_some());
    for (ns, name) in [("web", "blog-0"), ("web", "done"), ("shop", "leaving"), ("shop", "batch")] {
        assert!(w.cert(ns, name).is_none(), "{ns}/{name} is not a member");
    }

    // Status: three members, two ready; the anchor-role pod first, only ready pods.
    let status = w.status();
    assert_eq!((status["members"].as_i64(), status["readyMembers"].as_i64()), (Some(3), Some(2)));
    assert_eq!(status["anchors"], json!(["10.0.0.2:7000", "10.0.0.1:7000"]));
    assert_eq!(status["policyRevision"], 1);
    assert_eq!(w.condition("Ready")["status"], "True");
    let degraded = w.condition("Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MembersNotReady"))
    );

    // The genesis document is in every member namespace and the operator's, not elsewhere,
    // signed by the authority, and the real sidecar accepts it.
    for ns in [OPS, "shop", "web"] {
        let map = w.genesis(ns).unwrap_or_else(|| panic!("genesis ConfigMap in {ns}"));
        assert_eq!(map["metadata"]["annotations"][REVISION], "1");
        assert_eq!(map["data"]["ca.crt"], w.ca.cert_pem());
    }
    assert!(w.genesis("blog").is_none());
    let map = w.genesis("web").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, key: &str| {
        std::fs::write(dir.path().join(name), map["data"][key].as_str().unwrap()).unwrap();
        dir.path().join(name)
    };
    let settings = genesis_sidecar::config::Settings::from_genesis(
        &write("genesis.json", "genesis.json"),
        &write("ca.crt", "ca.crt"),
    )
    .unwrap();
    assert_eq!(settings.anchors, Some(vec!["10.0.0.2:7000".into(), "10.0.0.1:7000".into()]));
    assert_eq!(settings.network.as_deref(), Some("payments"));

    // Nothing changed: nothing is written again and the revision stays.
    let before = w.configmap_patches();
    w.reconcile();
    assert_eq!(w.configmap_patches(), before);
    assert_eq!(w.status()["policyRevision"], 1);

    // A spec change is a new revision, everywhere.
    w.api.update(MN, json!({"spec": {"allowedPorts": [8080]}, "metadata": {"generation": 2}}));
    w.reconcile();
    assert_eq!(w.status()["policyRevision"], 2);
    for ns in [OPS, "shop", "web"] {
        assert_eq!(w.genesis(ns).unwrap()["metadata"]["annotations"][REVISION], "2");
    }
    assert!(w.document("shop").document.contains("\"allowedPorts\":[8080]"));
    let published: Vec<_> = w.events().into_iter().filter(|e| e.2 == "GenesisPublished").collect();
    assert_eq!(published.len(), 2, "one Event per revision: {published:?}");
}

#[test]
fn an_edited_genesis_configmap_is_written_again() {
    let w = World::new();
    w.reconcile();
    let path = "/api/v1/namespaces/shop/configmaps/genesis-mesh-payments";
    let map = w.api.get(path).unwrap();
    let edited = map["data"]["genesis.json"].as_str().unwrap().replace("16", "64");
    w.api.update(path, json!({"data": {"genesis.json": edited}}));
    assert!(w.document("shop").verify(&[w.ca.cert_der().clone()]).is_err(), "edited");
    w.reconcile();
    assert!(w.document("shop").verify(&[w.ca.cert_der().clone()]).is_ok(), "written again");
    assert_eq!(w.status()["policyRevision"], 1, "the document itself did not change");
}

#[test]
fn anchors_stay_while_ready_and_move_when_not() {
    let w = World::new();
    w.api.update(MN, json!({"spec": {"anchors": {"count": 1}}}));
    w.reconcile();
    assert_eq!(w.status()["anchors"], json!(["10.0.0.2:7000"]));
    // Another anchor-role pod arriving does not displace the current anchor.
    w.api.put(pod("web", "anchor-1", anchor_labels(), "10.0.0.9", true));
    w.reconcile();
    assert_eq!(w.status()["anchors"], json!(["10.0.0.2:7000"]));
    // The anchor turns unready: the other anchor-role pod takes over.
    w.api.update(
        "/api/v1/namespaces/web/pods/anchor-0",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    w.reconcile();
    assert_eq!(w.status()["anchors"], json!(["10.0.0.9:7000"]));
    // A revoked anchor is replaced at once, ready or not: every member cut it off.
    w.api.update(
        "/apis/genesis-mesh.io/v1alpha1/namespaces/web/certificates/anchor-1",
        json!({"spec": {"revoked": true}}),
    );
    w.reconcile();
    let anchors = w.status()["anchors"].clone();
    assert!(!anchors.as_array().unwrap().contains(&json!("10.0.0.9:7000")), "{anchors}");
    assert_eq!(anchors.as_array().unwrap().len(), 1, "{anchors}");
}

#[test]
fn an_invalid_spec_or_a_missing_authority_is_not_ready_with_a_reason() {
    let w = World::new();
    w.api.update(MN, json!({"spec": {"discovery": {"minPeers": 9, "maxPeers": 4}}}));
    w.reconcile();
    let ready = w.condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InvalidSpec"))
    );
    assert!(ready["message"].as_str().unwrap().contains("minPeers (9) exceeds"), "{ready}");
    assert!(w.genesis("shop").is_none(), "nothing invalid is published");
    // Recorded once as a Warning Event, not again while nothing changes.
    w.reconcile();
    let invalid: Vec<_> = w.events().into_iter().filter(|e| e.2 == "InvalidSpec").collect();
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!((invalid[0].0.as_str(), invalid[0].1.as_str()), ("payments", "Warning"));

    w.api.update(
        MN,
        json!({"spec": {"discovery": {"minPeers": 3, "maxPeers": 8}, "authorityRef": {"name": "gone"}}}),
    );
    w.reconcile();
    let ready = w.condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("AuthorityNotFound"))
    );
    assert!(ready["message"].as_str().unwrap().contains("gone"));
}

#[test]
fn a_network_created_with_its_authority_waits_quietly_and_warns_only_for_an_established_one() {
    let w = World::new();
    // The authority has not made its CA yet (created a moment ago, never Ready).
    w.api.remove(&format!("/api/v1/namespaces/{OPS}/secrets/prod-ca-ca"));
    w.reconcile();
    let ready = w.condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("AuthorityNotReady"))
    );
    assert!(w.events().iter().all(|e| e.1 != "Warning"), "{:?}", w.events());
    // An authority that was Ready and lost its CA is a real problem: a Warning.
    w.api.update(
        NA,
        json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "Ready", "message": "", "lastTransitionTime": "2027-01-15T08:00:00Z"}]}}),
    );
    w.reconcile();
    let warnings: Vec<_> = w.events().into_iter().filter(|e| e.2 == "CAUnavailable").collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].1, "Warning");
}
