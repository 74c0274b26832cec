//! Reading certificates: PEM/DER decoding, serials, fingerprints and the identity SAN.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::{Error, Result};
use crate::identity::Identity;

/// RFC 5280 caps serial numbers at 20 octets.
const MAX_SERIAL_LEN: usize = 20;

/// A certificate serial number: the content octets of the DER INTEGER, as CRLs list them.
///
/// Revocation is by serial (never by certificate fingerprint): the serial is inside the signed
/// TBS, so re-encoding a signature (ECDSA malleability) cannot produce an unrevoked twin.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// Wraps raw serial octets, refusing empty or over-long serials.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > MAX_SERIAL_LEN + 1 {
            return Err(Error::InvalidCertificate {
                reason: format!("serial number of {} octets", bytes.len()),
            });
        }
        Ok(Serial(bytes.to_vec()))
    }

    /// Parses the lowercase or uppercase hex form (colons allowed).
    pub fn from_hex(s: &str) -> Result<Self> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(clean).map_err(|e| Error::InvalidCertificate {
            reason: format!("serial {s:?} is not hex: {e}"),
        })?;
        Serial::from_bytes(&bytes)
    }

    /// The serial octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The serial of a DER certificate, read from the start of its TBS without parsing the
    /// rest (names, extensions, signature): a member checks every certificate it keeps against
    /// each new CRL, and a full parse per certificate was most of applying one at 10,000
    /// members. It reads only; it does not validate the certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Self> {
        use x509_parser::asn1_rs::{Any, Class, FromDer as _, Tag};
        let bad = |what: &str| Error::InvalidCertificate { reason: what.to_owned() };
        let tlv = |bytes| Any::from_der(bytes).map_err(|e| bad(&format!("{e}")));
        let (_, cert) = tlv(der)?;
        let (_, tbs) = tlv(cert.data)?;
        if cert.tag() != Tag::Sequence || tbs.tag() != Tag::Sequence {
            return Err(bad("not a DER certificate (expected a SEQUENCE holding the TBS)"));
        }
        let (mut rest, mut field) = tlv(tbs.data)?;
        if field.class() == Class::ContextSpecific && field.tag() == Tag(0) {
            (rest, field) = tlv(rest)?; // the explicit [0] version
        }
        let _ = rest;
        if field.class() != Class::Universal || field.tag() != Tag::Integer {
            return Err(bad("the TBS does not begin with a serial number INTEGER"));
        }
        Serial::from_bytes(field.data)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// SHA-256 over the DER, lowercase hex: the fingerprint shown in status fields and `openssl x509 -fingerprint -sha256`.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What the rest of Genesis Mesh needs to know about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub serial: Serial,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// The Genesis Mesh identity, when the certificate carries exactly one valid identity URI.
    pub identity: Option<Identity>,
    pub fingerprint: String,
    /// Raw DER of the issuer name (matches the issuing root's subject).
    pub issuer: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate, refusing trailing bytes.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::InvalidCertificate { reason: e.to_string() })?;
        if !rest.is_empty() {
            return Err(Error::InvalidCertificate {
                reason: format!("{} trailing bytes after the certificate", rest.len()),
            });
        }
        Ok(CertInfo {
            serial: Serial::from_bytes(cert.raw_serial())?,
            not_before: asn1_to_system(cert.validity().not_before),
            not_after: asn1_to_system(cert.validity().not_after),
            is_ca: cert.is_ca(),
            identity: identity_of(&cert).ok(),
            fingerprint: fingerprint(der),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }

    /// The identity, or why the certificate has none.
    pub fn require_identity(der: &[u8]) -> Result<Identity> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::InvalidCertificate { reason: e.to_string() })?;
        identity_of(&cert)
    }
}

/// The single `spiffe://` URI SAN of a certificate, strictly parsed.
pub(crate) fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::MissingIdentity { reason: format!("unreadable SAN extension: {e}") })?
        .ok_or_else(|| Error::MissingIdentity { reason: "no subjectAltName extension".into() })?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris[..] {
        [uri] => Identity::parse(uri),
        [] => Err(Error::MissingIdentity { reason: "no URI SAN".into() }),
        _ => Err(Error::MissingIdentity { reason: format!("{} URI SANs", uris.len()) }),
    }
}

pub(crate) fn asn1_to_system(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Decodes every `CERTIFICATE` block of a PEM text, in order; at least one is required.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidPem { what: "certificate", reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(Error::InvalidPem {
            what: "certificate",
            reason: "no CERTIFICATE block found".into(),
        });
    }
    for c in &certs {
        CertInfo::parse(c)?;
    }
    Ok(certs)
}

/// Encodes DER certificates as a PEM chain.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec()))).collect()
}
