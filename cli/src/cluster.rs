//! The everyday commands against a cluster (`--kubeconfig`): they read the custom resources'
//! status, which the operator keeps current, plus the objects the Helm chart installs (operator
//! Deployment, webhook configuration and its Service's endpoints). `revoke` patches
//! `spec.revoked` on the member's Certificate and waits for the authority's next CRL.
//!
//! Fetching is separate from judging: [`status_report`] and [`evaluate`] are pure functions of
//! a [`ClusterState`], tested without a cluster; [`fetch`] takes any `kube::Client`, so the
//! tests run it against an in-memory API.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::check::{fail, pass, Check, Thresholds};
use crate::output::{self, human_secs};

/// Names the Helm chart gives the operator's objects (charts/genesis-mesh).
pub const OPERATOR_DEPLOYMENT: &str = "genesis-operator";
pub const WEBHOOK_CONFIGURATION: &str = "genesis-mesh-injector";
pub const WEBHOOK_SERVICE: &str = "genesis-operator-webhook";

/// Where the cluster is.
#[derive(Debug, Clone)]
pub struct Target {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// The namespace the chart was installed in.
    pub operator_namespace: String,
}

/// A client for `target`, with an error that says what to fix.
pub async fn client(target: &Target) -> Result<Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&target.kubeconfig)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", target.kubeconfig.display()))?;
    let options =
        kube::config::KubeConfigOptions { context: target.context.clone(), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", target.kubeconfig.display()))?;
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// Runs `f` on a fresh single-threaded runtime (the commands are otherwise blocking).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    Ok(rt.block_on(f))
}

/// Everything the commands read from a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// (CRD name, installed CRD) for each of ours.
    pub crds: Vec<(String, Option<CustomResourceDefinition>)>,
    pub authorities: Vec<NetworkAuthority>,
    pub networks: Vec<MeshNetwork>,
    pub certificates: Vec<Certificate>,
    pub operator: Option<Deployment>,
    pub webhook: Option<MutatingWebhookConfiguration>,
    /// Ready addresses behind the webhook Service.
    pub webhook_ready_endpoints: usize,
}

fn api_error(what: &str, e: kube::Error) -> String {
    match &e {
        kube::Error::Api(s) if s.code == 404 => format!("{what}: not found"),
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
            format!("{what}: {} (check your kubeconfig's user and RBAC)", s.message)
        }
        kube::Error::Service(_) | kube::Error::HyperError(_) => format!(
            "cannot reach the Kubernetes API server ({e}); is the cluster up and the \
             kubeconfig's context the right one?"
        ),
        _ => format!("{what}: {e}"),
    }
}

async fn get_opt<K>(api: Api<K>, name: &str) -> Result<Option<K>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(|e| api_error(name, e))
}

/// Reads the cluster. Missing CRDs are reported in the state (check names them); missing
/// permissions or an unreachable API server are errors.
pub async fn fetch(client: &Client, operator_namespace: &str) -> Result<ClusterState, String> {
    let mut state = ClusterState::default();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in genesis_crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let installed = get_opt(crds.clone(), &name).await?;
        state.crds.push((name, installed));
    }
    if state.crds.iter().all(|(_, c)| c.is_some()) {
        let lp = ListParams::default();
        state.authorities = Api::<NetworkAuthority>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|e| api_error("NetworkAuthorities", e))?
            .items;
        state.networks = Api::<MeshNetwork>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|e| api_error("MeshNetworks", e))?
            .items;
        state.certificates = Api::<Certificate>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|e| api_error("Certificates", e))?
            .items;
    }
    state.operator = get_opt(
        Api::<Deployment>::namespaced(client.clone(), operator_namespace),
        OPERATOR_DEPLOYMENT,
    )
    .await?;
    state.webhook =
        get_opt(Api::<MutatingWebhookConfiguration>::all(client.clone()), WEBHOOK_CONFIGURATION)
            .await?;
    let endpoints =
        get_opt(Api::<Endpoints>::namespaced(client.clone(), operator_namespace), WEBHOOK_SERVICE)
            .await?;
    state.webhook_ready_endpoints = endpoints
        .and_then(|e| e.subsets)
        .unwrap_or_default()
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    Ok(state)
}

/// Seconds from now until an RFC 3339 time (negative when past).
fn secs_until(rfc3339: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let t = SystemTime::from(t);
    Some(match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    })
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn cert_name(c: &Certificate) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or("-"),
        c.metadata.name.as_deref().unwrap_or("-")
    )
}

/// `status` from a cluster state.
pub fn status_report(state: &ClusterState, expiring_within: f64) -> (Value, String) {
    let mut rows = Vec::new();
    let mut networks = Vec::new();
    for n in &state.networks {
        let name = n.metadata.name.clone().unwrap_or_default();
        let authority_name = &n.spec.authority_ref.name;
        let authority =
            state.authorities.iter().find(|a| a.metadata.name.as_ref() == Some(authority_name));
        let crl = authority.and_then(|a| a.status.as_ref()?.crl_number);
        let st = n.status.clone().unwrap_or_default();
        let ready = condition(&st.conditions, "Ready");
        let converged = crl.is_some() && st.crl_number_seen == crl;
        rows.push(vec![
            name.clone(),
            authority_name.clone(),
            format!("{}/{}", st.ready_members.unwrap_or(0), st.members.unwrap_or(0)),
            st.anchors.join(","),
            crl.map_or("-".into(), |c| c.to_string()),
            if converged { "yes".into() } else { "no".into() },
            ready.map_or("Unknown".into(), |c| c.status.clone()),
        ]);
        networks.push(json!({
            "name": name, "authority": authority_name, "members": st.members,
            "readyMembers": st.ready_members, "anchors": st.anchors, "crlNumber": crl,
            "crlNumberSeen": st.crl_number_seen, "converged": converged,
            "ready": ready.map(|c| &c.status), "reason": ready.map(|c| &c.reason),
        }));
    }
    let expiring: Vec<Value> = state
        .certificates
        .iter()
        .filter(|c| !c.spec.revoked)
        .filter_map(|c| {
            let left = secs_until(c.status.as_ref()?.not_after.as_deref()?)?;
            (left < expiring_within)
                .then(|| json!({"certificate": cert_name(c), "expiresIn": left}))
        })
        .collect();
    let revoked: Vec<String> =
        state.certificates.iter().filter(|c| c.spec.revoked).map(cert_name).collect();
    let value = json!({
        "networks": networks, "certificates": state.certificates.len(),
        "expiringSoon": expiring, "revoked": revoked,
    });
    let mut text = output::table(
        &["network", "authority", "ready", "anchors", "crl", "converged", "condition"],
        &rows,
    );
    text += &format!("\n{} certificates", state.certificates.len());
    if !revoked.is_empty() {
        text += &format!(", revoked: {}", revoked.join(", "));
    }
    text += "\n";
    for e in &expiring {
        text += &format!(
            "expiring soon: {} in {}\n",
            output::cell(&e["certificate"]),
            human_secs(e["expiresIn"].as_f64().unwrap_or(0.0))
        );
    }
    (value, text)
}

/// `check` from a cluster state.
pub fn evaluate(state: &ClusterState, operator_namespace: &str, min: Thresholds) -> Vec<Check> {
    let mut checks = Vec::new();
    let wanted: Vec<(String, CustomResourceDefinition)> = genesis_crds::all()
        .into_iter()
        .map(|(_, c)| (c.metadata.name.clone().unwrap_or_default(), c))
        .collect();
    let missing: Vec<&str> =
        state.crds.iter().filter(|(_, c)| c.is_none()).map(|(n, _)| n.as_str()).collect();
    let outdated: Vec<&str> = state
        .crds
        .iter()
        .filter_map(|(n, c)| {
            let installed = c.as_ref()?;
            let want = wanted.iter().find(|(w, _)| w == n)?;
            let schema = |c: &CustomResourceDefinition| {
                c.spec
                    .versions
                    .iter()
                    .map(|v| (v.name.clone(), json!(v.schema)))
                    .collect::<Vec<_>>()
            };
            (schema(installed) != schema(&want.1)).then_some(n.as_str())
        })
        .collect();
    checks.push(if !missing.is_empty() {
        fail(
            "CRDs installed and current",
            format!("not installed: {}", missing.join(", ")),
            "kubectl apply -f crds/ (or helm install genesis-mesh charts/genesis-mesh)".into(),
        )
    } else if !outdated.is_empty() {
        fail(
            "CRDs installed and current",
            format!("installed but not this version's schema: {}", outdated.join(", ")),
            "kubectl apply --server-side -f crds/ from this release".into(),
        )
    } else {
        pass("CRDs installed and current", format!("{} CRDs match this release", wanted.len()))
    });
    let ready =
        state.operator.as_ref().and_then(|d| d.status.as_ref()?.ready_replicas).unwrap_or(0);
    checks.push(match &state.operator {
        None => fail(
            "operator ready",
            format!("no Deployment {operator_namespace}/{OPERATOR_DEPLOYMENT}"),
            format!(
                "helm install genesis-mesh charts/genesis-mesh -n {operator_namespace} \
                 --create-namespace"
            ),
        ),
        Some(_) if ready == 0 => fail(
            "operator ready",
            format!("{operator_namespace}/{OPERATOR_DEPLOYMENT} has no ready replica"),
            format!(
                "kubectl -n {operator_namespace} describe deploy/{OPERATOR_DEPLOYMENT}; \
                 kubectl -n {operator_namespace} logs deploy/{OPERATOR_DEPLOYMENT}"
            ),
        ),
        Some(_) => pass("operator ready", format!("{ready} ready replica(s)")),
    });
    let ca_bundle = state
        .webhook
        .as_ref()
        .and_then(|w| w.webhooks.as_ref()?.first()?.client_config.ca_bundle.as_ref())
        .is_some_and(|b| !b.0.is_empty());
    checks.push(if state.webhook.is_none() {
        fail(
            "webhook reachable",
            format!("no MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION}"),
            "the chart installs it; helm upgrade --install genesis-mesh charts/genesis-mesh".into(),
        )
    } else if !ca_bundle {
        fail(
            "webhook reachable",
            "the webhook configuration has no caBundle yet".into(),
            "the operator writes it at start; check the operator's logs".into(),
        )
    } else if state.webhook_ready_endpoints == 0 {
        fail(
            "webhook reachable",
            format!("Service {operator_namespace}/{WEBHOOK_SERVICE} has no ready endpoint"),
            "pods cannot be injected (and are refused) until the operator is ready".into(),
        )
    } else {
        pass(
            "webhook reachable",
            format!("caBundle set, {} ready endpoint(s)", state.webhook_ready_endpoints),
        )
    });
    let soonest_ca = state
        .authorities
        .iter()
        .filter_map(|a| {
            let left = secs_until(a.status.as_ref()?.ca_not_after.as_deref()?)?;
            Some((a.metadata.name.clone().unwrap_or_default(), left))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    checks.push(match soonest_ca {
        Some((name, left)) if left < min.ca => fail(
            "CA far from expiry",
            format!("NetworkAuthority {name}'s CA expires in {}", human_secs(left)),
            "rotate it: set spec.ca.rotate (old and new roots are trusted until members move)"
                .into(),
        ),
        Some((name, left)) => {
            pass("CA far from expiry", format!("soonest: {name} in {}", human_secs(left)))
        }
        None => pass("CA far from expiry", "no authority has published a CA yet".into()),
    });
    let expiring: Vec<String> = state
        .certificates
        .iter()
        .filter(|c| !c.spec.revoked)
        .filter_map(|c| {
            let left = secs_until(c.status.as_ref()?.not_after.as_deref()?)?;
            (left < min.cert).then(|| format!("{} in {}", cert_name(c), human_secs(left)))
        })
        .collect();
    checks.push(if expiring.is_empty() {
        pass(
            "certificates far from expiry",
            format!("{} certificates checked", state.certificates.len()),
        )
    } else {
        fail(
            "certificates far from expiry",
            format!("below {}: {}", human_secs(min.cert), expiring.join(", ")),
            "kubectl describe certificate.genesis-mesh.io shows the Issuing condition and the \
             last renewal error"
                .into(),
        )
    });
    let behind: Vec<String> = state
        .networks
        .iter()
        .filter_map(|n| {
            let a = state
                .authorities
                .iter()
                .find(|a| a.metadata.name.as_ref() == Some(&n.spec.authority_ref.name))?;
            let published = a.status.as_ref()?.crl_number?;
            let seen = n.status.as_ref().and_then(|s| s.crl_number_seen);
            (seen != Some(published)).then(|| {
                format!(
                    "{} sees CRL {} of {published}",
                    n.metadata.name.as_deref().unwrap_or("-"),
                    seen.map_or("none".into(), |s| s.to_string())
                )
            })
        })
        .collect();
    checks.push(if behind.is_empty() {
        pass("CRL fresh", "every network holds its authority's newest CRL".into())
    } else {
        fail(
            "CRL fresh",
            behind.join("; "),
            "the operator pushes CRLs through the anchors: check the NetworkAuthority's \
             CRLConverged condition and the anchors' readiness"
                .into(),
        )
    });
    let unready: Vec<String> = state
        .networks
        .iter()
        .filter_map(|n| {
            let st = n.status.as_ref()?;
            let (members, ready) = (st.members.unwrap_or(0), st.ready_members.unwrap_or(0));
            (ready < members).then(|| {
                format!("{}: {ready}/{members} ready", n.metadata.name.as_deref().unwrap_or("-"))
            })
        })
        .collect();
    checks.push(if unready.is_empty() {
        pass("members converged", format!("{} networks, every member ready", state.networks.len()))
    } else {
        fail(
            "members converged",
            unready.join("; "),
            "kubectl get mcert -A shows which members are not Ready, and why".into(),
        )
    });
    checks
}

/// What a cluster revocation did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRevocation {
    pub certificate: String,
    pub authority: Option<String>,
    pub crl_before: Option<i64>,
    /// The authority's CRL number once it moved past `crl_before` (None: not within the wait).
    pub crl_after: Option<i64>,
    pub waited_ms: f64,
}

/// Patches `spec.revoked: true` on `node`'s Certificate and waits up to `timeout` for the
/// authority's CRL number to move.
pub async fn revoke(
    client: &Client,
    node: &str,
    namespace: Option<&str>,
    timeout: Duration,
) -> Result<ClusterRevocation, String> {
    let all: Api<Certificate> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let found: Vec<Certificate> = all
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("Certificates", e))?
        .items
        .into_iter()
        .filter(|c| c.spec.node_name == node)
        .collect();
    let cert = match found.as_slice() {
        [] => {
            return Err(format!("no Certificate for node {node}; kubectl get mcert -A lists them"))
        }
        [one] => one.clone(),
        many => {
            let names: Vec<String> = many.iter().map(cert_name).collect();
            return Err(format!(
                "node {node} has several Certificates ({}); pick one with --namespace",
                names.join(", ")
            ));
        }
    };
    if cert.spec.revoked {
        return Err(format!("{} is already revoked", cert_name(&cert)));
    }
    let ns = cert.metadata.namespace.clone().unwrap_or_default();
    let name = cert.metadata.name.clone().unwrap_or_default();
    let network = Api::<MeshNetwork>::all(client.clone())
        .get_opt(&cert.spec.network_ref.name)
        .await
        .map_err(|e| api_error("MeshNetwork", e))?;
    let authority_name = network.map(|n| n.spec.authority_ref.name);
    let authorities: Api<NetworkAuthority> = Api::all(client.clone());
    let crl_number = |a: Option<NetworkAuthority>| a.and_then(|a| a.status?.crl_number);
    let crl_before = match &authority_name {
        Some(a) => crl_number(authorities.get_opt(a).await.map_err(|e| api_error(a, e))?),
        None => None,
    };
    Api::<Certificate>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true, "revocationReason": "keyCompromise"}})),
        )
        .await
        .map_err(|e| api_error(&format!("patching Certificate {ns}/{name}"), e))?;
    let start = Instant::now();
    let mut crl_after = None;
    if let Some(a) = &authority_name {
        while start.elapsed() < timeout {
            let now = crl_number(authorities.get_opt(a).await.map_err(|e| api_error(a, e))?);
            if now > crl_before {
                crl_after = now;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(ClusterRevocation {
        certificate: format!("{ns}/{name}"),
        authority: authority_name,
        crl_before,
        crl_after,
        waited_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests;
