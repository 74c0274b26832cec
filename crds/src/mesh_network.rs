//! `MeshNetwork` (`mn`): one overlay network of sidecars.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{MemberRole, DNS_SUBDOMAIN_PATTERN, DURATION_PATTERN};

/// One overlay network: which pods are members, how they find and route to each other, and
/// which control messages each role may send.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "genesis-mesh.io",
    version = "v1alpha1",
    kind = "MeshNetwork",
    shortname = "mn",
    category = "genesis",
    status = "MeshNetworkStatus",
    cel,
    doc = "One Genesis Mesh overlay network of injected sidecars.",
    printcolumn(name = "Authority", type_ = "string", json_path = ".spec.authorityRef.name"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members"),
    printcolumn(name = "Ready Members", type_ = "integer", json_path = ".status.readyMembers"),
    printcolumn(name = "CRL Seen", type_ = "integer", json_path = ".status.crlNumberSeen"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshNetworkSpec {
    /// The NetworkAuthority that issues this network's certificates.
    pub authority_ref: AuthorityRef,

    /// Pods selected as members (in addition to pods and namespaces labelled
    /// `genesis-mesh.io/network: <name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_selector: Option<LabelSelector>,

    /// How many members act as anchors (bootstrap points), and which ones to prefer.
    #[serde(default)]
    pub anchors: Anchors,

    /// Distance-vector routing timers and limits.
    #[serde(default)]
    pub routing: Routing,

    /// Peer discovery: how many neighbours to keep and how often to exchange peers.
    #[serde(default)]
    pub discovery: Discovery,

    /// Peer reputation: when a misbehaving peer is banned, and for how long.
    #[serde(default)]
    pub reputation: Reputation,

    /// Which roles may send which control verbs to which scopes. What no rule allows is denied.
    #[serde(default)]
    pub rbac: Rbac,

    /// Destination ports apps may tunnel to through the CONNECT proxy. Empty allows none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_ports: Vec<Port>,

    /// The injected sidecar container.
    #[serde(default)]
    pub sidecar: Sidecar,
}

/// A TCP port number.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub i32);

/// Reference to a cluster-scoped NetworkAuthority.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuthorityRef {
    /// Name of the NetworkAuthority. Immutable: members' identities chain to it.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("authorityRef.name is immutable; create a new MeshNetwork to change authority"))]
    pub name: String,
}

/// Anchor selection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.preferred) <= self.count").message("anchors.preferred lists more pods than anchors.count"))]
#[serde(rename_all = "camelCase")]
pub struct Anchors {
    /// Number of anchors (1 to 16).
    #[serde(default = "default_anchor_count")]
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,
    /// Pod names to make anchors first, when they are members.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub preferred: Vec<PodName>,
}

/// A pod name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct PodName(
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))] pub String,
);

impl Default for Anchors {
    fn default() -> Self {
        Anchors { count: default_anchor_count(), preferred: Vec::new() }
    }
}

fn default_anchor_count() -> i32 {
    3
}

/// Routing parameters (distance-vector with sequence numbers, Babel/DSDV family).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.holdTime) > duration(self.helloInterval)").message("routing.holdTime must be longer than routing.helloInterval (three intervals is typical)"))]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Interval between hello/keepalive frames on each link.
    #[serde(default = "default_hello")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub hello_interval: String,
    /// A neighbour silent for this long is considered gone and its routes are withdrawn.
    #[serde(default = "default_hold")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub hold_time: String,
    /// Hop limit (TTL) of data frames and maximum route metric in hops.
    #[serde(default = "default_max_hops")]
    #[schemars(range(min = 1, max = 64))]
    pub max_hops: i32,
    /// Send an update as soon as a route changes, not only periodically.
    #[serde(default = "default_true")]
    pub triggered_updates: bool,
    /// Interval of the periodic route update: what changed since a link last carried it, and
    /// every sixth the whole table.
    #[serde(default = "default_periodic")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub periodic_update_interval: String,
    /// Routing areas. 1 (the default) is flat: every member holds a route to every other,
    /// right for a few hundred members. Above that, about one area per 100 members: each member
    /// then holds routes to its own area's members and one per other area (docs/SCALE.md).
    /// Every member of the network must run with the same value: change it with a rollout of
    /// all of them, never on a running mesh's members one by one.
    #[serde(default = "default_areas")]
    #[schemars(range(min = 1, max = 4096))]
    pub areas: i32,
    /// What a link between members of different zones adds to its cost (a hop costs 100 to
    /// 1,000 by its round-trip time; the default 500 is five LAN hops). A member's zone is what
    /// its sidecar is given (`GENESIS_ZONE`); the operator does not pass the node's
    /// `topology.kubernetes.io/zone` in yet. Traffic between members of one zone stays in the
    /// zone while a path there is at most this much dearer; 0 turns it off.
    #[serde(default = "default_zone_penalty")]
    #[schemars(range(min = 0, max = 2000))]
    pub zone_penalty: i32,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            hello_interval: default_hello(),
            hold_time: default_hold(),
            max_hops: default_max_hops(),
            triggered_updates: true,
            periodic_update_interval: default_periodic(),
            areas: default_areas(),
            zone_penalty: default_zone_penalty(),
        }
    }
}

fn default_hello() -> String {
    "1s".into()
}
fn default_hold() -> String {
    "3s".into()
}
fn default_max_hops() -> i32 {
    16
}
fn default_areas() -> i32 {
    1
}
fn default_zone_penalty() -> i32 {
    500
}
fn default_true() -> bool {
    true
}
fn default_periodic() -> String {
    "10s".into()
}

/// Discovery parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minPeers <= self.maxPeers").message("discovery.minPeers must not exceed discovery.maxPeers"))]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// Keep at least this many neighbours (below it the member reports degraded).
    #[serde(default = "default_min_peers")]
    #[schemars(range(min = 1, max = 64))]
    pub min_peers: i32,
    /// Never keep more than this many neighbours (bounds per-sidecar state).
    #[serde(default = "default_max_peers")]
    #[schemars(range(min = 1, max = 256))]
    pub max_peers: i32,
    /// Interval of peer exchange with neighbours.
    #[serde(default = "default_exchange")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub exchange_interval: String,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            min_peers: default_min_peers(),
            max_peers: default_max_peers(),
            exchange_interval: default_exchange(),
        }
    }
}

fn default_min_peers() -> i32 {
    3
}
fn default_max_peers() -> i32 {
    8
}
fn default_exchange() -> String {
    "10s".into()
}

/// Reputation parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reputation {
    /// A peer whose score (0-100) falls below this is banned.
    #[serde(default = "default_ban_threshold")]
    #[schemars(range(min = 0, max = 100))]
    pub ban_threshold: i32,
    /// First ban length; repeated bans back off exponentially.
    #[serde(default = "default_ban_duration")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN))]
    pub ban_duration: String,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation { ban_threshold: default_ban_threshold(), ban_duration: default_ban_duration() }
    }
}

fn default_ban_threshold() -> i32 {
    20
}
fn default_ban_duration() -> String {
    "5m".into()
}

/// Control-message verbs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    PolicyUpdate,
    Revoke,
    Drain,
    Shutdown,
    RouteReset,
    LogLevel,
}

/// Scopes a rule may grant.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeKind {
    /// Every member of the network.
    Network,
    /// Any one member.
    Node,
    /// Only the sender's own node.
    #[serde(rename = "self")]
    OwnNode,
    /// Every member of a role.
    Role,
}

/// RBAC policy for control messages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rbac {
    /// Allow rules, evaluated in order; the first match decides and is named in the audit log.
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s.name == r.name))").message("rbac rule names must be unique"))]
    pub rules: Vec<RbacRule>,
}

/// One allow rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RbacRule {
    /// Rule name, reported in every decision it makes.
    #[schemars(length(min = 1, max = 63), regex(pattern = crate::common::DNS_LABEL_PATTERN))]
    pub name: String,
    /// Roles the rule applies to.
    #[schemars(length(min = 1))]
    pub roles: Vec<MemberRole>,
    /// Verbs the rule allows.
    #[schemars(length(min = 1))]
    pub verbs: Vec<Verb>,
    /// Scopes the rule allows.
    #[schemars(length(min = 1))]
    pub scopes: Vec<ScopeKind>,
}

impl Default for Rbac {
    /// The trust core's default policy (docs/TRUST.md): one definition for both.
    fn default() -> Self {
        Rbac::from(&genesis_trust::RbacPolicy::default())
    }
}

/// The injected sidecar container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// Sidecar image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Container resources; limits bound per-sidecar memory (see docs/BENCHMARKS.md).
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
}

impl Default for Sidecar {
    fn default() -> Self {
        Sidecar { image: default_image(), resources: default_resources() }
    }
}

fn default_image() -> String {
    "genesis-mesh/sidecar:0.1.0".into()
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("10m")), ("memory".into(), q("16Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("64Mi"))])),
        ..Default::default()
    }
}

/// Observed state of the network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshNetworkStatus {
    /// metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded, CRLConverged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Member pods with a Certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    /// Members whose sidecar reports ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_members: Option<i32>,
    /// Anchor endpoints (host:port) sidecars bootstrap from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<String>,
    /// Lowest CRL number held by any ready member (the revocation convergence point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_number_seen: Option<i64>,
    /// Revision of the signed sidecar configuration (the network's genesis document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<i64>,
}
