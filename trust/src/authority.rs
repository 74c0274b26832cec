//! The Network Authority: CA creation, leaf issuance from CSRs or with a generated key, CRL signing.
//!
//! Key custody (DESIGN.md): a member's key never leaves it. The member calls [`create_csr`]
//! with a [`PrivateKey`] it generated in memory; the authority checks the CSR and issues with
//! [`CertificateAuthority::issue_from_csr`]. Only principals that cannot run a sidecar get a key
//! made for them ([`CertificateAuthority::issue_with_generated_key`], `delivery: secret`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SigningKey,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};

use crate::cert::{certs_to_pem, fingerprint, CertInfo, Serial};
use crate::crl::{Crl, RevocationList};
use crate::error::{Error, Result};
use crate::identity::Identity;

/// Clock skew tolerated between the authority and members: certificates are valid from this
/// long before issuance, so a member whose clock lags a little still accepts a fresh leaf.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// The key algorithms a Network Authority and its members may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: the default, understood by every TLS stack.
    #[default]
    EcdsaP256,
    /// Ed25519: smaller and faster signatures.
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn of(alg: &rcgen::SignatureAlgorithm) -> Option<Self> {
        [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519].into_iter().find(|k| k.rcgen() == alg)
    }
}

/// A private key held in memory. Its `Debug` never prints key material.
pub struct PrivateKey(KeyPair);

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self> {
        KeyPair::generate_for(alg.rcgen())
            .map(PrivateKey)
            .map_err(|source| Error::Signing { action: "generate a key", source })
    }

    /// Reads a PKCS#8 PEM private key of a supported algorithm.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key =
            KeyPair::from_pem(pem).map_err(|e| Error::InvalidKey { reason: e.to_string() })?;
        if KeyAlgorithm::of(key.algorithm()).is_none() {
            return Err(Error::InvalidKey {
                reason: "only ECDSA P-256 and Ed25519 keys are supported".into(),
            });
        }
        Ok(PrivateKey(key))
    }

    /// PKCS#8 PEM, for `delivery: secret` and the authority's own persistence.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::of(self.0.algorithm()).expect("only supported algorithms are constructed")
    }

    /// Signs `msg` (ECDSA signatures are ASN.1 DER encoded).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.0.sign(msg).map_err(|source| Error::Signing { action: "sign a message", source })
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.algorithm())
    }
}

/// Builds the CSR a member sends to the identity service: its identity as the only SAN.
pub fn create_csr(identity: &Identity, key: &PrivateKey) -> Result<Vec<u8>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_subject(identity);
    params.subject_alt_names = vec![uri_san(identity)?];
    params
        .serialize_request(key.key_pair())
        .map(|csr| csr.der().to_vec())
        .map_err(|source| Error::Signing { action: "build a CSR", source })
}

/// How long leaves live and when they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafPolicy {
    /// Lifetime of a leaf certificate.
    pub duration: Duration,
    /// Renew this long before expiry; `None` means half the lifetime.
    pub renew_before: Option<Duration>,
}

impl Default for LeafPolicy {
    /// 24 hours, renewed at half-life (DESIGN.md certificate defaults).
    fn default() -> Self {
        LeafPolicy { duration: Duration::from_secs(24 * 3600), renew_before: None }
    }
}

/// When a certificate valid from `not_before` to `not_after` should be renewed.
///
/// `renew_before` defaults to half the lifetime and is capped at the lifetime, so renewal is
/// never scheduled before the certificate starts.
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let before = renew_before.unwrap_or(lifetime / 2).min(lifetime);
    not_after - before
}

/// A leaf the authority issued, with what status fields and callers need.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub identity: Identity,
    pub serial: Serial,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub renewal_time: SystemTime,
    /// SHA-256 of the leaf DER, lowercase hex.
    pub fingerprint: String,
    /// Leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
}

impl IssuedCertificate {
    /// The chain as PEM (leaf, then CA), as written to `tls.crt`.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    /// The leaf alone.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Serial numbers that never repeat: 8 bytes of a strictly increasing nanosecond counter
/// followed by 8 random bytes (RFC 5280 positive INTEGER, 16 octets, no leading zero byte).
/// Within one authority process the counter alone guarantees uniqueness; across processes and
/// restarts the random half makes a collision a 2^-64 event even at equal timestamps.
struct SerialSource {
    last: AtomicU64,
    rng: SystemRandom,
}

impl SerialSource {
    fn new() -> Self {
        SerialSource { last: AtomicU64::new(0), rng: SystemRandom::new() }
    }

    fn next(&self) -> Result<Serial> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let now = u64::try_from(now).unwrap_or(u64::MAX >> 1);
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
            .expect("closure never refuses");
        let counter = now.max(prev + 1) & (u64::MAX >> 1); // high bit clear: positive INTEGER
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&counter.to_be_bytes());
        self.rng.fill(&mut bytes[8..]).map_err(|_| Error::InvalidKey {
            reason: "system random number generator failed".into(),
        })?;
        if bytes[0] == 0 {
            bytes[0] = 0x01; // keep the DER INTEGER minimal: no leading zero octet
        }
        Serial::from_bytes(&bytes)
    }
}

/// One trust domain's certificate authority.
pub struct CertificateAuthority {
    trust_domain: String,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
    serials: SerialSource,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed root for `trust_domain`, valid for `validity` from `now`.
    pub fn generate(
        trust_domain: &str,
        alg: KeyAlgorithm,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Self> {
        // Validate the trust domain with the identity rules (a throwaway identity).
        Identity::new(trust_domain, "ca", crate::identity::Role::Admin, "ca")?;
        let key = PrivateKey::generate(alg)?.0;
        let serials = SerialSource::new();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Genesis Mesh");
        // NB: the subject must differ between roots of one trust domain: during rotation both
        // are trusted at once, and chain building and CRL matching go by issuer name.
        let root_id = serials.next()?;
        let short_id = &root_id.to_string()[16..24];
        dn.push(DnType::CommonName, format!("Genesis Mesh CA {trust_domain} {short_id}"));
        params.distinguished_name = dn;
        // NB: path length 0 — the root signs leaves only; no intermediate can be minted.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = (now + validity).into();
        params.serial_number = Some(SerialNumber::from_slice(root_id.as_bytes()));
        let cert = params
            .self_signed(&key)
            .map_err(|source| Error::Signing { action: "self-sign the CA", source })?;
        let cert = cert.der().clone();
        let issuer = Issuer::new(params, key);
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            not_after: CertInfo::parse(&cert)?.not_after,
            cert,
            issuer,
            serials,
        })
    }

    /// Loads a persisted or user-supplied CA (PEM certificate and PKCS#8 key).
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = crate::cert::certs_from_pem(cert_pem)?.remove(0);
        let info = CertInfo::parse(&cert)?;
        if !info.is_ca {
            return Err(Error::InvalidBundle {
                reason: "the CA certificate lacks basicConstraints CA:TRUE".into(),
            });
        }
        let key = PrivateKey::from_pem(key_pem)?.0;
        let spki = x509_public_key(&cert)?;
        if spki != key.public_key_raw() {
            return Err(Error::InvalidKey {
                reason: "the private key does not belong to the CA certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|source| Error::Signing { action: "load the CA certificate", source })?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            cert,
            issuer,
            not_after: info.not_after,
            serials: SerialSource::new(),
        })
    }

    /// The trust domain this CA speaks for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The root certificate (PEM), as published in the trust bundle.
    pub fn cert_pem(&self) -> String {
        certs_to_pem(std::slice::from_ref(&self.cert))
    }

    /// The CA key (PKCS#8 PEM), for the CA Secret. Handle as a secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs `msg` with the CA key (for documents the authority vouches for, such as a
    /// network's genesis document). Callers prefix a domain-separation context.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        use rcgen::SigningKey;
        self.issuer
            .key()
            .sign(msg)
            .map_err(|source| Error::Signing { action: "sign with the CA key", source })
    }

    /// SHA-256 fingerprint of the root.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// When the root expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a leaf for `entitled` from a member's CSR.
    ///
    /// The CSR's self-signature proves possession of the key; the CSR may name only the identity
    /// the requester was authenticated as, and may not ask to be a CA or for other key purposes.
    pub fn issue_from_csr(
        &self,
        csr_der: &[u8],
        entitled: &Identity,
        policy: &LeafPolicy,
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => Error::InvalidCsr {
                        reason: "its self-signature does not verify (no proof of key possession)"
                            .into(),
                    },
                    rcgen::Error::UnsupportedExtension => Error::CsrNotEntitled {
                        asked: "an extension other than subjectAltName, keyUsage, extendedKeyUsage"
                            .into(),
                        entitled: entitled.uri(),
                    },
                    rcgen::Error::CouldNotParseCertificationRequest => Error::InvalidCsr {
                        reason: "it does not parse as a PKCS#10 request".into(),
                    },
                    other => Error::InvalidCsr { reason: other.to_string() },
                })?;
        if KeyAlgorithm::of(csr.public_key.algorithm()).is_none() {
            return Err(Error::InvalidCsr {
                reason: "its key is neither ECDSA P-256 nor Ed25519".into(),
            });
        }
        check_csr_entitlement(&csr.params, entitled)?;
        let params = self.leaf_params(entitled, policy, now)?;
        let cert = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(|source| Error::Signing { action: "sign a leaf certificate", source })?;
        self.issued(entitled, cert.der().clone(), policy, now)
    }

    /// Issues a leaf with a key generated here, for principals that cannot run a sidecar
    /// (`delivery: secret`). The key is returned to be written into the principal's Secret.
    pub fn issue_with_generated_key(
        &self,
        identity: &Identity,
        alg: KeyAlgorithm,
        policy: &LeafPolicy,
        now: SystemTime,
    ) -> Result<(IssuedCertificate, PrivateKey)> {
        let key = PrivateKey::generate(alg)?;
        let params = self.leaf_params(identity, policy, now)?;
        let cert = params
            .signed_by(key.key_pair(), &self.issuer)
            .map_err(|source| Error::Signing { action: "sign a leaf certificate", source })?;
        Ok((self.issued(identity, cert.der().clone(), policy, now)?, key))
    }

    /// Signs `list` as an RFC 5280 CRL valid from `this_update` to `next_update`.
    pub fn sign_crl(
        &self,
        list: &RevocationList,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Crl> {
        let der = list.sign(&self.issuer, this_update, next_update)?;
        Crl::parse(&der)
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        policy: &LeafPolicy,
        now: SystemTime,
    ) -> Result<CertificateParams> {
        if identity.trust_domain() != self.trust_domain {
            return Err(Error::WrongTrustDomain {
                expected: self.trust_domain.clone(),
                found: identity.trust_domain().to_owned(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = leaf_subject(identity);
        params.subject_alt_names = vec![uri_san(identity)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        // NB: a leaf never outlives its CA; clamp so chain validation cannot fail early.
        params.not_after = (now + policy.duration).min(self.not_after).into();
        params.serial_number = Some(SerialNumber::from_slice(self.serials.next()?.as_bytes()));
        Ok(params)
    }

    fn issued(
        &self,
        identity: &Identity,
        leaf: CertificateDer<'static>,
        policy: &LeafPolicy,
        now: SystemTime,
    ) -> Result<IssuedCertificate> {
        let info = CertInfo::parse(&leaf)?;
        Ok(IssuedCertificate {
            identity: identity.clone(),
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            // NB: from the issuance time, not the backdated notBefore: the skew allowance would
            // otherwise pull renewal earlier, into the past for short lifetimes.
            renewal_time: renewal_time(
                now.min(info.not_after),
                info.not_after,
                policy.renew_before,
            ),
            fingerprint: info.fingerprint,
            chain: vec![leaf, self.cert.clone()],
        })
    }
}

fn leaf_subject(identity: &Identity) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Genesis Mesh");
    // CN is informational (the URI SAN is the identity) and capped at 64 characters by X.520.
    let cn: String = identity.node().chars().take(64).collect();
    dn.push(DnType::CommonName, cn);
    dn
}

fn uri_san(identity: &Identity) -> Result<SanType> {
    let uri = identity.uri();
    let ia5 = uri
        .clone()
        .try_into()
        .map_err(|_| Error::InvalidIdentity { uri, reason: "not an IA5 string".into() })?;
    Ok(SanType::URI(ia5))
}

fn check_csr_entitlement(asked: &CertificateParams, entitled: &Identity) -> Result<()> {
    let refuse = |asked: String| Error::CsrNotEntitled { asked, entitled: entitled.uri() };
    if !matches!(asked.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(refuse("a CA certificate".into()));
    }
    for san in &asked.subject_alt_names {
        match san {
            SanType::URI(uri) if uri.as_str() == entitled.uri() => {}
            SanType::URI(uri) => return Err(refuse(format!("identity {}", uri.as_str()))),
            other => return Err(refuse(format!("subjectAltName {other:?}"))),
        }
    }
    if let Some(ku) = asked
        .key_usages
        .iter()
        .find(|k| matches!(k, KeyUsagePurpose::KeyCertSign | KeyUsagePurpose::CrlSign))
    {
        return Err(refuse(format!("key usage {ku:?}")));
    }
    if let Some(eku) = asked.extended_key_usages.iter().find(|e| {
        !matches!(e, ExtendedKeyUsagePurpose::ServerAuth | ExtendedKeyUsagePurpose::ClientAuth)
    }) {
        return Err(refuse(format!("extended key usage {eku:?}")));
    }
    Ok(())
}

fn x509_public_key(cert: &[u8]) -> Result<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert)
        .map_err(|e| Error::InvalidCertificate { reason: e.to_string() })?;
    Ok(c.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests;
