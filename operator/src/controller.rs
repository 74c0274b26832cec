//! The Kubernetes controllers: one concern each, coordinating through status. Each decides
//! with a pure function of [`crate::decide`] and applies the result with server-side apply.
//! Certificate, NetworkAuthority, MeshNetwork, and the CRL publisher.

pub mod certificate;
pub mod crl_publisher;
pub mod mesh_network;
pub mod network_authority;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_trust::RevocationList;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

/// The field manager of every apply.
pub const MANAGER: &str = "genesis-operator";
/// What every reconcile needs.
pub struct Context {
    pub client: kube::Client,
    /// Where authorities keep their CA Secret and revocation ConfigMap.
    pub operator_namespace: String,
    /// The clock (injected, so tests move time).
    pub now: Arc<dyn Fn() -> SystemTime + Send + Sync>,
    /// Records Kubernetes Events (None: not at all, as in the benchmark).
    pub recorder: Option<kube::runtime::events::Recorder>,
}

impl Context {
    /// Records an Event on `object` (`kubectl describe` shows it). A failure to record is
    /// logged, never a failed reconcile.
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let Some(recorder) = &self.recorder else { return };
        use kube::runtime::events::{Event, EventType};
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record an Event");
        }
    }
}

/// The Event recorder of this operator replica.
pub fn recorder(
    client: &kube::Client,
    instance: Option<String>,
) -> kube::runtime::events::Recorder {
    let reporter = kube::runtime::events::Reporter { controller: MANAGER.into(), instance };
    kube::runtime::events::Recorder::new(client.clone(), reporter)
}

/// Why a reconcile failed (the controller retries with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The Secret holding an authority's CA (tls.crt, tls.key).
pub fn ca_secret_name(authority: &str) -> String {
    format!("{authority}-ca")
}

/// The MeshNetworks whose authority is `authority`.
pub async fn networks_of(
    ctx: &Context,
    authority: &str,
) -> Result<Vec<genesis_crds::MeshNetwork>, Error> {
    use kube::api::ListParams;
    let all = Api::<genesis_crds::MeshNetwork>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(all.into_iter().filter(|mn| mn.spec.authority_ref.name == authority).collect())
}

/// The text of `key` in a Secret's data.
pub(crate) fn secret_field(
    secret: &k8s_openapi::api::core::v1::Secret,
    key: &str,
) -> Option<String> {
    secret.data.as_ref()?.get(key).map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// An authority's CA: the adopted Secret (`spec.caSecretRef`), or ours (`<name>-ca` in the
/// operator's namespace). `None`: ours does not exist yet (the NetworkAuthority controller
/// generates it); `Some(Err)`: a Secret exists but is unusable, and why.
pub async fn read_ca(
    client: &kube::Client,
    operator_namespace: &str,
    na: &genesis_crds::NetworkAuthority,
) -> Result<Option<Result<genesis_trust::CertificateAuthority, String>>, Error> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::ResourceExt;
    let (ns, name, adopted) = match &na.spec.ca_secret_ref {
        Some(r) => {
            (r.namespace.clone().unwrap_or_else(|| operator_namespace.into()), r.name.clone(), true)
        }
        None => (operator_namespace.to_owned(), ca_secret_name(&na.name_any()), false),
    };
    let what = if adopted { "caSecretRef" } else { "the CA Secret" };
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&name).await? else {
        return Ok(adopted.then(|| Err(format!("caSecretRef {ns}/{name} does not exist"))));
    };
    let (Some(cert), Some(key)) =
        (secret_field(&secret, "tls.crt"), secret_field(&secret, "tls.key"))
    else {
        let fix = if adopted { "add them" } else { "restore them from backup" };
        return Ok(Some(Err(format!("{what} {ns}/{name} lacks tls.crt or tls.key; {fix}"))));
    };
    let trust_domain = &na.spec.trust_domain;
    Ok(Some(
        genesis_trust::CertificateAuthority::from_pem(trust_domain, &cert, &key)
            .map_err(|e| format!("{what} {ns}/{name} is not a usable CA for {trust_domain}: {e}")),
    ))
}

/// The ConfigMap holding an authority's revocation list (`revocations.json`).
pub fn revocations_name(authority: &str) -> String {
    format!("{authority}-revocations")
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn until(now: SystemTime, t: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or_default().max(Duration::from_secs(1))
}

/// The ConfigMap holding an authority's newest signed CRL (`crl.pem`).
pub fn crl_name(authority: &str) -> String {
    format!("{authority}-crl")
}

/// The ConfigMap holding an authority's trust bundle (`ca.crt`: every trusted root).
pub fn bundle_name(authority: &str) -> String {
    format!("{authority}-bundle")
}

/// An authority's revocation list (empty until the first revocation).
pub async fn load_revocations(ctx: &Context, authority: &str) -> Result<RevocationList, Error> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let Some(map) = maps.get_opt(&revocations_name(authority)).await? else {
        return Ok(RevocationList::default());
    };
    let text =
        map.data.as_ref().and_then(|d| d.get("revocations.json")).cloned().unwrap_or_default();
    if text.is_empty() {
        return Ok(RevocationList::default());
    }
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("revocation ConfigMap of {authority} is corrupt: {e}")))
}

/// Applies a ConfigMap in the operator's namespace with one key.
pub async fn apply_configmap(
    ctx: &Context,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    apply_configmap_data(ctx, name, serde_json::json!({key: value})).await
}

/// Applies a ConfigMap in the operator's namespace holding exactly `data`.
pub async fn apply_configmap_data(
    ctx: &Context,
    name: &str,
    data: serde_json::Value,
) -> Result<(), Error> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let map = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ctx.operator_namespace},
        "data": data,
    });
    maps.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(map)).await?;
    Ok(())
}

/// A condition as JSON for a status apply; `lastTransitionTime` is kept from the object's
/// current condition of that type unless the status flips.
pub fn condition_json(
    current: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: Option<i64>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: SystemTime,
) -> serde_json::Value {
    let previous = current.iter().find(|c| c.type_ == type_);
    serde_json::json!(crate::decide::condition(
        previous, type_, ok, reason, message, generation, now
    ))
}

/// A resource whose status carries standard conditions.
pub trait Conditioned: kube::Resource {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition];
}

macro_rules! conditioned {
    ($($k:ty),*) => {$(
        impl Conditioned for $k {
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                self.status.as_ref().map_or(&[][..], |s| &s.conditions[..])
            }
        }
    )*};
}
conditioned!(genesis_crds::Certificate, genesis_crds::MeshNetwork, genesis_crds::NetworkAuthority);

/// The condition `type_` of `object` as JSON for a status apply ([`condition_json`]).
pub fn condition_of<K: Conditioned>(
    object: &K,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: SystemTime,
) -> serde_json::Value {
    condition_json(object.conditions(), object.meta().generation, type_, ok, reason, message, now)
}

/// Applies `status` through the status subresource of object `name`.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    apply_status_as(api, name, status, MANAGER).await
}

/// [`apply_status`] as field manager `manager`: the fields (and, by type, the conditions) it
/// applies are its own, and other managers' stay.
pub async fn apply_status_as<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
    manager: &str,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(patch)).await?;
    Ok(())
}
