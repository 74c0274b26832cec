//! Cluster mode against the in-memory Kubernetes API (`genesis_operator::fake_api`): the real
//! `kube::Client` under test cannot tell it from an API server.

use genesis_operator::fake_api::FakeApi;
use serde_json::json;

use super::*;

fn rfc3339_in(secs: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

const NS: &str = "genesis-system";

/// A healthy installation: CRDs, a ready operator and webhook, one authority, one network of
/// two ready members holding the newest CRL.
fn healthy() -> FakeApi {
    let api = FakeApi::default();
    for (_, crd) in genesis_crds::all() {
        let mut v = serde_json::to_value(&crd).unwrap();
        v["apiVersion"] = json!("apiextensions.k8s.io/v1");
        v["kind"] = json!("CustomResourceDefinition");
        api.put(v);
    }
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": NS},
        "spec": {"selector": {}, "template": {}},
        "status": {"readyReplicas": 2, "replicas": 2}
    }));
    api.put(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [{"name": "sidecar.genesis-mesh.io", "admissionReviewVersions": ["v1"],
                      "sideEffects": "None",
                      "clientConfig": {"caBundle": "LS0tLS1CRUdJTg==",
                                       "service": {"name": WEBHOOK_SERVICE, "namespace": NS}}}]
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": WEBHOOK_SERVICE, "namespace": NS},
        "subsets": [{"addresses": [{"ip": "10.0.0.7"}]}]
    }));
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
        "metadata": {"name": "prod-ca"},
        "spec": {"trustDomain": "prod.example"},
        "status": {"crlNumber": 3, "caNotAfter": rfc3339_in(365 * 86400)}
    }));
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
        "metadata": {"name": "payments"},
        "spec": {"authorityRef": {"name": "prod-ca"}},
        "status": {"members": 2, "readyMembers": 2, "anchors": ["api-0"], "crlNumberSeen": 3,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "MembersReady",
                                   "message": "", "lastTransitionTime": rfc3339_in(-60)}]}
    }));
    for node in ["api-0", "worker-0"] {
        api.put(json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": node, "namespace": "shop"},
            "spec": {"networkRef": {"name": "payments"}, "nodeName": node},
            "status": {"notAfter": rfc3339_in(20 * 3600)}
        }));
    }
    api
}

fn min() -> Thresholds {
    Thresholds { cert: 3600.0, ca: 30.0 * 86400.0, crl: 600.0 }
}

fn checks(api: &FakeApi) -> Vec<Check> {
    let state = block_on(async { fetch(&api.client(), NS).await }).unwrap().unwrap();
    evaluate(&state, NS, min())
}

fn failed(checks: &[Check]) -> Vec<(&'static str, String)> {
    checks.iter().filter(|c| !c.ok).map(|c| (c.name, c.detail.clone())).collect()
}

#[test]
fn a_healthy_installation_passes_every_check() {
    let checks = checks(&healthy());
    assert_eq!(checks.len(), 7);
    assert!(failed(&checks).is_empty(), "{checks:#?}");
}

#[test]
fn missing_crds_and_operator_fail_with_the_install_command() {
    let api = FakeApi::default();
    let checks = checks(&api);
    let crds = &checks[0];
    assert!(!crds.ok && crds.detail.contains("certificates.genesis-mesh.io"), "{crds:?}");
    assert!(crds.hint.as_deref().unwrap().contains("kubectl apply -f crds/"));
    assert!(!checks[1].ok && checks[1].hint.as_deref().unwrap().contains("helm install"));
    assert!(!checks[2].ok, "no webhook configuration");
}

#[test]
fn an_outdated_crd_schema_is_named() {
    let api = healthy();
    api.update(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/meshnetworks.genesis-mesh.io",
        json!({"spec": {"versions": [{"name": "v1alpha1", "served": true, "storage": true,
                                       "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
    );
    let failed = failed(&checks(&api));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("not this version's schema: meshnetworks.genesis-mesh.io"));
}

#[test]
fn a_near_expiry_certificate_and_a_stale_crl_fail_and_name_what() {
    let api = healthy();
    api.update(
        "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/worker-0",
        json!({"status": {"notAfter": rfc3339_in(600)}}),
    );
    api.update(
        "/apis/genesis-mesh.io/v1alpha1/meshnetworks/payments",
        json!({"status": {"crlNumberSeen": 2, "readyMembers": 1}}),
    );
    let failed = failed(&checks(&api));
    let names: Vec<&str> = failed.iter().map(|f| f.0).collect();
    assert_eq!(names, ["certificates far from expiry", "CRL fresh", "members converged"]);
    assert!(
        failed[0].1.contains("shop/worker-0 in 10m0s")
            || failed[0].1.contains("shop/worker-0 in 9m")
    );
    assert_eq!(failed[1].1, "payments sees CRL 2 of 3");
    assert_eq!(failed[2].1, "payments: 1/2 ready");
}

#[test]
fn an_operator_without_ready_replicas_or_a_webhook_without_endpoints_fails() {
    let api = healthy();
    api.update(
        "/apis/apps/v1/namespaces/genesis-system/deployments/genesis-operator",
        json!({"status": {"readyReplicas": 0}}),
    );
    api.update(
        "/api/v1/namespaces/genesis-system/endpoints/genesis-operator-webhook",
        json!({"subsets": []}),
    );
    let names: Vec<&str> = failed(&checks(&api)).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["operator ready", "webhook reachable"]);
}

#[test]
fn status_lists_networks_revoked_and_expiring_certificates() {
    let api = healthy();
    api.update(
        "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/worker-0",
        json!({"spec": {"revoked": true}}),
    );
    api.update(
        "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/api-0",
        json!({"status": {"notAfter": rfc3339_in(1800)}}),
    );
    let state = block_on(async { fetch(&api.client(), NS).await }).unwrap().unwrap();
    let (value, text) = status_report(&state, 3600.0);
    assert_eq!(value["networks"][0]["converged"], true);
    assert_eq!(value["networks"][0]["readyMembers"], 2);
    assert_eq!(value["revoked"], json!(["shop/worker-0"]));
    assert_eq!(value["expiringSoon"][0]["certificate"], "shop/api-0");
    assert!(
        text.contains("payments") && text.contains("prod-ca") && text.contains("2/2"),
        "{text}"
    );
}

#[test]
fn revoke_patches_the_certificate_and_waits_for_the_next_crl() {
    let api = healthy();
    // The operator's part, played by a task: publish CRL 4 a little later.
    let operator = api.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        operator.update(
            "/apis/genesis-mesh.io/v1alpha1/networkauthorities/prod-ca",
            json!({"status": {"crlNumber": 4}}),
        );
    });
    let (r, again, unknown) = block_on(async {
        let client = api.client();
        let r = revoke(&client, "worker-0", None, Duration::from_secs(5)).await;
        let again = revoke(&client, "worker-0", None, Duration::from_secs(1)).await;
        let unknown = revoke(&client, "nobody", None, Duration::from_secs(1)).await;
        (r, again, unknown)
    })
    .unwrap();
    let r = r.unwrap();
    assert_eq!(r.certificate, "shop/worker-0");
    assert_eq!((r.crl_before, r.crl_after), (Some(3), Some(4)));
    let patches = api.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].0,
        "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/worker-0"
    );
    assert_eq!(patches[0].1["spec"]["revoked"], true);

    assert!(again.unwrap_err().contains("already revoked"));
    assert!(unknown.unwrap_err().contains("no Certificate for node nobody"));
}
