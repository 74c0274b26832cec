//! genesisctl: the Genesis Mesh command line.
#![forbid(unsafe_code)]

mod crl;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "genesisctl", version, about = "Genesis Mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Genesis Mesh on this machine, no cluster needed. Today: the trust core (authority,
    /// CSR issuance, mutual TLS, revocation, signed control messages, audit log); the sidecar
    /// mesh joins the demo when it is built.
    Demo(demo::DemoArgs),
    /// Revocation lists: push a new CRL into a local mesh and wait for convergence.
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Push a CRL through one member and wait until every listed member holds it.
    Push(crl::PushArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a hash-chained audit log; on a broken chain, name the first broken record.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Crl { command: CrlCommand::Push(args) } => crl::push(&args),
        Command::Audit { command: AuditCommand::Verify { file, json } } => {
            audit_verify(&file, json)
        }
    }
}

fn audit_verify(file: &std::path::Path, json: bool) -> ExitCode {
    match genesis_trust::verify_audit_file(file) {
        Ok(summary) => {
            if json {
                let out = serde_json::json!({"ok": true, "records": summary.records, "head": summary.head});
                println!("{out}");
            } else {
                println!(
                    "{}: {} records, chain intact, head {}",
                    file.display(),
                    summary.records,
                    summary.head
                );
            }
            ExitCode::SUCCESS
        }
        Err(genesis_trust::Error::AuditBroken(b)) => {
            if json {
                let out = serde_json::json!({
                    "ok": false, "line": b.line, "seq": b.seq, "error": b.to_string()
                });
                println!("{out}");
            } else {
                eprintln!("{}: {b}", file.display());
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("genesisctl: {e}; check the path and permissions");
            ExitCode::from(2)
        }
    }
}
