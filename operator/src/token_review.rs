//! The identity service's authenticator in a cluster: a sidecar's first join presents its
//! pod's projected ServiceAccount token (audience `genesis-mesh.io`, bound to the pod). A
//! TokenReview asks the API server whether the token is genuine and which pod it is bound to;
//! the pod's member Certificate (written by the MeshNetwork controller, owned by that pod)
//! says which identity it may have. A token of a pod that is not a member is refused with the
//! reason. Renewals are authenticated by the current certificate, as in local mode.

use std::collections::BTreeMap;

use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use genesis_trust::join::CertificateRequest;
use genesis_trust::{Identity, PeerIdentity};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::json;

use crate::decide::network::node_name;
use crate::identity_service::{renewal_identity, Authenticated, Authenticator};
use crate::webhook::TOKEN_AUDIENCE;
use crate::Error;

/// The pod a reviewed token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

fn extra<'a>(extra: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    extra.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// The pod a TokenReview's answer names, or why the token is refused.
pub fn bound_pod(status: &TokenReviewStatus) -> Result<BoundPod, String> {
    if status.authenticated != Some(true) {
        let why = status.error.clone().unwrap_or_else(|| "not authenticated".into());
        return Err(format!("the token was refused by the API server: {why}"));
    }
    if !status.audiences.iter().flatten().any(|a| a == TOKEN_AUDIENCE) {
        return Err(format!("the token is not for audience {TOKEN_AUDIENCE}"));
    }
    let user = status.user.as_ref().ok_or("the TokenReview names no user")?;
    let username = user.username.as_deref().unwrap_or_default();
    let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
        return Err(format!("{username} is not a ServiceAccount"));
    };
    let namespace = rest.split(':').next().unwrap_or_default().to_owned();
    let no_extra = BTreeMap::new();
    let extras = user.extra.as_ref().unwrap_or(&no_extra);
    let (Some(name), Some(uid)) = (
        extra(extras, "authentication.kubernetes.io/pod-name"),
        extra(extras, "authentication.kubernetes.io/pod-uid"),
    ) else {
        return Err(format!(
            "the token of {username} is not bound to a pod (use a projected token, as injected \
             sidecars do)"
        ));
    };
    Ok(BoundPod { namespace, name: name.to_owned(), uid: uid.to_owned() })
}

/// The identity `pod` may have as node `requested`, from its member Certificate.
pub fn entitled(
    pod: &BoundPod,
    requested: &str,
    cert: Option<&Certificate>,
    trust_domain: &str,
) -> Result<Identity, String> {
    let who = format!("pod {}/{}", pod.namespace, pod.name);
    let Some(cert) = cert else {
        return Err(format!(
            "{who} is not a member of any network (no Certificate {}/{}); label it or its \
             namespace genesis-mesh.io/network=<network>",
            pod.namespace, pod.name
        ));
    };
    let owned = cert.owner_references().iter().any(|o| o.kind == "Pod" && o.uid == pod.uid);
    if !owned {
        return Err(format!(
            "Certificate {}/{} belongs to another pod of that name",
            pod.namespace, pod.name
        ));
    }
    if cert.spec.revoked {
        return Err(format!("{who}'s Certificate is revoked"));
    }
    let expected = node_name(&pod.name, &pod.namespace);
    if requested != expected || cert.spec.node_name != expected {
        return Err(format!("{who} may join as node {expected:?} only, not {requested:?}"));
    }
    Identity::new(trust_domain, &cert.spec.network_ref.name, cert.spec.role.into(), &expected)
        .map_err(|e| e.to_string())
}

/// The cluster's [`Authenticator`].
pub struct TokenReviews {
    pub client: kube::Client,
}

impl TokenReviews {
    async fn first_join(&self, request: &CertificateRequest) -> Result<Identity, Error> {
        let unauthenticated = Error::Unauthenticated;
        let token = request.token.as_deref().ok_or_else(|| {
            unauthenticated("a first join needs the pod's projected token".into())
        })?;
        let review: TokenReview = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {"name": ""},
            "spec": {"token": token, "audiences": [TOKEN_AUDIENCE]},
        }))
        .map_err(|e| Error::Config(e.to_string()))?;
        let answered = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Config(format!("TokenReview failed: {e}")))?;
        let pod = bound_pod(&answered.status.unwrap_or_default()).map_err(unauthenticated)?;
        let kube_err = |e: kube::Error| Error::Config(format!("cannot read the member: {e}"));
        let cert = Api::<Certificate>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(&pod.name)
            .await
            .map_err(kube_err)?;
        let trust_domain = match &cert {
            None => String::new(),
            Some(c) => {
                let network = Api::<MeshNetwork>::all(self.client.clone())
                    .get(&c.spec.network_ref.name)
                    .await
                    .map_err(kube_err)?;
                Api::<NetworkAuthority>::all(self.client.clone())
                    .get(&network.spec.authority_ref.name)
                    .await
                    .map_err(kube_err)?
                    .spec
                    .trust_domain
            }
        };
        entitled(&pod, &request.node, cert.as_ref(), &trust_domain).map_err(unauthenticated)
    }
}

impl Authenticator for TokenReviews {
    fn authenticate<'a>(
        &'a self,
        request: &'a CertificateRequest,
        caller: Option<&'a PeerIdentity>,
    ) -> Authenticated<'a> {
        Box::pin(async move {
            match caller {
                Some(peer) => renewal_identity(request, peer),
                None => self.first_join(request).await,
            }
        })
    }
}

#[cfg(test)]
mod tests;
