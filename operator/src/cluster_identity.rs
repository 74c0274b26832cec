//! The identity service in a cluster: one service (`genesis-operator-identity:7443`, every
//! replica) for every network. A sidecar names its network in TLS SNI
//! (`<network>.identity.genesis-mesh.invalid`); the service answers with a serving certificate
//! from that network's authority, authenticates the sidecar ([`crate::token_review`] for a
//! first join, its current certificate for a renewal), signs the CSR with the authority's CA,
//! and records the issuance in the member's Certificate status *before* answering, so a
//! serial the member holds is always one a revocation will list.
//!
//! Each network's trust (CA, bundle, CRL, serving certificate) is read from the API and kept
//! for [`REFRESH`]; a revocation takes effect at once regardless, because an issuance re-reads
//! the Certificate and refuses a revoked or deleted one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use genesis_crds::{Certificate, MeshNetwork, NetworkAuthority};
use genesis_trust::join::{network_of_server_name, CertificateResponse, CrlResponse};
use genesis_trust::{
    CertificateAuthority, Crl, Identity, IssuedCertificate, KeyAlgorithm, LeafPolicy, Role,
    TrustBundle, TrustPolicy, TrustStore,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::controller::certificate::{issued_status, load_ca};
use crate::controller::{bundle_name, condition_of, crl_name, rfc3339, Context};
use crate::identity_service::{Issuer, Pending, Served};
use crate::local::unix;
use crate::{Error, Result};

/// How long a network's trust is reused before it is read again (a new CRL or bundle reaches
/// renewing members' verification within this).
pub const REFRESH: Duration = Duration::from_secs(10);
/// Lifetime of a serving certificate (re-issued at every refresh).
const SERVING_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Attempts to record an issuance when other writers race us (409 Conflict).
const RECORD_ATTEMPTS: usize = 5;

/// One network's trust, as read from the API.
struct NetworkTrust {
    served: Arc<Served>,
    ca: CertificateAuthority,
    authority: NetworkAuthority,
    bundle_pem: String,
    crl: Crl,
    loaded: Instant,
}

/// The cluster's [`Issuer`].
pub struct ClusterIssuer {
    ctx: Arc<Context>,
    networks: Mutex<HashMap<String, Arc<NetworkTrust>>>,
}

fn api_error(what: &str) -> impl Fn(kube::Error) -> Error + '_ {
    move |e| Error::Config(format!("cannot read {what}: {e}"))
}

impl ClusterIssuer {
    pub fn new(ctx: Arc<Context>) -> Self {
        ClusterIssuer { ctx, networks: Mutex::new(HashMap::new()) }
    }

    async fn trust(&self, network: &str) -> Result<Arc<NetworkTrust>> {
        let cached = self.networks.lock().unwrap_or_else(|p| p.into_inner()).get(network).cloned();
        if let Some(trust) = cached.filter(|t| t.loaded.elapsed() < REFRESH) {
            return Ok(trust);
        }
        let trust = Arc::new(self.load(network).await?);
        self.networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(network.to_owned(), trust.clone());
        Ok(trust)
    }

    async fn load(&self, network: &str) -> Result<NetworkTrust> {
        let client = &self.ctx.client;
        let now = (self.ctx.now)();
        let mn = Api::<MeshNetwork>::all(client.clone())
            .get_opt(network)
            .await
            .map_err(api_error("the MeshNetwork"))?
            .ok_or_else(|| Error::BadRequest(format!("there is no MeshNetwork {network}")))?;
        let authority_name = &mn.spec.authority_ref.name;
        let authority = Api::<NetworkAuthority>::all(client.clone())
            .get_opt(authority_name)
            .await
            .map_err(api_error("the NetworkAuthority"))?
            .ok_or_else(|| {
                Error::Config(format!(
                    "MeshNetwork {network} names NetworkAuthority {authority_name}, which does not exist"
                ))
            })?;
        let ca = load_ca(&self.ctx, &authority).await.map_err(Error::Config)?;
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &self.ctx.operator_namespace);
        let entry = |map: Option<ConfigMap>, key: &str| {
            map.and_then(|m| m.data).and_then(|mut d| d.remove(key))
        };
        let bundle_pem = entry(
            maps.get_opt(&bundle_name(authority_name)).await.map_err(api_error("the bundle"))?,
            "ca.crt",
        )
        .unwrap_or_else(|| ca.cert_pem());
        let crl_pem = entry(
            maps.get_opt(&crl_name(authority_name)).await.map_err(api_error("the CRL"))?,
            "crl.pem",
        )
        .ok_or_else(|| {
            Error::Config(format!(
                "NetworkAuthority {authority_name} has not signed a CRL yet; retry shortly"
            ))
        })?;
        let crl = Crl::from_pem(&crl_pem)?;
        let trust_domain = &authority.spec.trust_domain;
        let store = Arc::new(TrustStore::new(
            TrustPolicy {
                trust_domain: trust_domain.clone(),
                network: Some(network.to_owned()),
                require_fresh_crl: true,
            },
            TrustBundle::from_pem(&bundle_pem)?,
        ));
        if let Err(e) = store.install_crl(&crl, now) {
            // Renewals are refused (no fresh CRL) until the authority re-signs; joins go on.
            tracing::warn!(%network, error = %e, "the authority's CRL is not usable");
        }
        let me = Identity::new(trust_domain, network, Role::Operator, "genesis-operator")?;
        let policy = LeafPolicy { duration: SERVING_LIFETIME, renew_before: None };
        let (serving, key) =
            ca.issue_with_generated_key(&me, KeyAlgorithm::EcdsaP256, &policy, now)?;
        let config =
            genesis_trust::tls::identity_service_server_config(store.clone(), serving.chain, &key)?;
        let served =
            Arc::new(Served { network: network.to_owned(), config: Arc::new(config), store });
        Ok(NetworkTrust { served, ca, authority, bundle_pem, crl, loaded: Instant::now() })
    }

    /// The member Certificate of `identity` (node `<pod>.<namespace>`), if it may still be
    /// issued to: not revoked, not being deleted, same network, node and role.
    fn check_member(cert: &Certificate, identity: &Identity) -> Result<()> {
        let who =
            format!("Certificate {}/{}", cert.namespace().unwrap_or_default(), cert.name_any());
        let refuse = |why: String| Err(Error::Unauthenticated(format!("{who} {why}")));
        if cert.spec.revoked {
            return refuse("is revoked".into());
        }
        if cert.meta().deletion_timestamp.is_some() {
            return refuse("is being deleted (its pod is gone)".into());
        }
        if cert.spec.node_name != identity.node()
            || cert.spec.network_ref.name != identity.network()
            || Role::from(cert.spec.role) != identity.role()
        {
            return refuse(format!(
                "is for node {} ({}) of network {}, not {identity}",
                cert.spec.node_name,
                Role::from(cert.spec.role),
                cert.spec.network_ref.name
            ));
        }
        Ok(())
    }

    /// Writes the issuance into the Certificate's status, guarded by its resourceVersion so a
    /// concurrent issuance (another replica) cannot drop a serial from `issuedSerials`.
    async fn record(
        &self,
        certs: &Api<Certificate>,
        name: &str,
        identity: &Identity,
        issued: &IssuedCertificate,
        issuer: &str,
        renewal: bool,
    ) -> Result<()> {
        let now = (self.ctx.now)();
        let serial = issued.serial.to_string();
        for _ in 0..RECORD_ATTEMPTS {
            let cert = certs
                .get_opt(name)
                .await
                .map_err(api_error("the member's Certificate"))?
                .ok_or_else(|| Error::Unauthenticated(format!("Certificate {name} was deleted")))?;
            Self::check_member(&cert, identity)?;
            let message = format!(
                "the sidecar holds serial {serial}, valid until {}, renewing at {}",
                rfc3339(issued.not_after),
                rfc3339(issued.renewal_time)
            );
            let reason = if renewal { "Renewed" } else { "Issued" };
            let ready = condition_of(&cert, "Ready", true, reason, message, now);
            let mut status = issued_status(&cert, issued, issuer);
            status["observedGeneration"] = json!(cert.meta().generation);
            status["conditions"] = json!([ready]);
            let patch = json!({
                "metadata": {"resourceVersion": cert.meta().resource_version},
                "status": status,
            });
            match certs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    let note = format!("serial {serial} issued to the sidecar over CSR");
                    let action = if renewal { "Renew" } else { "Issue" };
                    self.ctx.event(&cert, false, reason, action, note).await;
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => {
                    return Err(Error::Config(format!(
                        "cannot record the issuance in Certificate {name}: {e}"
                    )))
                }
            }
        }
        Err(Error::Config(format!(
            "cannot record the issuance in Certificate {name}: it kept changing; retry"
        )))
    }
}

impl ClusterIssuer {
    /// The zone of the node the member's pod runs on (its `topology.kubernetes.io/zone`
    /// label), if the pod is scheduled and the node has one. Never a reason to refuse an
    /// issuance: without it the member simply has no zone.
    async fn zone_of(&self, namespace: &str, pod: &str) -> Option<String> {
        use k8s_openapi::api::core::v1::{Node, Pod};
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let lookup = async {
            let node_name = pods.get_opt(pod).await?.and_then(|p| p.spec?.node_name);
            let Some(node_name) = node_name else { return Ok(None) };
            let nodes: Api<Node> = Api::all(self.ctx.client.clone());
            let node = nodes.get_opt(&node_name).await?;
            Ok::<_, kube::Error>(
                node.and_then(|n| n.metadata.labels?.get(genesis_trust::join::ZONE_LABEL).cloned()),
            )
        };
        match lookup.await {
            Ok(zone) => zone.filter(|z| !z.is_empty()),
            Err(e) => {
                tracing::warn!(%namespace, %pod, error = %e, "cannot read the member's node zone: it gets none");
                None
            }
        }
    }
}

impl Issuer for ClusterIssuer {
    fn served<'a>(&'a self, server_name: Option<&'a str>) -> Pending<'a, Arc<Served>> {
        Box::pin(async move {
            let network = server_name.and_then(network_of_server_name).ok_or_else(|| {
                Error::BadRequest(format!(
                    "the ClientHello names {server_name:?}, not <network>.identity.genesis-mesh.invalid; \
                     is the sidecar older than the operator?"
                ))
            })?;
            Ok(self.trust(network).await?.served.clone())
        })
    }

    fn issue<'a>(
        &'a self,
        served: &'a Served,
        csr: &'a [u8],
        identity: &'a Identity,
        renewal: bool,
    ) -> Pending<'a, CertificateResponse> {
        Box::pin(async move {
            let trust = self.trust(&served.network).await?;
            let node = identity.node();
            // NB: namespaces are DNS labels (no dots); pod names may hold dots.
            let (pod, namespace) = node.rsplit_once('.').ok_or_else(|| {
                Error::Unauthenticated(format!("node {node} is not <pod>.<namespace>"))
            })?;
            let certs: Api<Certificate> = Api::namespaced(self.ctx.client.clone(), namespace);
            let cert = certs
                .get_opt(pod)
                .await
                .map_err(api_error("the member's Certificate"))?
                .ok_or_else(|| {
                    Error::Unauthenticated(format!("there is no Certificate {namespace}/{pod}"))
                })?;
            Self::check_member(&cert, identity)?;
            let defaults = &trust.authority.spec.certificate_defaults;
            let duration = cert.spec.duration.as_deref().unwrap_or(&defaults.duration);
            let renew_before =
                cert.spec.renew_before.as_deref().or(defaults.renew_before.as_deref());
            let parse = genesis_trust::duration::parse_duration;
            let policy = LeafPolicy {
                duration: parse(duration).map_err(Error::Config)?,
                renew_before: renew_before.map(parse).transpose().map_err(Error::Config)?,
            };
            let issued = trust.ca.issue_from_csr(csr, identity, &policy, (self.ctx.now)())?;
            let issuer = trust.ca.fingerprint();
            self.record(&certs, pod, identity, &issued, &issuer, renewal).await?;
            Ok(CertificateResponse {
                chain_pem: issued.chain_pem(),
                bundle_pem: trust.bundle_pem.clone(),
                crl: B64.encode(trust.crl.der()),
                not_after: unix(issued.not_after),
                renewal_time: unix(issued.renewal_time),
                zone: self.zone_of(namespace, pod).await,
            })
        })
    }

    fn crl<'a>(&'a self, served: &'a Served) -> Pending<'a, CrlResponse> {
        Box::pin(async move {
            let trust = self.trust(&served.network).await?;
            Ok(CrlResponse { crl: B64.encode(trust.crl.der()), number: trust.crl.number() })
        })
    }
}

#[cfg(test)]
mod tests;
