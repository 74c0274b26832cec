//! `genesisctl check`: a preflight in the spirit of `linkerd check`. Each line is one question
//! about the mesh, green or red, and a red line says how to fix it. Exit status 1 when any
//! check fails.

use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::inspect::{self, AuthorityState, MemberState};
use crate::mesh::Manifest;
use crate::output::{self, human_secs};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Fail when a member's certificate expires sooner than this (Go duration).
    #[arg(long, default_value = "1h")]
    min_cert_validity: String,
    /// Fail when the CA expires sooner than this.
    #[arg(long, default_value = "720h")]
    min_ca_validity: String,
    /// Fail when the authority's CRL expires (nextUpdate) sooner than this.
    #[arg(long, default_value = "10m")]
    min_crl_validity: String,
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do about it (failed checks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub(crate) fn pass(name: &'static str, detail: String) -> Check {
    Check { name, ok: true, detail, hint: None }
}

pub(crate) fn fail(name: &'static str, detail: String, hint: String) -> Check {
    Check { name, ok: false, detail, hint: Some(hint) }
}

/// Thresholds, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub cert: f64,
    pub ca: f64,
    pub crl: f64,
}

/// The pure part: every check from what the authority and the members said.
pub fn evaluate(
    manifest: &Manifest,
    authority: &AuthorityState,
    states: &[MemberState],
    identity_service_up: bool,
    audit: &[(String, Result<u64, String>)],
    min: Thresholds,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let auth_dir = manifest.authority_dir.display();
    let mesh_dir = manifest.authority_dir.parent().unwrap_or(std::path::Path::new("."));
    checks.push(if authority.ca_valid_for >= min.ca {
        pass("CA far from expiry", format!("valid for {}", human_secs(authority.ca_valid_for)))
    } else {
        fail(
            "CA far from expiry",
            format!(
                "the CA in {auth_dir} expires in {} (threshold {})",
                human_secs(authority.ca_valid_for),
                human_secs(min.ca)
            ),
            "rotate the CA: create a new authority and re-join the members".into(),
        )
    });
    checks.push(if identity_service_up {
        pass("identity service reachable", manifest.identity_service.clone())
    } else {
        fail(
            "identity service reachable",
            format!("nothing answers at {}", manifest.identity_service),
            format!(
                "start it: genesisctl internal-operator local --dir {auth_dir} --listen {}; \
                 members cannot renew without it",
                manifest.identity_service
            ),
        )
    });
    let live: Vec<&MemberState> = states.iter().filter(|s| !s.revoked).collect();
    let down: Vec<String> = live
        .iter()
        .filter(|s| s.ready == "down")
        .map(|s| format!("{} ({})", s.name, s.error.as_deref().unwrap_or("no answer")))
        .collect();
    checks.push(if down.is_empty() {
        pass("members reachable", format!("{} members answer", live.len()))
    } else {
        fail(
            "members reachable",
            format!("{} of {} do not answer: {}", down.len(), live.len(), down.join("; ")),
            "see the member's log in the mesh directory; restart it with a new join token".into(),
        )
    });
    let unready: Vec<String> = live
        .iter()
        .filter(|s| s.ready != "healthy" && s.ready != "down")
        .map(|s| format!("{} {} ({})", s.name, s.ready, s.failed_checks.join("; ")))
        .collect();
    checks.push(if unready.is_empty() {
        pass("members ready", "every reachable member is healthy".into())
    } else {
        fail(
            "members ready",
            unready.join("; "),
            "`genesisctl status` and the member's /readyz name the failing check".into(),
        )
    });
    let expiring: Vec<String> = live
        .iter()
        .filter_map(|s| {
            let left = s.cert_expires_in?;
            let overdue = s.renews_in.is_some_and(|r| r < 0.0);
            (left < min.cert).then(|| {
                let note = if overdue { ", renewal overdue" } else { "" };
                format!("{} in {}{note}", s.name, human_secs(left))
            })
        })
        .collect();
    let soonest = live.iter().filter_map(|s| s.cert_expires_in).fold(f64::INFINITY, f64::min);
    checks.push(if expiring.is_empty() {
        pass(
            "certificates far from expiry",
            if soonest.is_finite() {
                format!("soonest expiry in {}", human_secs(soonest))
            } else {
                "no member answered".into()
            },
        )
    } else {
        fail(
            "certificates far from expiry",
            format!("below {}: {}", human_secs(min.cert), expiring.join(", ")),
            format!(
                "members renew at half their lifetime through the identity service ({}); check \
                 it is reachable, and that the authority's certificate duration is longer than \
                 the threshold",
                manifest.identity_service
            ),
        )
    });
    let behind: Vec<String> = live
        .iter()
        .filter(|s| s.ready != "down" && s.crl_number != Some(authority.crl_number))
        .map(|s| {
            format!("{} holds {}", s.name, s.crl_number.map_or("none".into(), |n| n.to_string()))
        })
        .collect();
    let crl_hint = || {
        let via = live.iter().find(|s| s.ready != "down").map(|s| s.name.as_str()).unwrap_or("m0");
        format!(
            "push it: genesisctl crl push --crl {auth_dir}/crl.der --via {via} --mesh {}",
            mesh_dir.display()
        )
    };
    checks.push(if authority.crl_valid_for < min.crl {
        fail(
            "CRL fresh",
            format!(
                "CRL {} expires in {} (threshold {}); members refuse every peer once it lapses",
                authority.crl_number,
                human_secs(authority.crl_valid_for),
                human_secs(min.crl)
            ),
            format!(
                "sign a fresh CRL (genesisctl crl sign --mesh {}), then {}",
                mesh_dir.display(),
                crl_hint()
            ),
        )
    } else if !behind.is_empty() {
        fail(
            "CRL fresh",
            format!("the authority published CRL {}; {}", authority.crl_number, behind.join(", ")),
            crl_hint(),
        )
    } else {
        pass(
            "CRL fresh",
            format!(
                "every member holds CRL {} (valid for {})",
                authority.crl_number,
                human_secs(authority.crl_valid_for)
            ),
        )
    });
    let problems = inspect::convergence_problems(states, authority);
    checks.push(if problems.is_empty() {
        let cut = if authority.revoked.is_empty() {
            String::new()
        } else {
            let r: Vec<&str> = authority.revoked.iter().map(String::as_str).collect();
            format!("; revoked {} cut off", r.join(", "))
        };
        pass("members converged", format!("every member routes to every other{cut}"))
    } else {
        fail(
            "members converged",
            problems.join("; "),
            "wait a few hello intervals; if it persists, `genesisctl routes NODE` and \
             `genesisctl peers NODE` show where the mesh is split"
                .into(),
        )
    });
    let broken: Vec<String> =
        audit.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
    let records: u64 = audit.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();
    checks.push(if broken.is_empty() {
        pass(
            "audit logs intact",
            format!("{} logs, {records} records, every chain intact", audit.len()),
        )
    } else {
        fail(
            "audit logs intact",
            broken.join("; "),
            "a broken chain means the log was edited or truncated: keep a copy and investigate \
             (genesisctl audit verify FILE names the first broken record)"
                .into(),
        )
    });
    checks
}

pub fn run(args: &CheckArgs) -> ExitCode {
    match check(args) {
        Ok(checks) => {
            let ok = checks.iter().all(|c| c.ok);
            output::print(args.mesh.output, &json!({"ok": ok, "checks": checks}), || {
                let mut text = String::new();
                for c in &checks {
                    let mark = if c.ok { "\u{2714}" } else { "\u{2718}" };
                    text += &format!("{mark} {}: {}\n", c.name, c.detail);
                    if let Some(h) = &c.hint {
                        text += &format!("    hint: {h}\n");
                    }
                }
                text += if ok {
                    "\nStatus check results are \u{2714}\n"
                } else {
                    "\nSome checks failed\n"
                };
                text
            });
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => crate::fail(&e),
    }
}

fn check(args: &CheckArgs) -> Result<Vec<Check>, String> {
    let secs = |s: &str| genesis_trust::duration::parse_duration(s).map(|d| d.as_secs_f64());
    let min = Thresholds {
        cert: secs(&args.min_cert_validity)?,
        ca: secs(&args.min_ca_validity)?,
        crl: secs(&args.min_crl_validity)?,
    };
    if let Some(target) = args.mesh.cluster() {
        let state = crate::cluster::block_on(async {
            let client = crate::cluster::client(&target).await?;
            crate::cluster::fetch(&client, &target.operator_namespace).await
        })??;
        return Ok(crate::cluster::evaluate(&state, &target.operator_namespace, min));
    }
    let manifest = Manifest::load(&args.mesh.dir())?;
    let authority = inspect::authority_state(&manifest)?;
    let states = inspect::members(&manifest, &authority.revoked);
    let identity_service_up = manifest
        .identity_service
        .parse()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    let audit: Vec<(String, Result<u64, String>)> = manifest
        .members
        .iter()
        .filter(|m| m.audit.exists())
        .map(|m| {
            let r = genesis_trust::verify_audit_file(&m.audit)
                .map(|s| s.records)
                .map_err(|e| e.to_string());
            (m.name.clone(), r)
        })
        .collect();
    Ok(evaluate(&manifest, &authority, &states, identity_service_up, &audit, min))
}
