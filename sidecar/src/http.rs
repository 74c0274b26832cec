//! The HTTP plumbing shared by the app API and the admin API (hyper, HTTP/1.1).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A response body.
pub type Body = Full<Bytes>;

/// Connections served at once per listener; past it, new ones are closed at once (bounded
/// memory and file descriptors, whatever a client does).
pub const MAX_CONNECTIONS: usize = 512;
/// A request's headers must arrive within this, or the connection is closed (an idle or
/// trickling client cannot hold a connection for ever).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause after failed accepts (out of file descriptors, say): the loop backs off
/// instead of spinning a core, and `/healthz` keeps answering once descriptors free up.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: MAX_CONNECTIONS, header_read_timeout: HEADER_READ_TIMEOUT }
    }
}

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. After a failed
/// accept (out of file descriptors, say) it backs off, doubling up to
/// [`MAX_ACCEPT_BACKOFF`], instead of spinning a core.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(addr = ?listener.local_addr().ok(), error = %e, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
        }
    }
}

/// Serves HTTP/1.1 (with CONNECT upgrades) on `listener` until `shutdown`, within `limits`;
/// the handler is told the client's address.
pub async fn serve<S, H, F>(
    listener: TcpListener,
    state: Arc<S>,
    handler: H,
    shutdown: CancellationToken,
    limits: Limits,
) where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, SocketAddr, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Some((tcp, peer)) = accept(&listener, &shutdown).await else { return };
        // The API's CONNECT tunnels run on these sockets: small writes go out at once.
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached: closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handler(state, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// A JSON response.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("response serializes");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid response")
}

/// A JSON error: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ok(_: Arc<()>, _: SocketAddr, _: Request<Incoming>) -> Response<Body> {
        json(StatusCode::OK, &"ok")
    }

    /// Whether the server closes `s` within `limit` (reads EOF or a reset).
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn idle_clients_are_dropped_and_past_the_cap_new_ones_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits { max_connections: 4, header_read_timeout: Duration::from_millis(400) };
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(()), ok, stop.clone(), limits));
        assert!(get(addr).await.unwrap().starts_with("HTTP/1.1 200"));

        // Four clients that never send a header hold every slot...
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ... so a fifth is closed at once, not queued.
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut fifth, Duration::from_millis(200)).await);
        // The header timeout frees them, and the server answers again.
        for s in &mut idle {
            assert!(closed_within(s, Duration::from_secs(2)).await, "an idle client was kept");
        }
        assert!(get(addr).await.unwrap().starts_with("HTTP/1.1 200"));
        stop.cancel();
    }
}
