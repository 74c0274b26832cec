//! Peer verification: chain to the trust bundle, validity, revocation, trust domain and network.
//!
//! A [`TrustStore`] holds the bundle (one root, or two during CA rotation) and the newest CRL of
//! each root behind an [`ArcSwap`], so a new CRL or bundle is one atomic pointer swap: handshakes
//! in flight finish against the state they started with and live links are untouched (the
//! sidecar re-checks each live link with [`TrustStore::check_still_valid`] when a CRL arrives).
//! [`PeerVerifier`] plugs the store into rustls as both client- and server-certificate verifier.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use webpki::{EndEntityCert, KeyUsage};

use crate::cert::{certs_from_pem, certs_to_pem, CertInfo, Serial};
use crate::crl::Crl;
use crate::error::{rfc3339, Error, Result};
use crate::identity::Identity;

/// A bundle holds the current root and, during a CA rotation, the next (or previous) one.
/// More than a handful of roots means something is wrong with the rotation, not a bigger bundle.
pub const MAX_ROOTS: usize = 4;

/// Signature algorithms accepted in chains and CRLs: those our authorities issue with.
static CHAIN_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] =
    &[webpki::ring::ECDSA_P256_SHA256, webpki::ring::ED25519];

/// The roots a network trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle of 1 to [`MAX_ROOTS`] CA certificates.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidBundle { reason };
        if roots.is_empty() {
            return Err(invalid("no root certificate".into()));
        }
        if roots.len() > MAX_ROOTS {
            return Err(invalid(format!("{} roots, at most {MAX_ROOTS}", roots.len())));
        }
        for root in &roots {
            let info = CertInfo::parse(root)?;
            if !info.is_ca {
                return Err(invalid(format!("certificate {} is not a CA", info.fingerprint)));
            }
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| invalid(format!("unusable as a trust anchor: {e}")))?;
        }
        Ok(TrustBundle { roots })
    }

    /// Reads the PEM trust bundle (the `ca.crt` of the trust-bundle ConfigMap).
    pub fn from_pem(pem: &str) -> Result<Self> {
        TrustBundle::new(certs_from_pem(pem)?)
    }

    /// PEM form.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fps: Vec<String> = self.roots.iter().map(|r| crate::cert::fingerprint(r)).collect();
        f.debug_struct("TrustBundle").field("roots", &fps).finish()
    }
}

/// What a store accepts besides a valid chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Peers must be in this trust domain.
    pub trust_domain: String,
    /// Peers must be members of this network; `None` accepts any network of the trust domain
    /// (the identity service, which serves every network of its authority).
    pub network: Option<String>,
    /// Fail closed on unknown revocation status: refuse peers while no fresh CRL from their
    /// root is held (LESSONS.md: a member whose CRL is older than its validity refuses new links).
    pub require_fresh_crl: bool,
}

/// Which side of a TLS handshake the verified peer was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer connected to us and presented a client certificate.
    Client,
    /// We connected to the peer and it presented a server certificate.
    Server,
}

/// A verified peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub identity: Identity,
    pub serial: Serial,
    pub not_after: SystemTime,
    pub fingerprint: String,
}

/// What installing a CRL changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlUpdate {
    /// The CRL number now held for that root.
    pub number: u64,
    /// The number held before, if any.
    pub previous: Option<u64>,
    /// Serials revoked by this CRL that the previous one did not revoke.
    pub newly_revoked: Vec<Serial>,
}

#[derive(Clone)]
struct HeldCrl {
    crl: Crl,
    /// Raw subject of the root that signed it.
    issuer_subject: Vec<u8>,
}

struct TrustState {
    bundle: TrustBundle,
    /// The bundle's roots as webpki trust anchors, built once per bundle.
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<HeldCrl>,
}

impl TrustState {
    fn new(bundle: TrustBundle, crls: Vec<HeldCrl>) -> Self {
        let anchors = bundle
            .roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .expect("TrustBundle::new checked every root")
                    .to_owned()
            })
            .collect();
        TrustState { bundle, anchors, crls }
    }

    fn crl_for_issuer(&self, issuer_subject: &[u8]) -> Option<&HeldCrl> {
        self.crls.iter().find(|c| c.issuer_subject == issuer_subject)
    }
}

/// The hot-swappable trust state of one member: bundle plus newest CRL per root.
pub struct TrustStore {
    policy: TrustPolicy,
    state: ArcSwap<TrustState>,
    /// Serialises writers (read-modify-write of the state); readers never take it.
    update: Mutex<()>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load();
        f.debug_struct("TrustStore")
            .field("policy", &self.policy)
            .field("bundle", &state.bundle)
            .field("crl_numbers", &state.crls.iter().map(|c| c.crl.number()).collect::<Vec<_>>())
            .finish()
    }
}

impl TrustStore {
    /// A store with no CRL yet (with `require_fresh_crl`, it refuses every peer until one arrives).
    pub fn new(policy: TrustPolicy, bundle: TrustBundle) -> Self {
        TrustStore {
            policy,
            state: ArcSwap::from_pointee(TrustState::new(bundle, Vec::new())),
            update: Mutex::new(()),
        }
    }

    /// The policy this store enforces.
    pub fn policy(&self) -> &TrustPolicy {
        &self.policy
    }

    /// The current bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.state.load().bundle.clone()
    }

    /// Applies `crl` if it is signed by a root of the bundle, not expired, and newer than the CRL
    /// held for that root. Anything else is refused with the reason and changes nothing: the
    /// last good CRL stays in force.
    pub fn install_crl(&self, crl: &Crl, now: SystemTime) -> Result<CrlUpdate> {
        let _writer = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state.load_full();
        // The very CRL already held (a member hears each new one from every neighbour): its
        // signature was checked when it was installed, and it is not newer.
        if let Some(held) = state.crls.iter().find(|h| h.crl.der() == crl.der()) {
            let current = held.crl.number();
            return Err(Error::CrlNotNewer { current, offered: current });
        }
        let mut reasons = Vec::new();
        let root = state.bundle.roots.iter().find(|root| match crl.verify_signed_by(root) {
            Ok(()) => true,
            Err(e) => {
                reasons.push(e.to_string());
                false
            }
        });
        let Some(root) = root else {
            return Err(Error::CrlSignature { reason: reasons.join("; ") });
        };
        crl.check_fresh(now)?;
        let issuer_subject = subject_of(root)?;
        let held = state.crl_for_issuer(&issuer_subject);
        let previous = held.map(|h| h.crl.number());
        if let Some(current) = previous {
            if crl.number() <= current {
                return Err(Error::CrlNotNewer { current, offered: crl.number() });
            }
        }
        let newly_revoked = crl
            .revoked()
            .iter()
            .filter(|s| !held.is_some_and(|h| h.crl.is_revoked(s)))
            .cloned()
            .collect();
        let mut crls: Vec<HeldCrl> =
            state.crls.iter().filter(|c| c.issuer_subject != issuer_subject).cloned().collect();
        crls.push(HeldCrl { crl: crl.clone(), issuer_subject });
        self.state.store(Arc::new(TrustState::new(state.bundle.clone(), crls)));
        Ok(CrlUpdate { number: crl.number(), previous, newly_revoked })
    }

    /// Replaces the bundle (CA rotation); CRLs of roots that stay in the bundle are kept.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<()> {
        let _writer = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state.load_full();
        let subjects =
            bundle.roots.iter().map(|r| subject_of(r)).collect::<Result<Vec<Vec<u8>>>>()?;
        let crls =
            state.crls.iter().filter(|c| subjects.contains(&c.issuer_subject)).cloned().collect();
        self.state.store(Arc::new(TrustState::new(bundle, crls)));
        Ok(())
    }

    /// The highest CRL number held (the figure members gossip and report).
    pub fn crl_number(&self) -> Option<u64> {
        self.state.load().crls.iter().map(|c| c.crl.number()).max()
    }

    /// Whether a CRL held lists `serial`.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.state.load().crls.iter().any(|c| c.crl.is_revoked(serial))
    }

    /// The CRLs held, one per root.
    pub fn crls(&self) -> Vec<Crl> {
        self.state.load().crls.iter().map(|c| c.crl.clone()).collect()
    }

    /// Verifies a peer's chain (leaf first) at `now`, returning its identity.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        role: PeerRole,
    ) -> Result<PeerIdentity> {
        let state = self.state.load();
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| Error::ChainRejected {
            reason: "the peer presented no certificate".into(),
        })?;
        let info = CertInfo::parse(leaf)?;
        let ee = EndEntityCert::try_from(leaf)
            .map_err(|e| Error::InvalidCertificate { reason: format!("{e:?}") })?;
        let usage = match role {
            PeerRole::Client => KeyUsage::client_auth(),
            PeerRole::Server => KeyUsage::server_auth(),
        };
        let unix = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        // NB: revocation is checked below against CRLs whose signature install_crl verified
        // once; letting webpki re-verify the CRL signature on every handshake would double
        // the cost of a verification. tests/openssl_agrees.rs holds the result to openssl's.
        ee.verify_for_usage(CHAIN_ALGS, &state.anchors, intermediates, unix, usage, None, None)
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } => {
                    Error::Expired { not_after: rfc3339(info.not_after) }
                }
                webpki::Error::CertNotValidYet { .. } => {
                    Error::NotYetValid { not_before: rfc3339(info.not_before) }
                }
                webpki::Error::UnknownIssuer => Error::UnknownIssuer,
                other => Error::ChainRejected { reason: format!("{other:?}") },
            })?;
        let held = state.crl_for_issuer(&info.issuer);
        if let Some(h) = held {
            if h.crl.is_revoked(&info.serial) {
                return Err(Error::Revoked {
                    serial: info.serial.to_string(),
                    crl_number: h.crl.number(),
                });
            }
        }
        if self.policy.require_fresh_crl {
            match held {
                None => {
                    return Err(Error::CrlStale {
                        reason: "no CRL from the peer's authority is held yet".into(),
                    })
                }
                Some(h) if now > h.crl.next_update() => {
                    return Err(Error::CrlStale {
                        reason: format!(
                            "CRL number {} expired at {}",
                            h.crl.number(),
                            rfc3339(h.crl.next_update())
                        ),
                    })
                }
                Some(_) => {}
            }
        }
        let identity = match info.identity {
            Some(identity) => identity,
            None => CertInfo::require_identity(leaf)?, // only to say why there is none
        };
        self.check_identity(&identity)?;
        Ok(PeerIdentity {
            identity,
            serial: info.serial,
            not_after: info.not_after,
            fingerprint: info.fingerprint,
        })
    }

    /// Re-checks a live link's peer: not expired and not revoked by the CRLs now held.
    /// (Linkerd's lesson: links must be re-validated, not only at handshake.)
    pub fn check_still_valid(&self, peer: &PeerIdentity, now: SystemTime) -> Result<()> {
        if now > peer.not_after {
            return Err(Error::Expired { not_after: rfc3339(peer.not_after) });
        }
        let state = self.state.load();
        if let Some(c) = state.crls.iter().find(|c| c.crl.is_revoked(&peer.serial)) {
            return Err(Error::Revoked {
                serial: peer.serial.to_string(),
                crl_number: c.crl.number(),
            });
        }
        Ok(())
    }

    fn check_identity(&self, identity: &Identity) -> Result<()> {
        if identity.trust_domain() != self.policy.trust_domain {
            return Err(Error::WrongTrustDomain {
                expected: self.policy.trust_domain.clone(),
                found: identity.trust_domain().to_owned(),
            });
        }
        if let Some(network) = &self.policy.network {
            if identity.network() != network {
                return Err(Error::WrongNetwork {
                    expected: network.clone(),
                    found: identity.network().to_owned(),
                });
            }
        }
        Ok(())
    }
}

fn subject_of(cert: &[u8]) -> Result<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert)
        .map_err(|e| Error::InvalidCertificate { reason: e.to_string() })?;
    Ok(c.subject().as_raw().to_vec())
}

/// The trust store as a rustls verifier for both ends of a mutual-TLS peer link.
///
/// Server names are not checked: peers are identified by the URI SAN, which the store checks
/// (trust domain and network) and the sidecar binds to the hello frame.
pub struct PeerVerifier {
    store: Arc<TrustStore>,
    algs: WebPkiSupportedAlgorithms,
    client_auth_mandatory: bool,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier").field("store", &self.store).finish()
    }
}

impl PeerVerifier {
    /// A verifier over `store`, checking handshake signatures with the ring provider's algorithms.
    pub fn new(store: Arc<TrustStore>) -> Arc<Self> {
        Arc::new(PeerVerifier {
            store,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            client_auth_mandatory: true,
        })
    }

    /// A server-side verifier that lets clients without a certificate in (the identity
    /// service's join endpoint, authenticated by token instead) but still verifies any
    /// certificate a client does present (renewals).
    pub fn optional_client_auth(store: Arc<TrustStore>) -> Arc<Self> {
        Arc::new(PeerVerifier {
            store,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            client_auth_mandatory: false,
        })
    }

    /// The store behind this verifier.
    pub fn store(&self) -> &Arc<TrustStore> {
        &self.store
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> std::result::Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.store.verify(&chain, now, role).map(drop).map_err(to_rustls_error)
    }
}

/// Maps a refusal to the closest rustls certificate error (so the right TLS alert is sent),
/// keeping our error inside `Other` where rustls has no equivalent.
pub fn to_rustls_error(e: Error) -> rustls::Error {
    let cert_err = match e {
        Error::Expired { .. } => CertificateError::Expired,
        Error::NotYetValid { .. } => CertificateError::NotValidYet,
        Error::Revoked { .. } => CertificateError::Revoked,
        Error::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, PeerRole::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, PeerRole::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
