//! Revocation: the authority's revocation list and RFC 5280 CRLs signed by the CA.
//!
//! CRL numbers only grow. The authority bumps the number on every change (revoke or un-revoke);
//! holders apply a CRL only if it is signed by their authority and newer than the one they hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::cert::{asn1_to_system, Serial};
use crate::error::{rfc3339, Error, Result};

/// Bound on a CRL we accept from the wire: 64 KiB per 1,000 entries would allow ~16k entries at
/// 1 MiB; a mesh that needs more should shorten certificate lifetimes instead.
pub const MAX_CRL_BYTES: usize = 1 << 20;

/// Why a certificate was revoked (the RFC 5280 reason codes that apply to mesh members).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    #[default]
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedEntry {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Unix seconds when the authority revoked it.
    pub revoked_at: u64,
    pub reason: RevocationReason,
}

/// The authority's revocation state: what the next CRL will say. Serializable so it can be
/// persisted (a ConfigMap in a cluster, a file in local mode) and survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationList {
    /// The number of the last CRL signed from this state; the next change increments it.
    pub number: u64,
    pub entries: BTreeMap<String, RevokedEntry>,
}

impl RevocationList {
    /// Adds `serial`; returns `true` (and bumps the number) if it was not already revoked.
    pub fn revoke(&mut self, serial: &Serial, reason: RevocationReason, at: SystemTime) -> bool {
        let key = serial.to_string();
        if self.entries.contains_key(&key) {
            return false;
        }
        let revoked_at = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.entries.insert(key.clone(), RevokedEntry { serial: key, revoked_at, reason });
        self.number += 1;
        true
    }

    /// Removes `serial` (an explicit un-revoke, for a revocation made in error); returns `true`
    /// (and bumps the number) if it was revoked.
    pub fn unrevoke(&mut self, serial: &Serial) -> bool {
        let removed = self.entries.remove(&serial.to_string()).is_some();
        if removed {
            self.number += 1;
        }
        removed
    }

    /// Bumps the number without changing the entries: a re-signed CRL (fresh nextUpdate) is a
    /// new CRL and must carry a new number (RFC 5280 5.2.3), or members would keep the old one.
    pub fn refresh(&mut self) {
        self.number += 1;
    }

    /// Whether `serial` is on the list.
    pub fn contains(&self, serial: &Serial) -> bool {
        self.entries.contains_key(&serial.to_string())
    }

    pub(crate) fn sign(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>> {
        let revoked_certs = self
            .entries
            .values()
            .map(|e| {
                Ok(RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(
                        Serial::from_hex(&e.serial)?.as_bytes(),
                    ),
                    revocation_time: (UNIX_EPOCH + Duration::from_secs(e.revoked_at)).into(),
                    reason_code: Some(e.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            crl_number: rcgen::SerialNumber::from_slice(&crl_number_bytes(self.number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(issuer)
            .map(|crl| crl.der().to_vec())
            .map_err(|source| Error::Signing { action: "sign the CRL", source })
    }
}

/// Minimal positive DER INTEGER content for a CRL number.
fn crl_number_bytes(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    let mut out = bytes[first..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}

/// A parsed, not yet trusted CRL. Check [`Crl::verify_signed_by`] before believing it.
#[derive(Debug, Clone)]
pub struct Crl {
    der: Vec<u8>,
    number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
    revoked: BTreeSet<Serial>,
}

impl Crl {
    /// Parses a DER CRL; it must carry a CRL Number and a nextUpdate.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let malformed = |reason: String| Error::CrlMalformed { reason };
        if der.len() > MAX_CRL_BYTES {
            return Err(malformed(format!(
                "{} bytes exceeds the {MAX_CRL_BYTES}-byte limit",
                der.len()
            )));
        }
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        // Everything outside the signed bytes must be the one DER encoding of what was
        // parsed: the outer SEQUENCE, a signatureAlgorithm equal to the tbsCertList's signature
        // field (RFC 5280 5.1.1.2) and the signature BIT STRING. The parser accepts some of
        // them under a wrong tag (the algorithm, then the outer SEQUENCE's 0x30 as 0xb0, both
        // found by the hostile-input test), which gave one CRL two verifying encodings.
        let tbs = crl.tbs_cert_list.as_ref();
        let canonical =
            inner_algorithm(tbs).map(|alg| canonical_crl(tbs, alg, &crl.signature_value.data));
        if canonical.as_deref() != Some(der) {
            return Err(malformed(
                "not the DER encoding of its parts (the outer SEQUENCE, a signatureAlgorithm \
                 equal to the tbsCertList's, the signature BIT STRING)"
                    .into(),
            ));
        }
        let number = crl
            .crl_number()
            .ok_or_else(|| malformed("no CRL Number extension".into()))?
            .to_u64_digits();
        let number = match number[..] {
            [] => 0,
            [n] => n,
            _ => return Err(malformed("CRL Number does not fit 64 bits".into())),
        };
        let next_update = crl
            .next_update()
            .map(asn1_to_system)
            .ok_or_else(|| malformed("no nextUpdate".into()))?;
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| Serial::from_bytes(r.raw_serial()))
            .collect::<Result<BTreeSet<_>>>()
            .map_err(|e| malformed(e.to_string()))?;
        Ok(Crl {
            der: der.to_vec(),
            number,
            this_update: asn1_to_system(crl.last_update()),
            next_update,
            revoked,
        })
    }

    /// Parses the first `X509 CRL` PEM block.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::InvalidPem { what: "CRL", reason: e.to_string() })?;
        Crl::parse(&der)
    }

    /// PEM form, as `openssl crl` reads it.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("X509 CRL", self.der.clone()))
    }

    /// Checks the CRL's signature with the CA certificate's key and that the CA issued it.
    pub fn verify_signed_by(&self, ca_der: &[u8]) -> Result<()> {
        let sig_err = |reason: String| Error::CrlSignature { reason };
        let (_, ca) = X509Certificate::from_der(ca_der)
            .map_err(|e| Error::InvalidCertificate { reason: e.to_string() })?;
        let (_, crl) = CertificateRevocationList::from_der(&self.der)
            .map_err(|e| Error::CrlMalformed { reason: e.to_string() })?;
        if crl.issuer().as_raw() != ca.subject().as_raw() {
            return Err(sig_err(format!("issued by {}, not by {}", crl.issuer(), ca.subject())));
        }
        crl.verify_signature(ca.public_key())
            .map_err(|e| sig_err(format!("signature does not verify: {e}")))
    }

    /// The DER bytes, as gossiped between members.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CRL Number: the monotonic sequence of this authority's CRLs.
    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    pub fn next_update(&self) -> SystemTime {
        self.next_update
    }

    /// Revoked serials.
    pub fn revoked(&self) -> &BTreeSet<Serial> {
        &self.revoked
    }

    /// Whether `serial` is revoked by this CRL.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.revoked.contains(serial)
    }

    /// Refuses a CRL whose nextUpdate has passed.
    pub fn check_fresh(&self, now: SystemTime) -> Result<()> {
        if now > self.next_update {
            return Err(Error::CrlExpired {
                number: self.number,
                next_update: rfc3339(self.next_update),
            });
        }
        Ok(())
    }
}

/// Length of the DER element at the start of `b` (header and content), if well formed.
fn element_len(b: &[u8]) -> Option<usize> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let len = b.get(2..2 + n)?.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
    Some(2 + n + len)
}

/// Length of the header of the DER element at the start of `b`.
fn header_len(b: &[u8]) -> Option<usize> {
    let first = *b.get(1)?;
    Some(if first < 0x80 { 2 } else { 2 + usize::from(first & 0x7f) })
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=0x7f => vec![n as u8],
        0x80..=0xff => vec![0x81, n as u8],
        0x100..=0xffff => vec![0x82, (n >> 8) as u8, n as u8],
        _ => vec![0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8],
    }
}

/// The DER encoding of a CRL: SEQUENCE { tbs, alg, BIT STRING (no unused bits) sig }.
fn canonical_crl(tbs: &[u8], alg: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut bits = vec![0x03];
    bits.extend(der_len(sig.len() + 1));
    bits.push(0);
    bits.extend_from_slice(sig);
    let body = tbs.len() + alg.len() + bits.len();
    let mut out = vec![0x30];
    out.extend(der_len(body));
    out.extend_from_slice(tbs);
    out.extend_from_slice(alg);
    out.extend(bits);
    out
}

/// The encoded signature field of the tbsCertList (after the optional version).
fn inner_algorithm(tbs: &[u8]) -> Option<&[u8]> {
    let mut rest = tbs.get(header_len(tbs)?..)?;
    if rest.first() == Some(&0x02) {
        rest = rest.get(element_len(rest)?..)?;
    }
    rest.get(..element_len(rest)?)
}

#[cfg(test)]
mod tests;
