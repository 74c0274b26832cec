//! The `genesis-sidecar` command: joins the mesh (CSR to the identity service), runs the data
//! plane, and drains gracefully on SIGTERM. A library function so `genesisctl demo` can run the
//! same code from its own binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::config::{Config, Settings};
use crate::error::Error;
use clap::Parser;
use genesis_trust::Identity;

#[derive(Parser)]
#[command(name = "genesis-sidecar", version, about = "Genesis Mesh sidecar")]
struct Cli {
    /// Settings file (YAML or JSON); flags and GENESIS_* variables override it.
    #[arg(long, env = "GENESIS_CONFIG")]
    config: Option<PathBuf>,
    /// The network's genesis document (signed by its authority; the operator publishes it).
    /// Refused unless a root of the trust bundle signed it. It overrides the settings file;
    /// flags and GENESIS_* variables override it.
    #[arg(long, env = "GENESIS_DOCUMENT")]
    genesis: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line), on stderr; colour only on a
    /// terminal without NO_COLOR.
    #[arg(long, env = "GENESIS_LOG_FORMAT", default_value = "text")]
    log_format: genesis_log::LogFormat,
    #[command(flatten)]
    settings: Settings,
}

/// How long the first join keeps retrying while the identity service is not reachable yet.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// Runs the sidecar with command-line `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use tracing_subscriber::prelude::*;
    let cli = Cli::parse_from(args);
    let (filter, reload) = tracing_subscriber::reload::Layer::new(genesis_log::env_filter());
    tracing_subscriber::registry().with(filter).with(genesis_log::layer(cli.log_format)).init();
    let file = match &cli.config {
        Some(path) => match Settings::from_file(path) {
            Ok(file) => file,
            Err(e) => return fail(&e),
        },
        None => Settings::default(),
    };
    let settings = match &cli.genesis {
        Some(path) => {
            let bundle = cli.settings.trust_bundle.clone().or(file.trust_bundle.clone());
            let Some(bundle) = bundle else {
                return fail("--genesis needs --trust-bundle to check the document's signature");
            };
            match Settings::from_genesis(path, &bundle) {
                Ok(genesis) => cli.settings.or(genesis).or(file),
                Err(e) => return fail(&e),
            }
        }
        None => cli.settings.or(file),
    };
    let config = match Config::resolve(settings) {
        Ok(c) => c,
        Err(e) => return fail(&format!("invalid configuration: {e}")),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        // Ports, audit log and state directory first: a busy address must not spend a token.
        let prepared = match crate::prepare(&config).await {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        let saved = match &config.state_dir {
            Some(dir) => {
                let identity = Identity::new(
                    &config.trust_domain,
                    &config.network,
                    config.role,
                    &config.node,
                )
                .expect("validated by Config::resolve");
                match crate::state::load(dir, &identity, SystemTime::now()) {
                    Ok(saved) => saved,
                    Err(e) => return fail(&e),
                }
            }
            None => None,
        };
        let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
        let creds = loop {
            let attempt = match &saved {
                Some(saved) => crate::identity::resume(&config, saved).await,
                None => crate::identity::join(&config).await,
            };
            match attempt {
                Ok(c) => break c,
                // Only an unreachable service is worth waiting for; a refusal (bad token,
                // another identity, revoked) or an unusable bundle will not change by retrying.
                Err(e) if !e.is_transient() || tokio::time::Instant::now() >= deadline => {
                    return fail(&join_failure(&config, saved.is_some(), &e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "join failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        if let Some(dir) = &config.state_dir {
            match crate::state::save(dir, &creds.key, &creds.chain) {
                Ok(()) => tracing::info!(dir = %dir.display(), resumed = saved.is_some(), "identity kept for restarts"),
                Err(e) => tracing::warn!(error = %e, "cannot keep the identity for restarts"),
            }
        }
        let running = match crate::start_prepared(config, prepared, creds).await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        // `log-level` control messages change the filter at run time.
        let set_level = move |level: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
            reload.reload(filter).map_err(|e| e.to_string())
        };
        *running.shared.log_level.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Box::new(set_level));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = running.shared.shutdown_requested.notified() => {
                tracing::warn!("shutting down on a control message");
            }
        }
        tracing::info!("draining");
        running.drain_and_stop().await;
        ExitCode::SUCCESS
    })
}

/// Why joining failed, and what to do about it.
fn join_failure(config: &Config, resumed: bool, e: &Error) -> String {
    if resumed {
        let dir = config.state_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        return format!(
            "cannot renew with the certificate kept in {dir}: {e} (if this member was revoked, \
             an admin must un-revoke it; to start over, delete {dir} and join with a new token)"
        );
    }
    // The service's own words say why it refused; a spent token gets its own advice.
    let spent = matches!(e, Error::IdentityRefused { reason, .. } if reason.contains("spent"));
    if spent && config.state_dir.is_none() {
        return format!(
            "cannot join: {e}. A join token works once: give a restarted member a new token, or \
             run members with --state-dir DIR so a restart renews with the kept key instead"
        );
    }
    format!("cannot join: {e}")
}

fn fail(message: &str) -> ExitCode {
    eprintln!("genesis-sidecar: {message}");
    ExitCode::FAILURE
}
