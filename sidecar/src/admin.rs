//! Admin and health endpoints: `/healthz` (alive), `/readyz` (deep checks, each named),
//! `/admin/identity`, `/admin/peers`, `/admin/routes`, `/admin/services`, `/admin/relay`,
//! `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::http::{error, json, Body};
use crate::shared::{Command, Shared, Snapshot};

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

/// Largest body an injection endpoint reads (a CRL may be large).
const MAX_INJECT_BYTES: usize = genesis_trust::crl::MAX_CRL_BYTES;

/// Whether the admin API may make this member renew for a caller at `peer` whose last
/// admin-asked renewal was at `last`: only from the pod's own loopback (as Linkerd serves its
/// admin shutdown), at most once per [`ADMIN_RENEWAL_GAP`]. Anyone else who can reach the pod
/// could otherwise make it renew in a loop (200 requests were 200 issuances).
pub fn may_renew(
    peer: std::net::SocketAddr,
    last: Option<Instant>,
    now: Instant,
) -> Result<(), (StatusCode, &'static str, String)> {
    if !peer.ip().to_canonical().is_loopback() {
        return Err((
            StatusCode::FORBIDDEN,
            "not_loopback",
            format!(
                "POST /admin/renew is served to the pod's own loopback only, and this came from \
                 {}; run it inside the pod (kubectl exec), or let the sidecar renew at its \
                 renewal time",
                peer.ip()
            ),
        ));
    }
    let wait = last.and_then(|t| (t + ADMIN_RENEWAL_GAP).checked_duration_since(now));
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "a renewal was asked for less than {}s ago; try again in {}s",
                ADMIN_RENEWAL_GAP.as_secs(),
                wait.as_secs() + 1
            ),
        ));
    }
    Ok(())
}

/// Shortest gap between two renewals asked through the admin API.
pub const ADMIN_RENEWAL_GAP: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handle(
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    // NB: a CRL and a control envelope authorise themselves (the authority's and the sender's
    // signatures, checked before anything is applied), so anyone may deliver them, as the CRL
    // publisher does from the operator's pod. A renewal has no such proof.
    if req.method() == Method::POST && req.uri().path() == "/admin/crl" {
        return inject_crl(shared, req).await;
    }
    if req.method() == Method::POST && req.uri().path() == "/admin/control" {
        return inject_control(shared, req).await;
    }
    if req.method() == Method::POST && req.uri().path() == "/admin/renew" {
        let now = Instant::now();
        let verdict = {
            let mut last = shared.admin_renewal.lock().unwrap_or_else(|p| p.into_inner());
            let verdict = may_renew(peer, *last, now);
            if verdict.is_ok() {
                *last = Some(now);
            }
            verdict
        };
        if let Err((status, reason, message)) = verdict {
            shared.metrics.admin_refused.with_label_values(&["renew", reason]).inc();
            tracing::warn!(%peer, reason, "refused POST /admin/renew");
            return error(status, &message);
        }
        return renew(shared).await;
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints are GET, except POST /admin/crl, /admin/control and /admin/renew",
        );
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
                    "zone": shared.config.zone,
                    "serial": info.as_ref().map(|i| i.serial.to_string()),
                    "fingerprint": info.as_ref().map(|i| i.fingerprint.clone()),
                    "notAfter": unix(tls.not_after),
                    "renewalTime": unix(tls.renewal_time),
                    "crlNumber": shared.store.crl_number(),
                    "crlAppliedAtMs": shared.crl_applied_at_ms.load(std::sync::atomic::Ordering::Relaxed),
                    "routeSeqno": snap.seqno,
                    "auditRecords": shared.audit_head().map(|(n, _)| n),
                    "auditHead": shared.audit_head().map(|(_, h)| h),
                }),
            )
        }
        "/admin/peers" => json(StatusCode::OK, &snap.peers),
        "/admin/routes" => json(StatusCode::OK, &snap.routes),
        "/admin/services" => json(StatusCode::OK, &snap.services),
        "/admin/relay" => {
            json(StatusCode::OK, &shared.relay().view(shared.now(), crate::relay::TRACKED))
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no endpoint {path}")),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `POST /admin/crl` (DER body): the injection point for a new CRL. It is applied only if signed
/// by the network's authority and newer than the one held (the signature is the authorisation),
/// then pushed to every neighbour at once.
async fn inject_crl(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::{BodyExt, Limited};
    let der = match Limited::new(req.into_body(), MAX_INJECT_BYTES).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a CRL is at most {MAX_INJECT_BYTES} bytes"),
            )
        }
    };
    let (reply, answer) = oneshot::channel();
    if shared.commands.send(Command::InjectCrl { der, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping");
    }
    match answer.await {
        Ok(Ok(number)) => {
            json(StatusCode::OK, &serde_json::json!({"applied": true, "crlNumber": number}))
        }
        Ok(Err(e @ Error::CrlNotNewer { .. })) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"applied": false, "error": e.to_string()}),
        ),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping"),
    }
}

/// Longest an injection waits for acknowledgements.
const MAX_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `POST /admin/control?wait=<ms>&expect=<n>` (body: a signed envelope): verifies it here, floods it if
/// accepted, and waits up to `wait` (default 2 s) or until `expect` members acknowledged.
/// 202 with the rule and the acks, or 403 with the rule that refused it.
async fn inject_control(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::{BodyExt, Limited};
    let query = req.uri().query().unwrap_or("").to_owned();
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let wait = std::time::Duration::from_millis(param("wait").unwrap_or(2000)).min(MAX_ACK_WAIT);
    let expect = param("expect").map(|n| n as usize);
    let envelope = match Limited::new(req.into_body(), genesis_trust::control::MAX_ENVELOPE_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "a control envelope is at most 32 KiB")
        }
    };
    let (reply, answer) = oneshot::channel();
    if shared.commands.send(Command::InjectControl { envelope, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping");
    }
    let verdict = match answer.await {
        Ok(Ok(v)) => v,
        Ok(Err(v)) => {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"accepted": false, "rule": v.rule, "error": v.detail}),
            )
        }
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping"),
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = shared.acks_notify.notified();
        let acks = shared
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&verdict.id)
            .cloned()
            .unwrap_or_default();
        let enough = expect.is_some_and(|n| acks.len() >= n);
        if enough || tokio::time::Instant::now() >= deadline {
            let acks: Vec<_> = acks
                .iter()
                .map(|a| serde_json::json!({"node": a.node, "applied": a.applied, "detail": a.detail}))
                .collect();
            return json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"accepted": true, "id": verdict.id, "verb": verdict.verb, "rule": verdict.rule, "acks": acks}),
            );
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// Longest `POST /admin/renew` waits for the new certificate.
const MAX_RENEW_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn serial(shared: &Shared) -> String {
    let tls = shared.tls.load();
    genesis_trust::CertInfo::parse(&tls.chain[0]).map(|i| i.serial.to_string()).unwrap_or_default()
}

/// `POST /admin/renew`: renew the certificate now (fresh key, CSR over mutual TLS, live links
/// keep running) and answer with the old and new serials once the new one is in use. A failed
/// renewal keeps the current certificate; the renewal loop retries with backoff.
async fn renew(shared: Arc<Shared>) -> Response<Body> {
    let before = serial(&shared);
    shared.renew_now.notify_one();
    let deadline = tokio::time::Instant::now() + MAX_RENEW_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let now = serial(&shared);
        if now != before {
            return json(
                StatusCode::OK,
                &serde_json::json!({"renewed": true, "previousSerial": before, "serial": now}),
            );
        }
    }
    error(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "no new certificate within {MAX_RENEW_WAIT:?}; the current one (serial {before}) stays \
             in use and renewal retries with backoff (see the sidecar log)"
        ),
    )
}

#[cfg(test)]
mod tests;
