//! The identity service's wire types (JSON over HTTPS), shared by the service and sidecars.
//!
//! `POST /v1/certificates` with a [`CertificateRequest`]: a first join is authenticated by a
//! one-time token; a renewal by the member's current certificate (mutual TLS), with a fresh
//! key. The answer is a [`CertificateResponse`]. `GET /v1/crl` returns a [`CrlResponse`].
//! Errors are `{"error": "..."}` with a 4xx status that says what to fix.

use serde::{Deserialize, Serialize};

/// Path of the issuance endpoint.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Path of the CRL endpoint.
pub const CRL_PATH: &str = "/v1/crl";
/// Largest request body the service reads.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// A CSR for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// The node asking (must match the token or the presented certificate).
    pub node: String,
    /// One-time join token; absent on renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The PKCS#10 CSR, base64 of DER.
    pub csr: String,
}

/// What the member needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateResponse {
    /// Leaf then CA, PEM.
    pub chain_pem: String,
    /// The trust bundle (one or two roots), PEM.
    pub bundle_pem: String,
    /// The current CRL, base64 of DER.
    pub crl: String,
    /// Unix seconds.
    pub not_after: u64,
    /// Unix seconds: renew at this time.
    pub renewal_time: u64,
}

/// The current CRL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CrlResponse {
    /// Base64 of DER.
    pub crl: String,
    pub number: u64,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}
