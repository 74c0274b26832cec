//! `genesisctl revoke NODE` in a local mesh: the authority signs a new CRL, it is pushed into
//! the mesh through one member, and we wait until every other member holds it and has cut the
//! node off (no link, no route).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use genesis_trust::RevocationReason;
use serde::Serialize;
use serde_json::json;

use crate::client;
use crate::mesh::{Manifest, Member};
use crate::output;

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The member to revoke.
    node: String,
    /// In a cluster: the Certificate's namespace, when the node name is not unique.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Give up waiting for the mesh after this long (Go duration).
    #[arg(long, default_value = "10s")]
    timeout: String,
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

/// What a revocation achieved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub node: String,
    pub crl_number: u64,
    pub via: String,
    /// From the push until the last member applied the CRL (members' own clocks, ms).
    pub applied_everywhere_ms: Option<f64>,
    /// From the push until every member was seen without link or route to the node.
    pub cut_off_everywhere_ms: Option<f64>,
    /// Members still reaching the node when we gave up (empty on success).
    pub still_reaching: Vec<String>,
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Whether `member` holds CRL `number` and neither links nor routes to `node`; the time it
/// applied the CRL (unix ms) when so.
fn cut_off(member: &Member, node: &str, number: u64) -> Option<f64> {
    let identity = client::get_json(&member.admin, "/admin/identity").ok()?;
    if identity["crlNumber"].as_u64()? < number {
        return None;
    }
    let peers = client::get_json(&member.admin, "/admin/peers").ok()?;
    let linked = peers.as_array()?.iter().any(|p| p["node"] == node && p["connected"] == true);
    let routes = client::get_json(&member.admin, "/admin/routes").ok()?;
    let routed = routes.as_array()?.iter().any(|r| r["dest"] == node);
    (!linked && !routed).then(|| identity["crlAppliedAtMs"].as_f64().unwrap_or(0.0))
}

/// Revokes `node` at the authority, pushes the CRL through a member and waits for the mesh.
pub fn revoke_and_wait(
    manifest: &Manifest,
    node: &str,
    timeout: Duration,
) -> Result<Revocation, String> {
    manifest.member(node)?;
    // Members revoked earlier are cut off and will not hear of this CRL.
    let earlier = crate::inspect::authority_state(manifest)?.revoked;
    let authority = manifest.authority()?;
    let crl = authority
        .revoke_node(node, RevocationReason::KeyCompromise)
        .map_err(|e| format!("the authority cannot revoke {node}: {e}"))?
        .ok_or_else(|| format!("{node} is already revoked (or was never issued a certificate)"))?;
    let others: Vec<&Member> =
        manifest.members.iter().filter(|m| m.name != node && !earlier.contains(&m.name)).collect();
    let start_ms = unix_ms();
    let start = Instant::now();
    // The push goes through the first member that takes it.
    let mut via = None;
    let mut errors = Vec::new();
    for m in &others {
        match client::post_json(&m.admin, "/admin/crl", crl.der(), Duration::from_secs(5)) {
            Ok((200 | 409, _)) => {
                via = Some(m.name.clone());
                break;
            }
            Ok((status, answer)) => errors.push(format!("{}: {status} {answer}", m.name)),
            Err(e) => errors.push(e),
        }
    }
    let via = via.ok_or_else(|| {
        format!(
            "CRL {} is signed (the authority's crl.der) but no member took it: {}",
            crl.number(),
            errors.join("; ")
        )
    })?;
    let number = crl.number();
    let mut applied: Vec<Option<f64>> = vec![None; others.len()];
    while start.elapsed() < timeout && applied.iter().any(Option::is_none) {
        std::thread::scope(|s| {
            let checks: Vec<_> = others
                .iter()
                .zip(applied.iter())
                .map(|(m, done)| {
                    let m = *m;
                    let done = *done;
                    s.spawn(move || done.or_else(|| cut_off(m, node, number)))
                })
                .collect();
            for (slot, h) in applied.iter_mut().zip(checks) {
                *slot = h.join().expect("probe does not panic");
            }
        });
        if applied.iter().any(Option::is_none) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let still_reaching: Vec<String> = others
        .iter()
        .zip(&applied)
        .filter(|(_, a)| a.is_none())
        .map(|(m, _)| m.name.clone())
        .collect();
    let done = still_reaching.is_empty();
    let last_applied = applied.iter().flatten().fold(f64::MIN, |a, &b| a.max(b));
    Ok(Revocation {
        node: node.to_owned(),
        crl_number: crl.number(),
        via,
        applied_everywhere_ms: done.then(|| (last_applied - start_ms).max(0.0)),
        cut_off_everywhere_ms: done.then(|| start.elapsed().as_secs_f64() * 1e3),
        still_reaching,
    })
}

fn run_cluster(args: &RevokeArgs, target: &crate::cluster::Target) -> ExitCode {
    let result = genesis_trust::duration::parse_duration(&args.timeout).and_then(|timeout| {
        crate::cluster::block_on(async {
            let client = crate::cluster::client(target).await?;
            crate::cluster::revoke(&client, &args.node, args.namespace.as_deref(), timeout).await
        })?
    });
    match result {
        Ok(r) => {
            let published = r.crl_after.is_some();
            output::print(args.mesh.output, &json!(r), || match r.crl_after {
                Some(n) => format!(
                    "revoked {}: the authority {} published CRL {n}; the operator pushes it \
                     through the anchors (`genesisctl check` shows when every network holds it)\n",
                    r.certificate,
                    r.authority.as_deref().unwrap_or("?")
                ),
                None => format!(
                    "marked {} revoked, but the authority published no new CRL within {}; is \
                     the operator running? (`genesisctl check`)\n",
                    r.certificate, args.timeout
                ),
            });
            if published {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => crate::fail(&e),
    }
}

pub fn run(args: &RevokeArgs) -> ExitCode {
    if let Some(target) = args.mesh.cluster() {
        return run_cluster(args, &target);
    }
    let result = Manifest::load(&args.mesh.dir()).and_then(|m| {
        let timeout = genesis_trust::duration::parse_duration(&args.timeout)?;
        revoke_and_wait(&m, &args.node, timeout)
    });
    match result {
        Ok(r) => {
            let ok = r.still_reaching.is_empty();
            output::print(args.mesh.output, &json!(r), || {
                if ok {
                    format!(
                        "revoked {}: CRL {} pushed via {}; applied everywhere in {:.0} ms, every \
                         member cut it off within {:.0} ms\n",
                        r.node,
                        r.crl_number,
                        r.via,
                        r.applied_everywhere_ms.unwrap_or(0.0),
                        r.cut_off_everywhere_ms.unwrap_or(0.0)
                    )
                } else {
                    format!(
                        "revoked {}: CRL {} pushed via {}, but {} still reach it after {}; run \
                         `genesisctl check` to see why\n",
                        r.node,
                        r.crl_number,
                        r.via,
                        r.still_reaching.join(", "),
                        args.timeout
                    )
                }
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
