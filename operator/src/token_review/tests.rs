//! The TokenReview authenticator: the pure checks, and a first join through the in-memory
//! API (which answers TokenReviews from a table, as the API server would from its keys).

use serde_json::{json, Value};

use super::*;
use crate::fake_api::FakeApi;

fn status(v: Value) -> TokenReviewStatus {
    serde_json::from_value(v).unwrap()
}

fn bound(ns: &str, pod: &str, uid: &str) -> Value {
    json!({
        "authenticated": true, "audiences": [TOKEN_AUDIENCE],
        "user": {"username": format!("system:serviceaccount:{ns}:default"),
                 "extra": {"authentication.kubernetes.io/pod-name": [pod],
                           "authentication.kubernetes.io/pod-uid": [uid]}}
    })
}

fn member(ns: &str, pod: &str, uid: &str, revoked: bool) -> Value {
    json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
        "metadata": {"name": pod, "namespace": ns,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}]},
        "spec": {"networkRef": {"name": "payments"}, "nodeName": format!("{pod}.{ns}"),
                 "role": "anchor", "delivery": "csr", "revoked": revoked}
    })
}

#[test]
fn a_token_must_be_genuine_for_our_audience_and_bound_to_a_pod() {
    let pod = bound_pod(&status(bound("shop", "api-0", "p-1"))).unwrap();
    assert_eq!(pod, BoundPod { namespace: "shop".into(), name: "api-0".into(), uid: "p-1".into() });
    let refused = |v: Value| bound_pod(&status(v)).unwrap_err();
    let e = refused(json!({"authenticated": false, "error": "token expired"}));
    assert!(e.contains("refused by the API server: token expired"), "{e}");
    let mut other_audience = bound("shop", "api-0", "p-1");
    other_audience["audiences"] = json!(["https://kubernetes.default.svc"]);
    assert!(refused(other_audience).contains("not for audience genesis-mesh.io"));
    let mut person = bound("shop", "api-0", "p-1");
    person["user"]["username"] = json!("alice@example.com");
    assert!(refused(person).contains("not a ServiceAccount"));
    let mut unbound = bound("shop", "api-0", "p-1");
    unbound["user"]["extra"] = json!({});
    assert!(refused(unbound).contains("not bound to a pod"));
}

#[test]
fn a_pod_gets_exactly_its_member_identity_or_a_reason() {
    let pod = BoundPod { namespace: "shop".into(), name: "api-0".into(), uid: "p-1".into() };
    let cert = |v: Value| serde_json::from_value::<Certificate>(v).unwrap();
    let id = entitled(
        &pod,
        "api-0.shop",
        Some(&cert(member("shop", "api-0", "p-1", false))),
        "prod.example",
    )
    .unwrap();
    assert_eq!(id.to_string(), "spiffe://prod.example/mesh/payments/anchor/api-0.shop");
    let e = entitled(&pod, "api-0.shop", None, "prod.example").unwrap_err();
    assert!(e.contains("pod shop/api-0 is not a member of any network"), "{e}");
    let e = entitled(
        &pod,
        "api-0.shop",
        Some(&cert(member("shop", "api-0", "p-0", false))),
        "prod.example",
    )
    .unwrap_err();
    assert!(e.contains("belongs to another pod"), "{e}");
    let e = entitled(
        &pod,
        "api-0.shop",
        Some(&cert(member("shop", "api-0", "p-1", true))),
        "prod.example",
    )
    .unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    let e = entitled(
        &pod,
        "db-0.shop",
        Some(&cert(member("shop", "api-0", "p-1", false))),
        "prod.example",
    )
    .unwrap_err();
    assert!(e.contains("may join as node \"api-0.shop\" only"), "{e}");
}

#[test]
fn a_first_join_through_the_api_server() {
    let api = FakeApi::default();
    api.put(json!({"apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
                   "metadata": {"name": "prod-ca"}, "spec": {"trustDomain": "prod.example"}}));
    api.put(json!({"apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
                   "metadata": {"name": "payments"}, "spec": {"authorityRef": {"name": "prod-ca"}}}));
    api.put(member("shop", "api-0", "p-1", false));
    api.token_reviews.lock().unwrap().insert("t-api".into(), bound("shop", "api-0", "p-1"));
    api.token_reviews.lock().unwrap().insert("t-blog".into(), bound("blog", "blog-0", "p-9"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let auth = TokenReviews { client: api.client() };
        let request = |node: &str, token: Option<&str>| CertificateRequest {
            node: node.into(),
            token: token.map(Into::into),
            csr: String::new(),
        };
        let id = auth.authenticate(&request("api-0.shop", Some("t-api")), None).await.unwrap();
        assert_eq!(id.to_string(), "spiffe://prod.example/mesh/payments/anchor/api-0.shop");
        let refused = |r: Result<Identity, Error>| match r {
            Err(Error::Unauthenticated(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let m = refused(auth.authenticate(&request("blog-0.blog", Some("t-blog")), None).await);
        assert!(m.contains("pod blog/blog-0 is not a member"), "{m}");
        let m = refused(auth.authenticate(&request("api-0.shop", Some("stolen")), None).await);
        assert!(m.contains("invalid bearer token"), "{m}");
        let m = refused(auth.authenticate(&request("api-0.shop", None), None).await);
        assert!(m.contains("projected token"), "{m}");
    });
}
