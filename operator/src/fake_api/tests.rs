//! The in-memory API's models of what a real API server does: field ownership and RBAC.

use super::*;

const CERT: &str = "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/a";

fn cert() -> Value {
    json!({"apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
           "metadata": {"name": "a", "namespace": "shop"}, "spec": {"nodeName": "a"}})
}

fn patch(api: &FakeApi, manager: &str, apply: bool, body: Value) -> (u16, Value) {
    let uri: http::Uri = format!("{CERT}/status?fieldManager={manager}").parse().unwrap();
    let content_type =
        if apply { "application/apply-patch+yaml" } else { "application/merge-patch+json" };
    api.answer(&http::Method::PATCH, &uri, content_type, body.to_string().as_bytes())
}

#[test]
fn an_apply_that_leaves_a_field_out_removes_it_unless_another_manager_owns_it() {
    let api = FakeApi::default();
    api.put(cert());
    let ready = json!({"type": "Ready", "status": "True"});
    let issuing = json!({"type": "Issuing", "status": "True"});
    let full = json!({"status": {"serial": "01", "revision": 1, "conditions": [ready, issuing]}});
    assert_eq!(patch(&api, "ctl", true, full).0, 200);
    // Another manager applies the same revision: it co-owns that field.
    patch(&api, "other", true, json!({"status": {"revision": 1}}));
    // The first manager now applies only Ready: its serial and Issuing go, the co-owned
    // revision stays, and Ready is kept by type.
    patch(&api, "ctl", true, json!({"status": {"conditions": [ready]}}));
    let status = api.get(CERT).unwrap()["status"].clone();
    assert_eq!(status["serial"], Value::Null, "{status}");
    assert_eq!(status["revision"], 1, "{status}");
    assert_eq!(status["conditions"], json!([ready]));
    // A merge patch (an Update) owns what it writes: a later apply does not remove it.
    patch(&api, "svc", false, json!({"status": {"serial": "02"}}));
    patch(&api, "ctl", true, json!({"status": {"conditions": [ready]}}));
    assert_eq!(api.get(CERT).unwrap()["status"]["serial"], "02");
}

#[test]
fn rbac_refuses_as_the_api_server_does_and_an_apply_that_creates_needs_create() {
    let api = FakeApi::default();
    let rule = json!({"apiGroups": ["genesis-mesh.io"], "resources": ["certificates"],
                      "verbs": ["get", "patch"]});
    api.enforce(Rbac {
        user: "system:serviceaccount:genesis-system:genesis-operator".into(),
        cluster: vec![rule],
        namespaced: vec![],
    });
    let uri: http::Uri = format!("{CERT}?fieldManager=ctl").parse().unwrap();
    let apply = |api: &FakeApi| {
        api.answer(
            &http::Method::PATCH,
            &uri,
            "application/apply-patch+yaml",
            cert().to_string().as_bytes(),
        )
    };
    let (code, status) = apply(&api);
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "certificates.genesis-mesh.io \"a\" is forbidden: User \
         \"system:serviceaccount:genesis-system:genesis-operator\" cannot create resource \
         \"certificates\" in API group \"genesis-mesh.io\" in the namespace \"shop\""
    );
    // Once it exists, patch alone is enough.
    api.put(cert());
    assert_eq!(apply(&api).0, 200);
    // The status subresource is a resource of its own.
    let (code, status) = patch(&api, "ctl", true, json!({"status": {"serial": "01"}}));
    assert_eq!(code, 403, "{status}");
    let secrets: http::Uri = "/api/v1/secrets".parse().unwrap();
    let (code, status) = api.answer(&http::Method::GET, &secrets, "", b"");
    assert_eq!(code, 403);
    assert!(status["message"].as_str().unwrap().ends_with("at the cluster scope"), "{status}");
}
