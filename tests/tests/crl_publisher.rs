//! The operator's CRL publisher against real sidecar processes: the cluster is the in-memory
//! Kubernetes API (pods whose IPs are the sidecars' loopback addresses), the CRL is signed by
//! the NetworkAuthority reconciler with the same CA the sidecars joined with, and the publisher
//! pushes it through the anchor and watches it spread.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use genesis_crds::NetworkAuthority;
use genesis_e2e::{wait_for, Authority, Sidecar, SidecarOptions, Subnet};
use genesis_operator::controller::crl_publisher::Publisher;
use genesis_operator::controller::{self, Context};
use genesis_operator::fake_api::FakeApi;
use genesis_operator::metrics::Metrics;
use genesis_trust::{RevocationList, RevocationReason, Serial};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

const OPS: &str = "genesis-system";
const NA: &str = "/apis/genesis-mesh.io/v1alpha1/networkauthorities/demo-ca";
const MN: &str = "/apis/genesis-mesh.io/v1alpha1/meshnetworks/demo";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "labels": {"genesis-mesh.io/network": "demo"}},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// The cluster as the operator would see it: authority `demo-ca` holding the local authority's
/// CA, network `demo` whose anchor is `anchor`, and one pod per sidecar.
fn cluster(auth: &Authority, anchor: &Sidecar, members: &[&Sidecar]) -> FakeApi {
    let api = FakeApi::default();
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
        "metadata": {"name": "demo-ca", "uid": "na-1", "generation": 1},
        "spec": {"trustDomain": "test.local", "crlValidity": "12h",
                 "certificateDefaults": {"duration": "24h"}}
    }));
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
        "metadata": {"name": "demo"}, "spec": {"authorityRef": {"name": "demo-ca"}},
        "status": {"anchors": [anchor.peer]}
    }));
    let file = |f: &str| std::fs::read(auth.dir.path().join(f)).unwrap();
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-ca-ca", "namespace": OPS},
        "data": {"tls.crt": b64(&file("ca.crt")), "tls.key": b64(&file("ca.key"))}
    }));
    for s in members {
        api.put(pod(&s.node, &s.ip, true));
    }
    api
}

struct Operator {
    api: FakeApi,
    rt: tokio::runtime::Runtime,
    ctx: Arc<Context>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
}

impl Operator {
    fn new(api: FakeApi) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ctx = rt.block_on(async {
            Arc::new(Context {
                client: api.client(),
                operator_namespace: OPS.into(),
                now: Arc::new(SystemTime::now),
                recorder: Some(controller::recorder(&api.client(), Some("test".into()))),
            })
        });
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(ctx.clone(), 7002, Some(metrics.clone()));
        Operator { api, rt, ctx, publisher, metrics }
    }

    fn authority(&self) -> Arc<NetworkAuthority> {
        Arc::new(serde_json::from_value(self.api.get(NA).unwrap()).unwrap())
    }

    /// Lists `serials` (and bumps the list past `above`), and lets the NetworkAuthority
    /// reconciler sign the CRL, as a revocation in the cluster does. Returns its number.
    fn revoke(&self, serials: &[String], above: u64) -> u64 {
        let mut list = RevocationList::default();
        let path = format!("/api/v1/namespaces/{OPS}/configmaps/demo-ca-revocations");
        if let Some(map) = self.api.get(&path) {
            list = serde_json::from_str(map["data"]["revocations.json"].as_str().unwrap()).unwrap();
        }
        for s in serials {
            list.revoke(
                &Serial::from_hex(s).unwrap(),
                RevocationReason::KeyCompromise,
                SystemTime::now(),
            );
        }
        while list.number <= above {
            list.refresh();
        }
        self.api.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "demo-ca-revocations", "namespace": OPS},
            "data": {"revocations.json": serde_json::to_string(&list).unwrap()}
        }));
        let ctx = self.ctx.clone();
        let na = self.authority();
        self.rt.block_on(controller::network_authority::reconcile(na, ctx)).unwrap();
        self.api.get(NA).unwrap()["status"]["crlNumber"].as_u64().unwrap()
    }

    /// Runs the publisher as the controller would (requeue after requeue) until the
    /// NetworkAuthority says MeshConverged, or `limit` passes; returns the condition.
    fn publish_until_converged(&self, limit: Duration) -> Value {
        let mut condition = Value::Null;
        wait_for(limit, "the publisher to report MeshConverged", || {
            let action = self.rt.block_on(self.publisher.reconcile(self.authority())).unwrap();
            condition = condition_of(&self.api.get(NA).unwrap(), "MeshConverged");
            let converged = condition["status"] == "True";
            assert_eq!(action == Action::requeue(Duration::from_secs(30)), converged);
            converged
        });
        condition
    }
}

fn condition_of(obj: &Value, type_: &str) -> Value {
    let found =
        obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == type_);
    found.cloned().unwrap_or(Value::Null)
}

#[test]
fn a_new_crl_reaches_every_member_through_the_anchor_and_the_authority_says_so() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "demo", "24h");
    let opts = SidecarOptions { min_peers: 1, max_peers: 4, ..Default::default() };
    let a =
        Sidecar::start(&auth, "a", &net.ip(1), &SidecarOptions { role: "anchor", ..opts.clone() });
    let joined = SidecarOptions { anchors: vec![a.peer.clone()], ..opts };
    let b = Sidecar::start(&auth, "b", &net.ip(2), &joined);
    let c = Sidecar::start(&auth, "c", &net.ip(3), &joined);
    wait_for(Duration::from_secs(30), "a full mesh of three", || {
        [&a, &b, &c].iter().all(|s| s.routes().len() == 2)
    });
    let held = b.admin_json("/admin/identity")["crlNumber"].as_u64().unwrap();
    let op = Operator::new(cluster(&auth, &a, &[&a, &b, &c]));

    // c is revoked: a new CRL, pushed to the anchor, spreads by gossip; c is cut off.
    let c_serial = c.admin_json("/admin/identity")["serial"].as_str().unwrap().to_owned();
    let number = op.revoke(&[c_serial], held);
    let converged = op.publish_until_converged(Duration::from_secs(30));
    assert_eq!(converged["reason"], "Converged", "{converged}");
    let message = converged["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("CRL {number} is held by all 3 ready members of demo")),
        "{message}"
    );
    for s in [&a, &b] {
        assert!(
            s.admin_json("/admin/identity")["crlNumber"].as_u64() >= Some(number),
            "{}",
            s.node
        );
    }
    assert_eq!(op.metrics.crl_pushes.with_label_values(&["anchor", "applied"]).get(), 1);
    wait_for(Duration::from_secs(10), "the revoked member to be cut off", || {
        !b.routes().contains(&"c".to_owned()) && !a.routes().contains(&"c".to_owned())
    });
    let mn = op.api.get(MN).unwrap();
    assert_eq!(mn["status"]["crlNumberSeen"], json!(number), "{mn}");
    assert_eq!(condition_of(&mn, "CRLConverged")["status"], "True");
    // The publisher's condition sits beside the authority's own (separate field managers).
    let na = op.api.get(NA).unwrap();
    assert_eq!(condition_of(&na, "Ready")["status"], "True", "{na}");
    let events = op.api.paths_under("/apis/events.k8s.io/v1/");
    let converged_event =
        events.iter().filter_map(|p| op.api.get(p)).find(|e| e["reason"] == "MeshConverged");
    let note = converged_event.expect("a MeshConverged Event")["note"].as_str().unwrap().to_owned();
    assert!(note.contains("ms after it was signed"), "{note}");
    eprintln!("CRL publisher: {note}");

    // The anchor goes down: the next CRL goes straight to the members, and the authority names
    // the member that does not answer until its pod is no longer ready.
    drop(a);
    let number = op.revoke(&[], number);
    let mut stuck = Value::Null;
    wait_for(Duration::from_secs(30), "b to get the CRL without its anchor", || {
        op.rt.block_on(op.publisher.reconcile(op.authority())).unwrap();
        stuck = condition_of(&op.api.get(NA).unwrap(), "MeshConverged");
        b.admin_json("/admin/identity")["crlNumber"].as_u64() >= Some(number)
    });
    assert_eq!(stuck["status"], "False", "{stuck}");
    assert!(stuck["message"].as_str().unwrap().contains("not answering: a.shop"), "{stuck}");
    assert!(op.metrics.crl_pushes.with_label_values(&["member", "applied"]).get() >= 1);
    op.api.put(pod("a", &net.ip(1), false));
    let converged = op.publish_until_converged(Duration::from_secs(30));
    assert!(
        converged["message"].as_str().unwrap().contains("held by all 2 ready members"),
        "{converged}"
    );
}
