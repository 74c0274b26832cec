//! rustls configurations for peer links: TLS 1.3 only, mutual, ALPN `genesis/1`, verified by
//! the [`TrustStore`], and with session resumption disabled.
//!
//! NB: resumption is off on both sides because a resumed TLS 1.3 session skips certificate
//! verification: a peer revoked after its first handshake could otherwise reconnect with a
//! ticket. Peer links are long-lived, so the cost of a full handshake per link is negligible.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use crate::authority::PrivateKey;
use crate::error::{Error, Result};
use crate::verify::{PeerVerifier, TrustStore};

/// The ALPN protocol of peer links.
pub const PEER_ALPN: &[u8] = b"genesis/1";

fn key_der(key: &PrivateKey) -> Result<PrivateKeyDer<'static>> {
    let der = ::pem::parse(key.to_pem())
        .map_err(|e| Error::InvalidKey { reason: e.to_string() })?
        .into_contents();
    PrivateKeyDer::try_from(der).map_err(|e| Error::InvalidKey { reason: e.to_string() })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server config verifying clients with `verifier`, without session resumption.
fn server_config(
    verifier: Arc<PeerVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
    alpn: &[u8],
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::ChainRejected { reason: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der(key)?)
        .map_err(|e| Error::InvalidKey { reason: e.to_string() })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A TLS 1.3 client config verifying servers with `store`, presenting `identity` if given,
/// without session resumption.
fn client_config(
    store: Arc<TrustStore>,
    identity: Option<(Vec<CertificateDer<'static>>, &PrivateKey)>,
    alpn: &[u8],
) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::ChainRejected { reason: e.to_string() })?
        .dangerous()
        // Peers are identified by their URI SAN, checked by the store; not by DNS name.
        .with_custom_certificate_verifier(PeerVerifier::new(store));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key_der(key)?)
            .map_err(|e| Error::InvalidKey { reason: e.to_string() })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The accepting side of a peer link.
pub fn peer_server_config(
    store: Arc<TrustStore>,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
) -> Result<ServerConfig> {
    server_config(PeerVerifier::new(store), chain, key, PEER_ALPN)
}

/// The connecting side of a peer link.
pub fn peer_client_config(
    store: Arc<TrustStore>,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
) -> Result<ClientConfig> {
    client_config(store, Some((chain, key)), PEER_ALPN)
}

/// ALPN of the identity service (plain HTTP/1.1 inside TLS).
pub const HTTP1_ALPN: &[u8] = b"http/1.1";

/// The identity service's side: a certificate from the authority, client certificates optional
/// (joins authenticate by token) but verified when presented (renewals).
pub fn identity_service_server_config(
    store: Arc<TrustStore>,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
) -> Result<ServerConfig> {
    server_config(PeerVerifier::optional_client_auth(store), chain, key, HTTP1_ALPN)
}

/// A client of the identity service: verifies the service with `store`, and presents
/// `identity` (chain and key) when renewing.
pub fn identity_client_config(
    store: Arc<TrustStore>,
    identity: Option<(Vec<CertificateDer<'static>>, &PrivateKey)>,
) -> Result<ClientConfig> {
    client_config(store, identity, HTTP1_ALPN)
}
