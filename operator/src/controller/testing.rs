//! What the controller tests share: the in-memory API seeded with one authority, one network
//! and one `delivery: secret` Certificate, a clock the tests move, and a runtime to reconcile in.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::Context;
use crate::fake_api::FakeApi;

pub const OPS: &str = "genesis-system";
pub const NA: &str = "/apis/genesis-mesh.io/v1alpha1/networkauthorities/prod-ca";
pub const CERT: &str = "/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/billing";
pub const CA: &str = "/api/v1/namespaces/genesis-system/secrets/prod-ca-ca";

/// The tests' time zero.
pub fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub struct Harness {
    pub api: FakeApi,
    clock: Arc<Mutex<SystemTime>>,
    rt: tokio::runtime::Runtime,
}

impl Harness {
    /// NetworkAuthority `prod-ca` (prod.example, 24 h certificates, 12 h CRLs), MeshNetwork
    /// `payments`, and Certificate `shop/billing` into Secret `billing-tls`.
    pub fn new() -> Self {
        let api = FakeApi::default();
        api.put(authority());
        api.put(network("payments"));
        api.put(json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "billing", "namespace": "shop", "uid": "c-1", "generation": 1},
            "spec": {"networkRef": {"name": "payments"}, "nodeName": "billing",
                     "delivery": "secret", "secretName": "billing-tls"}
        }));
        // The controllers run as the chart's ServiceAccount, with exactly its RBAC.
        api.enforce(crate::fake_api::chart_rbac(OPS));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Harness { api, clock: Arc::new(Mutex::new(start())), rt }
    }

    /// Moves the clock.
    pub fn at(&self, t: SystemTime) {
        *self.clock.lock().unwrap() = t;
    }

    /// Runs `f` with a fresh context (a client of the in-memory API, our clock).
    pub fn run<F: Future>(&self, f: impl FnOnce(Arc<Context>) -> F) -> F::Output {
        let clock = self.clock.clone();
        self.rt.block_on(async {
            let ctx = Arc::new(Context {
                client: self.api.client(),
                operator_namespace: OPS.into(),
                now: Arc::new(move || *clock.lock().unwrap()),
                recorder: Some(super::recorder(&self.api.client(), Some("test".into()))),
            });
            f(ctx).await
        })
    }
}

/// NetworkAuthority `prod-ca`: prod.example, 24 h certificates, 12 h CRLs.
pub fn authority() -> serde_json::Value {
    json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
        "metadata": {"name": "prod-ca", "uid": "na-1", "generation": 1},
        "spec": {"trustDomain": "prod.example", "crlValidity": "12h",
                 "certificateDefaults": {"duration": "24h"}}
    })
}

/// MeshNetwork `name` of authority `prod-ca`.
pub fn network(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
        "metadata": {"name": name}, "spec": {"authorityRef": {"name": "prod-ca"}}
    })
}

/// Base64, as Secret data holds it.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The CA Secret of authority `prod-ca` holding `ca`.
pub fn ca_secret(ca: &genesis_trust::CertificateAuthority) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "prod-ca-ca", "namespace": OPS},
        "data": {"tls.crt": b64(&ca.cert_pem()), "tls.key": b64(&ca.key_pem())}
    })
}

impl Harness {
    /// A CA for `prod-ca` (created an hour before time zero, valid ten years), stored as its
    /// CA Secret.
    pub fn seed_ca(&self) -> genesis_trust::CertificateAuthority {
        let ca = genesis_trust::CertificateAuthority::generate(
            "prod.example",
            genesis_trust::KeyAlgorithm::EcdsaP256,
            Duration::from_secs(10 * 365 * 86400),
            start() - Duration::from_secs(3600),
        )
        .unwrap();
        self.api.put(ca_secret(&ca));
        ca
    }

    /// The status of the object at `path`.
    pub fn status(&self, path: &str) -> serde_json::Value {
        self.api.get(path).unwrap()["status"].clone()
    }

    /// Condition `type_` of the object at `path`; panics, showing the status, when absent.
    pub fn condition(&self, path: &str, type_: &str) -> serde_json::Value {
        let status = self.status(path);
        let found =
            status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == type_);
        found.cloned().unwrap_or_else(|| panic!("no {type_} condition in {status}"))
    }

    /// The Events recorded so far: (object name, type, reason, note).
    pub fn events(&self) -> Vec<(String, String, String, String)> {
        self.api
            .paths_under("/apis/events.k8s.io/v1/")
            .into_iter()
            .filter_map(|p| self.api.get(&p))
            .map(|e| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (s(&e["regarding"]["name"]), s(&e["type"]), s(&e["reason"]), s(&e["note"]))
            })
            .collect()
    }
}
