//! The app-facing API on loopback: an HTTP CONNECT proxy for any TCP protocol, and a message
//! API (send with delivery receipt, receive, broadcast, topics). Refusals are clear HTTP errors.
//!
//! | request | answer |
//! |---|---|
//! | `CONNECT <node>.<network>:<port>` | 200 then a tunnel; 400 bad target, 403 port not allowed, 502 no route or refused |
//! | `CONNECT <service>.svc.<network>:<port>` | the same, to the nearest reachable member offering the service on that port (`genesis-member` names it), the next if it refuses |
//! | `GET /v1/services` | 200 every service known across the mesh |
//! | `PUT /v1/services/<name>` `{"port": N}` / `DELETE` | 204 offered (or withdrawn) mesh-wide |
//! | `POST /v1/messages/<node>` | 200 receipt; 404 no route, 413 too large, 502/504 not delivered |
//! | `GET /v1/messages?wait=<ms>` | 200 list of received messages (waits up to `wait` for one) |
//! | `POST /v1/broadcast` | 202 flooded to every member |
//! | `POST /v1/topics/<topic>` | 202 delivered to every subscriber |
//! | `PUT`/`DELETE /v1/subscriptions/<topic>` | 204 |

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::config::Target;
use crate::error::Error;
use crate::http::{error, json, Body};
use crate::shared::{Command, Shared};
use crate::stream::{open_tunnel, reset_tcp, send_message, Tunnel, MAX_MESSAGE};

/// Messages returned per receive call.
const MAX_RECEIVE_BATCH: usize = 256;
/// Longest a receive call waits for a message.
const MAX_RECEIVE_WAIT: Duration = Duration::from_secs(30);

pub async fn handle(
    shared: Arc<Shared>,
    _peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect(shared, req).await;
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["v1", "messages", node]) => {
            let node = node.to_string();
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if !has_route(&shared, &node) {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no route to {node} (unknown member or unreachable)"),
                );
            }
            match send_message(&shared, &node, body).await {
                Ok(receipt) => json(StatusCode::OK, &receipt),
                Err(e @ Error::NoReceipt(_)) => error(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
                Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
            }
        }
        (Method::GET, ["v1", "messages"]) => receive(shared, req.uri().query().unwrap_or("")).await,
        (Method::POST, ["v1", "broadcast"]) => publish(shared, req, String::new()).await,
        (Method::POST, ["v1", "topics", topic]) => {
            let topic = topic.to_string();
            if let Err(e) = check_topic(&topic) {
                return error(StatusCode::BAD_REQUEST, &e);
            }
            publish(shared, req, topic).await
        }
        (Method::GET, ["v1", "services"]) => match crate::admin::snapshot(&shared).await {
            Some(snap) => json(StatusCode::OK, &snap.services),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping"),
        },
        (method @ (Method::PUT | Method::DELETE), ["v1", "services", name]) => {
            let name = name.to_string();
            offer(shared, req, name, method == Method::PUT).await
        }
        (method @ (Method::PUT | Method::DELETE), ["v1", "subscriptions", topic]) => {
            if let Err(e) = check_topic(topic) {
                return error(StatusCode::BAD_REQUEST, &e);
            }
            let mut subs = shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
            if method == Method::PUT {
                subs.insert(topic.to_string());
            } else {
                subs.remove(*topic);
            }
            Response::builder().status(StatusCode::NO_CONTENT).body(Body::default()).expect("valid")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no endpoint {} {path}", req.method())),
    }
}

async fn connect(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let network = &shared.config.network;
    let usage = format!("CONNECT <node>.{network}:<port> or <service>.svc.{network}:<port>");
    let Some(authority) = req.uri().authority().cloned() else {
        return error(StatusCode::BAD_REQUEST, &format!("missing target: use {usage}"));
    };
    let Some(port) = authority.port_u16() else {
        return error(StatusCode::BAD_REQUEST, &format!("missing port: use {usage}"));
    };
    let target = match Target::parse(authority.host(), network) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("{e}: use {usage}")),
    };
    let (member, tunnel) = match open_target(&shared, &target, port).await {
        Ok(opened) => opened,
        Err((status, reason)) => return error(status, &reason),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = member.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        // Back to the app's own TCP socket, so a broken tunnel can reset it.
        match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let (app, early) = (parts.io.into_inner(), parts.read_buf);
                carry(&shared, app, &early, tunnel, &node, port).await
            }
            Err(_) => tracing::error!(%node, port, "the upgraded connection is not a TCP socket"),
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("genesis-member", member)
        .body(Body::default())
        .expect("valid")
}

/// Opens a tunnel to `target` on `port`: the member that took it and the tunnel, or the
/// status and reason a CONNECT answers with (an upstream logs and counts them).
pub async fn open_target(
    shared: &Arc<Shared>,
    target: &Target,
    port: u16,
) -> Result<(String, Box<dyn Tunnel>), (StatusCode, String)> {
    if !shared.config.allowed_ports.contains(&port) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "port {port} is not in the network's allowed ports {:?}",
                shared.config.allowed_ports
            ),
        ));
    }
    match target {
        Target::Member(node) => {
            if !has_route(shared, node) {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    format!("no route to {node} (unknown member or unreachable)"),
                ));
            }
            match open_tunnel(shared, node, port).await {
                Ok(t) => Ok((node.clone(), t)),
                Err(e) => Err((StatusCode::BAD_GATEWAY, e.to_string())),
            }
        }
        Target::Service(name) => open_service(shared, name, port).await,
    }
}

/// Copies between the app's socket (after `early`, bytes it sent before the tunnel was up) and
/// the tunnel until both sides close; a tunnel that breaks resets the app's connection.
pub async fn carry(
    shared: &Shared,
    mut app: tokio::net::TcpStream,
    early: &[u8],
    mut tunnel: Box<dyn Tunnel>,
    node: &str,
    port: u16,
) {
    let copied = async {
        tunnel.write_all(early).await?;
        crate::stream::carry_app(&mut app, &mut *tunnel).await
    };
    match copied.await {
        Ok((up, down)) => {
            shared.metrics.stream_bytes.with_label_values(&["out"]).inc_by(up);
            shared.metrics.stream_bytes.with_label_values(&["in"]).inc_by(down);
        }
        Err(e) => {
            tracing::warn!(%node, port, error = %e, "tunnel ended with an error: resetting");
            reset_tcp(app);
        }
    }
}

/// Opens a tunnel to the nearest reachable member offering service `name` on `port`, failing
/// over to the next when one refuses. This member's own app when it offers the service.
async fn open_service(
    shared: &Arc<Shared>,
    name: &str,
    port: u16,
) -> Result<(String, Box<dyn Tunnel>), (StatusCode, String)> {
    let (reply, answer) = oneshot::channel();
    let ask = Command::ResolveService { name: name.to_owned(), reply };
    if shared.commands.send(ask).await.is_err() {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping".into()));
    }
    let offers = answer.await.unwrap_or_default();
    if offers.is_empty() {
        return Err((
            StatusCode::BAD_GATEWAY,
            format!(
                "no reachable member offers service {name} (genesisctl services lists those known)"
            ),
        ));
    }
    let on_port: Vec<&String> = offers.iter().filter(|(_, p)| *p == port).map(|(m, _)| m).collect();
    if on_port.is_empty() {
        let mut ports: Vec<u16> = offers.iter().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "service {name} is offered on port {ports:?}, not {port}: use {name}.svc.{}:{}",
                shared.config.network, ports[0]
            ),
        ));
    }
    let mut tried = Vec::new();
    for member in on_port {
        if member == shared.identity.node() {
            let app = (shared.config.app_host, port);
            match tokio::net::TcpStream::connect(app).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((member.clone(), Box::new(s)));
                }
                Err(e) => tried.push(format!("{member} (here): {e}")),
            }
            continue;
        }
        match open_tunnel(shared, member, port).await {
            Ok(t) => return Ok((member.clone(), t)),
            Err(e) => {
                tracing::info!(service = name, %member, error = %e, "service member refused: trying the next");
                tried.push(format!("{member}: {e}"));
            }
        }
    }
    Err((
        StatusCode::BAD_GATEWAY,
        format!("no member offering service {name} took the stream: {}", tried.join("; ")),
    ))
}

/// `PUT /v1/services/<name>` (`{"port": N}`) offers a service mesh-wide; `DELETE` withdraws it.
async fn offer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    name: String,
    put: bool,
) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Offer {
        port: u16,
    }
    if let Err(e) = crate::services::valid_name(&name) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let port = if put {
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let port = match serde_json::from_slice::<Offer>(&body) {
            Ok(o) if o.port != 0 => o.port,
            Ok(_) | Err(_) => {
                return error(StatusCode::BAD_REQUEST, "the body must be {\"port\": <1-65535>}")
            }
        };
        if !shared.config.allowed_ports.contains(&port) {
            return error(
                StatusCode::FORBIDDEN,
                &format!(
                    "port {port} is not in the network's allowed ports {:?}: members could not reach it",
                    shared.config.allowed_ports
                ),
            );
        }
        Some(port)
    } else {
        None
    };
    let (reply, answer) = oneshot::channel();
    let cmd = Command::OfferService { name, port, reply };
    if shared.commands.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping");
    }
    match answer.await {
        Ok(Ok(())) => {
            Response::builder().status(StatusCode::NO_CONTENT).body(Body::default()).expect("valid")
        }
        Ok(Err(e @ Error::Invalid(_))) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping"),
    }
}

/// Whether `node` is this member or has a route, from the data plane's snapshot of the routing
/// table (the one its streams route by): no round trip to the core, where every message would
/// wait its turn behind the core's other work.
fn has_route(shared: &Shared, node: &str) -> bool {
    node == shared.identity.node() || shared.data.next_hops.load().contains_key(node)
}

async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, Response<Body>> {
    match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("payload larger than {MAX_MESSAGE} bytes"),
        )),
    }
}

fn check_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= crate::frame::MAX_TOPIC
        && topic
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        format!("invalid topic {topic:?}: use a-z, 0-9, '.', '_', '-' (at most 128)")
    })
}

async fn publish(shared: Arc<Shared>, req: Request<Incoming>, topic: String) -> Response<Body> {
    let payload = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (reply, answer) = oneshot::channel();
    if shared.commands.send(Command::Broadcast { topic, payload, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping");
    }
    match answer.await {
        Ok(Ok(id)) => json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id })),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "sidecar stopping"),
    }
}

async fn receive(shared: Arc<Shared>, query: &str) -> Response<Body> {
    let wait = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
        .min(MAX_RECEIVE_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = shared.inbox_notify.notified();
        {
            let mut inbox = shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if !inbox.is_empty() || tokio::time::Instant::now() >= deadline {
                let n = inbox.len().min(MAX_RECEIVE_BATCH);
                let batch: Vec<_> = inbox.drain(..n).collect();
                shared.metrics.inbox.set(inbox.len() as i64);
                return json(StatusCode::OK, &batch);
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}
