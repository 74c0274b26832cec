//! The MeshNetwork controller's decisions: which pods are members, what each member's
//! Certificate says, and the network's genesis document (the sidecar configuration every
//! member verifies against its authority's signature).

use std::collections::BTreeMap;

use genesis_crds::common::MemberRole;
use genesis_crds::MeshNetworkSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

/// The label that makes a pod (or every pod of a namespace) a member of a network.
pub const NETWORK_LABEL: &str = "genesis-mesh.io/network";
/// `genesis-mesh.io/inject: "false"` opts a pod out in a labelled namespace: it is neither
/// injected nor a member.
pub const INJECT_ANNOTATION: &str = "genesis-mesh.io/inject";
/// The label that asks for a role (`anchor` or `client`, the default).
pub const ROLE_LABEL: &str = "genesis-mesh.io/role";
/// The port sidecars accept peer links on.
pub const PEER_PORT: u16 = 7000;

/// Whether a pod's annotations opt it out of the mesh.
pub fn opted_out(pod_annotations: &BTreeMap<String, String>) -> bool {
    pod_annotations.get(INJECT_ANNOTATION).is_some_and(|v| v == "false")
}

/// Whether `labels` satisfy a Kubernetes label selector (matchLabels and matchExpressions
/// with In, NotIn, Exists, DoesNotExist). An empty selector selects nothing here: a network
/// never swallows every pod of the cluster by accident.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let expressions = selector.match_expressions.as_ref().filter(|e| !e.is_empty());
    if match_labels.is_none() && expressions.is_none() {
        return false;
    }
    let labels_ok = match_labels.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = expressions.is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

/// Whether a pod belongs to network `network`: labelled for it, in a namespace labelled for
/// it, or selected by its memberSelector. A pod labelled for another network never is, nor is
/// one that opted out with `genesis-mesh.io/inject: "false"` (the webhook did not inject it,
/// so it would never join, and the network would wait for it for ever).
pub fn is_member(
    network: &str,
    spec: &MeshNetworkSpec,
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> bool {
    if opted_out(pod_annotations) {
        return false;
    }
    match pod_labels.get(NETWORK_LABEL) {
        Some(n) => n == network,
        None => {
            namespace_labels.get(NETWORK_LABEL).is_some_and(|n| n == network)
                || spec.member_selector.as_ref().is_some_and(|s| selects(s, pod_labels))
        }
    }
}

/// A member's node name: unique in the network across namespaces.
pub fn node_name(pod: &str, namespace: &str) -> String {
    format!("{pod}.{namespace}")
}

/// The role a pod asks for with its role label (client unless it says anchor).
pub fn role(pod_labels: &BTreeMap<String, String>) -> MemberRole {
    match pod_labels.get(ROLE_LABEL).map(String::as_str) {
        Some("anchor") => MemberRole::Anchor,
        _ => MemberRole::Client,
    }
}

/// The network's genesis document: the network-wide sidecar settings, as the sidecar's
/// settings file reads them (docs/SIDECAR.md). An invalid combination is an error that names
/// it (the CRD's rules catch these at admission; this catches what got past them).
pub fn genesis_document(
    network: &str,
    trust_domain: &str,
    spec: &MeshNetworkSpec,
    anchors: &[String],
) -> Result<String, String> {
    let dur = |what: &str, v: &str| {
        genesis_trust::duration::parse_duration(v).map_err(|e| format!("{what}: {e}"))
    };
    let hello = dur("routing.helloInterval", &spec.routing.hello_interval)?;
    let hold = dur("routing.holdTime", &spec.routing.hold_time)?;
    if hold <= hello {
        return Err(format!(
            "routing.holdTime ({}) must be longer than routing.helloInterval ({})",
            spec.routing.hold_time, spec.routing.hello_interval
        ));
    }
    dur("routing.periodicUpdateInterval", &spec.routing.periodic_update_interval)?;
    dur("discovery.exchangeInterval", &spec.discovery.exchange_interval)?;
    dur("reputation.banDuration", &spec.reputation.ban_duration)?;
    let d = &spec.discovery;
    if d.min_peers > d.max_peers {
        return Err(format!(
            "discovery.minPeers ({}) exceeds discovery.maxPeers ({})",
            d.min_peers, d.max_peers
        ));
    }
    let max_hops = u8::try_from(spec.routing.max_hops)
        .ok()
        .filter(|h| (1..=64).contains(h))
        .ok_or_else(|| format!("routing.maxHops {} is not 1..64", spec.routing.max_hops))?;
    // NB: the sidecar's MAX_AREAS and the CRD's range; the operator does not link the sidecar.
    let max_areas = 4096;
    let areas = u16::try_from(spec.routing.areas)
        .ok()
        .filter(|a| (1..=max_areas).contains(a))
        .ok_or_else(|| format!("routing.areas {} is not 1..{max_areas}", spec.routing.areas))?;
    // NB: the sidecar's MAX_ZONE_PENALTY and the CRD's range.
    let zone_penalty =
        u16::try_from(spec.routing.zone_penalty).ok().filter(|p| *p <= 2000).ok_or_else(|| {
            format!("routing.zonePenalty {} is not 0..2000", spec.routing.zone_penalty)
        })?;
    let rbac = genesis_trust::RbacPolicy::from(&spec.rbac);
    let document = json!({
        "network": network,
        "trustDomain": trust_domain,
        "anchors": anchors,
        "allowedPorts": spec.allowed_ports.iter().map(|p| p.0).collect::<Vec<_>>(),
        "helloInterval": spec.routing.hello_interval,
        "holdTime": spec.routing.hold_time,
        "maxHops": max_hops,
        "areas": areas,
        "zonePenalty": zone_penalty,
        "triggeredUpdates": spec.routing.triggered_updates,
        "periodicUpdateInterval": spec.routing.periodic_update_interval,
        "minPeers": d.min_peers,
        "maxPeers": d.max_peers,
        "exchangeInterval": d.exchange_interval,
        "banThreshold": spec.reputation.ban_threshold,
        "banDuration": spec.reputation.ban_duration,
        "rbac": rbac,
    });
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn spec(yaml: &str) -> MeshNetworkSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn membership_by_pod_label_namespace_label_or_selector_and_never_another_networks_pod() {
        let s = spec(
            "authorityRef: {name: ca}\nmemberSelector: {matchLabels: {app: shop}, \
             matchExpressions: [{key: tier, operator: NotIn, values: [batch]}]}",
        );
        let none = BTreeMap::new();
        assert!(is_member("pay", &s, &labels(&[(NETWORK_LABEL, "pay")]), &none, &none));
        assert!(is_member("pay", &s, &none, &none, &labels(&[(NETWORK_LABEL, "pay")])));
        assert!(is_member("pay", &s, &labels(&[("app", "shop")]), &none, &none));
        assert!(!is_member(
            "pay",
            &s,
            &labels(&[("app", "shop"), ("tier", "batch")]),
            &none,
            &none
        ));
        assert!(!is_member("pay", &s, &labels(&[("app", "blog")]), &none, &none));
        // The pod's own label wins over its namespace's and over the selector.
        let other = labels(&[(NETWORK_LABEL, "other"), ("app", "shop")]);
        assert!(!is_member("pay", &s, &other, &none, &labels(&[(NETWORK_LABEL, "pay")])));
        // Opted out: not a member, whatever labels it.
        let opt_out = labels(&[(INJECT_ANNOTATION, "false")]);
        let ns = labels(&[(NETWORK_LABEL, "pay")]);
        assert!(!is_member("pay", &s, &none, &opt_out, &ns));
        assert!(!is_member("pay", &s, &labels(&[(NETWORK_LABEL, "pay")]), &opt_out, &none));
        // No selector selects nothing.
        let bare = spec("authorityRef: {name: ca}\nmemberSelector: {}");
        assert!(!is_member("pay", &bare, &labels(&[("app", "shop")]), &none, &none));
    }

    #[test]
    fn selector_operators() {
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..Default::default()
        };
        let k1 = labels(&[("k", "1")]);
        let none = BTreeMap::new();
        assert!(selects(&req("In", &["1", "2"]), &k1));
        assert!(!selects(&req("In", &["2"]), &k1));
        assert!(!selects(&req("In", &["1"]), &none));
        assert!(selects(&req("NotIn", &["2"]), &k1) && selects(&req("NotIn", &["2"]), &none));
        assert!(selects(&req("Exists", &[]), &k1) && !selects(&req("Exists", &[]), &none));
        assert!(selects(&req("DoesNotExist", &[]), &none));
        assert!(!selects(&req("Bogus", &[]), &k1));
    }

    #[test]
    fn the_genesis_document_is_the_sidecars_settings_and_refuses_what_cannot_work() {
        let s = spec("authorityRef: {name: ca}\nallowedPorts: [80, 8080]");
        let doc = genesis_document("pay", "prod.example", &s, &["10.0.0.7:7000".into()]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["anchors"], json!(["10.0.0.7:7000"]));
        assert_eq!(v["allowedPorts"], json!([80, 8080]));
        assert_eq!(v["maxHops"], 16);
        assert_eq!(v["areas"], 1, "flat unless the network asks for areas");
        assert_eq!(v["rbac"]["rules"][0]["name"], "admins-manage-the-network");
        // Stable for equal inputs (a changed document bumps the policy revision).
        assert_eq!(
            doc,
            genesis_document("pay", "prod.example", &s, &["10.0.0.7:7000".into()]).unwrap()
        );

        let bad = spec("authorityRef: {name: ca}\ndiscovery: {minPeers: 9, maxPeers: 4}");
        let e = genesis_document("pay", "prod.example", &bad, &[]).unwrap_err();
        assert!(e.contains("minPeers (9) exceeds discovery.maxPeers (4)"), "{e}");
        let bad = spec("authorityRef: {name: ca}\nrouting: {helloInterval: 5s, holdTime: 2s}");
        let e = genesis_document("pay", "prod.example", &bad, &[]).unwrap_err();
        assert!(e.contains("must be longer"), "{e}");
        let bad = spec("authorityRef: {name: ca}\nrouting: {areas: 0}");
        let e = genesis_document("pay", "prod.example", &bad, &[]).unwrap_err();
        assert!(e.contains("routing.areas 0 is not 1..4096"), "{e}");
        assert_eq!(v["zonePenalty"], 500, "zones cost five LAN hops unless the network says");
        let bad = spec("authorityRef: {name: ca}\nrouting: {zonePenalty: 2001}");
        let e = genesis_document("pay", "prod.example", &bad, &[]).unwrap_err();
        assert!(e.contains("routing.zonePenalty 2001 is not 0..2000"), "{e}");
    }
}

#[cfg(test)]
mod sidecar_reads_it {
    use genesis_trust::{CertificateAuthority, KeyAlgorithm, SignedDocument};

    use super::*;

    /// The document the operator renders is one the real sidecar accepts (its settings file
    /// refuses unknown keys), once signed by the authority in its trust bundle.
    #[test]
    fn the_sidecar_accepts_the_signed_document() {
        let dir = tempfile::tempdir().unwrap();
        let spec: MeshNetworkSpec = serde_yaml::from_str(
            "authorityRef: {name: ca}\nallowedPorts: [8080]\nrouting: {areas: 5, zonePenalty: 900}",
        )
        .unwrap();
        let doc =
            genesis_document("pay", "prod.example", &spec, &["10.0.0.7:7000".into()]).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let ca = CertificateAuthority::generate(
            "prod.example",
            KeyAlgorithm::EcdsaP256,
            day,
            std::time::SystemTime::now(),
        )
        .unwrap();
        let signed = SignedDocument::sign(&ca, doc).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("g.json"), serde_json::to_string(&signed).unwrap()).unwrap();
        let settings = genesis_sidecar::config::Settings::from_genesis(
            &dir.path().join("g.json"),
            &dir.path().join("ca.crt"),
        )
        .unwrap();
        assert_eq!(settings.allowed_ports, Some(vec![8080]));
        assert_eq!(settings.areas, Some(5), "every member gets the network's areas");
        assert_eq!(settings.zone_penalty, Some(900));
        assert_eq!(settings.network.as_deref(), Some("pay"));
        assert_eq!(settings.rbac, Some(genesis_trust::RbacPolicy::default()));
    }
}
