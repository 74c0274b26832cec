//! The operator's plain-HTTP endpoints (metrics, probes): GET by path, text answers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Answers a path with a status and a text body.
pub type Handler = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

/// Serves `handler` on `listener` until the process ends.
pub async fn serve_text(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = handler(req.uri().path());
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                        .expect("valid response");
                    async move { Ok::<_, Infallible>(response) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
