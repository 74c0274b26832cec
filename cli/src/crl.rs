//! `genesisctl crl push`: the local injection point for a new CRL. It posts the CRL to one
//! member's admin API (which checks it and pushes it on to its neighbours at once) and waits
//! until every listed member reports holding it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct PushArgs {
    /// The CRL (DER or PEM), e.g. the authority's crl.der.
    #[arg(long)]
    crl: PathBuf,
    /// The member to push through: its name in the local mesh (`--mesh`), or its admin
    /// address (host:port).
    #[arg(long)]
    via: String,
    /// The members to wait for (names or admin addresses, comma separated; default: every
    /// member of the local mesh).
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
    /// Give up waiting after this long (Go duration).
    #[arg(long, default_value = "10s", value_parser = crate::duration_arg)]
    timeout: String,
    /// The same as `-o json` (kept for scripts).
    #[arg(long, hide = true)]
    json: bool,
    #[command(flatten)]
    mesh: crate::MeshArgs,
}

/// A member name (from the local mesh's manifest) or an admin address, as an admin address.
fn admin_of(manifest: Option<&crate::mesh::Manifest>, who: &str) -> Result<String, String> {
    if who.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(who.to_owned());
    }
    match manifest {
        Some(m) => m.member(who).map(|m| m.admin.clone()),
        None => Err(format!(
            "{who} is neither host:port nor a member of a local mesh (no mesh found: pass --mesh DIR)"
        )),
    }
}

fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    crate::client::http(addr, method, path, body, Duration::from_secs(10))
}

fn crl_number(admin: &str) -> Option<u64> {
    let (_, body) = http(admin, "GET", "/admin/identity", b"").ok()?;
    serde_json::from_slice::<serde_json::Value>(&body).ok()?["crlNumber"].as_u64()
}

pub fn push(args: &PushArgs) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("genesisctl crl push: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &PushArgs) -> Result<bool, String> {
    let timeout = genesis_trust::duration::parse_duration(&args.timeout)
        .map_err(|e| format!("--timeout: {e}"))?;
    let raw =
        std::fs::read(&args.crl).map_err(|e| format!("cannot read {}: {e}", args.crl.display()))?;
    let crl = match std::str::from_utf8(&raw) {
        Ok(text) if text.contains("-----BEGIN") => genesis_trust::Crl::from_pem(text),
        _ => genesis_trust::Crl::parse(&raw),
    }
    .map_err(|e| format!("{}: {e}", args.crl.display()))?;
    args.mesh.local_only("crl push (posts to a member's admin API)")?;
    let manifest = crate::mesh::Manifest::load(&args.mesh.dir()).ok();
    let via = admin_of(manifest.as_ref(), &args.via)?;
    let members: Vec<String> = if args.members.is_empty() {
        // Every member of the local mesh but the revoked ones (they are cut off by design).
        let Some(m) = manifest.as_ref() else {
            return Err(
                "no members to wait for: pass --members, or --mesh DIR for a local mesh".into()
            );
        };
        let revoked = crate::inspect::authority_state(m)?.revoked;
        m.members.iter().filter(|m| !revoked.contains(&m.name)).map(|m| m.admin.clone()).collect()
    } else {
        args.members.iter().map(|m| admin_of(manifest.as_ref(), m)).collect::<Result<_, _>>()?
    };
    let start = Instant::now();
    let (status, body) = http(&via, "POST", "/admin/crl", crl.der())?;
    // 409: the member already holds it (or newer); the mesh may still be converging.
    if status != 200 && status != 409 {
        return Err(format!(
            "{} refused the CRL ({status}): {}",
            args.via,
            String::from_utf8_lossy(&body)
        ));
    }
    let number = crl.number();
    let mut pending: Vec<&String> = members.iter().collect();
    while !pending.is_empty() && start.elapsed() < timeout {
        pending.retain(|m| crl_number(m).is_none_or(|n| n < number));
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let elapsed = start.elapsed();
    let converged = pending.is_empty();
    let value = serde_json::json!({
        "crlNumber": number,
        "converged": converged,
        "members": members.len(),
        "seconds": elapsed.as_secs_f64(),
        "notConverged": pending,
    });
    let out = if args.json { crate::output::Output::Json } else { args.mesh.output };
    crate::output::print(out, &value, || {
        if converged {
            format!(
                "CRL {number} held by all {} members after {:.3}s\n",
                members.len(),
                elapsed.as_secs_f64()
            )
        } else {
            format!(
                "CRL {number} not held after {:.1}s by: {}\n",
                elapsed.as_secs_f64(),
                pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        }
    });
    Ok(converged)
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    mesh: crate::MeshArgs,
}

/// `crl sign`: the local mesh's authority signs a fresh CRL (same revocations, the next
/// number, a new validity window) into its directory; push it with `crl push`.
pub fn sign(args: &SignArgs) -> ExitCode {
    let signed = args
        .mesh
        .local_only("crl sign (the local authority's files)")
        .and_then(|()| crate::mesh::Manifest::load(&args.mesh.dir()))
        .and_then(|m| {
            let authority = m.authority()?;
            let crl = authority.refresh_crl().map_err(|e| e.to_string())?;
            Ok((m, crl))
        });
    match signed {
        Ok((m, crl)) => {
            let file = m.authority_dir.join("crl.der");
            let value = serde_json::json!({
                "crlNumber": crl.number(),
                "revoked": crl.revoked().len(),
                "file": file.display().to_string(),
            });
            crate::output::print(args.mesh.output, &value, || {
                format!(
                    "signed CRL {} ({} revoked serials) into {}\n",
                    crl.number(),
                    crl.revoked().len(),
                    file.display()
                )
            });
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&e),
    }
}
