//! The `genesis-operator` command: today the local-mode identity service and its authority
//! tools. A library function so `genesisctl demo` can run the same code from its own binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::identity_service::{serve, IdentityService, LocalIssuer, LocalTokens};
use crate::local::{AuthorityConfig, LocalAuthority};
use clap::{Args, Parser, Subcommand};
use genesis_trust::{RevocationReason, Role};

#[derive(Parser)]
#[command(name = "genesis-operator", version, about = "Genesis Mesh operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line), on stderr; colour only on a
    /// terminal without NO_COLOR.
    #[arg(long, global = true, env = "GENESIS_LOG_FORMAT", default_value = "text")]
    log_format: genesis_log::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers in a cluster (in-cluster config, or --kubeconfig).
    Run(RunArgs),
    /// Run a file-backed Network Authority and its identity service (no cluster).
    #[command(args_conflicts_with_subcommands = true)]
    Local {
        #[command(subcommand)]
        action: Option<LocalAction>,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A kubeconfig (default: in-cluster configuration, else $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The namespace holding the authorities' Secrets and ConfigMaps (the chart's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "genesis-system")]
    namespace: String,
    /// Where to serve /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    probe_listen: String,
    /// Where to serve the injection webhook (HTTPS, POST /inject).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_listen: String,
    /// Do not serve the webhook (the chart's webhook.enabled=false).
    #[arg(long)]
    no_webhook: bool,
    /// This replica's name in the leader Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// host:port of the identity service injected sidecars join through
    /// (default genesis-operator-identity.<namespace>.svc:7443).
    #[arg(long)]
    identity_service: Option<String>,
    /// Where to serve the identity service (HTTPS; each network's authority answers).
    #[arg(long, default_value = "0.0.0.0:7443")]
    identity_listen: String,
    /// Do not serve the identity service.
    #[arg(long)]
    no_identity_service: bool,
    /// How the webhook injects the sidecar: `native` (an init container with restartPolicy
    /// Always: the app starts once the sidecar is ready; Kubernetes 1.29+) or `container` (a
    /// plain container, for older clusters).
    #[arg(long, value_enum, default_value = "native")]
    sidecar_mode: SidecarMode,
    /// Do not watch Secrets (the chart's operator.watchSecrets=false, with no list/watch on
    /// Secrets in its ClusterRole): a deleted `delivery: secret` Secret is then re-issued at
    /// its Certificate's next reconcile instead of at once.
    #[arg(long)]
    no_secret_watch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SidecarMode {
    Native,
    Container,
}

#[derive(Args)]
struct ServeArgs {
    /// The authority's directory (created if missing).
    #[arg(long, env = "GENESIS_AUTHORITY_DIR")]
    dir: Option<PathBuf>,
    /// Where the identity service listens (port 0 picks one; the address is written to
    /// DIR/identity-service.addr).
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// Trust domain of a new authority.
    #[arg(long, default_value = "demo.local")]
    trust_domain: String,
    /// Network of a new authority.
    #[arg(long, default_value = "demo")]
    network: String,
    /// Certificate lifetime of a new authority (Go duration).
    #[arg(long, default_value = "24h")]
    cert_duration: String,
    /// Where to serve Prometheus metrics in plain HTTP (GET /metrics); off when absent.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// How long each CRL of a new authority is valid (Go duration).
    #[arg(long, default_value = "12h")]
    crl_validity: String,
}

#[derive(Subcommand)]
enum LocalAction {
    /// Write a one-time join token for a node and print it.
    Token {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
        /// anchor, client, operator or admin.
        #[arg(long, default_value = "client")]
        role: String,
    },
    /// Sign a fresh CRL of the current revocations (new number, new nextUpdate), as the
    /// authority does before a CRL lapses; push it with `genesisctl crl push`.
    PublishCrl {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Revoke a node: every certificate issued to it goes on a new CRL, and it is issued
    /// none again until un-revoked.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Let a revoked node be issued certificates again (with a new join token); the serials
    /// it held stay on the CRL.
    Unrevoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
}

/// Runs the operator with command-line `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    genesis_log::init(cli.log_format);
    let (action, args) = match cli.command {
        Command::Local { action, serve } => (action, serve),
        Command::Run(args) => {
            return match run_cluster(args, cli.log_format) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("genesis-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let result = match action {
        Some(LocalAction::Token { dir, node, role }) => token(&dir, &node, &role),
        Some(LocalAction::Revoke { dir, node }) => revoke(&dir, &node),
        Some(LocalAction::Unrevoke { dir, node }) => unrevoke(&dir, &node),
        Some(LocalAction::PublishCrl { dir }) => publish_crl(&dir),
        None => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("genesis-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(dir: &std::path::Path) -> Result<LocalAuthority, String> {
    LocalAuthority::open(dir).map_err(|e| e.to_string())
}

fn token(dir: &std::path::Path, node: &str, role: &str) -> Result<(), String> {
    let role: Role = role.parse()?;
    let token = open(dir)?.create_token(node, role).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

fn revoke(dir: &std::path::Path, node: &str) -> Result<(), String> {
    match open(dir)?.revoke_node(node, RevocationReason::Unspecified).map_err(|e| e.to_string())? {
        Some(crl) => println!("revoked {node}: CRL number {}", crl.number()),
        None => println!(
            "revoked {node}: it is issued no certificate from now on (the CRL is unchanged: \
             no certificate of it is unlisted)"
        ),
    }
    Ok(())
}

fn unrevoke(dir: &std::path::Path, node: &str) -> Result<(), String> {
    if open(dir)?.unrevoke_node(node).map_err(|e| e.to_string())? {
        println!(
            "{node} may be issued certificates again; its old serials stay on the CRL. Give it \
             a new join token: genesis-operator local token --dir {} --node {node}",
            dir.display()
        );
        Ok(())
    } else {
        Err(format!("{node} is not revoked; nothing to un-revoke"))
    }
}

fn run_cluster(args: RunArgs, log_format: genesis_log::LogFormat) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                format!("no Kubernetes configuration (in-cluster or kubeconfig): {e}")
            })?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
        crate::run::crds_installed(&client).await?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probes = tokio::net::TcpListener::bind(&args.probe_listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.probe_listen))?;
        let handler = crate::run::probes(metrics.clone(), ready.clone());
        tokio::spawn(crate::http::serve_text(probes, handler));
        let identity = args.pod_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let identity_service = args
            .identity_service
            .clone()
            .unwrap_or_else(|| format!("genesis-operator-identity.{}.svc:7443", args.namespace));
        let options = crate::run::Options {
            namespace: args.namespace.clone(),
            identity,
            webhook_listen: (!args.no_webhook).then(|| args.webhook_listen.clone()),
            identity_listen: (!args.no_identity_service).then(|| args.identity_listen.clone()),
            inject: crate::webhook::InjectConfig {
                identity_service,
                token_seconds: 3600,
                native_sidecar: args.sidecar_mode == SidecarMode::Native,
                log_format,
            },
            watch_secrets: !args.no_secret_watch,
        };
        crate::run::run(client, options, metrics, ready).await
    })
}

fn publish_crl(dir: &std::path::Path) -> Result<(), String> {
    let crl = open(dir)?.refresh_crl().map_err(|e| e.to_string())?;
    let valid = crl
        .next_update()
        .duration_since(std::time::SystemTime::now())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "CRL number {} ({} revoked) valid for {valid}s: {}",
        crl.number(),
        crl.revoked().len(),
        dir.join("crl.der").display()
    );
    Ok(())
}

fn run(args: ServeArgs) -> Result<(), String> {
    let dir = args.dir.ok_or("--dir is required (or set GENESIS_AUTHORITY_DIR)")?;
    let cert_duration = genesis_trust::duration::parse_duration(&args.cert_duration)?;
    let crl_validity = genesis_trust::duration::parse_duration(&args.crl_validity)?;
    let config = AuthorityConfig {
        trust_domain: args.trust_domain,
        network: args.network,
        // NB: at least 10s; short lifetimes are for tests and demos of rotation.
        cert_duration_secs: cert_duration.as_secs().max(10),
        crl_validity_secs: crl_validity.as_secs().max(60),
    };
    let authority =
        Arc::new(LocalAuthority::open_or_create(&dir, config).map_err(|e| e.to_string())?);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let issuer = LocalIssuer::new(authority.clone()).map_err(|e| e.to_string())?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let service = IdentityService::new(
            Arc::new(issuer),
            Arc::new(LocalTokens::new(authority.clone())),
            metrics.clone(),
        );
        std::fs::write(dir.join("identity-service.addr"), addr.to_string()).map_err(|e| {
            format!("cannot write {}: {e}", dir.join("identity-service.addr").display())
        })?;
        tracing::info!(%addr, dir = %dir.display(), "identity service listening");
        let service = Arc::new(service);
        if let Some(addr) = &args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
            let authority = authority.clone();
            let handler: crate::http::Handler = Arc::new(move |path: &str| match path {
                "/metrics" => (hyper::StatusCode::OK, metrics.render(&authority)),
                _ => (hyper::StatusCode::NOT_FOUND, "only GET /metrics is served here\n".into()),
            });
            tokio::spawn(crate::http::serve_text(listener, handler));
        }
        serve(listener, service, shutdown_signal()).await;
        tracing::info!("identity service stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
