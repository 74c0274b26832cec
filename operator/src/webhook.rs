//! Sidecar injection: a mutating admission webhook for pods labelled
//! `genesis-mesh.io/network: <name>` or in a namespace with that label. It adds the sidecar
//! container, the projected ServiceAccount token it joins with, and the network's genesis
//! ConfigMap (signed configuration and trust bundle); it refuses, with a reason the user sees
//! in `kubectl`, a pod it cannot inject. [`injection`] decides (pure); [`server`] serves it
//! over HTTPS with its own certificate and keeps the webhook configuration's caBundle.

pub mod server;

use std::collections::BTreeMap;

use genesis_crds::MeshNetwork;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::decide::network::{self as decide_network, NETWORK_LABEL, PEER_PORT};

/// The injected container's name.
pub const SIDECAR_CONTAINER: &str = "genesis-sidecar";
pub use crate::decide::network::INJECT_ANNOTATION;
/// Set on injected pods: the network they were injected for.
pub const INJECTED_ANNOTATION: &str = "genesis-mesh.io/injected";
/// The pod annotation naming the services its sidecar offers the mesh: `name=port`, comma
/// separated (the sidecar's `GENESIS_SERVICES`; docs/SIDECAR.md, "Service names").
pub const SERVICES_ANNOTATION: &str = "genesis-mesh.io/services";
/// The pod annotation naming its upstreams: local ports that tunnel to a fixed member or
/// service, `LISTEN=TARGET:PORT`, comma separated (the sidecar's `GENESIS_UPSTREAMS`;
/// docs/SIDECAR.md, "Upstreams").
pub const UPSTREAMS_ANNOTATION: &str = "genesis-mesh.io/upstreams";
/// The audience of the projected token sidecars present to the identity service.
pub const TOKEN_AUDIENCE: &str = "genesis-mesh.io";
/// The sidecar's admin port (health, metrics, CRL push).
pub const ADMIN_PORT: u16 = 7002;
/// Ports the sidecar takes in the pod's network namespace.
const SIDECAR_PORTS: [u16; 3] = [PEER_PORT, 7001, ADMIN_PORT];
const CONFIG_DIR: &str = "/etc/genesis-mesh";
const TOKEN_DIR: &str = "/var/run/secrets/genesis-mesh.io";
const STATE_DIR: &str = "/var/lib/genesis-mesh";

/// What the webhook knows besides the pod.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// host:port of the identity service.
    pub identity_service: String,
    /// Lifetime of the projected token (the Kubernetes minimum is 600 s).
    pub token_seconds: i64,
    /// Inject the sidecar as a native sidecar (an init container with `restartPolicy:
    /// Always` and a startup probe on `/readyz`, Kubernetes 1.29 and later), so the app's
    /// containers start only once the sidecar is ready; else as a plain container (older
    /// clusters), where the app may start first.
    pub native_sidecar: bool,
    /// The injected sidecars' log format (the operator's own).
    pub log_format: genesis_log::LogFormat,
}

/// The webhook's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Admit unchanged, for this reason (not a member, opted out, already injected).
    Skip(String),
    /// Admit with this JSON Patch (RFC 6902).
    Patch(Value),
    /// Refuse the pod; the message tells the user why and what to change.
    Refuse(String),
}

/// Checks a services annotation as the sidecar will (`name=port`, a DNS label and a port the
/// network allows), so a mistake is refused at admission with the reason, not in a crash loop.
fn check_services(value: &str, allowed: &[genesis_crds::mesh_network::Port]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, port) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not name=port (e.g. web=8080)"))?;
        genesis_trust::names::valid_service_name(name)?;
        let port: i32 = port.parse().map_err(|_| format!("{entry:?}: {port:?} is not a port"))?;
        if !allowed.iter().any(|p| p.0 == port) {
            let allowed: Vec<i32> = allowed.iter().map(|p| p.0).collect();
            return Err(format!(
                "{entry:?}: port {port} is not in the network's allowedPorts {allowed:?}"
            ));
        }
        if !names.insert(name) {
            return Err(format!("service {name:?} is named twice"));
        }
    }
    Ok(())
}

/// Checks an upstreams annotation as the sidecar will (`LISTEN=TARGET:PORT`, comma
/// separated, targets in `network`, ports allowed), and that no listen port is one the
/// sidecar or a container of the pod already takes.
fn check_upstreams(
    value: &str,
    network: &str,
    allowed: &[genesis_crds::mesh_network::Port],
    taken: &[i32],
) -> Result<(), String> {
    let entries: Vec<&str> = value.split(',').collect();
    let allowed: Vec<u16> = allowed.iter().filter_map(|p| u16::try_from(p.0).ok()).collect();
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    for u in genesis_trust::names::Upstream::parse_all(&entries, loopback, network, &allowed)? {
        let port = u.listen.port();
        if SIDECAR_PORTS.contains(&port) || taken.contains(&i32::from(port)) {
            return Err(format!(
                "upstream {}: port {port} is taken in the pod (the sidecar takes {PEER_PORT}, \
                 7001 and {ADMIN_PORT}; the containers {taken:?}); choose another local port",
                u.describe(network)
            ));
        }
    }
    Ok(())
}

/// JSON Pointer escaping of one path segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Decides the injection of `pod` (in a namespace labelled `namespace_labels`), given the
/// cluster's MeshNetworks.
pub fn injection(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    networks: &[MeshNetwork],
    config: &InjectConfig,
) -> Injection {
    let labels = pod.labels();
    let network_name = match labels.get(NETWORK_LABEL).or(namespace_labels.get(NETWORK_LABEL)) {
        Some(n) => n.clone(),
        None => {
            return Injection::Skip("not a mesh member (no genesis-mesh.io/network label)".into())
        }
    };
    if crate::decide::network::opted_out(pod.annotations()) {
        return Injection::Skip(format!("{INJECT_ANNOTATION}: \"false\""));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Injection::Refuse("the pod has no spec".into());
    };
    let injected = |cs: &[k8s_openapi::api::core::v1::Container]| {
        cs.iter().any(|c| c.name == SIDECAR_CONTAINER)
    };
    if injected(&spec.containers) || spec.init_containers.as_deref().is_some_and(injected) {
        return Injection::Skip("already injected".into());
    }
    let Some(network) = networks.iter().find(|n| n.name_any() == network_name) else {
        return Injection::Refuse(format!(
            "the pod asks for Genesis Mesh network {network_name:?}, but no MeshNetwork of that \
             name exists; create it first or fix the genesis-mesh.io/network label"
        ));
    };
    if spec.host_network == Some(true) {
        return Injection::Refuse(
            "Genesis Mesh cannot inject a pod with hostNetwork: true (the sidecar's ports would \
             be the node's); set genesis-mesh.io/inject: \"false\" to run it outside the mesh"
                .into(),
        );
    }
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            if SIDECAR_PORTS.iter().any(|s| i32::from(*s) == p.container_port) {
                return Injection::Refuse(format!(
                    "container {} uses port {}, which the Genesis Mesh sidecar needs (it takes \
                     {PEER_PORT}, 7001 and {ADMIN_PORT})",
                    c.name, p.container_port
                ));
            }
        }
    }
    if let Some(v) =
        spec.volumes.iter().flatten().find(|v| {
            ["genesis-config", "genesis-token", "genesis-state"].contains(&v.name.as_str())
        })
    {
        return Injection::Refuse(format!(
            "the pod already has a volume named {}, which the Genesis Mesh sidecar needs",
            v.name
        ));
    }

    let services = match pod.annotations().get(SERVICES_ANNOTATION) {
        Some(value) => match check_services(value, &network.spec.allowed_ports) {
            Ok(()) => Some(value.clone()),
            Err(e) => return Injection::Refuse(format!("annotation {SERVICES_ANNOTATION}: {e}")),
        },
        None => None,
    };
    let taken: Vec<i32> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .collect();
    let upstreams = match pod.annotations().get(UPSTREAMS_ANNOTATION) {
        Some(value) => {
            match check_upstreams(value, &network_name, &network.spec.allowed_ports, &taken) {
                Ok(()) => Some(value.clone()),
                Err(e) => {
                    return Injection::Refuse(format!("annotation {UPSTREAMS_ANNOTATION}: {e}"))
                }
            }
        }
        None => None,
    };
    let role = decide_network::role(labels);
    let sidecar = &network.spec.sidecar;
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let container = json!({
        "name": SIDECAR_CONTAINER,
        "image": sidecar.image,
        "args": ["--genesis", format!("{CONFIG_DIR}/genesis.json")],
        "env": [
            field("GENESIS_POD_NAME", "metadata.name"),
            field("GENESIS_POD_NAMESPACE", "metadata.namespace"),
            field("GENESIS_POD_IP", "status.podIP"),
            env("GENESIS_NODE", "$(GENESIS_POD_NAME).$(GENESIS_POD_NAMESPACE)"),
            env("GENESIS_ROLE", if role == genesis_crds::MemberRole::Anchor { "anchor" } else { "client" }),
            env("GENESIS_IDENTITY_SERVICE", &config.identity_service),
            env("GENESIS_TRUST_BUNDLE", &format!("{CONFIG_DIR}/ca.crt")),
            env("GENESIS_JOIN_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
            env("GENESIS_LISTEN", &format!("0.0.0.0:{PEER_PORT}")),
            env("GENESIS_ADVERTISE", &format!("$(GENESIS_POD_IP):{PEER_PORT}")),
            env("GENESIS_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
            env("GENESIS_AUDIT_LOG", &format!("{STATE_DIR}/audit.log")),
            env("GENESIS_LOG_FORMAT", config.log_format.as_str()),
        ],
        "ports": [
            {"name": "genesis-peer", "containerPort": PEER_PORT},
            {"name": "genesis-admin", "containerPort": ADMIN_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ADMIN_PORT}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": sidecar.resources,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "genesis-config", "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": "genesis-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "genesis-state", "mountPath": STATE_DIR},
        ],
    });
    let mut container = container;
    if let Some(env_list) = container["env"].as_array_mut() {
        if let Some(services) = services {
            env_list.push(env("GENESIS_SERVICES", &services));
        }
        if let Some(upstreams) = upstreams {
            env_list.push(env("GENESIS_UPSTREAMS", &upstreams));
        }
    }
    let volumes = [
        json!({"name": "genesis-config", "configMap": {
            "name": crate::controller::mesh_network::genesis_configmap_name(&network_name)}}),
        json!({"name": "genesis-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": config.token_seconds,
            "path": "token"}}]}}),
        json!({"name": "genesis-state", "emptyDir": {}}),
    ];
    let mut ops = if config.native_sidecar {
        // Started before every other init container and the app, which wait until the startup
        // probe passes: the sidecar holds a certificate, a fresh CRL and a peer (LESSONS: the
        // app started before the proxy was ready). Up to 2 minutes for a first join.
        container["restartPolicy"] = json!("Always");
        container["startupProbe"] = json!({"httpGet": {"path": "/readyz", "port": ADMIN_PORT},
                                           "periodSeconds": 1, "failureThreshold": 120});
        match &spec.init_containers {
            None => {
                vec![json!({"op": "add", "path": "/spec/initContainers", "value": [container]})]
            }
            Some(_) => {
                vec![json!({"op": "add", "path": "/spec/initContainers/0", "value": container})]
            }
        }
    } else {
        vec![json!({"op": "add", "path": "/spec/containers/-", "value": container})]
    };
    if spec.volumes.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        ops.extend(
            volumes
                .into_iter()
                .map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})),
        );
    }
    // The pod label makes namespace-selected pods visible to the MeshNetwork controller.
    if pod.metadata.labels.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {NETWORK_LABEL: network_name}}));
    } else if !labels.contains_key(NETWORK_LABEL) {
        ops.push(json!({"op": "add", "path": format!("/metadata/labels/{}", escape(NETWORK_LABEL)), "value": network_name}));
    }
    // Prometheus scrape annotations for the sidecar's /metrics, unless the app already uses
    // them for its own metrics (then scrape the sidecar by its named port, genesis-admin,
    // with the chart's PodMonitor).
    let mut annotations = vec![(INJECTED_ANNOTATION, network_name.to_owned())];
    let existing = pod.metadata.annotations.as_ref();
    if !existing.is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/"))) {
        annotations.push(("prometheus.io/scrape", "true".to_owned()));
        annotations.push(("prometheus.io/port", ADMIN_PORT.to_string()));
        annotations.push(("prometheus.io/path", "/metrics".to_owned()));
    }
    if existing.is_none() {
        let all: serde_json::Map<String, Value> =
            annotations.into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": all}));
    } else {
        for (k, v) in annotations {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(k)), "value": v}));
        }
    }
    Injection::Patch(Value::Array(ops))
}

#[cfg(test)]
mod tests;
