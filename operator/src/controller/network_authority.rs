//! The NetworkAuthority controller: create (or adopt a user-supplied) CA Secret, publish the
//! trust bundle ConfigMap, sign the revocation list into a CRL ConfigMap whenever the list
//! changes and again at half the CRL's validity, rotate a generated CA ([`rotation`]), and
//! report it all in status.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_crds::NetworkAuthority;
use genesis_trust::{CertificateAuthority, Crl};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{
    apply_configmap, apply_configmap_data, apply_status, bundle_name, ca_secret_name, crl_name,
    load_revocations, read_ca, revocations_name, rfc3339, until, Context, Error, MANAGER,
};
use crate::decide;

pub mod rotation;

/// The key of the CRL ConfigMap holding the other root's CRL during a CA rotation.
pub const ROTATION_CRL: &str = "rotation.pem";
/// How often a rotation in progress is looked at.
const ROTATION_POLL: Duration = Duration::from_secs(30);

/// How far a CRL's thisUpdate is backdated (members' clocks may lag the operator's).
pub(super) const CRL_BACKDATE: Duration = Duration::from_secs(60);

/// The CA: the adopted Secret (`spec.caSecretRef`), or ours, generated on first sight.
async fn ca(
    ctx: &Context,
    na: &NetworkAuthority,
    now: SystemTime,
) -> Result<Result<CertificateAuthority, String>, Error> {
    if let Some(found) = read_ca(&ctx.client, &ctx.operator_namespace, na).await? {
        return Ok(found);
    }
    let name = ca_secret_name(&na.name_any());
    let validity =
        genesis_trust::duration::parse_duration(&na.spec.ca_validity).map_err(Error::Invalid)?;
    let ca = CertificateAuthority::generate(
        &na.spec.trust_domain,
        na.spec.key_algorithm.into(),
        validity,
        now,
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let owner = na.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default();
    let data = json!({
        "tls.crt": ByteString(ca.cert_pem().into_bytes()),
        "tls.key": ByteString(ca.key_pem().into_bytes()),
    });
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ctx.operator_namespace, "ownerReferences": owner},
        "data": data,
    });
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    secrets.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(secret)).await?;
    Ok(Ok(ca))
}

async fn current_crl(ctx: &Context, authority: &str) -> Result<Option<Crl>, Error> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let Some(map) = maps.get_opt(&crl_name(authority)).await? else { return Ok(None) };
    Ok(map.data.as_ref().and_then(|d| d.get("crl.pem")).and_then(|pem| Crl::from_pem(pem).ok()))
}

async fn set_status(
    ctx: &Context,
    na: &NetworkAuthority,
    status: serde_json::Value,
) -> Result<(), Error> {
    apply_status(&Api::<NetworkAuthority>::all(ctx.client.clone()), &na.name_any(), status).await
}

fn ready(
    na: &NetworkAuthority,
    ok: bool,
    reason: &str,
    message: String,
    now: SystemTime,
) -> serde_json::Value {
    super::condition_of(na, "Ready", ok, reason, message, now)
}

/// One reconcile of one NetworkAuthority.
pub async fn reconcile(na: Arc<NetworkAuthority>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = (ctx.now)();
    let name = na.name_any();
    let generation = na.meta().generation;
    let ca = match ca(&ctx, &na, now).await? {
        Ok(ca) => ca,
        Err(message) => {
            ctx.event(&*na, true, "CAUnavailable", "LoadCA", message.clone()).await;
            let cond = ready(&na, false, "CAUnavailable", message, now);
            set_status(&ctx, &na, json!({"observedGeneration": generation, "conditions": [cond]}))
                .await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let cas = rotation::step(&ctx, &na, ca, now).await?;
    if cas.step != decide::RotationStep::Stay {
        let reason = match cas.step {
            decide::RotationStep::Begin => "RotationStarted",
            decide::RotationStep::Promote => "RotationPromoted",
            _ => "RotationFinished",
        };
        ctx.event(&*na, false, reason, "RotateCA", cas.rotating.2.clone()).await;
    }
    let ca = &cas.signer;
    apply_configmap(&ctx, &bundle_name(&name), "ca.crt", &cas.bundle_pem()).await?;
    let validity =
        genesis_trust::duration::parse_duration(&na.spec.crl_validity).map_err(Error::Invalid)?;
    let mut list = load_revocations(&ctx, &name).await?;
    let held = current_crl(&ctx, &name).await?;
    let due = match &held {
        None => true,
        Some(crl) => decide::crl_due(
            now,
            crl.this_update() + CRL_BACKDATE,
            crl.next_update(),
            crl.number() != list.number,
        ),
    } || cas.step != decide::RotationStep::Stay;
    let crl = match held {
        Some(crl) if !due => crl,
        held => {
            if held.as_ref().is_some_and(|c| c.number() >= list.number) {
                // Re-signing the same list: a new CRL still needs a new number (RFC 5280).
                list.refresh();
                let json = serde_json::to_string(&list).unwrap_or_default();
                apply_configmap(&ctx, &revocations_name(&name), "revocations.json", &json).await?;
            }
            let crl = ca
                .sign_crl(&list, now - CRL_BACKDATE, now + validity)
                .map_err(|e| Error::Invalid(format!("cannot sign the CRL: {e}")))?;
            // During a rotation the other root signs the same list too: members check each
            // peer's leaf against the CRL of the root that issued it.
            let mut data = json!({"crl.pem": crl.to_pem()});
            if let Some(other) = &cas.other {
                let also = other
                    .sign_crl(&list, now - CRL_BACKDATE, now + validity)
                    .map_err(|e| Error::Invalid(format!("cannot sign the CRL: {e}")))?;
                data[ROTATION_CRL] = json!(also.to_pem());
            }
            apply_configmap_data(&ctx, &crl_name(&name), data).await?;
            let note = format!(
                "CRL {} lists {} serials, valid until {}",
                crl.number(),
                crl.revoked().len(),
                rfc3339(crl.next_update())
            );
            ctx.event(&*na, false, "CRLPublished", "SignCRL", note).await;
            crl
        }
    };
    let (in_progress, reason, message) = cas.rotating.clone();
    let rotating = super::condition_of(&*na, "Rotating", in_progress, reason, message, now);
    let cond = ready(
        &na,
        true,
        "Published",
        format!("CRL {} signed, valid until {}", crl.number(), rfc3339(crl.next_update())),
        now,
    );
    set_status(
        &ctx,
        &na,
        json!({
            "observedGeneration": generation,
            "caFingerprint": ca.fingerprint(),
            "caNotAfter": rfc3339(ca.not_after()),
            "crlNumber": crl.number(),
            "revokedCount": crl.revoked().len(),
            "trustBundle": cas.bundle_pem(),
            "bundleFingerprints": cas.fingerprints(),
            "conditions": [cond, rotating],
        }),
    )
    .await?;
    // Look again when the CRL is half way through its validity (a revocation triggers sooner
    // through the watch on the revocation ConfigMap), and every 30 s while rotating (members
    // renewing do not trigger this controller).
    let resign_at = crl.this_update() + CRL_BACKDATE + validity / 2;
    let next = until(now, resign_at);
    Ok(Action::requeue(if cas.rotating.0 { next.min(ROTATION_POLL) } else { next }))
}

#[cfg(test)]
mod tests;
