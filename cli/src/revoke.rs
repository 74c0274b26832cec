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
    #[arg(long, default_value = "10s", value_parser = crate::duration_arg)]
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
    /// Members still holding an older CRL, a link or a route to the node when we gave up
    /// (empty on success).
    pub still_reaching: Vec<String>,
    /// Members whose admin API did not answer, so their cut-off is unconfirmed (empty on
    /// success).
    pub unreachable: Vec<String>,
}

impl Revocation {
    /// Every other member confirmed the cut-off.
    pub fn confirmed(&self) -> bool {
        self.still_reaching.is_empty() && self.unreachable.is_empty()
    }
}

/// One member, asked whether it has cut the node off.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    /// Cut off; the member applied the CRL at this unix time (ms).
    CutOff(f64),
    Reaching,
    NoAnswer,
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// Whether `member` holds CRL `number` and neither links nor routes to `node`.
fn probe(member: &Member, node: &str, number: u64) -> Probe {
    let ask = |path: &str| client::get_json(&member.admin, path).ok();
    let (Some(identity), Some(peers), Some(routes)) =
        (ask("/admin/identity"), ask("/admin/peers"), ask("/admin/routes"))
    else {
        return Probe::NoAnswer;
    };
    let current = identity["crlNumber"].as_u64().is_some_and(|n| n >= number);
    let linked = peers
        .as_array()
        .is_none_or(|a| a.iter().any(|p| p["node"] == node && p["connected"] == true));
    let routed = routes.as_array().is_none_or(|a| a.iter().any(|r| r["dest"] == node));
    if current && !linked && !routed {
        Probe::CutOff(identity["crlAppliedAtMs"].as_f64().unwrap_or(0.0))
    } else {
        Probe::Reaching
    }
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
    let pending = |p: &Probe| !matches!(p, Probe::CutOff(_));
    let mut probes: Vec<Probe> = vec![Probe::Reaching; others.len()];
    while start.elapsed() < timeout && probes.iter().any(pending) {
        std::thread::scope(|s| {
            let checks: Vec<_> = others
                .iter()
                .zip(probes.iter())
                .map(|(m, last)| {
                    let (m, last) = (*m, *last);
                    s.spawn(move || if pending(&last) { probe(m, node, number) } else { last })
                })
                .collect();
            for (slot, h) in probes.iter_mut().zip(checks) {
                *slot = h.join().expect("probe does not panic");
            }
        });
        if probes.iter().any(pending) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let named = |want: Probe| -> Vec<String> {
        others
            .iter()
            .zip(&probes)
            .filter(|(_, p)| **p == want)
            .map(|(m, _)| m.name.clone())
            .collect()
    };
    let (still_reaching, unreachable) = (named(Probe::Reaching), named(Probe::NoAnswer));
    let done = !probes.iter().any(pending);
    let last_applied = probes
        .iter()
        .filter_map(|p| if let Probe::CutOff(t) = p { Some(*t) } else { None })
        .fold(f64::MIN, f64::max);
    Ok(Revocation {
        node: node.to_owned(),
        crl_number: crl.number(),
        via,
        applied_everywhere_ms: done.then(|| (last_applied - start_ms).max(0.0)),
        cut_off_everywhere_ms: done.then(|| start.elapsed().as_secs_f64() * 1e3),
        still_reaching,
        unreachable,
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
            let ok = r.confirmed();
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
                    let mut problems = Vec::new();
                    if !r.still_reaching.is_empty() {
                        problems.push(format!("{} still reach it", r.still_reaching.join(", ")));
                    }
                    if !r.unreachable.is_empty() {
                        problems.push(format!(
                            "{} did not answer (cut-off unconfirmed)",
                            r.unreachable.join(", ")
                        ));
                    }
                    format!(
                        "revoked {}: CRL {} pushed via {}, but after {} {}; run `genesisctl \
                         check` to see why\n",
                        r.node,
                        r.crl_number,
                        r.via,
                        args.timeout,
                        problems.join(" and ")
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
