//! CA rotation of a generated CA ([`crate::decide::rotation_step`] decides). The state lives in
//! the CA Secret: `next.crt`/`next.key` while the new root is being distributed (annotation
//! `genesis-mesh.io/rotation-started`), `previous.crt`/`previous.key` while the old one is
//! retired. An admin asks for a rotation with the annotation `genesis-mesh.io/rotate-ca` on the
//! NetworkAuthority (any new value); it also starts by itself at two thirds of the CA's
//! validity. An adopted CA (`caSecretRef`) is never rotated by the operator.

use std::collections::BTreeSet;
use std::time::SystemTime;

use genesis_crds::{Certificate, NetworkAuthority};
use genesis_trust::{CertInfo, CertificateAuthority};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::super::{
    ca_secret_name, networks_of, parse_rfc3339, rfc3339, secret_field, Context, Error,
};
use crate::decide::{self, MemberLeaf, Rotation, RotationStep};

/// The annotation an admin sets (to any new value) on a NetworkAuthority to rotate its CA.
pub const ROTATE_ANNOTATION: &str = "genesis-mesh.io/rotate-ca";
/// On the CA Secret: the `rotate-ca` value last acted on.
const ROTATED_FOR: &str = "genesis-mesh.io/rotated-for";
/// On the CA Secret: when distribution of the next root began (RFC 3339).
const STARTED: &str = "genesis-mesh.io/rotation-started";

/// The CAs in play after this reconcile's rotation step.
pub struct Cas {
    /// Signs certificates (and `crl.pem`).
    pub signer: CertificateAuthority,
    /// The other root of a rotation (next or previous): trusted, and signs `rotation.pem`.
    pub other: Option<CertificateAuthority>,
    /// `Rotating` condition: (in progress, reason, message).
    pub rotating: (bool, &'static str, String),
    /// The step taken (an Event and a CRL re-sign follow any but Stay).
    pub step: RotationStep,
}

impl Cas {
    /// Every trusted root, the signer first.
    pub fn bundle_pem(&self) -> String {
        let mut pem = self.signer.cert_pem();
        if let Some(other) = &self.other {
            pem += &other.cert_pem();
        }
        pem
    }

    pub fn fingerprints(&self) -> Vec<String> {
        std::iter::once(&self.signer).chain(&self.other).map(|c| c.fingerprint()).collect()
    }
}

fn pair(
    secret: &Secret,
    prefix: &str,
    trust_domain: &str,
) -> Result<Option<CertificateAuthority>, Error> {
    let (Some(cert), Some(key)) = (
        secret_field(secret, &format!("{prefix}.crt")),
        secret_field(secret, &format!("{prefix}.key")),
    ) else {
        return Ok(None);
    };
    CertificateAuthority::from_pem(trust_domain, &cert, &key)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("the CA Secret's {prefix}.crt/{prefix}.key: {e}")))
}

/// The leaves of every member Certificate of the authority's networks that holds one.
async fn members(ctx: &Context, authority: &str) -> Result<Vec<MemberLeaf>, Error> {
    let networks: BTreeSet<String> =
        networks_of(ctx, authority).await?.iter().map(|n| n.name_any()).collect();
    Ok(Api::<Certificate>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| networks.contains(&c.spec.network_ref.name) && !c.spec.revoked)
        .filter_map(|c| {
            let s = c.status?;
            s.serial.as_ref()?;
            Some(MemberLeaf {
                issued: s.not_before.as_deref().and_then(parse_rfc3339)?,
                // A leaf recorded before issuers were recorded counts as the old CA's.
                issuer: s.issuer_fingerprint.unwrap_or_default(),
            })
        })
        .collect())
}

/// Takes this reconcile's rotation step for the generated CA `current` and returns the CAs in
/// play.
pub async fn step(
    ctx: &Context,
    na: &NetworkAuthority,
    current: CertificateAuthority,
    now: SystemTime,
) -> Result<Cas, Error> {
    let asked = na.annotations().get(ROTATE_ANNOTATION).filter(|v| !v.is_empty()).cloned();
    if na.spec.ca_secret_ref.is_some() {
        let message = if asked.is_some() {
            "the CA is adopted (caSecretRef): rotate it yourself and update the Secret".into()
        } else {
            String::new()
        };
        let rotating = (false, "Adopted", message);
        return Ok(Cas { signer: current, other: None, rotating, step: RotationStep::Stay });
    }
    let trust_domain = &na.spec.trust_domain;
    let name = ca_secret_name(&na.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
    let secret = secrets
        .get_opt(&name)
        .await?
        .ok_or_else(|| Error::Invalid(format!("the CA Secret {name} vanished")))?;
    let annotations = secret.annotations().clone();
    let next = pair(&secret, "next", trust_domain)?;
    let previous = pair(&secret, "previous", trust_domain)?;
    let state = match (&next, &previous) {
        (Some(_), _) => Rotation::Distributing {
            since: annotations.get(STARTED).and_then(|s| parse_rfc3339(s)).unwrap_or(now),
        },
        (None, Some(_)) => Rotation::Retiring { new_root: current.fingerprint() },
        (None, None) => Rotation::Idle,
    };
    let not_before = CertInfo::parse(current.cert_der()).map(|i| i.not_before).unwrap_or(now);
    let due = decide::ca_rotation_due(now, not_before, current.not_after());
    let requested = due || asked.as_ref().is_some_and(|a| annotations.get(ROTATED_FOR) != Some(a));
    // NB: only a rotation (or its start) needs the members; an idle authority does not list
    // every Certificate of the cluster on each reconcile.
    let members = if requested || state != Rotation::Idle {
        members(ctx, &na.name_any()).await?
    } else {
        Vec::new()
    };
    let step = decide::rotation_step(&state, requested, &members);
    let b = |s: String| ByteString(s.into_bytes());
    let write = |patch: serde_json::Value| {
        let (secrets, name) = (&secrets, &name);
        async move {
            secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
        }
    };
    let waiting = |pred: &dyn Fn(&MemberLeaf) -> bool| members.iter().filter(|m| !pred(m)).count();
    let cas = match step {
        RotationStep::Begin => {
            let validity = genesis_trust::duration::parse_duration(&na.spec.ca_validity)
                .map_err(Error::Invalid)?;
            let fresh = CertificateAuthority::generate(
                trust_domain,
                na.spec.key_algorithm.into(),
                validity,
                now,
            )
            .map_err(|e| Error::Invalid(e.to_string()))?;
            let why = asked.clone().unwrap_or_else(|| "expiry".into());
            write(json!({
                "metadata": {"annotations": {STARTED: rfc3339(now), ROTATED_FOR: why}},
                "data": {"next.crt": b(fresh.cert_pem()), "next.key": b(fresh.key_pem())},
            }))
            .await?;
            let message = format!(
                "distributing the new root {}: the old CA signs until all {} members renewed",
                fresh.fingerprint(),
                members.len()
            );
            Cas {
                signer: current,
                other: Some(fresh),
                rotating: (true, "Distributing", message),
                step,
            }
        }
        RotationStep::Promote => {
            let fresh = next.expect("distributing has a next CA");
            write(json!({"data": {
                "tls.crt": b(fresh.cert_pem()), "tls.key": b(fresh.key_pem()),
                "previous.crt": b(current.cert_pem()), "previous.key": b(current.key_pem()),
                "next.crt": null, "next.key": null,
            }}))
            .await?;
            let message = format!(
                "the new CA signs; the old root stays until all {} members hold a leaf of the new one",
                members.len()
            );
            Cas { signer: fresh, other: Some(current), rotating: (true, "Retiring", message), step }
        }
        RotationStep::Finish => {
            write(json!({"data": {"previous.crt": null, "previous.key": null}})).await?;
            let message =
                format!("rotated: every member holds a leaf of {}", current.fingerprint());
            Cas { signer: current, other: None, rotating: (false, "Rotated", message), step }
        }
        RotationStep::Stay => match state {
            Rotation::Idle => {
                let message = String::new();
                Cas { signer: current, other: None, rotating: (false, "Idle", message), step }
            }
            Rotation::Distributing { since } => {
                let left = waiting(&|m| m.issued >= since);
                let message = format!(
                    "distributing the new root: {left} of {} members have not renewed since {}",
                    members.len(),
                    rfc3339(since)
                );
                Cas {
                    signer: current,
                    other: next,
                    rotating: (true, "Distributing", message),
                    step,
                }
            }
            Rotation::Retiring { new_root } => {
                let left = waiting(&|m| m.issuer == new_root);
                let message = format!(
                    "retiring the old root: {left} of {} members hold a leaf of it",
                    members.len()
                );
                Cas {
                    signer: current,
                    other: previous,
                    rotating: (true, "Retiring", message),
                    step,
                }
            }
        },
    };
    Ok(cas)
}
