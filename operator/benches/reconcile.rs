//! Reconcile throughput against the in-memory Kubernetes API (docs/BENCHMARKS.md):
//! issuing 1,000 and 10,000 `delivery: secret` Certificates, one reconcile each as the
//! controller runs them, beside the baseline of bare issuance (key generation and signing
//! only) measured in the same run; and the time from `spec.revoked: true` to a published CRL,
//! with an empty revocation list and with 10,000 entries on it.
//!
//! `cargo bench -p genesis-operator --features fake-api --bench reconcile`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use genesis_crds::{Certificate, NetworkAuthority};
use genesis_operator::controller::{self, Context};
use genesis_operator::fake_api::FakeApi;
use genesis_trust::{Identity, LeafPolicy, RevocationList, RevocationReason, Role, Serial};
use serde_json::json;

const OPS: &str = "genesis-system";
const NA: &str = "/apis/genesis-mesh.io/v1alpha1/networkauthorities/prod-ca";

fn world(certificates: usize) -> FakeApi {
    let api = FakeApi::default();
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
        "metadata": {"name": "prod-ca", "uid": "na-1", "generation": 1},
        "spec": {"trustDomain": "prod.example", "crlValidity": "12h",
                 "certificateDefaults": {"duration": "24h"}}
    }));
    api.put(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
        "metadata": {"name": "payments"}, "spec": {"authorityRef": {"name": "prod-ca"}}
    }));
    for i in 0..certificates {
        api.put(json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": format!("svc-{i}"), "namespace": "shop", "uid": format!("c-{i}"),
                         "generation": 1},
            "spec": {"networkRef": {"name": "payments"}, "nodeName": format!("svc-{i}"),
                     "delivery": "secret", "secretName": format!("svc-{i}-tls")}
        }));
    }
    api
}

fn cert_path(i: usize) -> String {
    format!("/apis/genesis-mesh.io/v1alpha1/namespaces/shop/certificates/svc-{i}")
}

async fn authority(api: &FakeApi, ctx: &Arc<Context>) {
    let na: NetworkAuthority = serde_json::from_value(api.get(NA).unwrap()).unwrap();
    controller::network_authority::reconcile(Arc::new(na), ctx.clone()).await.unwrap();
}

async fn certificate(api: &FakeApi, ctx: &Arc<Context>, i: usize) {
    let cert: Certificate = serde_json::from_value(api.get(&cert_path(i)).unwrap()).unwrap();
    controller::certificate::reconcile(Arc::new(cert), ctx.clone()).await.unwrap();
}

/// Bare issuance: what the reconciles cannot avoid.
fn baseline(n: usize) -> Duration {
    let ca = genesis_trust::CertificateAuthority::generate(
        "prod.example",
        genesis_trust::KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86_400 * 365),
        SystemTime::now(),
    )
    .unwrap();
    let policy = LeafPolicy { duration: Duration::from_secs(86_400), renew_before: None };
    let started = Instant::now();
    for i in 0..n {
        let id =
            Identity::new("prod.example", "payments", Role::Client, &format!("svc-{i}")).unwrap();
        ca.issue_with_generated_key(
            &id,
            genesis_trust::KeyAlgorithm::EcdsaP256,
            &policy,
            SystemTime::now(),
        )
        .unwrap();
    }
    started.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("| Certificates | reconcile (issue into Secret + status) | per second | bare issuance | per second | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1_000, 10_000] {
        let api = world(n);
        let (took, ok) = rt.block_on(async {
            let ctx = api.context(OPS);
            authority(&api, &ctx).await;
            let started = Instant::now();
            for i in 0..n {
                certificate(&api, &ctx, i).await;
            }
            let took = started.elapsed();
            let ok = (0..n).all(|i| {
                api.get(&format!("/api/v1/namespaces/shop/secrets/svc-{i}-tls")).is_some()
                    && api.get(&cert_path(i)).unwrap()["status"]["serial"].is_string()
            });
            (took, ok)
        });
        assert!(ok, "every Certificate has its Secret and serial");
        let base = baseline(n);
        println!(
            "| {n} | {:.2} s | {:.0} | {:.2} s | {:.0} | {:.2} |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            base.as_secs_f64(),
            n as f64 / base.as_secs_f64(),
            took.as_secs_f64() / base.as_secs_f64()
        );
    }

    println!();
    println!("| revocation list before | spec.revoked → serial listed (Certificate reconcile) | → CRL signed and published (NetworkAuthority reconcile) | total |");
    println!("|---:|---:|---:|---:|");
    for listed in [0usize, 10_000] {
        let api = world(1);
        rt.block_on(async {
            let ctx = api.context(OPS);
            authority(&api, &ctx).await;
            certificate(&api, &ctx, 0).await;
            if listed > 0 {
                let mut list = RevocationList::default();
                for i in 0..listed {
                    let serial =
                        Serial::from_hex(&format!("{:016x}", 0x7000_0000_0000_0000u64 + i as u64))
                            .unwrap();
                    list.revoke(&serial, RevocationReason::Superseded, SystemTime::now());
                }
                controller::apply_configmap(
                    &ctx,
                    &controller::revocations_name("prod-ca"),
                    "revocations.json",
                    &serde_json::to_string(&list).unwrap(),
                )
                .await
                .unwrap();
                authority(&api, &ctx).await;
            }
            let before = api.get(NA).unwrap()["status"]["crlNumber"].as_u64().unwrap();
            api.update(&cert_path(0), json!({"spec": {"revoked": true}}));
            let started = Instant::now();
            certificate(&api, &ctx, 0).await;
            let listed_at = started.elapsed();
            authority(&api, &ctx).await;
            let total = started.elapsed();
            let status = api.get(NA).unwrap()["status"].clone();
            assert_eq!(status["crlNumber"].as_u64().unwrap(), before + 1);
            assert_eq!(status["revokedCount"].as_u64().unwrap(), listed as u64 + 1);
            println!(
                "| {listed} | {:.2} ms | {:.2} ms | {:.2} ms |",
                listed_at.as_secs_f64() * 1e3,
                (total - listed_at).as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3
            );
        });
    }
}
