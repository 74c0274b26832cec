//! The cluster identity service end to end: the real sidecar client (`genesis_sidecar::identity`)
//! joins and renews over rustls against the service, which reviews tokens and records
//! issuances through a real `kube::Client` on the in-memory API. Real time throughout (TLS
//! checks validity against the system clock).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_sidecar::config::{Config, Settings};
use genesis_sidecar::identity::{join, renew, Credentials};
use genesis_trust::{CertInfo, PeerRole, TrustPolicy};
use serde_json::{json, Value};

use super::*;
use crate::controller::testing::{self, ca_secret};
use crate::fake_api::FakeApi;
use crate::identity_service::{serve, IdentityService};
use crate::metrics::Metrics;
use crate::token_review::TokenReviews;

const OPS: &str = "genesis-system";
const MEMBER: &str = "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/api-0";

fn bound(ns: &str, pod: &str, uid: &str) -> Value {
    json!({
        "authenticated": true, "audiences": [crate::webhook::TOKEN_AUDIENCE],
        "user": {"username": format!("system:serviceaccount:{ns}:default"),
                 "extra": {"authentication.kubernetes.io/pod-name": [pod],
                           "authentication.kubernetes.io/pod-uid": [uid]}}
    })
}

/// Authority `prod-ca` (its CA, bundle and first CRL, by the NetworkAuthority reconciler),
/// networks `payments` and `ledger`, and member `shop/api-0` (anchor) of `payments`.
fn cluster() -> FakeApi {
    let api = FakeApi::default();
    api.put(testing::authority());
    api.put(testing::network("payments"));
    api.put(testing::network("ledger"));
    let ca = CertificateAuthority::generate(
        "prod.example",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(365 * 86400),
        SystemTime::now() - Duration::from_secs(3600),
    )
    .unwrap();
    api.put(ca_secret(&ca));
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "api-0", "namespace": "shop", "generation": 1, "resourceVersion": "1",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "api-0", "uid": "p-1"}]},
        "spec": {"networkRef": {"name": "payments"}, "nodeName": "api-0.shop",
                 "role": "anchor", "delivery": "csr"}
    }));
    let tokens =
        [("t-api", bound("shop", "api-0", "p-1")), ("t-blog", bound("blog", "blog-0", "p-9"))];
    api.token_reviews.lock().unwrap().extend(tokens.map(|(t, v)| (t.to_owned(), v)));
    api.enforce(crate::fake_api::chart_rbac(testing::OPS));
    api
}

fn sidecar(
    service: &str,
    bundle: &std::path::Path,
    node: &str,
    network: &str,
    token: &str,
) -> Config {
    Config::resolve(Settings {
        node: Some(node.into()),
        role: Some("anchor".into()),
        network: Some(network.into()),
        trust_domain: Some("prod.example".into()),
        identity_service: Some(service.into()),
        trust_bundle: Some(bundle.to_owned()),
        join_token: Some(token.into()),
        ..Settings::default()
    })
    .unwrap()
}

/// A renewal as the sidecar does it: authenticated by `held`, verifying with its bundle + CRL.
async fn renew_with(
    config: &Config,
    held: &Credentials,
) -> Result<Credentials, genesis_sidecar::error::Error> {
    let store = Arc::new(TrustStore::new(
        TrustPolicy {
            trust_domain: "prod.example".into(),
            network: Some(config.network.clone()),
            require_fresh_crl: true,
        },
        held.bundle.clone(),
    ));
    store.install_crl(&held.crl, SystemTime::now()).unwrap();
    renew(config, held.chain.clone(), &held.key, store).await
}

fn serial(creds: &Credentials) -> String {
    CertInfo::parse(&creds.chain[0]).unwrap().serial.to_string()
}

#[test]
fn members_join_and_renew_and_every_serial_is_recorded_before_they_get_it() {
    let api = cluster();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = api.context(OPS);
        let na: NetworkAuthority = Api::all(ctx.client.clone()).get("prod-ca").await.unwrap();
        crate::controller::network_authority::reconcile(Arc::new(na), ctx.clone()).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let service = Arc::new(IdentityService::new(
            Arc::new(ClusterIssuer::new(ctx.clone())),
            Arc::new(TokenReviews { client: ctx.client.clone() }),
            metrics.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, service, std::future::pending()));
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.crt");
        let bundle_map =
            api.get(&format!("/api/v1/namespaces/{OPS}/configmaps/prod-ca-bundle")).unwrap();
        std::fs::write(&bundle, bundle_map["data"]["ca.crt"].as_str().unwrap()).unwrap();

        // A first join: the token's pod is the member; status records the serial.
        let config = sidecar(&addr, &bundle, "api-0.shop", "payments", "t-api");
        let joined = join(&config).await.unwrap();
        assert_eq!(
            joined.identity.to_string(),
            "spiffe://prod.example/mesh/payments/anchor/api-0.shop"
        );
        let store = TrustStore::new(
            TrustPolicy {
                trust_domain: "prod.example".into(),
                network: Some("payments".into()),
                require_fresh_crl: true,
            },
            joined.bundle.clone(),
        );
        store.install_crl(&joined.crl, SystemTime::now()).unwrap();
        store.verify(&joined.chain, SystemTime::now(), PeerRole::Client).unwrap();
        let status = api.get(MEMBER).unwrap()["status"].clone();
        assert_eq!(status["serial"], json!(serial(&joined)), "{status}");
        assert_eq!(status["issuedSerials"], json!([serial(&joined)]));
        assert_eq!(status["revision"], json!(1));
        let root = CertInfo::parse(&joined.bundle.roots()[0]).unwrap().fingerprint;
        assert_eq!(status["issuerFingerprint"], json!(root), "a CA rotation counts on it");
        assert!(status["renewalTime"].is_string(), "{status}");
        let ready = &status["conditions"][0];
        assert_eq!(
            (&ready["type"], &ready["status"], &ready["reason"]),
            (&json!("Ready"), &json!("True"), &json!("Issued"))
        );

        // A renewal over mutual TLS.
        let renewed = renew_with(&config, &joined).await.unwrap();
        assert_ne!(serial(&renewed), serial(&joined));
        // Another writer (a second replica) changes the Certificate twice between our read and
        // our write: the write is retried on the new version and nothing is lost.
        use std::sync::atomic::Ordering::SeqCst;
        api.races.store(2, SeqCst);
        let a = renew_with(&config, &renewed).await.unwrap();
        assert_eq!(
            api.races.load(SeqCst),
            0,
            "the status write must be guarded by resourceVersion"
        );
        let b = renew_with(&config, &a).await.unwrap();
        let status = api.get(MEMBER).unwrap()["status"].clone();
        let listed: Vec<String> = serde_json::from_value(status["issuedSerials"].clone()).unwrap();
        for creds in [&joined, &renewed, &a, &b] {
            assert!(listed.contains(&serial(creds)), "{} missing from {listed:?}", serial(creds));
        }
        assert_eq!(status["revision"], json!(4));
        assert_eq!(status["conditions"][0]["reason"], json!("Renewed"));
        // A write that keeps losing: the member gets no certificate (none unrecorded exists).
        api.races.store(RECORD_ATTEMPTS, SeqCst);
        let e = renew_with(&config, &b).await.unwrap_err().to_string();
        assert!(e.contains("it kept changing; retry"), "{e}");
        assert_eq!(api.get(MEMBER).unwrap()["status"]["revision"], json!(4));

        // Refusals, each with its reason.
        let e =
            join(&sidecar(&addr, &bundle, "blog-0.blog", "payments", "t-blog")).await.unwrap_err();
        // A refusal, which the sidecar does not retry; an unreachable service it would.
        assert!(matches!(e, genesis_sidecar::error::Error::IdentityRefused { .. }), "{e:?}");
        assert!(!e.is_transient());
        let e = e.to_string();
        assert!(e.contains("pod blog/blog-0 is not a member of any network"), "{e}");
        let e = join(&sidecar(&addr, &bundle, "api-0.shop", "ledger", "t-api"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("member of network payments, but this connection named network ledger"),
            "{e}"
        );
        let e = join(&sidecar(&addr, &bundle, "api-0.shop", "nowhere", "t-api"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS with the identity service"), "{e}");
        assert_eq!(metrics.refused.with_label_values(&["unknown_network"]).get(), 1);
        api.update(MEMBER, json!({"spec": {"revoked": true}}));
        let e = renew_with(&config, &b).await.unwrap_err().to_string();
        assert!(e.contains("Certificate shop/api-0 is revoked"), "{e}");
        let e = join(&config).await.unwrap_err().to_string();
        assert!(e.contains("revoked"), "{e}");
        assert_eq!(
            api.get(MEMBER).unwrap()["status"]["revision"],
            json!(4),
            "a refusal records nothing"
        );
        assert_eq!(metrics.issued.with_label_values(&["join"]).get(), 1);
        assert_eq!(metrics.issued.with_label_values(&["renewal"]).get(), 3);
    });
}
