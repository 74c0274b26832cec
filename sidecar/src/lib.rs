//! Genesis Mesh sidecar: the data plane.
//!
//! Protocol logic lives in sans-IO state machines ([`frame`], [`routing`], [`peers`]) that take
//! events and return actions; the tokio driver ([`node`], [`link`], [`stream`]) does the IO;
//! [`api`] and [`admin`] are the HTTP faces for apps and operators. docs/SIDECAR.md is the guide.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod frame;
pub mod http;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod proto;
pub mod relay;
pub mod repeats;
pub mod routing;
pub mod services;
pub mod shared;
pub mod state;
pub mod stream;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_trust::tls::{peer_client_config, peer_server_config};
use genesis_trust::{AuditLog, TrustPolicy, TrustStore};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::identity::Credentials;
use crate::shared::{Command, Shared, TlsConfigs, CORE_QUEUE};

/// A running sidecar.
pub struct Running {
    pub shared: Arc<Shared>,
    pub peer_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful drain: refuse new links, say goodbye to every peer, then stop.
    pub async fn drain_and_stop(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shared.commands.send(Command::Drain).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn tls_configs(store: &Arc<TrustStore>, creds: Credentials) -> Result<TlsConfigs, String> {
    let server = peer_server_config(store.clone(), creds.chain.clone(), &creds.key)
        .map_err(|e| e.to_string())?;
    let client = peer_client_config(store.clone(), creds.chain.clone(), &creds.key)
        .map_err(|e| e.to_string())?;
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        key: Arc::new(creds.key),
        chain: creds.chain,
        not_after: creds.not_after,
        renewal_time: creds.renewal_time,
    })
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))
}

/// What a sidecar takes before it asks for an identity: its ports, its audit log and its state
/// directory. A busy address or an unusable log then fails before a join token is spent.
pub struct Prepared {
    peer: TcpListener,
    api: TcpListener,
    admin: TcpListener,
    upstreams: Vec<TcpListener>,
    audit: Option<AuditLog>,
}

/// Binds the three ports and every upstream's, opens the audit log (sealing a torn last
/// record) and checks the state directory can be written.
pub async fn prepare(config: &Config) -> Result<Prepared, String> {
    let audit = match &config.audit_log {
        Some(path) => Some(AuditLog::open(path).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(dir) = &config.state_dir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("state-dir {}: {e}", dir.display()))?;
    }
    let mut upstreams = Vec::new();
    for u in &config.upstreams {
        let what = format!("the upstream {}", u.describe(&config.network));
        upstreams.push(bind(&what, u.listen).await?);
    }
    Ok(Prepared {
        peer: bind("peer links", config.listen).await?,
        api: bind("the app API", config.api_listen).await?,
        admin: bind("the admin API", config.admin_listen).await?,
        upstreams,
        audit,
    })
}

/// Starts a sidecar with credentials obtained by [`identity::join`].
pub async fn start(config: Config, creds: Credentials) -> Result<Running, String> {
    let prepared = prepare(&config).await?;
    start_prepared(config, prepared, creds).await
}

/// Starts a sidecar on what [`prepare`] took.
pub async fn start_prepared(
    mut config: Config,
    prepared: Prepared,
    creds: Credentials,
) -> Result<Running, String> {
    // In a cluster the identity service says which zone our node is in; `--zone` wins.
    match creds.zone.as_deref() {
        Some(zone) if config.zone.is_empty() && config::valid_zone(zone) => {
            tracing::info!(%zone, "zone from the identity service (the node's topology label)");
            config.zone = zone.to_owned();
        }
        Some(zone) if config.zone.is_empty() => {
            tracing::warn!(%zone, "the identity service named a zone that is not a label value: ignored");
        }
        _ => {}
    }
    let store = Arc::new(TrustStore::new(
        TrustPolicy {
            trust_domain: config.trust_domain.clone(),
            network: Some(config.network.clone()),
            require_fresh_crl: true,
        },
        creds.bundle.clone(),
    ));
    store
        .install_crl(&creds.crl, SystemTime::now())
        .map_err(|e| format!("the CRL from the identity service: {e}"))?;
    let identity = creds.identity.clone();
    let tls = tls_configs(&store, creds)?;
    let Prepared {
        peer: peer_listener,
        api: api_listener,
        admin: admin_listener,
        upstreams: upstream_listeners,
        audit,
    } = prepared;
    let addrs = (
        peer_listener.local_addr().map_err(|e| e.to_string())?,
        api_listener.local_addr().map_err(|e| e.to_string())?,
        admin_listener.local_addr().map_err(|e| e.to_string())?,
    );
    let (tx, rx) = mpsc::channel(CORE_QUEUE);
    let shared = shared::new_shared(config, identity, store, tls, tx, audit);
    shared.audit(
        "started",
        &shared.identity.uri(),
        serde_json::json!({"listen": addrs.0.to_string()}),
    );
    let shutdown = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(node::run_core(shared.clone(), rx, shutdown.clone())),
        tokio::spawn(link::listen(shared.clone(), peer_listener, shutdown.clone())),
        tokio::spawn(http::serve(
            api_listener,
            shared.clone(),
            api::handle,
            shutdown.clone(),
            http::Limits::default(),
        )),
        tokio::spawn(http::serve(
            admin_listener,
            shared.clone(),
            admin::handle,
            shutdown.clone(),
            http::Limits::default(),
        )),
        tokio::spawn(renewal_loop(shared.clone(), shutdown.clone())),
    ];
    for (listener, u) in upstream_listeners.into_iter().zip(shared.config.upstreams.clone()) {
        tracing::info!(upstream = %u.describe(&shared.config.network), "upstream listening");
        tasks.push(tokio::spawn(upstream::serve(shared.clone(), listener, u, shutdown.clone())));
    }
    tracing::info!(identity = %shared.identity, peer = %addrs.0, api = %addrs.1, admin = %addrs.2, "sidecar started");
    Ok(Running {
        shared,
        peer_addr: addrs.0,
        api_addr: addrs.1,
        admin_addr: addrs.2,
        shutdown,
        tasks,
    })
}

/// Shortest pause between two renewals.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(1);
/// Longest pause between renewal retries.
const MAX_RENEWAL_BACKOFF: Duration = Duration::from_secs(60);

/// Renews at renewalTime with a fresh key; on failure keeps the valid certificate and retries
/// with backoff (LESSONS: never discard a valid certificate because renewal failed).
async fn renewal_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let current = shared.tls.load_full();
        let wait = if failures == 0 {
            // NB: at least a second apart, whatever the certificate says: a renewal time in
            // the past must not turn into a busy loop against the identity service.
            current
                .renewal_time
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(MIN_RENEWAL_GAP)
        } else {
            (Duration::from_secs(1) * 2u32.saturating_pow(failures.min(6))).min(MAX_RENEWAL_BACKOFF)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = shared.renew_now.notified() => tracing::info!("renewing now, as asked"),
        }
        match identity::renew(
            &shared.config,
            current.chain.clone(),
            &current.key,
            shared.store.clone(),
        )
        .await
        {
            Ok(creds) => {
                if let Err(e) = shared.store.set_bundle(creds.bundle.clone()) {
                    tracing::warn!(error = %e, "renewal brought an unusable bundle; keeping the old one");
                }
                // A newer CRL that came with the renewal enters through the node, as every
                // CRL does: applied, audited, passed to the neighbours, and routes to newly
                // revoked members cut. (Installed into the store here, it was applied quietly
                // and reached the neighbours only with the next periodic announcement.)
                if shared.store.crl_number().is_none_or(|n| creds.crl.number() > n) {
                    let der = creds.crl.der().to_vec();
                    let _ = shared.commands.send(Command::RenewalCrl { der }).await;
                }
                match tls_configs(&shared.store, creds) {
                    Ok(tls) => {
                        let serial = genesis_trust::CertInfo::parse(&tls.chain[0])
                            .map(|i| i.serial.to_string())
                            .unwrap_or_default();
                        if let Some(dir) = &shared.config.state_dir {
                            if let Err(e) = state::save(dir, &tls.key, &tls.chain) {
                                tracing::warn!(error = %e, "cannot keep the renewed certificate");
                            }
                        }
                        shared.tls.store(Arc::new(tls));
                        let _ = shared.commands.send(Command::Renewed).await;
                        shared.metrics.renewals.with_label_values(&["ok"]).inc();
                        shared.audit(
                            "certificate-rotated",
                            &shared.identity.uri(),
                            serde_json::json!({"serial": serial}),
                        );
                        tracing::info!(%serial, "certificate renewed; live links keep running");
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "cannot use the renewed certificate");
                    }
                }
            }
            Err(e) => {
                failures += 1;
                shared.metrics.renewals.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, failures, "renewal failed; keeping the current certificate");
            }
        }
    }
}
