//! The identity service: CSR in, chain + trust bundle + CRL out, over HTTPS (hyper + rustls).
//!
//! Who may get which identity is decided behind one seam, [`Authenticator`]. In local mode
//! ([`LocalTokens`]) a first join spends a one-time token the authority wrote for the node; in a
//! cluster a TokenReview of the pod's projected ServiceAccount token does
//! ([`crate::token_review::TokenReviews`]). Who signs is the other seam, [`Issuer`]. A
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
use tokio_rustls::LazyConfigAcceptor;

use crate::local::{unix, LocalAuthority};
use crate::{Error, Result};

/// What an [`Authenticator`] returns: the identity, decided asynchronously (a cluster asks
/// the API server).
pub type Authenticated<'a> = Pending<'a, Identity>;

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

/// The trust one connection is served with, chosen from the network its ClientHello names
/// ([`genesis_trust::join::identity_server_name`]).
pub struct Served {
    /// The network this connection issues for.
    pub network: String,
    /// The serving certificate (an `operator` identity of that network) and client verifier.
    pub config: Arc<rustls::ServerConfig>,
    /// Verifies a renewing member's certificate (bundle and current CRL).
    pub store: Arc<TrustStore>,
}

/// An answer decided asynchronously.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Signs what the [`Authenticator`] allowed. Local mode signs with the file-backed authority
/// ([`LocalIssuer`]); in a cluster each network's authority signs and the member's
/// Certificate records it ([`crate::cluster_identity::ClusterIssuer`]).
pub trait Issuer: Send + Sync {
    /// The trust for a connection whose ClientHello named `server_name`, or why there is none.
    fn served<'a>(&'a self, server_name: Option<&'a str>) -> Pending<'a, Arc<Served>>;
    /// Issues `identity` (already authenticated) a certificate for `csr` (DER).
    fn issue<'a>(
        &'a self,
        served: &'a Served,
        csr: &'a [u8],
        identity: &'a Identity,
        renewal: bool,
    ) -> Pending<'a, CertificateResponse>;
    /// The newest CRL of the connection's authority.
    fn crl<'a>(&'a self, served: &'a Served) -> Pending<'a, CrlResponse>;
}

/// Local mode's issuer: the file-backed authority, one network.
pub struct LocalIssuer {
    authority: Arc<LocalAuthority>,
    served: Arc<Served>,
}

impl LocalIssuer {
    /// A serving certificate for `operator/genesis-operator` from the authority, and a trust
    /// store (with the current CRL) to verify renewing members.
    pub fn new(authority: Arc<LocalAuthority>) -> Result<Self> {
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
        let served = Arc::new(Served { network: cfg.network, config: Arc::new(tls), store });
        Ok(LocalIssuer { authority, served })
    }

    /// Picks up a CRL written by `genesis-operator local revoke` (or a re-sign), so a revoked
    /// member cannot renew.
    fn refresh_crl(&self) {
        if let Ok(crl) = self.authority.current_crl() {
            if self.served.store.crl_number().is_none_or(|n| crl.number() > n) {
                let _ = self.served.store.install_crl(&crl, SystemTime::now());
            }
        }
    }
}

impl Issuer for LocalIssuer {
    fn served<'a>(&'a self, _: Option<&'a str>) -> Pending<'a, Arc<Served>> {
        self.refresh_crl();
        Box::pin(std::future::ready(Ok(self.served.clone())))
    }

    fn issue<'a>(
        &'a self,
        _: &'a Served,
        csr: &'a [u8],
        identity: &'a Identity,
        _: bool,
    ) -> Pending<'a, CertificateResponse> {
        let answer = (|| {
            let issued = self.authority.issue(csr, identity)?;
            let crl = self.authority.current_crl()?;
            Ok(CertificateResponse {
                chain_pem: issued.chain_pem(),
                bundle_pem: self.authority.ca().cert_pem(),
                crl: B64.encode(crl.der()),
                not_after: unix(issued.not_after),
                renewal_time: unix(issued.renewal_time),
                // No cluster here: a local member's zone is its own --zone.
                zone: None,
            })
        })();
        Box::pin(std::future::ready(answer))
    }

    fn crl<'a>(&'a self, _: &'a Served) -> Pending<'a, CrlResponse> {
        self.refresh_crl();
        let answer = self
            .authority
            .current_crl()
            .map(|crl| CrlResponse { crl: B64.encode(crl.der()), number: crl.number() });
        Box::pin(std::future::ready(answer))
    }
}

/// The running service's shared state.
pub struct IdentityService {
    pub metrics: Arc<crate::metrics::Metrics>,
    issuer: Arc<dyn Issuer>,
    authenticator: Arc<dyn Authenticator>,
}

impl IdentityService {
    pub fn new(
        issuer: Arc<dyn Issuer>,
        authenticator: Arc<dyn Authenticator>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        IdentityService { metrics, issuer, authenticator }
    }

    async fn issue(
        &self,
        served: &Served,
        request: &CertificateRequest,
        caller: Option<&PeerIdentity>,
    ) -> Result<CertificateResponse> {
        let csr = B64
            .decode(&request.csr)
            .map_err(|e| Error::BadRequest(format!("csr is not base64: {e}")))?;
        let identity = self.authenticator.authenticate(request, caller).await?;
        if identity.network() != served.network {
            return Err(Error::Unauthenticated(format!(
                "{identity} is a member of network {}, but this connection named network {} \
                 (the sidecar's GENESIS_NETWORK)",
                identity.network(),
                served.network
            )));
        }
        let renewal = caller.is_some();
        let response = self.issuer.issue(served, &csr, &identity, renewal).await?;
        tracing::info!(identity = %identity, renewal, "issued certificate");
        Ok(response)
    }

    fn count(&self, endpoint: &str, response: &Response<Full<Bytes>>) {
        let code = response.status().as_str().to_owned();
        self.metrics.requests.with_label_values(&[endpoint, &code]).inc();
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        served: Arc<Served>,
        caller: Option<PeerIdentity>,
    ) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, CERTIFICATES_PATH) => {
                let wants_zone = req
                    .headers()
                    .get_all(genesis_trust::join::FEATURES_HEADER)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|f| f.trim() == genesis_trust::join::FEATURE_ZONE);
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
                let response = match self.issue(&served, &request, caller.as_ref()).await {
                    Ok(mut resp) => {
                        if !wants_zone {
                            resp.zone = None; // a sidecar that would refuse the field
                        }
                        timer.observe_duration();
                        self.metrics.issued.with_label_values(&[kind]).inc();
                        json(StatusCode::OK, &resp)
                    }
                    Err(e) => {
                        tracing::warn!(node = %request.node, error = %e, "refused certificate request");
                        let status = status_of(&e);
                        let reason = match (&e, status) {
                            (Error::Revoked(_), _) => "revoked",
                            (_, StatusCode::UNAUTHORIZED) => "unauthenticated",
                            (_, StatusCode::BAD_REQUEST) => "bad_request",
                            (_, StatusCode::FORBIDDEN) => "not_entitled",
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
                let response = match self.issuer.crl(&served).await {
                    Ok(crl) => json(StatusCode::OK, &crl),
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
        Error::Revoked(_) => StatusCode::FORBIDDEN,
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

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Arc<IdentityService>,
    shutdown: impl Future<Output = ()>,
) {
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
}

/// One connection: the ClientHello's server name picks the network's trust, then TLS, then
/// HTTP/1.1.
async fn connection(service: Arc<IdentityService>, tcp: tokio::net::TcpStream, addr: SocketAddr) {
    let handshake = async {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor.await.map_err(|e| format!("no ClientHello: {e}"))?;
        let name = start.client_hello().server_name().map(str::to_owned);
        let served = service.issuer.served(name.as_deref()).await.map_err(|e| {
            service.metrics.refused.with_label_values(&["unknown_network"]).inc();
            format!("server name {name:?}: {e}")
        })?;
        let tls = start
            .into_stream(served.config.clone())
            .await
            .map_err(|e| format!("TLS handshake refused: {e}"))?;
        Ok::<_, String>((tls, served))
    };
    let (tls, served) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::warn!(%addr, error = %e, "connection refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let caller = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| served.store.verify(chain, SystemTime::now(), PeerRole::Client).ok());
    let svc = hyper::service::service_fn(move |req| {
        let (service, served, caller) = (service.clone(), served.clone(), caller.clone());
        async move { Ok::<_, Infallible>(service.handle(req, served, caller).await) }
    });
    if let Err(e) =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await
    {
        tracing::debug!(%addr, error = %e, "connection ended with an error");
    }
}
