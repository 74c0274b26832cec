//! The Helm chart, linted and rendered by the real Helm engine (PyPI helm-python-sdk, through
//! scripts/chart.py), for default and non-default values; every rendered manifest is
//! deserialized into its k8s-openapi type, and what admins rely on is checked.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::serde::Deserialize;
use serde_json::{json, Value};

/// Every object of one render, typed.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    bindings: usize,
    service_accounts: Vec<ServiceAccount>,
    pdbs: Vec<PodDisruptionBudget>,
    policies: Vec<NetworkPolicy>,
    monitors: Vec<Value>,
    notes: String,
}

fn render(values: Value) -> Rendered {
    let answer = genesis_e2e::render_chart(&values);
    assert_eq!(answer["lint"]["errors"], json!([]), "helm lint: {}", answer["lint"]);
    let lint_problems: Vec<&Value> = answer["lint"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_u64() >= Some(2))
        .collect();
    assert!(lint_problems.is_empty(), "helm lint warnings: {lint_problems:?}");
    // The chart's CRDs are the generated ones (crds/tests/crds.rs checks the bytes).
    let crds = answer["crds"].as_object().unwrap();
    assert_eq!(crds.len(), 3);
    for text in crds.values() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(crd.spec.group, "genesis-mesh.io");
    }
    let mut r = Rendered::default();
    for (template, text) in answer["manifests"].as_object().unwrap() {
        let text = text.as_str().unwrap();
        if template.ends_with("NOTES.txt") {
            r.notes = text.to_owned();
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Deployment" => r.deployments.push(serde_json::from_value(value).unwrap()),
                "Service" => r.services.push(serde_json::from_value(value).unwrap()),
                "MutatingWebhookConfiguration" => {
                    r.webhooks.push(serde_json::from_value(value).unwrap())
                }
                "ClusterRole" => r.cluster_roles.push(serde_json::from_value(value).unwrap()),
                "Role" => r.roles.push(serde_json::from_value(value).unwrap()),
                "ClusterRoleBinding" => {
                    let _: ClusterRoleBinding = serde_json::from_value(value).unwrap();
                    r.bindings += 1;
                }
                "RoleBinding" => {
                    let _: RoleBinding = serde_json::from_value(value).unwrap();
                    r.bindings += 1;
                }
                "ServiceAccount" => r.service_accounts.push(serde_json::from_value(value).unwrap()),
                "PodDisruptionBudget" => r.pdbs.push(serde_json::from_value(value).unwrap()),
                "NetworkPolicy" => r.policies.push(serde_json::from_value(value).unwrap()),
                "PodMonitor" => r.monitors.push(value),
                other => panic!("{template} renders an unexpected kind {other:?}"),
            }
        }
    }
    r
}

#[test]
fn default_values_render_an_operator_with_least_privilege_identity_service_and_webhook() {
    let r = render(json!({}));
    assert_eq!(r.deployments.len(), 1);
    let d = &r.deployments[0];
    assert_eq!(d.metadata.name.as_deref(), Some("genesis-operator"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("genesis-system"));
    let spec = d.spec.as_ref().unwrap();
    // HA by default: two replicas, spread over nodes, one kept through voluntary disruptions.
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let spread = &pod.topology_spread_constraints.as_ref().expect("spread over nodes")[0];
    assert_eq!(spread.topology_key, "kubernetes.io/hostname");
    assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
    let spread_labels = spread.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert!(spread_labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "{spread_labels:?}");
    assert_eq!(r.pdbs.len(), 1);
    let pdb = r.pdbs[0].spec.as_ref().unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(pdb.selector.as_ref().unwrap().match_labels, spec.selector.match_labels);
    // The webhook never sees kube-system or the operator's own namespace, and has a timeout.
    for h in r.webhooks[0].webhooks.as_ref().unwrap() {
        let exprs = h.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
        let spared = exprs
            .iter()
            .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
            .expect("a namespace exclusion");
        assert_eq!(
            spared.values.as_deref(),
            Some(&["kube-system".to_owned(), "genesis-system".to_owned()][..])
        );
        assert_eq!(h.timeout_seconds, Some(5));
    }
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("genesis-mesh/operator:0.1.0"));
    assert_eq!(c.args.as_deref().unwrap()[0], "run");
    let args = c.args.as_ref().unwrap();
    for arg in [
        "--webhook-listen=0.0.0.0:9443",
        "--identity-listen=0.0.0.0:7443",
        "--identity-service=genesis-operator-identity.genesis-system.svc:7443",
        "--sidecar-mode=native",
    ] {
        assert!(args.contains(&arg.to_owned()), "{arg} missing from {args:?}");
    }
    let port = |name: &str| {
        let found = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name));
        found.unwrap_or_else(|| panic!("no port {name}")).container_port
    };
    assert_eq!((port("identity"), port("webhook")), (7443, 9443));
    assert_eq!(
        c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
        (Some(true), Some(false))
    );
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("genesis-operator"));
    // Least privilege: no wildcard anywhere; Secrets never deleted; the webhook configuration
    // patchable by name only.
    let rules: Vec<_> = r
        .cluster_roles
        .iter()
        .flat_map(|cr| cr.rules.clone().unwrap_or_default())
        .chain(r.roles.iter().flat_map(|r| r.rules.clone().unwrap_or_default()))
        .collect();
    assert!(!rules.is_empty());
    for rule in &rules {
        let all = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten());
        assert!(all.clone().all(|s| s != "*"), "wildcard in {rule:?}");
        assert!(!rule.verbs.iter().any(|v| v == "delete" || v == "deletecollection"), "{rule:?}");
    }
    let webhook_rule = rules
        .iter()
        .find(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.contains(&"mutatingwebhookconfigurations".to_owned()))
        })
        .unwrap();
    assert_eq!(
        webhook_rule.resource_names.as_deref(),
        Some(&["genesis-mesh-injector".to_owned()][..])
    );
    assert_eq!(r.bindings, 2);
    assert_eq!(r.service_accounts.len(), 1);
    // Injected sidecars reach the identity service by the name the operator tells them.
    let identity = r
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("genesis-operator-identity"))
        .expect("the identity Service");
    let ports = identity.spec.as_ref().unwrap().ports.as_ref().unwrap();
    assert_eq!(ports[0].port, 7443);
    assert_eq!(
        ports[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("identity".into()))
    );
    assert_eq!(r.webhooks.len(), 1, "the webhook is on by default");
    assert!(r.notes.contains("genesisctl check"));
}

#[test]
fn non_default_values_reach_the_manifests() {
    let r = render(json!({
        "operator": {
            "image": {"repository": "registry.example/genesis/operator", "tag": "v9", "pullPolicy": "Always"},
            "replicas": 2,
            "probePort": 9090,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "resources": {"limits": {"memory": "1Gi"}}
        },
        "webhook": {"enabled": true, "failurePolicy": "Ignore", "port": 8443, "nativeSidecar": false},
        "identity": {"port": 8643},
        "serviceAccount": {"name": "mesh-operator"},
        "metrics": {"annotations": false}
    }));
    let d = &r.deployments[0];
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_meta = spec.template.metadata.as_ref().unwrap();
    assert!(pod_meta.annotations.as_ref().is_none_or(|a| !a.contains_key("prometheus.io/scrape")));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("mesh-operator"));
    assert_eq!(pod.node_selector.as_ref().unwrap()["kubernetes.io/os"], "linux");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/genesis/operator:v9"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert!(c.args.as_ref().unwrap().contains(&"--probe-listen=0.0.0.0:9090".to_owned()));
    assert!(c.args.as_ref().unwrap().contains(&"--webhook-listen=0.0.0.0:8443".to_owned()));
    assert!(c.args.as_ref().unwrap().contains(&"--sidecar-mode=container".to_owned()));
    assert!(c.args.as_ref().unwrap().contains(&"--identity-listen=0.0.0.0:8643".to_owned()));
    let env = c.env.as_ref().unwrap();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").unwrap();
    let field = pod_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "metadata.name", "the leader Lease names the pod");
    let port = c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("webhook"));
    assert_eq!(port.unwrap().container_port, 8443);
    assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "1Gi");
    // The webhook: its Service and configuration, under the names genesisctl check looks for.
    let webhook_service =
        r.services.iter().find(|s| s.metadata.name.as_deref() == Some("genesis-operator-webhook"));
    assert!(webhook_service.is_some(), "the webhook Service");
    let w = &r.webhooks[0];
    assert_eq!(w.metadata.name.as_deref(), Some("genesis-mesh-injector"));
    let hooks = w.webhooks.as_ref().unwrap();
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
        let svc = h.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.namespace.as_str()),
            ("genesis-operator-webhook", "genesis-system")
        );
    }
    // Labelled namespaces, and labelled pods elsewhere: the label the controller reads.
    let selector = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        let e = &s.as_ref().unwrap().match_expressions.as_ref().unwrap()[0];
        (e.key.clone(), e.operator.clone())
    };
    let label = "genesis-mesh.io/network".to_owned();
    assert_eq!(selector(&hooks[0].namespace_selector), (label.clone(), "Exists".into()));
    assert_eq!(selector(&hooks[1].namespace_selector), (label.clone(), "DoesNotExist".into()));
    assert_eq!(selector(&hooks[1].object_selector), (label, "Exists".into()));
    assert!(r.notes.contains("one replica leads (Lease genesis-operator)"), "{}", r.notes);
}

/// The policy's ingress ports by name, each with its peers.
fn policy_ports(r: &Rendered) -> Vec<(String, Value)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let spec = r.policies[0].spec.as_ref().unwrap();
    spec.ingress
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            let from = serde_json::to_value(&rule.from).unwrap();
            rule.ports.as_ref().unwrap().iter().map(move |p| match &p.port {
                Some(IntOrString::String(name)) => (name.clone(), from.clone()),
                other => panic!("ports are named, got {other:?}"),
            })
        })
        .collect()
}

#[test]
fn a_network_policy_admits_each_operator_port_only_from_who_needs_it() {
    let r = render(json!({}));
    assert_eq!(r.policies.len(), 1);
    let policy = r.policies[0].spec.as_ref().unwrap();
    let pod_labels = r.deployments[0].spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    let selected = policy.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert!(selected.iter().all(|(k, v)| pod_labels.labels.as_ref().unwrap().get(k) == Some(v)));
    assert_eq!(policy.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    let ports = policy_ports(&r);
    let names: Vec<&str> = ports.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["identity", "webhook", "probes"]);
    // Every named port exists on the operator's container.
    let container =
        &r.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let declared: Vec<&str> =
        container.ports.as_ref().unwrap().iter().filter_map(|p| p.name.as_deref()).collect();
    assert!(names.iter().all(|n| declared.contains(n)), "{declared:?}");
    assert_eq!(ports[0].1, json!([{"namespaceSelector": {}}]), "members join from any namespace");

    // Narrowed by values; the webhook rule goes with the webhook; and it can be left out.
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    let r = render(json!({
        "networkPolicy": {"metricsFrom": monitoring, "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]},
    }));
    let ports = policy_ports(&r);
    assert_eq!(ports[1].1, json!([{"ipBlock": {"cidr": "10.0.0.0/24"}}]));
    assert_eq!(ports[2].1, monitoring);
    let r = render(json!({"webhook": {"enabled": false}}));
    let names: Vec<String> = policy_ports(&r).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["identity", "probes"]);
    assert!(render(json!({"networkPolicy": {"enabled": false}})).policies.is_empty());
}

#[test]
fn pod_monitors_render_when_asked_and_scrape_named_ports_that_exist() {
    assert!(render(json!({})).monitors.is_empty(), "off by default: needs the Prometheus Operator");
    let r = render(
        json!({"metrics": {"podMonitor": {"enabled": true, "labels": {"release": "prom"}}}}),
    );
    assert_eq!(r.monitors.len(), 2);
    let (operator, sidecars) = (&r.monitors[0], &r.monitors[1]);
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["metadata"]["labels"]["release"], "prom");
    // The operator's endpoint is a port its container names.
    let container =
        &r.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let port = operator["spec"]["podMetricsEndpoints"][0]["port"].as_str().unwrap();
    assert!(container.ports.as_ref().unwrap().iter().any(|p| p.name.as_deref() == Some(port)));
    let pod_labels = r.deployments[0].spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    for (k, v) in operator["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.labels.as_ref().unwrap()[k], v.as_str().unwrap());
    }
    // Sidecars: the injected port name, in any namespace, on every member pod.
    assert_eq!(sidecars["spec"]["podMetricsEndpoints"][0]["port"], "genesis-admin");
    assert_eq!(sidecars["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        sidecars["spec"]["selector"]["matchExpressions"][0]["key"],
        "genesis-mesh.io/network"
    );
    // The operator logs JSON lines, and says so to the sidecars it injects.
    assert!(container.args.as_ref().unwrap().contains(&"--log-format=json".to_owned()));
}

#[test]
fn secrets_can_be_left_unwatched_and_then_the_operator_is_not_allowed_to_list_them() {
    let verbs = |r: &Rendered| -> Vec<String> {
        let rules = r.cluster_roles[0].rules.as_ref().unwrap();
        let secrets = rules
            .iter()
            .find(|r| r.resources.as_ref().unwrap().contains(&"secrets".to_owned()))
            .unwrap();
        secrets.verbs.clone()
    };
    let args = |r: &Rendered| {
        r.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap()
    };
    let default = render(json!({}));
    assert!(verbs(&default).contains(&"watch".to_owned()));
    assert!(!args(&default).contains(&"--no-secret-watch".to_owned()));
    let narrow = render(json!({"operator": {"watchSecrets": false}}));
    assert_eq!(verbs(&narrow), ["get", "create", "patch"]);
    assert!(args(&narrow).contains(&"--no-secret-watch".to_owned()));
}

#[test]
fn the_webhook_can_be_turned_off() {
    let r = render(json!({"webhook": {"enabled": false}, "operator": {"replicas": 1}}));
    // One replica: no disruption budget (it could never be met) and no spread.
    assert!(r.pdbs.is_empty());
    let pod = r.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.topology_spread_constraints.is_none());
    let c = &r.deployments[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert!(c.args.as_ref().unwrap().contains(&"--no-webhook".to_owned()));
    assert!(r.webhooks.is_empty());
    let names: Vec<_> = r.services.iter().filter_map(|s| s.metadata.name.as_deref()).collect();
    assert_eq!(names, ["genesis-operator-identity"], "the identity service stays");
    assert!(r.notes.contains("add sidecars yourself"), "{}", r.notes);
}
