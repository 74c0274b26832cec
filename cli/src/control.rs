//! `genesisctl control VERB`: sign a control message with a principal certificate and inject it
//! at one member, which verifies it (signature, chain, revocation, freshness, RBAC, replay),
//! floods it, and reports the addressed members' acknowledgements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use genesis_trust::{ControlEnvelope, EnvelopeSigner, PrivateKey, Scope, Verb};
use serde_json::{json, Value};

use crate::client;
use crate::mesh::Manifest;
use crate::output::{self};

#[derive(clap::Args)]
pub struct ControlArgs {
    /// drain, shutdown, route-reset, log-level or policy-update.
    verb: Verb,
    /// Who obeys: `network`, `node/<name>` or `role/<role>`.
    #[arg(long, default_value = "network")]
    scope: Scope,
    /// Verb arguments, e.g. `--arg level=debug` for log-level.
    #[arg(long = "arg", value_parser = parse_arg)]
    args: Vec<(String, String)>,
    /// The member to inject at (default: the first member not addressed by the scope, else
    /// the first member).
    #[arg(long)]
    via: Option<String>,
    /// The principal's certificate chain (PEM); default: the mesh's admin principal.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The principal's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// How long to wait for acknowledgements (Go duration).
    #[arg(long, default_value = "5s", value_parser = crate::duration_arg)]
    wait: String,
    #[command(flatten)]
    pub mesh: crate::MeshArgs,
}

fn parse_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// The principal at `cert`/`key` as an envelope signer.
pub fn signer(cert: &std::path::Path, key: &std::path::Path) -> Result<EnvelopeSigner, String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let chain = genesis_trust::certs_from_pem(&read(cert)?)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKey::from_pem(&read(key)?).map_err(|e| format!("{}: {e}", key.display()))?;
    EnvelopeSigner::new(key, chain).map_err(|e| format!("the principal cannot sign: {e}"))
}

/// A signed envelope's wire form.
pub fn sign(
    signer: &EnvelopeSigner,
    network: &str,
    verb: Verb,
    scope: Scope,
    args: BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let env = ControlEnvelope::new(network, verb, scope, args, SystemTime::now())
        .map_err(|e| e.to_string())?;
    Ok(signer.sign(&env).map_err(|e| e.to_string())?.encode())
}

/// Injects `wire` at the member with admin address `admin`; (HTTP status, answer).
pub fn inject(
    admin: &str,
    wire: &[u8],
    expect: usize,
    wait: Duration,
) -> Result<(u16, Value), String> {
    let path = format!("/admin/control?expect={expect}&wait={}", wait.as_millis());
    client::post_json(admin, &path, wire, wait + Duration::from_secs(5))
}

pub fn run(args: &ControlArgs) -> ExitCode {
    match control(args) {
        Ok((ok, value, text)) => {
            output::print(args.mesh.output, &value, || text);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => crate::fail(&e),
    }
}

fn control(args: &ControlArgs) -> Result<(bool, Value, String), String> {
    args.mesh.local_only("control (injected at a member's /admin/control)")?;
    let manifest = Manifest::load(&args.mesh.dir())?;
    let wait = genesis_trust::duration::parse_duration(&args.wait)?;
    let (cert, key) = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (manifest.principal_cert.clone(), manifest.principal_key.clone()),
    };
    let signer = signer(&cert, &key)?;
    let roles: BTreeMap<&str, genesis_trust::Role> = manifest
        .members
        .iter()
        .filter_map(|m| Some((m.name.as_str(), m.role.parse().ok()?)))
        .collect();
    let addressed = |name: &str| match &args.scope {
        Scope::Network => true,
        Scope::Node(n) => n == name,
        Scope::Role(r) => roles.get(name) == Some(r),
    };
    let expect = manifest.members.iter().filter(|m| addressed(&m.name)).count();
    if expect == 0 {
        let names: Vec<&str> = manifest.members.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "the scope {} addresses no member of this mesh (members: {}); check the name or role",
            args.scope,
            names.join(", ")
        ));
    }
    let via = match &args.via {
        Some(name) => manifest.member(name)?,
        None => manifest
            .members
            .iter()
            .find(|m| !addressed(&m.name))
            .or(manifest.members.first())
            .ok_or("the mesh has no members")?,
    };
    let wire = sign(
        &signer,
        &manifest.network,
        args.verb,
        args.scope.clone(),
        args.args.iter().cloned().collect(),
    )?;
    let (status, answer) = inject(&via.admin, &wire, expect, wait)?;
    if status == 403 {
        let text = format!(
            "refused at {}: {} (rule {})\n",
            via.name,
            answer["error"].as_str().unwrap_or("?"),
            answer["rule"].as_str().unwrap_or("?")
        );
        return Ok((false, json!({"accepted": false, "via": via.name, "answer": answer}), text));
    }
    if status != 202 {
        return Err(format!("{} answered {status}: {answer}", via.name));
    }
    let acks = answer["acks"].as_array().cloned().unwrap_or_default();
    let applied = acks.iter().filter(|a| a["applied"] == true).count();
    let rows: Vec<Vec<String>> = acks
        .iter()
        .map(|a| {
            vec![output::cell(&a["node"]), output::cell(&a["applied"]), output::cell(&a["detail"])]
        })
        .collect();
    let text = format!(
        "{} {} accepted at {} by rule {}; {applied}/{expect} addressed members applied it\n{}",
        args.verb,
        args.scope,
        via.name,
        answer["rule"].as_str().unwrap_or("?"),
        output::table(&["node", "applied", "detail"], &rows)
    );
    let ok = applied == expect;
    let value = json!({
        "accepted": true, "via": via.name, "verb": args.verb.to_string(),
        "scope": args.scope.to_string(), "rule": answer["rule"], "expected": expect,
        "applied": applied, "acks": acks, "ok": ok,
    });
    Ok((ok, value, text))
}
