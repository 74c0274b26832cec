//! `status`, `peers NODE` and `routes NODE` against a local mesh: what every member's admin API
//! says, next to what the authority says (CRL number, revocations).

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use genesis_trust::Serial;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client;
use crate::mesh::{Manifest, Member};
use crate::output::{self, human_secs};

/// One member as its admin API describes it (or why it could not be asked).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberState {
    pub name: String,
    pub role: String,
    /// `healthy`, `degraded`, `unhealthy` (from /readyz) or `down` (no answer).
    pub ready: String,
    pub error: Option<String>,
    pub revoked: bool,
    pub serial: Option<String>,
    /// Seconds until the certificate expires / is renewed.
    pub cert_expires_in: Option<f64>,
    pub renews_in: Option<f64>,
    pub crl_number: Option<u64>,
    /// Connected neighbours.
    pub links: Vec<String>,
    /// Reachable destinations.
    pub routes: Vec<String>,
    pub failed_checks: Vec<String>,
}

/// What the authority says.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityState {
    pub crl_number: u64,
    /// Seconds until the current CRL's nextUpdate.
    pub crl_valid_for: f64,
    /// Seconds until the CA expires.
    pub ca_valid_for: f64,
    /// Members revoked: as identities, or with their newest certificate on the CRL.
    pub revoked: BTreeSet<String>,
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn secs_until(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

pub fn authority_state(manifest: &Manifest) -> Result<AuthorityState, String> {
    let authority = manifest.authority()?;
    let crl = authority.current_crl().map_err(|e| format!("the authority's CRL: {e}"))?;
    let list = authority.revocations().map_err(|e| e.to_string())?;
    let issued = authority.issued().map_err(|e| e.to_string())?;
    let mut newest = std::collections::BTreeMap::new();
    for rec in issued {
        if let Ok(id) = genesis_trust::Identity::parse(&rec.identity) {
            newest.insert(id.node().to_owned(), rec.serial);
        }
    }
    // Revoked: as an identity, or (a CRL set by hand) with its newest certificate listed.
    let mut revoked: std::collections::BTreeSet<String> =
        authority.revoked_nodes().map_err(|e| e.to_string())?.into_keys().collect();
    revoked.extend(
        newest
            .into_iter()
            .filter(|(_, serial)| Serial::from_hex(serial).is_ok_and(|s| list.contains(&s)))
            .map(|(node, _)| node),
    );
    let revoked = revoked.into_iter().collect();
    Ok(AuthorityState {
        crl_number: crl.number(),
        crl_valid_for: secs_until(crl.next_update()),
        ca_valid_for: secs_until(authority.ca().not_after()),
        revoked,
    })
}

/// Asks one member everything `status` and `check` need.
pub fn member_state(member: &Member, revoked: &BTreeSet<String>) -> MemberState {
    let mut state = MemberState {
        name: member.name.clone(),
        role: member.role.clone(),
        ready: "down".into(),
        error: None,
        revoked: revoked.contains(&member.name),
        serial: None,
        cert_expires_in: None,
        renews_in: None,
        crl_number: None,
        links: Vec::new(),
        routes: Vec::new(),
        failed_checks: Vec::new(),
    };
    let identity = match client::get_json(&member.admin, "/admin/identity") {
        Ok(v) => v,
        Err(e) => {
            state.error = Some(e);
            return state;
        }
    };
    let now = now_unix();
    state.serial = identity["serial"].as_str().map(str::to_owned);
    state.cert_expires_in = identity["notAfter"].as_f64().map(|t| t - now);
    state.renews_in = identity["renewalTime"].as_f64().map(|t| t - now);
    state.crl_number = identity["crlNumber"].as_u64();
    if let Ok(ready) = client::get_json(&member.admin, "/readyz") {
        state.ready = ready["status"].as_str().unwrap_or("unknown").to_owned();
        state.failed_checks = ready["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["ok"] == false)
            .map(|c| format!("{}: {}", output::cell(&c["name"]), output::cell(&c["detail"])))
            .collect();
    }
    if let Ok(peers) = client::get_json(&member.admin, "/admin/peers") {
        state.links = peers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["connected"] == true)
            .filter_map(|p| p["node"].as_str().map(str::to_owned))
            .collect();
    }
    if let Ok(routes) = client::get_json(&member.admin, "/admin/routes") {
        state.routes = routes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["dest"].as_str().map(str::to_owned))
            .collect();
    }
    state
}

/// Every member's state, asked in parallel.
pub fn members(manifest: &Manifest, revoked: &BTreeSet<String>) -> Vec<MemberState> {
    std::thread::scope(|s| {
        let handles: Vec<_> =
            manifest.members.iter().map(|m| s.spawn(move || member_state(m, revoked))).collect();
        handles.into_iter().map(|h| h.join().expect("member query does not panic")).collect()
    })
}

/// Why the mesh has not converged (empty when it has): every live member holds the
/// authority's CRL, routes to every other live member, and has neither link nor route to a
/// revoked one.
pub fn convergence_problems(states: &[MemberState], authority: &AuthorityState) -> Vec<String> {
    let mut problems: Vec<String> = states
        .iter()
        .filter(|s| !s.revoked && s.ready == "down")
        .map(|s| format!("{} does not answer", s.name))
        .collect();
    let live: Vec<&MemberState> =
        states.iter().filter(|s| !s.revoked && s.ready != "down").collect();
    for s in &live {
        if s.crl_number != Some(authority.crl_number) {
            problems.push(format!(
                "{} holds CRL {} but the authority published {}",
                s.name,
                s.crl_number.map_or("none".into(), |n| n.to_string()),
                authority.crl_number
            ));
        }
        let missing: Vec<&str> = live
            .iter()
            .filter(|o| o.name != s.name && !s.routes.contains(&o.name))
            .map(|o| o.name.as_str())
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{} has no route to {}", s.name, missing.join(", ")));
        }
        let still: Vec<&String> = authority
            .revoked
            .iter()
            .filter(|r| s.links.contains(r) || s.routes.contains(r))
            .collect();
        if !still.is_empty() {
            let still: Vec<&str> = still.iter().map(|r| r.as_str()).collect();
            problems.push(format!("{} still reaches revoked {}", s.name, still.join(", ")));
        }
    }
    problems
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Certificates expiring sooner than this are listed (Go duration).
    #[arg(long, default_value = "1h", value_parser = crate::duration_arg)]
    expiring_within: String,
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

pub fn status(args: &StatusArgs) -> ExitCode {
    match status_report(args) {
        Ok((value, text)) => {
            output::print(args.mesh.output, &value, || text);
            if value["running"] == false {
                return crate::fail(
                    "the mesh is not running: no member answers (start one with `genesisctl \
                     demo --keep`, or start its sidecars)",
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&e),
    }
}

fn status_report(args: &StatusArgs) -> Result<(Value, String), String> {
    let soon = genesis_trust::duration::parse_duration(&args.expiring_within)?.as_secs_f64();
    if let Some(target) = args.mesh.cluster() {
        let state = crate::cluster::block_on(async {
            let client = crate::cluster::client(&target).await?;
            crate::cluster::fetch(&client, &target.operator_namespace).await
        })??;
        return Ok(crate::cluster::status_report(&state, soon));
    }
    let manifest = Manifest::load(&args.mesh.dir())?;
    let authority = authority_state(&manifest)?;
    let states = members(&manifest, &authority.revoked);
    let problems = convergence_problems(&states, &authority);
    let live = states.iter().filter(|s| !s.revoked).count();
    let ready = states.iter().filter(|s| !s.revoked && s.ready == "healthy").count();
    let anchors: Vec<&str> =
        manifest.members.iter().filter(|m| m.role == "anchor").map(|m| m.name.as_str()).collect();
    let expiring: Vec<String> = states
        .iter()
        .filter(|s| s.cert_expires_in.is_some_and(|t| t < soon))
        .map(|s| format!("{} ({})", s.name, human_secs(s.cert_expires_in.unwrap_or(0.0))))
        .collect();
    let value = json!({
        "network": manifest.network, "trustDomain": manifest.trust_domain,
        "crlNumber": authority.crl_number, "crlValidFor": authority.crl_valid_for,
        "anchors": anchors, "members": states, "ready": ready, "live": live,
        "revoked": authority.revoked, "converged": problems.is_empty(),
        "convergenceProblems": problems, "expiringSoon": expiring,
        "running": states.iter().any(|s| s.ready != "down"),
    });
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.role.clone(),
                if s.revoked { format!("revoked ({})", s.ready) } else { s.ready.clone() },
                s.links.len().to_string(),
                s.routes.len().to_string(),
                s.crl_number.map_or("-".into(), |n| n.to_string()),
                s.cert_expires_in.map_or("-".into(), human_secs),
                s.renews_in.map_or("-".into(), human_secs),
            ]
        })
        .collect();
    let mut text = format!(
        "network {} ({})  members ready {ready}/{live}  anchors {}\nCRL number {} (valid for {})  \
         converged: {}\n",
        manifest.network,
        manifest.trust_domain,
        anchors.join(","),
        authority.crl_number,
        human_secs(authority.crl_valid_for),
        if problems.is_empty() { "yes".to_owned() } else { format!("no ({})", problems[0]) },
    );
    if !authority.revoked.is_empty() {
        let r: Vec<&str> = authority.revoked.iter().map(String::as_str).collect();
        text += &format!("revoked: {}\n", r.join(", "));
    }
    if !expiring.is_empty() {
        text += &format!(
            "certificates expiring within {}: {}\n",
            args.expiring_within,
            expiring.join(", ")
        );
    }
    text += "\n";
    text += &output::table(
        &["node", "role", "ready", "links", "routes", "crl", "cert expires", "renews"],
        &rows,
    );
    Ok((value, text))
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// The member to ask.
    node: String,
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

/// `peers NODE`: the member's known peers with reputation.
pub fn peers(args: &NodeArgs) -> ExitCode {
    table_of(
        args,
        "peers",
        "/admin/peers",
        &["node", "addr", "zone", "connected", "score", "level", "rtt_ms"],
    )
}

/// `routes NODE`: the member's selected routes with their metrics.
pub fn routes(args: &NodeArgs) -> ExitCode {
    // `area` is set on a route to another routing area as a whole (its `dest` is the member
    // of that area it leads to), "-" on a member route; `next_hop_zone`, "-" where zones are
    // not known.
    table_of(
        args,
        "routes",
        "/admin/routes",
        &["dest", "area", "next_hop", "next_hop_zone", "metric", "hops", "seqno"],
    )
}

/// `services NODE`: the services the member knows, nearest member first per name; `metric`
/// "-" where it holds no route to the member now, `expires_in_secs` "-" on its own.
pub fn services(args: &NodeArgs) -> ExitCode {
    table_of(
        args,
        "services",
        "/admin/services",
        &["name", "member", "port", "metric", "expires_in_secs"],
    )
}

fn table_of(args: &NodeArgs, command: &str, path: &str, columns: &[&str]) -> ExitCode {
    let answer = args
        .mesh
        .local_only(command)
        .and_then(|()| Manifest::load(&args.mesh.dir()))
        .and_then(|m| m.member(&args.node).cloned())
        .and_then(|m| {
            client::get_json(&m.admin, path).map_err(|e| {
                format!(
                    "{}'s admin API at {} did not answer ({e}): is the member running? \
                     (`genesisctl status` shows the whole mesh)",
                    m.name, m.admin
                )
            })
        });
    match answer {
        Ok(value) => {
            let rows: Vec<Vec<String>> = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| columns.iter().map(|c| output::cell(&row[*c])).collect())
                .collect();
            output::print(args.mesh.output, &output::camel_keys(&value), || {
                output::table(columns, &rows)
            });
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&e),
    }
}

#[derive(clap::Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

/// `version`: this client, and what it talks to: a local mesh's members (their build_info), or
/// a cluster's operator image and the installed CRDs' versions.
pub fn version(args: &VersionArgs) -> ExitCode {
    let client = env!("CARGO_PKG_VERSION");
    let mut value = json!({"client": client});
    let mut text = format!("genesisctl {client}\n");
    if let Some(target) = args.mesh.cluster() {
        let state = crate::cluster::block_on(async {
            let c = crate::cluster::client(&target).await?;
            crate::cluster::fetch(&c, &target.operator_namespace).await
        });
        match state.and_then(|s| s) {
            Ok(state) => {
                let image = state
                    .operator
                    .as_ref()
                    .and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first())
                    .and_then(|c| c.image.clone());
                let crds: serde_json::Map<String, Value> = state
                    .crds
                    .iter()
                    .map(|(name, crd)| {
                        let versions: Vec<String> = crd
                            .iter()
                            .flat_map(|c| c.spec.versions.iter())
                            .filter(|v| v.served)
                            .map(|v| v.name.clone())
                            .collect();
                        (name.clone(), json!(versions))
                    })
                    .collect();
                text +=
                    &format!("operator image {}\n", image.as_deref().unwrap_or("(not installed)"));
                for (name, versions) in &crds {
                    text += &format!("CRD {name}: {}\n", output::cell(versions));
                }
                value["operatorImage"] = json!(image);
                value["crds"] = Value::Object(crds);
            }
            Err(e) => return crate::fail(&e),
        }
    } else if let Ok(manifest) = Manifest::load(&args.mesh.dir()) {
        let members: serde_json::Map<String, Value> = manifest
            .members
            .iter()
            .map(|m| {
                let version = client::metrics(&m.admin).ok().and_then(|series| {
                    series.into_iter().find_map(|(name, _)| {
                        let rest = name.strip_prefix("genesis_sidecar_build_info{version=\"")?;
                        Some(rest.split('"').next()?.to_owned())
                    })
                });
                (m.name.clone(), json!(version))
            })
            .collect();
        for (name, v) in &members {
            text += &format!("{name} {}\n", v.as_str().unwrap_or("(down)"));
        }
        value["members"] = Value::Object(members);
    }
    output::print(args.mesh.output, &value, || text);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, crl: u64, routes: &[&str], links: &[&str]) -> MemberState {
        MemberState {
            name: name.into(),
            role: "client".into(),
            ready: "healthy".into(),
            error: None,
            revoked: false,
            serial: None,
            cert_expires_in: Some(3600.0),
            renews_in: Some(1800.0),
            crl_number: Some(crl),
            links: links.iter().map(|s| s.to_string()).collect(),
            routes: routes.iter().map(|s| s.to_string()).collect(),
            failed_checks: vec![],
        }
    }

    fn authority(crl: u64, revoked: &[&str]) -> AuthorityState {
        AuthorityState {
            crl_number: crl,
            crl_valid_for: 3600.0,
            ca_valid_for: 1e8,
            revoked: revoked.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_converged_mesh_has_no_problems_and_revoked_members_are_not_expected() {
        let mut c = member("c", 2, &[], &[]);
        c.revoked = true;
        let states = vec![member("a", 2, &["b"], &["b"]), member("b", 2, &["a"], &["a"]), c];
        assert!(convergence_problems(&states, &authority(2, &["c"])).is_empty());
    }

    #[test]
    fn stale_crls_missing_routes_and_reachable_revoked_members_are_each_named() {
        let states = vec![member("a", 1, &["c"], &["c"]), member("b", 2, &[], &[])];
        let problems = convergence_problems(&states, &authority(2, &["c"]));
        assert!(problems.contains(&"a holds CRL 1 but the authority published 2".to_owned()));
        assert!(problems.contains(&"a has no route to b".to_owned()), "{problems:?}");
        assert!(problems.contains(&"a still reaches revoked c".to_owned()));
        assert!(problems.contains(&"b has no route to a".to_owned()));
    }
}
