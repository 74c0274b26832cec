//! The identity service: CSR in, chain + trust bundle + CRL out, over HTTPS (hyper + rustls).
//!
//! Who may get which identity is decided behind one seam, [`Authenticator`]. In local mode
//! ([`LocalTokens`]) a first join spends a one-time token the authority wrote for the node; in a
//! cluster a TokenReview of the pod's projected ServiceAccount token will (operator issue). A
//! renewal is authenticated by the member's current, still-valid certificate over mutual TLS,
//! so a token is spent once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use genesis_trust::join::{
    CertificateRequest, CertificateResponse, CrlResponse, ErrorResponse, CERTIFICATES_PATH,
    CRL_PATH, MAX_REQUEST_BYTES,
};
use genesis_trust::{
    Identity, KeyAlgorithm, PeerIdentity, PeerRole, Role, TrustBundle, TrustPolicy, TrustStore,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::local::{unix, LocalAuthority};
use crate::{Error, Result};

/// What an [`Authenticator`] returns: the identity, decided asynchronously (a cluster asks
/// the API server).
pub type Authenticated<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Identity>> + Send + 'a>>;

/// Decides which identity a request may be issued.
pub trait Authenticator: Send + Sync {
    /// `caller` is the verified identity of a client that presented a certificate (a renewal).
    fn authenticate<'a>(
        &'a self,
        request: &'a CertificateRequest,
        caller: Option<&'a PeerIdentity>,
    ) -> Authenticated<'a>;
}

/// A renewal: the current certificate (verified over mutual TLS) may renew its own node only.
pub fn renewal_identity(request: &CertificateRequest, caller: &PeerIdentity) -> Result<Identity> {
    if caller.identity.node() != request.node {
        return Err(Error::Unauthenticated(format!(
            "certificate of {} cannot renew node {:?}",
            caller.identity, request.node
        )));
    }
    Ok(caller.identity.clone())
}

/// Local mode: one-time join tokens written by the authority, or the current certificate.
pub struct LocalTokens {
    authority: Arc<LocalAuthority>,
}

impl LocalTokens {
    pub fn new(authority: Arc<LocalAuthority>) -> Self {
        LocalTokens { authority }
    }
}

impl Authenticator for LocalTokens {
    fn authenticate<'a>(
        &'a self,
        request: &'a CertificateRequest,
        caller: Option<&'a PeerIdentity>,
    ) -> Authenticated<'a> {
        let decided = match caller {
            Some(peer) => renewal_identity(request, peer),
            None => request
                .token
                .as_deref()
                .ok_or_else(|| {
                    Error::Unauthenticated(
                        "a first join needs a token; a renewal needs the current certificate"
                            .into(),
                    )
                })
                .and_then(|token| self.authority.spend_token(&request.node, token)),
        };
        Box::pin(std::future::ready(decided))
    }
}

/// The running service's shared state.
pub struct IdentityService {
    pub metrics: crate::metrics::Metrics,
    authority: Arc<LocalAuthority>,
    authenticator: Arc<dyn Authenticator>,
    store: Arc<TrustStore>,
    acceptor: TlsAcceptor,
}

impl IdentityService {
    /// Builds the service: a serving certificate for `operator/genesis-operator` from the
    /// authority, and a trust store (with the current CRL) to verify renewing members.
    pub fn new(
        authority: Arc<LocalAuthority>,
        authenticator: Arc<dyn Authenticator>,
    ) -> Result<Self> {
        let cfg = authority.config().clone();
        let bundle = TrustBundle::new(vec![authority.ca().cert_der().clone()])?;
        let store = Arc::new(TrustStore::new(
            TrustPolicy {
                trust_domain: cfg.trust_domain.clone(),
                network: Some(cfg.network.clone()),
                require_fresh_crl: true,
            },
            bundle,
        ));
        store.install_crl(&authority.current_crl()?, SystemTime::now())?;
        let id =
            Identity::new(&cfg.trust_domain, &cfg.network, Role::Operator, "genesis-operator")?;
        let (issued, key) = authority.ca().issue_with_generated_key(
            &id,
            KeyAlgorithm::EcdsaP256,
            &authority.leaf_policy(),
            SystemTime::now(),
        )?;
        let tls =
            genesis_trust::tls::identity_service_server_config(store.clone(), issued.chain, &key)?;
        Ok(IdentityService {
            metrics: crate::metrics::Metrics::new(),
            authority,
            authenticator,
            store,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
        })
    }

    /// Picks up a CRL written by `genesis-operator local revoke` (or a re-sign).
    fn refresh_crl(&self) {
        if let Ok(crl) = self.authority.current_crl() {
            if self.store.crl_number().is_none_or(|n| crl.number() > n) {
                let _ = self.store.install_crl(&crl, SystemTime::now());
            }
        }
    }

    async fn issue(
        &self,
        request: &CertificateRequest,
        caller: Option<&PeerIdentity>,
    ) -> Result<CertificateResponse> {
        let csr = B64
            .decode(&request.csr)
            .map_err(|e| Error::BadRequest(format!("csr is not base64: {e}")))?;
        let identity = self.authenticator.authenticate(request, caller).await?;
        let issued = self.authority.issue(&csr, &identity)?;
        let crl = self.authority.current_crl()?;
        tracing::info!(identity = %identity, serial = %issued.serial, renewal = caller.is_some(), "issued certificate");
        Ok(CertificateResponse {
            chain_pem: issued.chain_pem(),
            bundle_pem: self.authority.ca().cert_pem(),
            crl: B64.encode(crl.der()),
            not_after: unix(issued.not_after),
            renewal_time: unix(issued.renewal_time),
        })
    }

    fn count(&self, endpoint: &str, response: &Response<Full<Bytes>>) {
        let code = response.status().as_str().to_owned();
        self.metrics.requests.with_label_values(&[endpoint, &code]).inc();
    }

    /// The Prometheus text of the operator's metrics.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.authority)
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        caller: Option<PeerIdentity>,
    ) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, CERTIFICATES_PATH) => {
                let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return error(StatusCode::PAYLOAD_TOO_LARGE, &format!("request body: {e}"))
                    }
                };
                let request: CertificateRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return error(StatusCode::BAD_REQUEST, &format!("invalid request: {e}"))
                    }
                };
                let timer = self.metrics.issue_seconds.start_timer();
                let kind = if caller.is_some() { "renewal" } else { "join" };
                let response = match self.issue(&request, caller.as_ref()).await {
                    Ok(resp) => {
                        timer.observe_duration();
                        self.metrics.issued.with_label_values(&[kind]).inc();
                        json(StatusCode::OK, &resp)
                    }
                    Err(e) => {
                        tracing::warn!(node = %request.node, error = %e, "refused certificate request");
                        let status = status_of(&e);
                        let reason = match status {
                            StatusCode::UNAUTHORIZED => "unauthenticated",
                            StatusCode::BAD_REQUEST => "bad_request",
                            StatusCode::FORBIDDEN => "not_entitled",
                            _ => "error",
                        };
                        self.metrics.refused.with_label_values(&[reason]).inc();
                        error(status, &e.to_string())
                    }
                };
                self.count(CERTIFICATES_PATH, &response);
                response
            }
            (&Method::GET, CRL_PATH) => {
                self.refresh_crl();
                let response = match self.authority.current_crl() {
                    Ok(crl) => json(
                        StatusCode::OK,
                        &CrlResponse { crl: B64.encode(crl.der()), number: crl.number() },
                    ),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                };
                self.count(CRL_PATH, &response);
                response
            }
            (&Method::GET, "/healthz") => {
                json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (_, path) => error(StatusCode::NOT_FOUND, &format!("no endpoint {path}")),
        }
    }
}

fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Trust(genesis_trust::Error::CsrNotEntitled { .. }) => StatusCode::FORBIDDEN,
        Error::Trust(
            genesis_trust::Error::InvalidCsr { .. } | genesis_trust::Error::InvalidIdentity { .. },
        ) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("response serializes");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ErrorResponse { error: message.to_owned() })
}

/// How often the service looks for a CRL written by another process.
const CRL_POLL: Duration = Duration::from_millis(500);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Arc<IdentityService>,
    shutdown: impl Future<Output = ()>,
) {
    let poller = {
        let service = service.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CRL_POLL).await;
                service.refresh_crl();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let service = service.clone();
        tokio::spawn(async move { connection(service, tcp, addr).await });
    }
    poller.abort();
}

async fn connection(service: Arc<IdentityService>, tcp: tokio::net::TcpStream, addr: SocketAddr) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, service.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%addr, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let caller =
        tls.get_ref().1.peer_certificates().and_then(|chain| {
            service.store.verify(chain, SystemTime::now(), PeerRole::Client).ok()
        });
    let svc = hyper::service::service_fn(move |req| {
        let service = service.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(service.handle(req, caller).await) }
    });
    if let Err(e) =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await
    {
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
}
