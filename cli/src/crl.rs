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
    /// Admin address (host:port) of the member to push through.
    #[arg(long)]
    via: String,
    /// Admin addresses of the members to wait for (comma separated).
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
    /// Give up waiting after this long (Go duration).
    #[arg(long, default_value = "10s", value_parser = crate::duration_arg)]
    timeout: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
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
    let start = Instant::now();
    let (status, body) = http(&args.via, "POST", "/admin/crl", crl.der())?;
    // 409: the member already holds it (or newer); the mesh may still be converging.
    if status != 200 && status != 409 {
        return Err(format!(
            "{} refused the CRL ({status}): {}",
            args.via,
            String::from_utf8_lossy(&body)
        ));
    }
    let number = crl.number();
    let mut pending: Vec<&String> = args.members.iter().collect();
    while !pending.is_empty() && start.elapsed() < timeout {
        pending.retain(|m| crl_number(m).is_none_or(|n| n < number));
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let elapsed = start.elapsed();
    let converged = pending.is_empty();
    if args.json {
        let out = serde_json::json!({
            "crlNumber": number,
            "converged": converged,
            "members": args.members.len(),
            "seconds": elapsed.as_secs_f64(),
            "notConverged": pending,
        });
        println!("{out}");
    } else if converged {
        println!(
            "CRL {number} held by all {} members after {:.3}s",
            args.members.len(),
            elapsed.as_secs_f64()
        );
    } else {
        println!(
            "CRL {number} not held after {:.1}s by: {}",
            elapsed.as_secs_f64(),
            pending.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(converged)
}
