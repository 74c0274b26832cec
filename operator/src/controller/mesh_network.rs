//! The MeshNetwork controller: one `delivery: csr` Certificate per member pod (owned by the
//! pod, with a finalizer so its serials are revoked when the pod goes), anchors chosen among
//! ready members, the network's genesis document signed by its authority and published with
//! the trust bundle in every member namespace, and members and readiness in status.
//!
//! The decisions are in [`crate::decide::network`] and [`crate::decide::anchors`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use genesis_trust::SignedDocument;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{apply_status, bundle_name, condition_of, Context, Error, MANAGER};
use crate::decide::network::{self as decide_network, NETWORK_LABEL, PEER_PORT};
use crate::decide::{self, Candidate};

/// Keeps a member Certificate until its serials are on the revocation list.
pub const FINALIZER: &str = "genesis-mesh.io/revoke-on-delete";
/// Annotation of the genesis ConfigMap: SHA-256 of the document it carries.
pub const DOCUMENT_DIGEST: &str = "genesis-mesh.io/document-sha256";
/// Annotation of the genesis ConfigMap: the policy revision of the document.
pub const REVISION: &str = "genesis-mesh.io/policy-revision";
/// How often a network is looked at without a change (readiness, selector-only members).
const RESYNC: Duration = Duration::from_secs(60);

/// The ConfigMap (in every member namespace and the operator's) holding the network's signed
/// genesis document (`genesis.json`) and trust bundle (`ca.crt`).
pub fn genesis_configmap_name(network: &str) -> String {
    format!("genesis-mesh-{network}")
}

/// A member pod, as the controller sees it.
struct Member<'a> {
    pod: &'a Pod,
    name: String,
    namespace: String,
    ready: bool,
    ip: Option<String>,
}

/// The running pods `mn` selects (its label on the pod or namespace, or its memberSelector).
pub(crate) async fn member_pods(ctx: &Context, mn: &MeshNetwork) -> Result<Vec<Pod>, Error> {
    let namespaces: BTreeMap<String, BTreeMap<String, String>> =
        Api::<Namespace>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|n| (n.name_any(), n.metadata.labels.unwrap_or_default()))
            .collect();
    let pods = Api::<Pod>::all(ctx.client.clone()).list(&ListParams::default()).await?.items;
    let no_labels = BTreeMap::new();
    let network = mn.name_any();
    Ok(pods
        .into_iter()
        .filter(running)
        .filter(|p| {
            let ns = p.namespace().unwrap_or_default();
            decide_network::is_member(
                &network,
                &mn.spec,
                p.meta().labels.as_ref().unwrap_or(&no_labels),
                p.meta().annotations.as_ref().unwrap_or(&no_labels),
                namespaces.get(&ns).unwrap_or(&no_labels),
            )
        })
        .collect())
}

/// Whether the member's sidecar (or, without one, the pod) is ready.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    // A native sidecar reports among the init containers, a plain one among the containers.
    let sidecar = status.and_then(|s| {
        s.init_container_statuses
            .iter()
            .chain(s.container_statuses.iter())
            .flatten()
            .find(|c| c.name == crate::webhook::SIDECAR_CONTAINER)
    });
    match sidecar {
        Some(c) => c.ready,
        None => status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
    }
}

fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.meta().deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn set_status(
    ctx: &Context,
    mn: &MeshNetwork,
    status: serde_json::Value,
) -> Result<(), Error> {
    apply_status(&Api::<MeshNetwork>::all(ctx.client.clone()), &mn.name_any(), status).await
}

/// How soon a network waiting for its new authority looks again.
const AUTHORITY_WAIT: Duration = Duration::from_secs(2);

/// Whether `authority` reports Ready=True: one that never did is still being set up.
fn was_ready(authority: &NetworkAuthority) -> bool {
    authority
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn not_ready(
    ctx: &Context,
    mn: &MeshNetwork,
    reason: &str,
    message: String,
    now: SystemTime,
) -> Result<Action, Error> {
    let unchanged = mn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == reason && c.message == message)
    });
    if !unchanged {
        ctx.event(mn, true, reason, "Publish", message.clone()).await;
    }
    let ready = condition_of(mn, "Ready", false, reason, message, now);
    set_status(ctx, mn, json!({"observedGeneration": mn.meta().generation, "conditions": [ready]}))
        .await?;
    Ok(Action::requeue(RESYNC))
}

/// One reconcile of one MeshNetwork.
pub async fn reconcile(mn: Arc<MeshNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = (ctx.now)();
    let network = mn.name_any();
    let authority_name = &mn.spec.authority_ref.name;
    let Some(authority) =
        Api::<NetworkAuthority>::all(ctx.client.clone()).get_opt(authority_name).await?
    else {
        let message = format!("NetworkAuthority {authority_name} does not exist");
        return not_ready(&ctx, &mn, "AuthorityNotFound", message, now).await;
    };

    // Members: running pods the network selects.
    let pods = member_pods(&ctx, &mn).await?;
    let no_labels = BTreeMap::new();
    let members: Vec<Member> = pods
        .iter()
        .map(|p| Member {
            pod: p,
            name: p.name_any(),
            namespace: p.namespace().unwrap_or_default(),
            ready: pod_ready(p),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        })
        .collect();

    // One Certificate per member, owned by its pod.
    let certificates: Vec<Certificate> = Api::<Certificate>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&format!("{NETWORK_LABEL}={network}")))
        .await?
        .items
        .into_iter()
        .filter(|c| c.spec.network_ref.name == network)
        .collect();
    let existing: BTreeSet<(String, String)> =
        certificates.iter().map(|c| (c.namespace().unwrap_or_default(), c.name_any())).collect();
    // A revoked member is cut off by every other member: it cannot be anyone's anchor.
    let revoked: BTreeSet<(String, String)> = certificates
        .iter()
        .filter(|c| c.spec.revoked)
        .map(|c| (c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    let revoked_member = |m: &Member| revoked.contains(&(m.namespace.clone(), m.name.clone()));
    for m in &members {
        if existing.contains(&(m.namespace.clone(), m.name.clone())) {
            continue;
        }
        apply_member_certificate(&ctx, &network, m).await?;
    }

    // Anchors: stable while ready; preferred pods, then anchor-role pods, then the rest.
    let endpoint = |m: &Member| m.ip.as_ref().map(|ip| format!("{ip}:{PEER_PORT}"));
    let by_endpoint: BTreeMap<String, &Member> =
        members.iter().filter_map(|m| endpoint(m).map(|e| (e, m))).collect();
    let current: Vec<String> = mn
        .status
        .as_ref()
        .map(|s| {
            s.anchors
                .iter()
                .filter_map(|e| by_endpoint.get(e))
                .filter(|m| !revoked_member(m))
                .map(|m| key(m))
                .collect()
        })
        .unwrap_or_default();
    let preferred: BTreeSet<&str> =
        mn.spec.anchors.preferred.iter().map(|p| p.0.as_str()).collect();
    let candidates: Vec<Candidate> = members
        .iter()
        .filter(|m| m.ip.is_some() && !revoked_member(m))
        .map(|m| {
            let labels = m.pod.meta().labels.as_ref().unwrap_or(&no_labels);
            let wants = preferred.contains(m.name.as_str())
                || decide_network::role(labels) == genesis_crds::MemberRole::Anchor;
            Candidate { node: key(m), ready: m.ready, wants_anchor: wants }
        })
        .collect();
    let want = usize::try_from(mn.spec.anchors.count).unwrap_or(1).max(1);
    let chosen = decide::anchors(&current, &candidates, want);
    let anchors: Vec<String> = chosen
        .iter()
        .filter_map(|k| members.iter().find(|m| key(m) == *k).and_then(endpoint))
        .collect();

    // The genesis document, signed, with the trust bundle, in every member namespace.
    let document = match decide_network::genesis_document(
        &network,
        &authority.spec.trust_domain,
        &mn.spec,
        &anchors,
    ) {
        Ok(d) => d,
        Err(e) => return not_ready(&ctx, &mn, "InvalidSpec", e, now).await,
    };
    let ca = match super::certificate::load_ca(&ctx, &authority).await {
        Ok(ca) => ca,
        // An authority created together with the network is still making its CA: wait for
        // it without a Warning (its own reconcile triggers ours once the CA is there).
        Err(e) if !was_ready(&authority) => {
            let message = format!("waiting for NetworkAuthority {authority_name} to set up its CA");
            tracing::debug!(network = %network, error = %e, "{message}");
            let ready = condition_of(&*mn, "Ready", false, "AuthorityNotReady", message, now);
            let status = json!({"observedGeneration": mn.meta().generation, "conditions": [ready]});
            set_status(&ctx, &mn, status).await?;
            return Ok(Action::requeue(AUTHORITY_WAIT));
        }
        Err(e) => return not_ready(&ctx, &mn, "CAUnavailable", e, now).await,
    };
    let bundle = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.operator_namespace)
        .get_opt(&bundle_name(authority_name))
        .await?
        .and_then(|m| m.data.and_then(|d| d.get("ca.crt").cloned()))
        .unwrap_or_else(|| ca.cert_pem());
    let digest = hex::encode(Sha256::digest(document.as_bytes()));
    let recorded = mn.status.as_ref().and_then(|s| s.policy_revision).unwrap_or(0);
    let target_namespaces: BTreeSet<String> = std::iter::once(ctx.operator_namespace.clone())
        .chain(members.iter().map(|m| m.namespace.clone()))
        .collect();
    let maps_name = genesis_configmap_name(&network);
    // The operator namespace's copy is the reference: a new digest there is a new revision.
    let reference = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.operator_namespace)
        .get_opt(&maps_name)
        .await?;
    let annotation =
        |m: &ConfigMap, k: &str| m.metadata.annotations.as_ref().and_then(|a| a.get(k)).cloned();
    let revision = match &reference {
        Some(m) if annotation(m, DOCUMENT_DIGEST).as_deref() == Some(digest.as_str()) => {
            annotation(m, REVISION).and_then(|r| r.parse().ok()).unwrap_or(recorded.max(1))
        }
        _ => recorded + 1,
    };
    let mut signed = None;
    for ns in &target_namespaces {
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
        let current = maps.get_opt(&maps_name).await?;
        // Up to date when it carries this document, signed by this CA, and this bundle; an
        // edited copy (which sidecars refuse) is written again.
        let up_to_date = current.as_ref().and_then(|m| m.data.as_ref()).is_some_and(|d| {
            let doc =
                d.get("genesis.json").and_then(|j| serde_json::from_str::<SignedDocument>(j).ok());
            d.get("ca.crt") == Some(&bundle)
                && doc.is_some_and(|doc| {
                    doc.document == document
                        && doc.verify(std::slice::from_ref(ca.cert_der())).is_ok()
                })
        }) && current.as_ref().and_then(|m| annotation(m, REVISION))
            == Some(revision.to_string());
        if up_to_date {
            continue;
        }
        if signed.is_none() {
            let doc = SignedDocument::sign(&ca, document.clone())
                .map_err(|e| Error::Invalid(format!("cannot sign the genesis document: {e}")))?;
            signed = Some(serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        let owner = mn.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default();
        let map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": maps_name, "namespace": ns, "ownerReferences": owner,
                "labels": {NETWORK_LABEL: network},
                "annotations": {DOCUMENT_DIGEST: digest, REVISION: revision.to_string()},
            },
            "data": {"genesis.json": signed, "ca.crt": bundle},
        });
        maps.patch(&maps_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(map)).await?;
    }

    if revision != recorded {
        let note = format!(
            "genesis document revision {revision} published in {} namespaces; anchors {}",
            target_namespaces.len(),
            anchors.join(", ")
        );
        ctx.event(&*mn, false, "GenesisPublished", "Publish", note).await;
    }
    let total = members.len();
    let ready_count = members.iter().filter(|m| m.ready).count();
    let ready = condition_of(
        &*mn,
        "Ready",
        true,
        "Published",
        format!("genesis document revision {revision} published; {ready_count} of {total} members ready"),
        now,
    );
    let degraded = ready_count < total || (total > 0 && anchors.is_empty());
    let degraded = condition_of(
        &*mn,
        "Degraded",
        degraded,
        if degraded { "MembersNotReady" } else { "AllMembersReady" },
        if anchors.is_empty() && total > 0 {
            "no member is ready to be an anchor".into()
        } else {
            format!("{} members not ready", total - ready_count)
        },
        now,
    );
    set_status(
        &ctx,
        &mn,
        json!({
            "observedGeneration": mn.meta().generation,
            "members": total,
            "readyMembers": ready_count,
            "anchors": anchors,
            "policyRevision": revision,
            "conditions": [ready, degraded],
        }),
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// A member's unique key among all namespaces.
fn key(m: &Member) -> String {
    decide_network::node_name(&m.name, &m.namespace)
}

async fn apply_member_certificate(
    ctx: &Context,
    network: &str,
    m: &Member<'_>,
) -> Result<(), Error> {
    let labels = m.pod.meta().labels.clone().unwrap_or_default();
    let owner = json!({
        "apiVersion": "v1", "kind": "Pod", "name": m.name,
        "uid": m.pod.meta().uid, "controller": true,
    });
    let cert = json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
        "metadata": {
            "name": m.name, "namespace": m.namespace,
            "labels": {NETWORK_LABEL: network},
            "ownerReferences": [owner],
            "finalizers": [FINALIZER],
        },
        "spec": {
            "networkRef": {"name": network},
            "nodeName": decide_network::node_name(&m.name, &m.namespace),
            "role": decide_network::role(&labels),
            "delivery": "csr",
        },
    });
    Api::<Certificate>::namespaced(ctx.client.clone(), &m.namespace)
        .patch(&m.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(cert))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
