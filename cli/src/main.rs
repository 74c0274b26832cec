//! genesisctl: the Genesis Mesh command line.
#![forbid(unsafe_code)]

mod check;
mod client;
mod cluster;
mod control;
mod crl;
mod demo;
mod inspect;
mod mesh;
mod output;
mod revoke;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "genesisctl", version, about = "Genesis Mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which mesh a command talks to, and how it answers.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// A local mesh's directory (the one `genesisctl demo --keep` prints).
    #[arg(long, env = "GENESIS_MESH", global = true)]
    mesh: Option<PathBuf>,
    /// table for people, json for machines.
    #[arg(long, short, value_enum, default_value_t = output::Output::Table, global = true)]
    output: output::Output,
    /// Talk to a cluster through this kubeconfig instead of a local mesh. Without it (and
    /// without --mesh), a cluster is used when no local mesh exists and $KUBECONFIG or
    /// ~/.kube/config does, as kubectl would.
    #[arg(long, global = true, conflicts_with = "mesh")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace the Helm chart was installed in.
    #[arg(long, global = true, default_value = "genesis-system")]
    operator_namespace: String,
}

impl MeshArgs {
    pub fn dir(&self) -> PathBuf {
        self.mesh.clone().unwrap_or_else(mesh::default_dir)
    }

    /// The cluster: `--kubeconfig`; else, when there is no local mesh to talk to (no --mesh,
    /// no $GENESIS_MESH, no default mesh directory), kubectl's kubeconfig (the first file of
    /// $KUBECONFIG, else ~/.kube/config) with its current context unless --context says.
    pub fn cluster(&self) -> Option<cluster::Target> {
        let kubeconfig = match &self.kubeconfig {
            Some(k) => k.clone(),
            None if self.mesh.is_none() && !mesh::default_dir().join("mesh.json").exists() => {
                kubectl_kubeconfig()?
            }
            None => return None,
        };
        Some(cluster::Target {
            kubeconfig,
            context: self.context.clone(),
            operator_namespace: self.operator_namespace.clone(),
        })
    }

    /// The error for commands that only make sense against a local mesh's admin APIs.
    pub fn local_only(&self, what: &str) -> Result<(), String> {
        match self.cluster() {
            Some(_) => Err(format!(
                "{what} reads a member's admin API, which a cluster does not expose: run \
                 `kubectl port-forward pod/<pod> 7002` and `curl localhost:7002/admin/...`"
            )),
            None => Ok(()),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole mesh on this machine (authority + sidecar processes) and show it working:
    /// join, routing, messages, tunnels, rotation, revocation, control, audit.
    Demo(demo::DemoArgs),
    /// Networks, members, readiness, anchors, CRL number and convergence, expiring certificates.
    Status(inspect::StatusArgs),
    /// A member's peers with reputation and RTT.
    Peers(inspect::NodeArgs),
    /// A member's routes with metrics and next hops.
    Routes(inspect::NodeArgs),
    /// The services a member knows across the mesh (name, member, port, route metric).
    Services(inspect::NodeArgs),
    /// Revoke a member: sign a new CRL, push it into the mesh, wait until it is cut off.
    Revoke(revoke::RevokeArgs),
    /// Send a signed control message (drain, shutdown, route-reset, log-level, policy-update).
    Control(control::ControlArgs),
    /// Preflight: is the mesh healthy, and if not, why and what to do.
    Check(check::CheckArgs),
    /// Revocation lists: push a CRL into a local mesh and wait for convergence.
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script: `source <(genesisctl completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print genesisctl's version, and those of the local mesh's members when one answers.
    Version(inspect::VersionArgs),
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Push a CRL through one member and wait until every listed member holds it.
    Push(crl::PushArgs),
    /// Have the local mesh's authority sign a fresh CRL (before the current one lapses).
    Sign(crl::SignArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a hash-chained audit log; on a broken chain, name the first broken record.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// table for people, json or yaml for machines.
        #[arg(long, short, value_enum, default_value_t = output::Output::Table)]
        output: output::Output,
        /// The same as `-o json` (kept for scripts).
        #[arg(long, hide = true)]
        json: bool,
    },
}

/// One clear line on standard error, exit status 2.
/// The kubeconfig kubectl would use: the first existing file of $KUBECONFIG, else
/// ~/.kube/config if it exists.
fn kubectl_kubeconfig() -> Option<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&list).find(|p| p.is_file());
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".kube/config")).filter(|p| p.is_file())
}

/// A duration flag, checked when the command line is parsed (so the error names the flag).
pub fn duration_arg(s: &str) -> Result<String, String> {
    genesis_trust::duration::parse_duration(s).map(|_| s.to_owned())
}

pub fn fail(message: &str) -> ExitCode {
    eprintln!("genesisctl: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // The demo runs the authority and the sidecars as this same binary.
    let mut args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("internal-sidecar") => {
            args.remove(1);
            args[0] = "genesis-sidecar".into();
            return genesis_sidecar::cli::main_from(args);
        }
        Some("internal-operator") => {
            args.remove(1);
            args[0] = "genesis-operator".into();
            return genesis_operator::cli::main_from(args);
        }
        _ => {}
    }
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Status(args) => inspect::status(&args),
        Command::Peers(args) => inspect::peers(&args),
        Command::Routes(args) => inspect::routes(&args),
        Command::Services(args) => inspect::services(&args),
        Command::Revoke(args) => revoke::run(&args),
        Command::Control(args) => control::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Crl { command: CrlCommand::Push(args) } => crl::push(&args),
        Command::Crl { command: CrlCommand::Sign(args) } => crl::sign(&args),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "genesisctl", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Version(args) => inspect::version(&args),
        Command::Audit { command: AuditCommand::Verify { file, output, json } } => {
            audit_verify(&file, if json { output::Output::Json } else { output })
        }
    }
}

fn audit_verify(file: &std::path::Path, out: output::Output) -> ExitCode {
    match genesis_trust::verify_audit_file(file) {
        Ok(summary) => {
            let value =
                serde_json::json!({"ok": true, "records": summary.records, "head": summary.head});
            output::print(out, &value, || {
                format!(
                    "{}: {} records, chain intact, head {}\n",
                    file.display(),
                    summary.records,
                    summary.head
                )
            });
            ExitCode::SUCCESS
        }
        Err(genesis_trust::Error::AuditBroken(b)) => {
            let value = serde_json::json!({
                "ok": false, "line": b.line, "seq": b.seq, "error": b.to_string()
            });
            if out == output::Output::Table {
                eprintln!("{}: {b}", file.display());
            } else {
                output::print(out, &value, String::new);
            }
            ExitCode::FAILURE
        }
        Err(e) => fail(&format!("{e}; check the path and permissions")),
    }
}
