//! The CRL publisher: when an authority signs a new CRL, push it into every network of that
//! authority through the network's anchors (`POST /admin/crl` on the sidecar's admin port, the
//! pod IP), from where gossip carries it to every member; ask every ready member which CRL it
//! holds (`GET /admin/identity`), push directly to whoever is still behind after a grace
//! period, and report it: `crlNumberSeen` and `CRLConverged` on each MeshNetwork,
//! `MeshConverged` on the NetworkAuthority.
//!
//! The CRL is its own authorisation (a sidecar applies only a CRL its authority signed, newer
//! than the one it holds), so the push needs no credential; a sidecar answers 409 to an old one.
//! The decisions are [`crate::decide::crl_spread`] and [`crate::decide::crl_push_targets`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use genesis_crds::{MeshNetwork, NetworkAuthority};
use genesis_trust::Crl;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use super::mesh_network::{member_pods, pod_ready};
use super::{apply_status_as, condition_of, crl_name, networks_of, Context, Error};
use crate::decide::network::node_name;
use crate::decide::{self, MemberCrl, Spread};
use crate::metrics::Metrics;

/// The field manager of the publisher's status writes (the other controllers own the rest).
pub const PUBLISHER: &str = "genesis-operator-crl-publisher";
/// The sidecar's admin port (`/admin/crl`, `/admin/identity`), on the pod IP.
pub const ADMIN_PORT: u16 = crate::webhook::ADMIN_PORT;
/// How long gossip from the anchors gets before a member still behind is pushed directly.
const GRACE: Duration = Duration::from_secs(2);
/// One request to a sidecar gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// While a CRL is spreading, look again this soon.
const SPREADING: Duration = Duration::from_millis(500);
/// Once converged, look again this often (members that joined meanwhile got the CRL from the
/// identity service; this catches any that did not).
const CONVERGED: Duration = Duration::from_secs(30);

/// The publisher's state: when each network's anchors were pushed each CRL.
pub struct Publisher {
    pub ctx: Arc<Context>,
    /// The sidecars' admin port (tests run sidecars elsewhere).
    pub admin_port: u16,
    pub metrics: Option<Arc<Metrics>>,
    pushed: Mutex<HashMap<(String, u64), SystemTime>>,
}

/// One ready member: its node name and admin address.
struct Target {
    node: String,
    admin: String,
    /// Its peer endpoint, as `status.anchors` lists anchors.
    peer: String,
}

impl Publisher {
    pub fn new(ctx: Arc<Context>, admin_port: u16, metrics: Option<Arc<Metrics>>) -> Self {
        Publisher { ctx, admin_port, metrics, pushed: Mutex::new(HashMap::new()) }
    }

    /// One pass over one authority's networks.
    pub async fn reconcile(&self, na: Arc<NetworkAuthority>) -> Result<Action, Error> {
        let ctx = &self.ctx;
        let now = (ctx.now)();
        let authority = na.name_any();
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.operator_namespace);
        let data = maps.get_opt(&crl_name(&authority)).await?.and_then(|m| m.data);
        let parsed = |key: &str| {
            data.as_ref().and_then(|d| d.get(key)).and_then(|pem| Crl::from_pem(pem).ok())
        };
        let Some(crl) = parsed("crl.pem") else {
            // Nothing signed yet; the CRL ConfigMap's creation triggers us.
            return Ok(Action::await_change());
        };
        // During a CA rotation the other root's CRL (same list and number) goes along.
        let rotation = parsed(super::network_authority::ROTATION_CRL);
        let number = crl.number();
        let networks = networks_of(ctx, &authority).await?;
        let mut all = Spread { converged: true, ..Spread::default() };
        let mut members = 0;
        for mn in &networks {
            let spread = self.network(mn, &crl, rotation.as_ref(), now).await?;
            members += spread.holding + spread.behind.len() + spread.unreachable.len();
            all.converged &= spread.converged;
            all.holding += spread.holding;
            all.behind.extend(spread.behind);
            all.unreachable.extend(spread.unreachable);
        }
        let names: Vec<String> = networks.iter().map(|n| n.name_any()).collect();
        let message = if names.is_empty() {
            format!("CRL {number}: no MeshNetwork uses this authority")
        } else if members == 0 {
            format!("CRL {number}: {} has no ready members yet", list(&names))
        } else if all.converged {
            format!("CRL {number} is held by all {members} ready members of {}", list(&names))
        } else {
            let mut m = format!("{} of {members} ready members hold CRL {number}", all.holding);
            if !all.behind.is_empty() {
                m += &format!("; behind: {}", list(&all.behind));
            }
            if !all.unreachable.is_empty() {
                m += &format!("; not answering: {}", list(&all.unreachable));
            }
            m
        };
        let was = na.status.as_ref().and_then(|s| {
            s.conditions.iter().find(|c| c.type_ == "MeshConverged").map(|c| c.message.clone())
        });
        if all.converged && members > 0 && was.as_deref() != Some(message.as_str()) {
            let signed = crl.this_update() + super::network_authority::CRL_BACKDATE;
            let after = now.duration_since(signed).unwrap_or_default();
            let note = format!("{message}, {} ms after it was signed", after.as_millis());
            ctx.event(&*na, false, "MeshConverged", "PublishCRL", note).await;
        }
        let reason = if all.converged { "Converged" } else { "Propagating" };
        let cond = condition_of(&*na, "MeshConverged", all.converged, reason, message, now);
        let api = Api::<NetworkAuthority>::all(ctx.client.clone());
        apply_status_as(&api, &authority, json!({"conditions": [cond]}), PUBLISHER).await?;
        Ok(Action::requeue(if all.converged { CONVERGED } else { SPREADING }))
    }

    /// Asks one network's ready members, pushes where needed, and reports in its status.
    async fn network(
        &self,
        mn: &MeshNetwork,
        crl: &Crl,
        rotation: Option<&Crl>,
        now: SystemTime,
    ) -> Result<Spread, Error> {
        let network = mn.name_any();
        let number = crl.number();
        let targets: Vec<Target> = member_pods(&self.ctx, mn)
            .await?
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some(Target {
                    node: node_name(&p.name_any(), &p.namespace().unwrap_or_default()),
                    admin: format!("{ip}:{}", self.admin_port),
                    peer: format!("{ip}:{}", crate::decide::network::PEER_PORT),
                })
            })
            .collect();
        let held = futures::future::join_all(targets.iter().map(|t| async move {
            MemberCrl { node: t.node.clone(), number: crl_number(&t.admin).await }
        }))
        .await;
        let spread = decide::crl_spread(number, &held);
        let anchor_endpoints = mn.status.as_ref().map(|s| s.anchors.clone()).unwrap_or_default();
        let anchors: Vec<String> = targets
            .iter()
            .filter(|t| anchor_endpoints.contains(&t.peer))
            .map(|t| t.node.clone())
            .collect();
        let key = (network.clone(), number);
        let pushed_at = self.pushed.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let push_to = decide::crl_push_targets(&spread, &anchors, pushed_at, now, GRACE);
        if !push_to.is_empty() {
            let by_node: BTreeMap<&str, &Target> =
                targets.iter().map(|t| (t.node.as_str(), t)).collect();
            let pushes = push_to.iter().filter_map(|n| by_node.get(n.as_str())).map(|t| {
                let kind = if anchors.contains(&t.node) { "anchor" } else { "member" };
                async move {
                    let mut outcome = push(&t.admin, crl.der()).await;
                    if let (Ok(()), Some(other)) = (&outcome, rotation) {
                        outcome = push(&t.admin, other.der()).await;
                    }
                    (t, kind, outcome)
                }
            });
            for (t, kind, outcome) in futures::future::join_all(pushes).await {
                let label = match &outcome {
                    Ok(()) => "applied",
                    Err(e) => {
                        tracing::warn!(node = %t.node, %network, crl = number, error = %e, "CRL push failed");
                        "failed"
                    }
                };
                if let Some(m) = &self.metrics {
                    m.crl_pushes.with_label_values(&[kind, label]).inc();
                }
            }
            let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
            pushed.retain(|(n, c), _| *n != network || *c >= number);
            pushed.insert(key, now);
        }
        let message = if spread.converged {
            format!("every ready member holds CRL {number}")
        } else {
            let waiting = spread.behind.len() + spread.unreachable.len();
            format!("{waiting} ready members do not hold CRL {number} yet")
        };
        let reason = if spread.converged { "Converged" } else { "Propagating" };
        let cond = condition_of(mn, "CRLConverged", spread.converged, reason, message, now);
        let status = json!({"crlNumberSeen": spread.lowest, "conditions": [cond]});
        let api = Api::<MeshNetwork>::all(self.ctx.client.clone());
        apply_status_as(&api, &network, status, PUBLISHER).await?;
        Ok(spread)
    }
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        text += &format!(" and {} more", items.len() - SHOWN);
    }
    text
}

/// The CRL number a sidecar holds, or `None` when it does not answer.
async fn crl_number(admin: &str) -> Option<u64> {
    let (status, body) = request(admin, "GET", "/admin/identity", Bytes::new()).await.ok()?;
    if status != 200 {
        return None;
    }
    let identity: serde_json::Value = serde_json::from_slice(&body).ok()?;
    identity["crlNumber"].as_u64()
}

/// Pushes a CRL (DER) to a sidecar; one it already holds (409) counts as done.
async fn push(admin: &str, der: &[u8]) -> Result<(), String> {
    let (status, body) = request(admin, "POST", "/admin/crl", Bytes::copy_from_slice(der)).await?;
    match status {
        200 | 409 => Ok(()),
        other => Err(format!("{admin} answered {other}: {}", String::from_utf8_lossy(&body))),
    }
}

/// One plain HTTP/1.1 request to a sidecar's admin endpoint.
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer within {REQUEST_TIMEOUT:?}"))?
}
