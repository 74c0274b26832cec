//! The `genesis-sidecar` command: joins the mesh (CSR to the identity service), runs the data
//! plane, and drains gracefully on SIGTERM. A library function so `genesisctl demo` can run the
//! same code from its own binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Config, Settings};
use clap::Parser;

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
    #[command(flatten)]
    settings: Settings,
}

/// How long the first join keeps retrying while the identity service is not reachable yet.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// Runs the sidecar with command-line `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let cli = Cli::parse_from(args);
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
        let creds = loop {
            match crate::identity::join(&config).await {
                Ok(c) => break c,
                // A refusal (bad token, wrong identity) will not change by retrying.
                Err(e) if e.contains("refused (") || tokio::time::Instant::now() >= deadline => {
                    return fail(&format!("cannot join: {e}"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "join failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let running = match crate::start(config, creds).await {
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

fn fail(message: &str) -> ExitCode {
    eprintln!("genesis-sidecar: {message}");
    ExitCode::FAILURE
}
