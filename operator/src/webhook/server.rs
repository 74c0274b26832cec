//! The webhook over HTTPS (hyper + rustls): `POST /inject` answers an AdmissionReview. The
//! serving certificate comes from a small CA of the webhook's own, kept in a Secret so every
//! replica serves the same one; [`ensure_ca_bundle`] writes that CA into the
//! MutatingWebhookConfiguration (a Helm upgrade blanks it, so it is checked every minute).
//!
//! NB: the Secret is created with a create (409 when another replica got there first: then
//! that replica's material is used) and replaced under a resourceVersion precondition, never
//! force-applied. Force-applied, two replicas starting together each wrote their own CA and then
//! rewrote the caBundle to it every minute, and with `failurePolicy: Fail` pod creation failed on
//! whichever replica's CA was not current. A replacement keeps the previous CA in the bundle, and
//! every replica re-reads the Secret each minute and swaps its serving certificate live.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use genesis_crds::MeshNetwork;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::ResourceExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{injection, InjectConfig, Injection};
use crate::controller::MANAGER;

/// The Secret holding the webhook's CA and serving certificate.
pub const TLS_SECRET: &str = "genesis-operator-webhook-tls";
/// The MutatingWebhookConfiguration the chart installs.
pub const CONFIGURATION: &str = "genesis-mesh-injector";
/// The Service in front of the webhook.
pub const SERVICE: &str = "genesis-operator-webhook";
/// Largest AdmissionReview accepted (a pod spec is far smaller).
const MAX_REVIEW_BYTES: usize = 3 << 20;
/// Serving certificates are replaced when less than this is left.
const RENEW_WITHIN: Duration = Duration::from_secs(30 * 86_400);
const VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The answer to one admission request, given the pod's namespace labels and the networks.
pub fn respond(
    request: &AdmissionRequest<Pod>,
    namespace_labels: &BTreeMap<String, String>,
    networks: &[MeshNetwork],
    config: &InjectConfig,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(pod) = request.object.as_ref() else {
        return response.deny("the AdmissionReview carries no pod");
    };
    match injection(pod, namespace_labels, networks, config) {
        Injection::Skip(_) => response,
        Injection::Refuse(reason) => response.deny(reason),
        Injection::Patch(ops) => match serde_json::from_value::<json_patch::Patch>(ops) {
            Ok(patch) => response.with_patch(patch).unwrap_or_else(|e| {
                AdmissionResponse::from(request).deny(format!("cannot encode the patch: {e}"))
            }),
            Err(e) => response.deny(format!("cannot build the patch: {e}")),
        },
    }
}

/// What the server needs.
pub struct Webhook {
    pub client: kube::Client,
    pub config: InjectConfig,
    /// Swapped live when the Secret's certificate is replaced (by this or another replica).
    pub acceptor: std::sync::RwLock<TlsAcceptor>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Webhook {
    async fn review(&self, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, String> {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        let request: AdmissionRequest<Pod> =
            review.try_into().map_err(|_| "the AdmissionReview has no request".to_owned())?;
        let namespace = request.namespace.clone().unwrap_or_default();
        let labels = Api::<Namespace>::all(self.client.clone())
            .get_opt(&namespace)
            .await
            .map_err(|e| e.to_string())?
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let networks = Api::<MeshNetwork>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        let response = respond(&request, &labels, &networks, &self.config);
        let outcome = match (&response.allowed, &response.patch) {
            (false, _) => "refused",
            (true, Some(_)) => "injected",
            (true, None) => "skipped",
        };
        self.metrics.injections.with_label_values(&[outcome]).inc();
        if !response.allowed {
            tracing::warn!(
                namespace,
                pod = request.name,
                reason = response.result.message,
                "injection refused"
            );
        }
        Ok(response.into_review())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: Vec<u8>| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        };
        if req.method() != Method::POST || req.uri().path() != "/inject" {
            let e = json!({"error": "the webhook answers POST /inject"});
            return reply(StatusCode::NOT_FOUND, e.to_string().into_bytes());
        }
        let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let e = json!({"error": format!("cannot read the request: {e}")});
                return reply(StatusCode::BAD_REQUEST, e.to_string().into_bytes());
            }
        };
        match self.review(&body).await {
            Ok(review) => reply(StatusCode::OK, serde_json::to_vec(&review).unwrap_or_default()),
            Err(e) => {
                let review = AdmissionResponse::invalid(&e).into_review();
                reply(StatusCode::OK, serde_json::to_vec(&review).unwrap_or_default())
            }
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let acceptor = webhook.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => {
                        tracing::debug!(%addr, "webhook TLS handshake failed");
                        return;
                    }
                };
            let svc = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

/// The webhook's serving material: its CA (for the caBundle) and a certificate for the
/// Service's DNS names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA this one replaced, kept in the caBundle so a replica still serving the old
    /// certificate for a minute is trusted meanwhile.
    pub previous_ca_pem: Option<String>,
}

impl ServingCert {
    /// A new CA and a serving certificate for `service`.`namespace`.svc.
    pub fn generate(service: &str, namespace: &str, now: SystemTime) -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let err = |e: rcgen::Error| e.to_string();
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "Genesis Mesh webhook CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.not_before = (now - Duration::from_secs(300)).into();
        ca.not_after = (now + VALIDITY + VALIDITY).into();
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca, ca_key);
        // Loopback addresses too: an API server on the same host may call the webhook by URL
        // (a development cluster, envtest); rcgen makes them IP SANs.
        let names = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let mut leaf = CertificateParams::new(names).map_err(err)?;
        leaf.distinguished_name.push(DnType::CommonName, format!("{service}.{namespace}.svc"));
        leaf.not_before = (now - Duration::from_secs(300)).into();
        leaf.not_after = (now + VALIDITY).into();
        let key = KeyPair::generate().map_err(err)?;
        let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
        Ok(ServingCert {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            previous_ca_pem: None,
        })
    }

    /// What the caBundle holds: the CA, and the one it replaced.
    pub fn bundle(&self) -> String {
        match &self.previous_ca_pem {
            Some(previous) => format!("{}{previous}", self.ca_pem),
            None => self.ca_pem.clone(),
        }
    }

    /// Whether the serving certificate still has more than [`RENEW_WITHIN`] left.
    pub fn fresh(&self, now: SystemTime) -> bool {
        genesis_trust::certs_from_pem(&self.cert_pem)
            .ok()
            .and_then(|c| c.first().and_then(|c| genesis_trust::CertInfo::parse(c).ok()))
            .is_some_and(|info| now + RENEW_WITHIN < info.not_after)
    }

    /// A rustls acceptor serving it.
    pub fn acceptor(&self) -> Result<TlsAcceptor, String> {
        let chain = genesis_trust::certs_from_pem(&self.cert_pem).map_err(|e| e.to_string())?;
        use rustls_pki_types::pem::PemObject;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("webhook key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("webhook certificate: {e}"))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Writes to the Secret lost to another replica this many times in a row: give up for now.
const SECRET_ATTEMPTS: usize = 5;

/// The serving material held in `secret`, if complete.
fn held_serving_cert(secret: &Secret) -> Option<ServingCert> {
    let field =
        |k: &str| secret.data.as_ref()?.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned());
    Some(ServingCert {
        ca_pem: field("ca.crt")?,
        cert_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
        previous_ca_pem: field("ca-previous.crt"),
    })
}

fn secret_of(serving: &ServingCert, namespace: &str, resource_version: Option<&str>) -> Secret {
    let mut data: BTreeMap<String, ByteString> = [
        ("ca.crt", &serving.ca_pem),
        ("tls.crt", &serving.cert_pem),
        ("tls.key", &serving.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    if let Some(previous) = &serving.previous_ca_pem {
        data.insert("ca-previous.crt".into(), ByteString(previous.as_bytes().to_vec()));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": TLS_SECRET, "namespace": namespace,
                     "resourceVersion": resource_version},
        "data": data,
    }))
    .expect("a Secret")
}

/// The serving material from Secret [`TLS_SECRET`]: the one there if it is complete and not
/// near expiry; else one made here, written only if no other replica wrote one meanwhile (a
/// create, or a replacement under the read resourceVersion), and otherwise the winner's.
pub async fn ensure_serving_cert(
    client: &kube::Client,
    namespace: &str,
    now: SystemTime,
) -> Result<ServingCert, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..SECRET_ATTEMPTS {
        let stored = secrets.get_opt(TLS_SECRET).await?;
        let held = stored.as_ref().and_then(held_serving_cert);
        if let Some(held) = held.as_ref().filter(|h| h.fresh(now)) {
            return Ok(held.clone());
        }
        let mut fresh = ServingCert::generate(SERVICE, namespace, now)
            .map_err(|e| kube::Error::Service(e.into()))?;
        fresh.previous_ca_pem = held.map(|h| h.ca_pem);
        let written = match &stored {
            None => {
                let params =
                    PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                secrets.create(&params, &secret_of(&fresh, namespace, None)).await.map(|_| ())
            }
            Some(old) => {
                let version = old.metadata.resource_version.as_deref();
                let patch = secret_of(&fresh, namespace, version);
                let params = PatchParams::apply(MANAGER).force();
                secrets.patch(TLS_SECRET, &params, &Patch::Apply(&patch)).await.map(|_| ())
            }
        };
        match written {
            Ok(()) => return Ok(fresh),
            // Another replica wrote first: read and use what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Service(
        format!("Secret {namespace}/{TLS_SECRET} kept changing under us; retrying later").into(),
    ))
}

/// Writes `ca_pem` as the caBundle of every webhook of [`CONFIGURATION`]. Returns whether it
/// changed anything; a missing configuration (webhook disabled in the chart) is not an error.
pub async fn ensure_ca_bundle(client: &kube::Client, ca_pem: &str) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api.get_opt(CONFIGURATION).await? else { return Ok(false) };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut webhooks = config.webhooks.unwrap_or_default();
    if webhooks.iter().all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle)) {
        return Ok(false);
    }
    for w in &mut webhooks {
        w.client_config.ca_bundle = Some(bundle.clone());
    }
    // A merge patch replaces the list whole; the rest of each entry is written back unchanged.
    let patch = json!({"webhooks": webhooks});
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    api.patch(CONFIGURATION, &params, &Patch::Merge(&patch)).await?;
    Ok(true)
}
