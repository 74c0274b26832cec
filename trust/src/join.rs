//! The identity service's wire types (JSON over HTTPS), shared by the service and sidecars.
//!
//! `POST /v1/certificates` with a [`CertificateRequest`]: a first join is authenticated by a
//! one-time token; a renewal by the member's current certificate (mutual TLS), with a fresh
//! key. The answer is a [`CertificateResponse`]. `GET /v1/crl` returns a [`CrlResponse`].
//! Errors are `{"error": "..."}` with a 4xx status that says what to fix.

use serde::{Deserialize, Serialize};

/// Path of the issuance endpoint.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// The node label a member's zone comes from in a cluster.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
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
    /// The member's zone, as its Kubernetes node's `topology.kubernetes.io/zone` label says;
    /// present only when the request asked for it ([`FEATURES_HEADER`]), so a sidecar that
    /// predates the field (it refuses unknown fields) never sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// A request header a sidecar sends to say which optional answer fields it understands
/// (comma separated; [`FEATURE_ZONE`]). An identity service that predates it ignores it.
pub const FEATURES_HEADER: &str = "genesis-features";
/// The feature asking for [`CertificateResponse::zone`].
pub const FEATURE_ZONE: &str = "zone";

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

/// The domain under which a member names the network it joins, in TLS SNI.
const SERVER_NAME_SUFFIX: &str = ".identity.genesis-mesh.invalid";

/// The TLS server name a member sends to the identity service: `<network>.identity.genesis-mesh.invalid`.
/// One identity service (the operator's in a cluster) serves every network, and answers each
/// with that network's authority; the name says which. Network names are DNS labels, so the
/// name is always valid.
pub fn identity_server_name(network: &str) -> String {
    format!("{network}{SERVER_NAME_SUFFIX}")
}

/// The network a server name asks for ([`identity_server_name`]), if it is one.
pub fn network_of_server_name(name: &str) -> Option<&str> {
    name.strip_suffix(SERVER_NAME_SUFFIX).filter(|n| !n.is_empty() && !n.contains('.'))
}

#[cfg(test)]
mod server_name_tests {
    use super::*;

    #[test]
    fn the_server_name_carries_the_network_and_nothing_else() {
        assert_eq!(identity_server_name("payments"), "payments.identity.genesis-mesh.invalid");
        assert_eq!(network_of_server_name(&identity_server_name("payments")), Some("payments"));
        assert_eq!(network_of_server_name("identity.genesis-mesh.invalid"), None);
        assert_eq!(network_of_server_name(".identity.genesis-mesh.invalid"), None);
        assert_eq!(network_of_server_name("a.b.identity.genesis-mesh.invalid"), None);
        assert_eq!(network_of_server_name("payments.example.com"), None);
    }
}
