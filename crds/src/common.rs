//! Types shared by the three resources: references, roles, durations.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Go-style durations as Kubernetes writes them (`90s`, `24h`, `1h30m`). CEL rules compare them
/// with `duration(...)`, which parses this same form.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A DNS-1123 label (Kubernetes object names used in identities).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS-1123 subdomain (pod names).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A reference to a cluster-scoped MeshNetwork.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkRef {
    /// Name of the MeshNetwork.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
}

/// A reference to a namespaced object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// Object name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace; defaults to the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// What a principal is in its network; RBAC grants control verbs per role.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// A well-known member that others bootstrap from.
    Anchor,
    /// An ordinary member (an application pod's sidecar).
    #[default]
    Client,
    /// The operator, which pushes CRLs and control messages.
    Operator,
    /// A human administrator's principal (genesisctl).
    Admin,
}

/// Key algorithm of an authority and its members.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (default; understood everywhere).
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}
