//! The sidecar's identity: key generated in memory, certificate obtained by CSR from the
//! identity service, renewed with a fresh key at renewalTime (DESIGN.md "Key custody").

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use genesis_trust::join::{
    CertificateRequest, CertificateResponse, ErrorResponse, CERTIFICATES_PATH,
};
use genesis_trust::{
    certs_from_pem, create_csr, CertInfo, Crl, Identity, KeyAlgorithm, PrivateKey, Role,
    TrustBundle, TrustPolicy, TrustStore,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::config::Config;
use crate::error::Error;

/// Largest answer we read from the identity service (a chain, a bundle and a CRL).
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// A request to the identity service gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a member holds: its key (never exported), chain, and the trust material that came with it.
pub struct Credentials {
    pub key: PrivateKey,
    pub chain: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub bundle: TrustBundle,
    pub crl: Crl,
    pub not_after: SystemTime,
    pub renewal_time: SystemTime,
    /// The zone the identity service says this member's node is in (a cluster), if any.
    pub zone: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.uri())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// First join: authenticated by the one-time token; the service is checked against the bundle
/// file and must present an `operator` certificate of our network.
pub async fn join(config: &Config) -> Result<Credentials, Error> {
    let store = bundle_store(config)?;
    request(config, store, None, Some(config.join_token.clone())).await
}

/// Restart: renew with the key and certificate a previous run kept in `--state-dir`, checking
/// the service against the bundle file as a first join does.
pub async fn resume(config: &Config, saved: &crate::state::Saved) -> Result<Credentials, Error> {
    let store = bundle_store(config)?;
    request(config, store, Some((saved.chain.clone(), &saved.key)), None).await
}

/// A trust store of the bundle file alone, to check the identity service with before this
/// member holds a CRL. NB: the revocation status of the service is unknown until then; the
/// answer brings the CRL that every later check uses.
fn bundle_store(config: &Config) -> Result<Arc<TrustStore>, Error> {
    let path = config.trust_bundle.display();
    let pem = std::fs::read_to_string(&config.trust_bundle)
        .map_err(|e| Error::Identity(format!("cannot read trust bundle {path}: {e}")))?;
    let bundle =
        TrustBundle::from_pem(&pem).map_err(|e| Error::Identity(format!("trust bundle: {e}")))?;
    Ok(Arc::new(TrustStore::new(policy(config, false), bundle)))
}

/// Renewal: a fresh key, authenticated by the current certificate (`chain`, `key`) over mutual TLS.
pub async fn renew(
    config: &Config,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
    store: Arc<TrustStore>,
) -> Result<Credentials, Error> {
    request(config, store, Some((chain, key)), None).await
}

fn policy(config: &Config, require_fresh_crl: bool) -> TrustPolicy {
    TrustPolicy {
        trust_domain: config.trust_domain.clone(),
        network: Some(config.network.clone()),
        require_fresh_crl,
    }
}

async fn request(
    config: &Config,
    store: Arc<TrustStore>,
    current: Option<(Vec<CertificateDer<'static>>, &PrivateKey)>,
    token: Option<String>,
) -> Result<Credentials, Error> {
    let local = |e: String| Error::Identity(e);
    let identity = Identity::new(&config.trust_domain, &config.network, config.role, &config.node)
        .map_err(|e| local(e.to_string()))?;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| local(e.to_string()))?;
    let csr = create_csr(&identity, &key).map_err(|e| local(e.to_string()))?;
    let body = serde_json::to_vec(&CertificateRequest {
        node: config.node.clone(),
        token,
        csr: B64.encode(csr),
    })
    .expect("request serializes");
    let tls = genesis_trust::tls::identity_client_config(store, current)
        .map_err(|e| local(e.to_string()))?;
    let server_name = genesis_trust::join::identity_server_name(&config.network);
    let post = post(&config.identity_service, &server_name, tls, body);
    let response = tokio::time::timeout(REQUEST_TIMEOUT, post).await.map_err(|_| {
        Error::IdentityUnreachable(format!(
            "identity service {} did not answer within {REQUEST_TIMEOUT:?}",
            config.identity_service
        ))
    })??;
    let chain =
        certs_from_pem(&response.chain_pem).map_err(|e| local(format!("issued chain: {e}")))?;
    let issued = CertInfo::require_identity(&chain[0])
        .map_err(|e| local(format!("issued certificate: {e}")))?;
    if issued != identity {
        return Err(local(format!(
            "the identity service issued {issued}, but this sidecar is {identity}"
        )));
    }
    let bundle = TrustBundle::from_pem(&response.bundle_pem)
        .map_err(|e| local(format!("issued bundle: {e}")))?;
    let crl_der = B64.decode(&response.crl).map_err(|e| local(format!("issued CRL: {e}")))?;
    let crl = Crl::parse(&crl_der).map_err(|e| local(format!("issued CRL: {e}")))?;
    Ok(Credentials {
        key,
        chain,
        identity,
        bundle,
        crl,
        not_after: UNIX_EPOCH + Duration::from_secs(response.not_after),
        renewal_time: UNIX_EPOCH + Duration::from_secs(response.renewal_time),
        zone: response.zone,
    })
}

/// Sends the request to `addr`, naming `server_name` (which says the network) in TLS.
async fn post(
    addr: &str,
    server_name: &str,
    tls: rustls::ClientConfig,
    body: Vec<u8>,
) -> Result<CertificateResponse, Error> {
    let unreachable = |e: String| Error::IdentityUnreachable(e);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(format!("cannot reach the identity service at {addr}: {e}")))?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| Error::Identity(format!("{server_name} is not a server name: {e}")))?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS with the identity service at {addr} failed: {e}")))?;
    let service = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| CertInfo::require_identity(&c[0]).ok())
        .ok_or_else(|| Error::Identity("the identity service presented no identity".into()))?;
    if service.role() != Role::Operator {
        return Err(Error::Identity(format!(
            "{service} is not an operator: refusing to send it a join token"
        )));
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            unreachable(format!("HTTP handshake with the identity service failed: {e}"))
        })?;
    tokio::spawn(conn);
    let req = hyper::Request::post(CERTIFICATES_PATH)
        .header("host", server_name)
        .header("content-type", "application/json")
        // We understand the zone field: the service may say which zone our node is in.
        .header(genesis_trust::join::FEATURES_HEADER, genesis_trust::join::FEATURE_ZONE)
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    let resp = sender.send_request(req).await.map_err(|e| {
        // In TLS 1.3 the service judges our certificate after our side of the handshake is
        // done, so its verdict (an alert) surfaces here, under hyper's error.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        // NB: rustls names the alert only in its text.
        if text.contains("CertificateRevoked") {
            Error::IdentityRefused { status: "certificate revoked".into(), reason: text }
        } else {
            unreachable(format!("identity service request failed: {text}"))
        }
    })?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| unreachable(format!("identity service answer: {e}")))?
        .to_bytes();
    if !status.is_success() {
        let reason = serde_json::from_slice::<ErrorResponse>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(Error::IdentityRefused { status: status.to_string(), reason });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Identity(format!("identity service answer is not valid: {e}")))
}
