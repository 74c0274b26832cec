//! Admin and health endpoints: `/healthz` (alive), `/readyz` (deep checks, each named),
//! `/admin/identity`, `/admin/peers`, `/admin/routes`, `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::SystemTime;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::http::{error, json, Body};
use crate::node::{Command, Shared, Snapshot};

/// One readiness check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Overall readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// `healthy`, `degraded` (serving, but below a target) or `unhealthy` (not serving).
    pub status: &'static str,
    pub checks: Vec<Check>,
}

/// Evaluates readiness: identity and CRL are hard requirements (unhealthy without them);
/// peers and routes below target make the member degraded.
pub fn readiness(shared: &Shared, snapshot: &Snapshot) -> Readiness {
    let now = SystemTime::now();
    let tls = shared.tls.load();
    let identity_ok = now < tls.not_after;
    let crl = shared.store.crls().into_iter().max_by_key(|c| c.number());
    let crl_ok = crl.as_ref().is_some_and(|c| now < c.next_update());
    let connected = snapshot.links.len();
    let min = shared.config.peers.min_peers;
    let checks = vec![
        Check {
            name: "identity",
            ok: identity_ok,
            detail: format!(
                "{} valid for {}s",
                shared.identity,
                tls.not_after.duration_since(now).map(|d| d.as_secs()).unwrap_or(0)
            ),
        },
        Check {
            name: "crl",
            ok: crl_ok,
            detail: match &crl {
                Some(c) => format!(
                    "CRL number {} valid for {}s",
                    c.number(),
                    c.next_update().duration_since(now).map(|d| d.as_secs()).unwrap_or(0)
                ),
                None => "no CRL held".into(),
            },
        },
        Check {
            name: "peers",
            ok: connected >= min,
            detail: format!("{connected} connected, minimum {min}"),
        },
        Check {
            name: "routes",
            ok: !snapshot.routes.is_empty(),
            detail: format!("{} destinations reachable", snapshot.routes.len()),
        },
    ];
    let status = if !identity_ok || !crl_ok || connected == 0 {
        "unhealthy"
    } else if checks.iter().all(|c| c.ok) {
        "healthy"
    } else {
        "degraded"
    };
    Readiness { status, checks }
}

pub async fn snapshot(shared: &Shared) -> Option<Snapshot> {
    let (reply, answer) = oneshot::channel();
    shared.commands.send(Command::Snapshot { reply }).await.ok()?;
    answer.await.ok()
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints are read-only (GET)");
    }
    let path = req.uri().path();
    if path == "/healthz" {
        return json(StatusCode::OK, &serde_json::json!({"status": "alive"}));
    }
    if path == "/metrics" {
        return Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Body::from(shared.metrics.render()))
            .expect("valid response");
    }
    let Some(snap) = snapshot(&shared).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping");
    };
    match path {
        "/readyz" => {
            let r = readiness(&shared, &snap);
            let status = if r.status == "unhealthy" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(status, &r)
        }
        "/admin/identity" => {
            let tls = shared.tls.load();
            let info = genesis_trust::CertInfo::parse(&tls.chain[0]).ok();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "identity": shared.identity.uri(),
                    "node": shared.identity.node(),
                    "serial": info.as_ref().map(|i| i.serial.to_string()),
                    "fingerprint": info.as_ref().map(|i| i.fingerprint.clone()),
                    "notAfter": unix(tls.not_after),
                    "renewalTime": unix(tls.renewal_time),
                    "crlNumber": shared.store.crl_number(),
                    "routeSeqno": snap.seqno,
                }),
            )
        }
        "/admin/peers" => json(StatusCode::OK, &snap.peers),
        "/admin/routes" => json(StatusCode::OK, &snap.routes),
        _ => error(StatusCode::NOT_FOUND, &format!("no endpoint {path}")),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
