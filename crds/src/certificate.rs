//! `Certificate` (`mcert`): one principal's join certificate.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{MemberRole, NetworkRef, DNS_SUBDOMAIN_PATTERN, DURATION_PATTERN};

/// One principal's join certificate. The operator creates one per member pod (owned by the pod)
/// and revokes it when the pod goes away; admins create `delivery: secret` ones for tools.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "genesis-mesh.io",
    version = "v1alpha1",
    kind = "Certificate",
    namespaced,
    shortname = "mcert",
    category = "genesis",
    status = "CertificateStatus",
    cel,
    doc = "A Genesis Mesh join certificate for one principal of one network.",
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.networkRef.name"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Revoked", type_ = "boolean", json_path = ".spec.revoked"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.duration) || !has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration"))]
#[x_kube(validation = Rule::new("self.delivery != 'secret' || has(self.secretName)").message("delivery: secret needs secretName"))]
#[x_kube(validation = Rule::new("self.delivery == 'secret' || !has(self.secretName)").message("secretName is only used with delivery: secret (with csr the key never leaves the pod)"))]
#[x_kube(validation = Rule::new("!has(self.revocationReason) || self.revoked").message("revocationReason needs revoked: true"))]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The MeshNetwork this principal joins. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("networkRef is immutable"))]
    pub network_ref: NetworkRef,

    /// Node name written into the identity (the pod name for members). Immutable.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable"))]
    pub node_name: String,

    /// Role of the principal: anchor, client, operator or admin.
    #[serde(default)]
    pub role: MemberRole,

    /// Certificate lifetime (Go duration, at least 5m); defaults to the authority's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5m')").message("duration must be at least 5m"))]
    pub duration: Option<String>,

    /// Renew this long before expiry; defaults to half the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub renew_before: Option<String>,

    /// How the key and certificate reach the principal: `csr` (the sidecar generates its key
    /// and sends a CSR; the key never leaves the pod) or `secret` (the operator writes key and
    /// chain into secretName, for principals that cannot run a sidecar).
    #[serde(default)]
    pub delivery: Delivery,

    /// Secret receiving tls.crt, tls.key and ca.crt; only with `delivery: secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// Revoke this certificate: its serial goes on the CRL and every member cuts it off.
    #[serde(default)]
    pub revoked: bool,

    /// Why it was revoked (RFC 5280 reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<RevocationReason>,
}

/// Key delivery mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The sidecar keeps its key and sends a CSR (default).
    #[default]
    Csr,
    /// The operator writes key and chain into a Secret.
    Secret,
}

/// RFC 5280 revocation reasons that apply to mesh principals.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

/// Observed state of the certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Issuing, Revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Start of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// End of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the certificate will be renewed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// Serial number, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-256 fingerprint of the certificate, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// SHA-256 fingerprint of the CA certificate that signed it, lowercase hex (a CA rotation
    /// finishes when every member's is the new CA's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_fingerprint: Option<String>,
    /// Issuances so far (1 for the first certificate, +1 per renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the certificate was revoked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Serials issued to this certificate that may still be valid (newest last, at most 8);
    /// a revocation covers all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub issued_serials: Vec<String>,
    /// Consecutive failed issuances since the last success (retries back off exponentially).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i32>,
    /// When the last issuance failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<String>,
}
