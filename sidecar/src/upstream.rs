//! Upstreams (`--upstream LISTEN=TARGET:PORT`): loopback ports whose every connection is
//! tunnelled to one fixed target, for apps that cannot speak CONNECT (a database client, a
//! benchmark, anything that only takes host and port). The tunnel is the one CONNECT opens:
//! the same target names, port checks, routes, direct or end-to-end TLS, and service failover.
//! A target that cannot be reached resets the app's connection (there is no HTTP status to
//! say why), logs the reason and counts it.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{carry, open_target};
use crate::config::Upstream;
use crate::http::{accept, MAX_CONNECTIONS};
use crate::shared::Shared;
use crate::stream::reset_tcp;

/// Accepts on `listener` until `shutdown`, tunnelling each connection to `upstream`'s target.
/// At most [`MAX_CONNECTIONS`] at once; past it, new ones are reset at once.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    upstream: Upstream,
    shutdown: CancellationToken,
) {
    let name = upstream.describe(&shared.config.network);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let upstream = Arc::new(upstream);
    loop {
        let Some((app, _)) = accept(&listener, &shutdown).await else { return };
        let _ = app.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(upstream = %name, "{MAX_CONNECTIONS} connections open: resetting a new one");
            shared.metrics.upstream_connections.with_label_values(&["refused"]).inc();
            reset_tcp(app);
            continue;
        };
        let (shared, upstream, name) = (shared.clone(), upstream.clone(), name.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let port = upstream.port;
            match open_target(&shared, &upstream.target, port).await {
                Ok((member, tunnel)) => {
                    shared.metrics.upstream_connections.with_label_values(&["ok"]).inc();
                    carry(&shared, app, &[], tunnel, &member, port).await;
                }
                Err((_, reason)) => {
                    tracing::warn!(upstream = %name, %reason, "upstream target unreachable: resetting the app's connection");
                    shared.metrics.upstream_connections.with_label_values(&["refused"]).inc();
                    reset_tcp(app);
                }
            }
        });
    }
}
