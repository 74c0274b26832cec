//! The Certificate controller: for `delivery: secret`, issue into the Secret (tls.crt, tls.key,
//! ca.crt) and renew at renewalTime with backoff on failure, never replacing a valid
//! certificate by nothing; for every delivery, put a revoked certificate's serials on its
//! authority's revocation list. Status says what is held. The decision is
//! [`crate::decide::certificate`]; this file gathers its inputs and applies its answer with
//! server-side apply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use genesis_crds::certificate::Delivery;
use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use genesis_trust::{
    CertInfo, CertificateAuthority, Identity, LeafPolicy, RevocationReason, Serial,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::mesh_network::FINALIZER;
use super::{
    apply_configmap, apply_status, apply_status_as, ca_secret_name, condition_of, load_revocations,
    parse_rfc3339, read_ca, revocations_name, rfc3339, until, Context, Error, MANAGER,
};
use crate::decide::{self, CertificateAction, Failures, Held};

/// Issued serials kept in status (a revocation covers them all).
const KEEP_SERIALS: usize = 8;

/// The field manager of what a `delivery: secret` issuance records (serial, validity,
/// renewal time, fingerprints, revision, issued serials, failures, the Issuing condition).
///
/// NB: server-side apply removes a field its manager applied before and leaves out now. The
/// controller's everyday status (observedGeneration, Ready, revokedAt) is applied as
/// [`MANAGER`] without the issuance fields, so those live under a manager of their own, which
/// always applies all of them. Under one manager, an up-to-date reconcile wiped serial,
/// renewalTime and issuedSerials on a real API server, and a revocation after a renewal left the
/// previous, still-valid serial off the CRL.
pub const ISSUANCE_MANAGER: &str = "genesis-operator-issuance";

/// The authority of a certificate's network, or why it cannot be found.
async fn authority_of(
    ctx: &Context,
    cert: &Certificate,
) -> Result<Result<(MeshNetwork, NetworkAuthority), (&'static str, String)>, Error> {
    let network_name = &cert.spec.network_ref.name;
    let Some(network) = Api::<MeshNetwork>::all(ctx.client.clone()).get_opt(network_name).await?
    else {
        return Ok(Err(("NetworkNotFound", format!("no MeshNetwork {network_name}"))));
    };
    let authority_name = &network.spec.authority_ref.name;
    let Some(authority) =
        Api::<NetworkAuthority>::all(ctx.client.clone()).get_opt(authority_name).await?
    else {
        return Ok(Err((
            "AuthorityNotFound",
            format!("MeshNetwork {network_name} names NetworkAuthority {authority_name}, which does not exist"),
        )));
    };
    Ok(Ok((network, authority)))
}

/// The authority's CA, or why it cannot be used yet.
pub(crate) async fn load_ca(
    ctx: &Context,
    authority: &NetworkAuthority,
) -> Result<CertificateAuthority, String> {
    match read_ca(&ctx.client, &ctx.operator_namespace, authority).await {
        Ok(Some(found)) => found,
        Ok(None) => Err(format!(
            "the CA Secret {}/{} does not exist yet",
            ctx.operator_namespace,
            ca_secret_name(&authority.name_any())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// What the certificate's Secret holds, if anything readable. Its renewal time is the one
/// recorded at issuance (status) when the serials match, else computed from its validity.
async fn held(
    ctx: &Context,
    cert: &Certificate,
    expected: &Identity,
    renew_before: Option<Duration>,
) -> Result<Option<Held>, Error> {
    let Some(name) = &cert.spec.secret_name else { return Ok(None) };
    let ns = cert.namespace().unwrap_or_default();
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(name).await?
    else {
        return Ok(None);
    };
    let Some(pem) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else { return Ok(None) };
    let Ok(chain) = genesis_trust::certs_from_pem(&String::from_utf8_lossy(&pem.0)) else {
        return Ok(None);
    };
    let Some(info) = chain.first().and_then(|c| CertInfo::parse(c).ok()) else { return Ok(None) };
    let serial = info.serial.to_string();
    let status = cert.status.as_ref();
    let recorded = status
        .filter(|s| s.serial.as_deref() == Some(serial.as_str()))
        .and_then(|s| s.renewal_time.as_deref())
        .and_then(parse_rfc3339);
    Ok(Some(Held {
        renewal_time: recorded
            .unwrap_or_else(|| decide::renewal_time(info.not_before, info.not_after, renew_before)),
        serial,
        not_after: info.not_after,
        identity_matches: info.identity.as_ref() == Some(expected),
    }))
}

/// Applies the controller's own status fields (observedGeneration, Ready, revokedAt).
async fn set_status(
    ctx: &Context,
    cert: &Certificate,
    status: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<Certificate> =
        Api::namespaced(ctx.client.clone(), &cert.namespace().unwrap_or_default());
    apply_status(&api, &cert.name_any(), status).await
}

/// Applies the issuance `record` whole with its `issuing` condition, as
/// [`ISSUANCE_MANAGER`], then the controller's `ready` condition.
async fn apply_issuance(
    ctx: &Context,
    cert: &Certificate,
    mut record: serde_json::Value,
    issuing: serde_json::Value,
    ready: serde_json::Value,
) -> Result<(), Error> {
    record["conditions"] = json!([issuing]);
    let api: Api<Certificate> =
        Api::namespaced(ctx.client.clone(), &cert.namespace().unwrap_or_default());
    apply_status_as(&api, &cert.name_any(), record, ISSUANCE_MANAGER).await?;
    let generation = cert.meta().generation;
    set_status(ctx, cert, json!({"observedGeneration": generation, "conditions": [ready]})).await
}

/// One reconcile of one Certificate.
pub async fn reconcile(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = (ctx.now)();
    let generation = cert.meta().generation;
    let deleting = cert.meta().deletion_timestamp.is_some();
    let (network, authority) = match authority_of(&ctx, &cert).await? {
        Ok(found) => found,
        // The MeshNetwork is gone, but the authority that signed this certificate may not be:
        // its serials still go on that authority's list before the deletion finishes. Only
        // with no such authority (no list to revoke on) is the finalizer simply released.
        Err(_) if deleting => {
            if let Some(authority) = signing_authority(&ctx, &cert).await? {
                let list = load_revocations(&ctx, &authority.name_any()).await?;
                let serials: Vec<String> = issued_serials(&cert)
                    .into_iter()
                    .filter(|s| !list.entries.contains_key(s))
                    .collect();
                if !serials.is_empty() {
                    revoke(&ctx, &cert, &authority.name_any(), &serials, "MemberGone", now).await?;
                }
            }
            return release(&ctx, &cert).await;
        }
        Err((reason, message)) => {
            let ready = condition_of(&*cert, "Ready", false, reason, message, now);
            set_status(
                &ctx,
                &cert,
                json!({"observedGeneration": generation, "conditions": [ready]}),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let authority_name = authority.name_any();
    let identity = Identity::new(
        &authority.spec.trust_domain,
        &network.name_any(),
        cert.spec.role.into(),
        &cert.spec.node_name,
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let member_gone = deleting || member_pod_gone(&ctx, &cert).await?;
    if cert.spec.delivery == Delivery::Csr && !cert.spec.revoked && !member_gone {
        // Issued by the identity service; nothing to decide until revocation.
        return Ok(Action::await_change());
    }
    let status = cert.status.clone().unwrap_or_default();
    let list = load_revocations(&ctx, &authority_name).await?;
    let listed: BTreeSet<String> = list.entries.keys().cloned().collect();
    let renew_before = cert
        .spec
        .renew_before
        .as_deref()
        .or(authority.spec.certificate_defaults.renew_before.as_deref())
        .map(genesis_trust::duration::parse_duration)
        .transpose()
        .map_err(Error::Invalid)?;
    let held = match cert.spec.delivery {
        Delivery::Secret => held(&ctx, &cert, &identity, renew_before).await?,
        // Members' certificates come from the identity service; status records them.
        Delivery::Csr => None,
    };
    let failures = Failures {
        count: status.failed_issuance_attempts.unwrap_or(0).max(0) as u32,
        last: status.last_failure_time.as_deref().and_then(parse_rfc3339),
    };
    let issued = issued_serials(&cert);
    let action = decide::certificate(
        now,
        cert.spec.revoked,
        member_gone,
        held.as_ref(),
        failures,
        &issued,
        &listed,
    );
    match action {
        CertificateAction::Revoke { serials, reason } => {
            revoke(&ctx, &cert, &authority_name, &serials, reason, now).await?;
            if deleting {
                return release(&ctx, &cert).await;
            }
            Ok(Action::await_change())
        }
        CertificateAction::StayRevoked if deleting => release(&ctx, &cert).await,
        CertificateAction::StayRevoked => {
            // Revoked before anything was issued (or created revoked): say so once, as
            // Ready=False, rather than leaving no Ready condition at all.
            let said = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False");
            if !said {
                let reason = if cert.spec.revoked { "Revoked" } else { "MemberGone" };
                let message = "revoked: every serial it was issued is on the revocation list \
                               (none, if it was revoked before its first issuance), and it is \
                               issued nothing more";
                let ready = condition_of(&*cert, "Ready", false, reason, message.into(), now);
                let revoked_at = status.revoked_at.clone().unwrap_or_else(|| rfc3339(now));
                set_status(
                    &ctx,
                    &cert,
                    json!({"observedGeneration": generation, "revokedAt": revoked_at,
                           "conditions": [ready]}),
                )
                .await?;
            }
            Ok(Action::await_change())
        }
        CertificateAction::Backoff { retry_at } => Ok(Action::requeue(until(now, retry_at))),
        CertificateAction::UpToDate { renew_at } => {
            let ready = condition_of(
                &*cert,
                "Ready",
                true,
                "Issued",
                "the certificate is valid".into(),
                now,
            );
            set_status(
                &ctx,
                &cert,
                json!({"observedGeneration": generation, "conditions": [ready]}),
            )
            .await?;
            Ok(Action::requeue(until(now, renew_at)))
        }
        CertificateAction::Issue(reason) => {
            let result = match load_ca(&ctx, &authority).await {
                Ok(ca) => {
                    let duration = cert
                        .spec
                        .duration
                        .as_deref()
                        .unwrap_or(&authority.spec.certificate_defaults.duration);
                    let policy = LeafPolicy {
                        duration: genesis_trust::duration::parse_duration(duration)
                            .map_err(Error::Invalid)?,
                        renew_before,
                    };
                    ca.issue_with_generated_key(
                        &identity,
                        authority.spec.key_algorithm.into(),
                        &policy,
                        now,
                    )
                    .map(|(issued, key)| (issued, key, ca.fingerprint(), ca.cert_pem()))
                    .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match result {
                Ok((issued, key, issuer, ca_pem)) => {
                    // ca.crt is the authority's bundle: both roots during a CA rotation.
                    let bundle = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
                        ctx.client.clone(),
                        &ctx.operator_namespace,
                    )
                    .get_opt(&super::bundle_name(&authority_name))
                    .await?
                    .and_then(|m| m.data)
                    .and_then(|mut d| d.remove("ca.crt"));
                    let ca_pem = bundle.unwrap_or(ca_pem);
                    write_secret(&ctx, &cert, &issued.chain_pem(), &key.to_pem(), &ca_pem).await?;
                    let serial = issued.serial.to_string();
                    let note = format!(
                        "issued serial {serial} into Secret {}, valid until {}",
                        cert.spec.secret_name.as_deref().unwrap_or_default(),
                        rfc3339(issued.not_after)
                    );
                    ctx.event(&*cert, false, reason.as_str(), "Issue", note).await;
                    let ready = condition_of(
                        &*cert,
                        "Ready",
                        true,
                        reason.as_str(),
                        format!("issued serial {serial}"),
                        now,
                    );
                    let issuing =
                        condition_of(&*cert, "Issuing", true, "Issued", String::new(), now);
                    let record = issued_status(&cert, &issued, &issuer);
                    apply_issuance(&ctx, &cert, record, issuing, ready).await?;
                    Ok(Action::requeue(until(now, issued.renewal_time)))
                }
                Err(e) => {
                    let count = failures.count + 1;
                    let note = format!("{e}; retrying in {:?}", decide::backoff(count));
                    ctx.event(&*cert, true, "IssueFailed", "Issue", note).await;
                    // A held, still valid certificate keeps the member Ready; only Issuing fails.
                    let valid = held.as_ref().is_some_and(|h| now < h.not_after);
                    let ready = condition_of(
                        &*cert,
                        "Ready",
                        valid,
                        if valid { "Issued" } else { "IssueFailed" },
                        if valid {
                            "the held certificate is still valid".into()
                        } else {
                            e.clone()
                        },
                        now,
                    );
                    let issuing = condition_of(&*cert, "Issuing", false, "IssueFailed", e, now);
                    // The record is applied whole: what was issued before stays recorded.
                    let mut record = held_record(&status);
                    record["failedIssuanceAttempts"] = json!(count);
                    record["lastFailureTime"] = json!(rfc3339(now));
                    apply_issuance(&ctx, &cert, record, issuing, ready).await?;
                    Ok(Action::requeue(decide::backoff(count)))
                }
            }
        }
    }
}

/// Every serial `cert` was issued that its status records (a revocation covers them all).
fn issued_serials(cert: &Certificate) -> Vec<String> {
    let status = cert.status.clone().unwrap_or_default();
    let mut issued = status.issued_serials;
    if let Some(s) = status.serial.filter(|s| !issued.contains(s)) {
        issued.push(s);
    }
    issued
}

/// The authority whose CA signed `cert` (by the issuer fingerprint its status records, among
/// the roots each authority's bundle holds), for a Certificate whose MeshNetwork is gone.
async fn signing_authority(
    ctx: &Context,
    cert: &Certificate,
) -> Result<Option<NetworkAuthority>, Error> {
    let Some(issuer) = cert.status.as_ref().and_then(|s| s.issuer_fingerprint.clone()) else {
        return Ok(None);
    };
    let authorities = Api::<NetworkAuthority>::all(ctx.client.clone())
        .list(&kube::api::ListParams::default())
        .await?;
    Ok(authorities.items.into_iter().find(|a| {
        a.status.as_ref().is_some_and(|s| {
            s.ca_fingerprint.as_deref() == Some(issuer.as_str())
                || s.bundle_fingerprints.contains(&issuer)
        })
    }))
}

/// Puts `serials` of `cert` on authority `authority_name`'s revocation list (the
/// NetworkAuthority controller signs the CRL from it), and says so in an Event and status.
async fn revoke(
    ctx: &Context,
    cert: &Certificate,
    authority_name: &str,
    serials: &[String],
    reason: &str,
    now: std::time::SystemTime,
) -> Result<(), Error> {
    let mut list = load_revocations(ctx, authority_name).await?;
    let crl_reason = cert.spec.revocation_reason.map_or(RevocationReason::Unspecified, Into::into);
    for s in serials {
        let serial = Serial::from_hex(s).map_err(|e| Error::Invalid(e.to_string()))?;
        list.revoke(&serial, crl_reason, now);
    }
    let json = serde_json::to_string(&list).unwrap_or_default();
    apply_configmap(ctx, &revocations_name(authority_name), "revocations.json", &json).await?;
    let message = format!(
        "serials {} are on the revocation list of {authority_name} (number {})",
        serials.join(", "),
        list.number
    );
    ctx.event(cert, false, reason, "Revoke", message.clone()).await;
    let ready = condition_of(cert, "Ready", false, reason, message, now);
    set_status(
        ctx,
        cert,
        json!({
            "observedGeneration": cert.meta().generation, "revokedAt": rfc3339(now),
            "conditions": [ready],
        }),
    )
    .await
}

/// Whether the Certificate belongs to a member pod (its owner) that no longer exists, or was
/// replaced by another pod of the same name.
pub(super) async fn member_pod_gone(ctx: &Context, cert: &Certificate) -> Result<bool, Error> {
    let Some(owner) = cert.owner_references().iter().find(|o| o.kind == "Pod") else {
        return Ok(false);
    };
    let ns = cert.namespace().unwrap_or_default();
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns).get_opt(&owner.name).await?;
    Ok(pod.is_none_or(|p| p.metadata.uid.as_deref() != Some(owner.uid.as_str())))
}

/// Removes our finalizer once the serials are on the revocation list, so the deletion of a
/// member's Certificate (with its pod) completes.
async fn release(ctx: &Context, cert: &Certificate) -> Result<Action, Error> {
    let finalizers: Vec<&String> = cert.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    if finalizers.len() != cert.finalizers().len() {
        let api: Api<Certificate> =
            Api::namespaced(ctx.client.clone(), &cert.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"finalizers": finalizers}});
        api.patch(&cert.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(Action::await_change())
}

/// The issuance record of `cert` once `issued` (signed by the CA with fingerprint `issuer`)
/// is held: validity, serial, revision, the serials a revocation covers. Failures are cleared by
/// leaving them out (the record is applied whole).
pub(crate) fn issued_status(
    cert: &Certificate,
    issued: &genesis_trust::IssuedCertificate,
    issuer: &str,
) -> serde_json::Value {
    let status = cert.status.clone().unwrap_or_default();
    let serial = issued.serial.to_string();
    json!({
        "notBefore": rfc3339(issued.not_before),
        "notAfter": rfc3339(issued.not_after),
        "renewalTime": rfc3339(issued.renewal_time),
        "fingerprint": issued.fingerprint,
        "issuerFingerprint": issuer,
        "revision": status.revision.unwrap_or(0) + 1,
        "issuedSerials": keep_serials(&status.issued_serials, &serial),
        "serial": serial,
    })
}

/// The issuance record as `status` holds it (what was issued last), to apply again whole.
fn held_record(status: &genesis_crds::certificate::CertificateStatus) -> serde_json::Value {
    let mut record = json!({
        "notBefore": status.not_before,
        "notAfter": status.not_after,
        "renewalTime": status.renewal_time,
        "fingerprint": status.fingerprint,
        "issuerFingerprint": status.issuer_fingerprint,
        "revision": status.revision,
        "serial": status.serial,
    });
    record.as_object_mut().expect("an object").retain(|_, v| !v.is_null());
    if !status.issued_serials.is_empty() {
        record["issuedSerials"] = json!(status.issued_serials);
    }
    record
}

/// The serials to keep in status after issuing `serial`: the previous ones plus it, newest
/// last, at most [`KEEP_SERIALS`].
fn keep_serials(previous: &[String], serial: &str) -> Vec<String> {
    let mut serials: Vec<String> = previous.iter().filter(|s| *s != serial).cloned().collect();
    serials.push(serial.to_owned());
    let excess = serials.len().saturating_sub(KEEP_SERIALS);
    serials.drain(..excess);
    serials
}

async fn write_secret(
    ctx: &Context,
    cert: &Certificate,
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(), Error> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert
        .spec
        .secret_name
        .clone()
        .ok_or_else(|| Error::Invalid("delivery: secret needs secretName".into()))?;
    let owner = cert.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default();
    let data: BTreeMap<String, ByteString> =
        [("tls.crt", chain_pem), ("tls.key", key_pem), ("ca.crt", ca_pem)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": owner,
                     "labels": {"genesis-mesh.io/certificate": cert.name_any()}},
        "data": data,
    });
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(secret))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
