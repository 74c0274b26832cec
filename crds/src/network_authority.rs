//! `NetworkAuthority` (`na`): the certificate authority of one trust domain.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{KeyAlgorithm, ObjectRef, DURATION_PATTERN};

/// The certificate authority of one trust domain: it issues every member's join certificate,
/// signs the revocation list (CRL) and publishes the trust bundle.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "genesis-mesh.io",
    version = "v1alpha1",
    kind = "NetworkAuthority",
    shortname = "na",
    category = "genesis",
    status = "NetworkAuthorityStatus",
    cel,
    doc = "The certificate authority of one Genesis Mesh trust domain.",
    printcolumn(name = "Trust Domain", type_ = "string", json_path = ".spec.trustDomain"),
    printcolumn(name = "CRL", type_ = "integer", json_path = ".status.crlNumber"),
    printcolumn(name = "Revoked", type_ = "integer", json_path = ".status.revokedCount"),
    printcolumn(name = "CA Expires", type_ = "string", json_path = ".status.caNotAfter"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("duration(self.caValidity) > duration(self.certificateDefaults.duration)").message("caValidity must be longer than certificateDefaults.duration: the CA must outlive the certificates it issues"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkAuthoritySpec {
    /// SPIFFE trust domain written into every member identity
    /// (spiffe://<trustDomain>/mesh/<network>/<role>/<node>). Immutable.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9._-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("trustDomain is immutable: every issued identity names it"))]
    pub trust_domain: String,

    /// Key algorithm of the CA and of keys generated for `delivery: secret` certificates.
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,

    /// Validity of a CA the operator generates (Go duration, e.g. 87600h).
    #[serde(default = "default_ca_validity")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub ca_validity: String,

    /// A Secret (tls.crt, tls.key) holding a CA to use instead of generating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<ObjectRef>,

    /// Defaults for certificates that do not set their own duration and renewBefore.
    #[serde(default)]
    pub certificate_defaults: CertificateDefaults,

    /// How long each signed CRL is valid (its nextUpdate). Members whose CRL has expired refuse
    /// new links, so the operator re-signs at half this interval. At least 5m.
    #[serde(default = "default_crl_validity")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5m')").message("crlValidity must be at least 5m"))]
    pub crl_validity: String,
}

/// Certificate lifetime defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration"))]
#[serde(rename_all = "camelCase")]
pub struct CertificateDefaults {
    /// Lifetime of a member certificate (Go duration). At least 5m.
    #[serde(default = "default_duration")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5m')").message("duration must be at least 5m"))]
    pub duration: String,

    /// Renew this long before expiry; unset means half the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub renew_before: Option<String>,
}

impl Default for CertificateDefaults {
    fn default() -> Self {
        CertificateDefaults { duration: default_duration(), renew_before: None }
    }
}

fn default_ca_validity() -> String {
    "87600h".into()
}

fn default_crl_validity() -> String {
    "12h".into()
}

fn default_duration() -> String {
    "24h".into()
}

/// Observed state of the authority.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAuthorityStatus {
    /// metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, CRLPublished, MeshConverged, Rotating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// SHA-256 fingerprint of the current CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// When the current CA expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    /// Number of the newest signed CRL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<i64>,
    /// Certificates on the current CRL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_count: Option<i64>,
    /// ConfigMap (in the operator's namespace) holding the trust bundle `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<String>,
    /// Fingerprints of every root in the bundle (two while a rotation is in progress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundle_fingerprints: Vec<String>,
}
