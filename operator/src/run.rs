//! `genesis-operator run`: the controllers in a cluster. It checks that the CRDs are installed
//! (a clear message and exit status 1 when not), serves `/healthz`, `/readyz` and `/metrics`,
//! runs the Certificate and NetworkAuthority controllers until SIGTERM, and counts every
//! reconcile.
//!
//! Every replica serves the webhook and the identity service; only the holder of the leader
//! Lease runs the controllers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::controller::{self, Context, Error};
use crate::metrics::Metrics;

/// Checks that every Genesis Mesh CRD is installed; the error names the missing ones and the
/// command that installs them.
pub async fn crds_installed(client: &kube::Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for (_, crd) in genesis_crds::all() {
        let name = crd.metadata.name.unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(e) => {
                return Err(format!(
                    "cannot read CRD {name} ({e}); is the API server reachable, and may this \
                     service account get customresourcedefinitions?"
                ))
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the Genesis Mesh CRDs are not installed (missing {}): kubectl apply -f crds/, or \
             install the Helm chart, which carries them",
            missing.join(", ")
        ))
    }
}

/// Counts a reconcile's outcome and time.
fn observe(metrics: &Metrics, controller: &str, started: Instant, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics.reconciles.with_label_values(&[controller, result]).inc();
    metrics
        .reconcile_seconds
        .with_label_values(&[controller])
        .observe(started.elapsed().as_secs_f64());
}

/// A failed reconcile (API error) is retried after 15 s; issuance failures never get here (the
/// reconciler records them in status and backs off itself).
fn error_policy<K, C>(_: Arc<K>, error: &Error, _: Arc<C>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(std::time::Duration::from_secs(15))
}

/// The controllers' shared state.
pub struct Shared {
    pub ctx: Arc<Context>,
    pub metrics: Arc<Metrics>,
}

async fn certificate(cert: Arc<Certificate>, shared: Arc<Shared>) -> Result<Action, Error> {
    // NB: the status this reconcile writes comes back through the watch as the next
    // reconcile, which observes it.
    shared.metrics.observe_certificate(&cert);
    let started = Instant::now();
    let result = controller::certificate::reconcile(cert, shared.ctx.clone()).await;
    observe(&shared.metrics, "certificate", started, result.is_ok());
    result
}

async fn network(mn: Arc<MeshNetwork>, shared: Arc<Shared>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = controller::mesh_network::reconcile(mn, shared.ctx.clone()).await;
    observe(&shared.metrics, "meshnetwork", started, result.is_ok());
    result
}

async fn authority(na: Arc<NetworkAuthority>, shared: Arc<Shared>) -> Result<Action, Error> {
    shared.metrics.observe_authority(&na);
    let started = Instant::now();
    let result = controller::network_authority::reconcile(na, shared.ctx.clone()).await;
    observe(&shared.metrics, "networkauthority", started, result.is_ok());
    result
}

async fn publish_crls(
    na: Arc<NetworkAuthority>,
    shared: Arc<(Arc<Shared>, controller::crl_publisher::Publisher)>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = shared.1.reconcile(na).await;
    observe(&shared.0.metrics, "crlpublisher", started, result.is_ok());
    result
}

/// Runs the controllers until SIGTERM/SIGINT.
pub async fn controllers(
    client: kube::Client,
    operator_namespace: String,
    metrics: Arc<Metrics>,
    watch_secrets: bool,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        operator_namespace: operator_namespace.clone(),
        now: Arc::new(SystemTime::now),
        recorder: Some(controller::recorder(&client, std::env::var("POD_NAME").ok())),
    });
    let shared = Arc::new(Shared { ctx, metrics });
    let wc = watcher::Config::default();
    let mut certificates = Controller::new(Api::<Certificate>::all(client.clone()), wc.clone());
    if watch_secrets {
        // A deleted delivered Secret is re-issued at once (needs list/watch on Secrets).
        certificates = certificates.owns(Api::<Secret>::all(client.clone()), wc.clone());
    }
    let certificates = certificates
        .shutdown_on_signal()
        .run(certificate, error_policy, shared.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "certificate controller");
            }
        });
    // A change of an authority's revocation list (written by the Certificate controller)
    // triggers its reconcile, which signs the new CRL at once.
    let authorities = Controller::new(Api::<NetworkAuthority>::all(client.clone()), wc.clone())
        .watches(
            Api::<ConfigMap>::namespaced(client.clone(), &operator_namespace),
            wc.clone(),
            |cm| {
                let name = cm.metadata.name.unwrap_or_default();
                name.strip_suffix("-revocations").map(ObjectRef::<NetworkAuthority>::new)
            },
        )
        .shutdown_on_signal()
        .run(authority, error_policy, shared.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "network authority controller");
            }
        });
    // A member pod's change (created, ready, gone) triggers its network's reconcile; pods
    // selected only by memberSelector are picked up at the periodic resync.
    let pods = watcher::Config::default().labels(crate::decide::network::NETWORK_LABEL);
    let networks =
        Controller::new(Api::<MeshNetwork>::all(client.clone()), watcher::Config::default())
            .watches(Api::<Pod>::all(client.clone()), pods, |pod| {
                let labels = pod.metadata.labels.unwrap_or_default();
                labels.get(crate::decide::network::NETWORK_LABEL).map(|n| ObjectRef::new(n))
            })
            .shutdown_on_signal()
            .run(network, error_policy, shared.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "mesh network controller");
                }
            });
    // The CRL publisher: a new CRL (its ConfigMap) or a network's change (members, anchors)
    // triggers the authority's pass; while a CRL spreads it requeues itself.
    let publisher = controller::crl_publisher::Publisher::new(
        shared.ctx.clone(),
        controller::crl_publisher::ADMIN_PORT,
        Some(shared.metrics.clone()),
    );
    let publishing = Arc::new((shared.clone(), publisher));
    let crls = Controller::new(Api::<NetworkAuthority>::all(client.clone()), wc.clone())
        .watches(
            Api::<ConfigMap>::namespaced(client.clone(), &operator_namespace),
            wc.clone(),
            |cm| {
                let name = cm.metadata.name.unwrap_or_default();
                name.strip_suffix("-crl").map(ObjectRef::<NetworkAuthority>::new)
            },
        )
        .watches(Api::<MeshNetwork>::all(client.clone()), wc.clone(), |mn| {
            Some(ObjectRef::<NetworkAuthority>::new(&mn.spec.authority_ref.name))
        })
        .shutdown_on_signal()
        .run(publish_crls, error_policy, publishing)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "CRL publisher");
            }
        });
    tracing::info!(namespace = %operator_namespace, "controllers running");
    futures::join!(certificates, authorities, networks, crls);
    tracing::info!("controllers stopped");
}

/// What `genesis-operator run` was asked to do.
pub struct Options {
    /// Where the authorities' Secrets and ConfigMaps, the Lease and the webhook's Secret live.
    pub namespace: String,
    /// This replica's name in the leader Lease.
    pub identity: String,
    /// Where to serve the webhook (None: not at all).
    pub webhook_listen: Option<String>,
    /// Where to serve the identity service (None: not at all).
    pub identity_listen: Option<String>,
    /// What injected sidecars are told.
    pub inject: crate::webhook::InjectConfig,
    /// Watch delivered Secrets cluster-wide (needs list/watch on Secrets).
    pub watch_secrets: bool,
}

/// Every replica: the webhook (its certificate, the caBundle, HTTPS) and the identity
/// service. The leader: the controllers. Returns on SIGTERM/SIGINT (releasing the Lease) or with an error when the
/// Lease is lost, so the process exits and Kubernetes restarts it as a follower.
pub async fn run(
    client: kube::Client,
    options: Options,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<(), String> {
    let ns = options.namespace.clone();
    if let Some(listen) = &options.webhook_listen {
        let serving = crate::webhook::server::ensure_serving_cert(&client, &ns, SystemTime::now())
            .await
            .map_err(|e| format!("cannot set up the webhook's certificate: {e}"))?;
        let acceptor = std::sync::RwLock::new(serving.acceptor()?);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen} for the webhook: {e}"))?;
        let webhook = Arc::new(crate::webhook::server::Webhook {
            client: client.clone(),
            config: options.inject.clone(),
            acceptor,
            metrics: metrics.clone(),
        });
        tokio::spawn(crate::webhook::server::serve(
            listener,
            webhook.clone(),
            std::future::pending(),
        ));
        // Every minute: the Secret's certificate (another replica may have replaced it, or it
        // is near expiry) and the caBundle (a Helm upgrade re-renders it blank).
        let (client, ns) = (client.clone(), ns.clone());
        tokio::spawn(async move {
            let mut serving = serving;
            loop {
                match crate::webhook::server::ensure_serving_cert(&client, &ns, SystemTime::now())
                    .await
                {
                    Ok(current) if current != serving => match current.acceptor() {
                        Ok(acceptor) => {
                            *webhook.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
                            tracing::info!("serving the webhook's new certificate");
                            serving = current;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot serve the new certificate"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the webhook's certificate"),
                }
                match crate::webhook::server::ensure_ca_bundle(&client, &serving.bundle()).await {
                    Ok(true) => tracing::info!("wrote the webhook caBundle"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot write the webhook caBundle"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        });
        tracing::info!(%listen, "webhook serving /inject");
    }
    if let Some(listen) = &options.identity_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen} for the identity service: {e}"))?;
        let ctx = Arc::new(Context {
            client: client.clone(),
            operator_namespace: ns.clone(),
            now: Arc::new(SystemTime::now),
            recorder: Some(controller::recorder(&client, Some(options.identity.clone()))),
        });
        let service = Arc::new(crate::identity_service::IdentityService::new(
            Arc::new(crate::cluster_identity::ClusterIssuer::new(ctx)),
            Arc::new(crate::token_review::TokenReviews { client: client.clone() }),
            metrics.clone(),
        ));
        tokio::spawn(crate::identity_service::serve(listener, service, std::future::pending()));
        tracing::info!(%listen, "identity service serving joins and renewals");
    }
    ready.store(true, Ordering::Relaxed);
    let lost = tokio::select! {
        lost = crate::leader::lead(client.clone(), ns.clone(), options.identity.clone()) => lost,
        _ = shutdown_signal() => return Ok(()),
    };
    metrics.leader.set(1);
    let outcome = tokio::select! {
        _ = controllers(client.clone(), ns.clone(), metrics.clone(), options.watch_secrets) => Ok(()),
        _ = lost => Err("lost the leader Lease; exiting so this replica restarts as a follower".to_owned()),
    };
    metrics.leader.set(0);
    if outcome.is_ok() {
        if let Err(e) = crate::leader::release(&client, &ns, &options.identity).await {
            tracing::warn!(error = %e, "cannot release the leader Lease; it lapses on its own");
        }
    }
    outcome
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `/healthz` (alive), `/readyz` (200 once the webhook serves and the replica is set up,
/// leader or not, else 503) and `/metrics` (`genesis_operator_leader` says who leads).
pub fn probes(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> crate::http::Handler {
    use hyper::StatusCode;
    Arc::new(move |path: &str| match path {
        "/healthz" => (StatusCode::OK, "alive\n".to_owned()),
        "/readyz" if ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n".into()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
        "/metrics" => (StatusCode::OK, metrics.text()),
        other => (StatusCode::NOT_FOUND, format!("no endpoint {other}\n")),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fake_api::FakeApi;

    #[test]
    fn missing_crds_are_named_with_the_command_that_installs_them() {
        let api = FakeApi::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async { crds_installed(&api.client()).await }).unwrap_err();
        assert!(err.contains("certificates.genesis-mesh.io"), "{err}");
        assert!(err.contains("kubectl apply -f crds/"), "{err}");
        for (_, crd) in genesis_crds::all() {
            let mut v = serde_json::to_value(&crd).unwrap();
            v["apiVersion"] = json!("apiextensions.k8s.io/v1");
            v["kind"] = json!("CustomResourceDefinition");
            api.put(v);
        }
        rt.block_on(async { crds_installed(&api.client()).await }).unwrap();
    }

    #[test]
    fn readyz_answers_503_until_the_controllers_run_and_metrics_are_served() {
        let ready = Arc::new(AtomicBool::new(false));
        let probes = probes(Arc::new(Metrics::new()), ready.clone());
        assert_eq!(probes("/healthz").0, hyper::StatusCode::OK);
        assert_eq!(probes("/readyz").0, hyper::StatusCode::SERVICE_UNAVAILABLE);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(probes("/readyz").0, hyper::StatusCode::OK);
        let (status, text) = probes("/metrics");
        assert_eq!(status, hyper::StatusCode::OK);
        assert!(text.contains("genesis_operator_reconciles_total"), "{text}");
        assert_eq!(probes("/nope").0, hyper::StatusCode::NOT_FOUND);
    }
}
