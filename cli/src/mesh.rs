//! A local mesh on this machine: a file-backed Network Authority and sidecar processes on
//! 127.0.0.0/8, described by `mesh.json` in the mesh directory so the everyday commands
//! (`status`, `peers`, `check`, ...) can find it.
//!
//! The processes are this very binary (`genesisctl internal-operator ...` and
//! `genesisctl internal-sidecar ...`), so `cargo run -p genesisctl -- demo` needs nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genesis_operator::local::LocalAuthority;
use genesis_trust::{create_csr, Identity, KeyAlgorithm, PrivateKey, Role};
use serde::{Deserialize, Serialize};

use crate::client;

/// The manifest's file name in a mesh directory.
pub const MANIFEST: &str = "mesh.json";
/// Peer, app API and admin ports of every member (each member has its own address).
pub const PEER_PORT: u16 = 7000;
pub const API_PORT: u16 = 7001;
pub const ADMIN_PORT: u16 = 7002;
/// The port of the demo's web page beside each member, allowed through tunnels.
pub const APP_PORT: u16 = 8080;
/// The zones a local mesh's members are spread over, round robin (as pods over a cluster's
/// zones): links across them cost more, so traffic between members of one zone stays in it.
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// Member `i`'s zone.
pub fn zone_of(i: usize) -> &'static str {
    ZONES[i % ZONES.len()]
}

/// What `mesh.json` says about one member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    pub role: String,
    pub ip: String,
    pub peer: String,
    pub api: String,
    pub admin: String,
    pub anchors: Vec<String>,
    pub log: PathBuf,
    pub audit: PathBuf,
}

/// `mesh.json`: everything a command needs to find a local mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub network: String,
    pub trust_domain: String,
    pub authority_dir: PathBuf,
    pub identity_service: String,
    /// An admin principal's certificate chain and key, for signed control messages.
    pub principal_cert: PathBuf,
    pub principal_key: PathBuf,
    /// The process that keeps the mesh running (`genesisctl demo --keep`).
    pub supervisor_pid: u32,
    pub members: Vec<Member>,
}

impl Manifest {
    /// Reads `DIR/mesh.json`, with an error that says what to do.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no local mesh at {} ({e}); start one with `genesisctl demo --keep` or pass \
                 --mesh DIR",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{} is corrupt: {e}", path.display()))
    }

    pub fn member(&self, name: &str) -> Result<&Member, String> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            format!("no member {name} in this mesh; members are {}", names.join(", "))
        })
    }

    pub fn authority(&self) -> Result<LocalAuthority, String> {
        LocalAuthority::open(&self.authority_dir).map_err(|e| {
            format!("cannot open the authority at {}: {e}", self.authority_dir.display())
        })
    }
}

/// The default mesh directory: `$GENESIS_MESH`, else `<tmp>/genesis-demo`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("GENESIS_MESH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("genesis-demo"))
}

/// How members find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Each member bootstraps from one or two earlier members and keeps 2 to 4 links
    /// (seeded, so a run is reproducible).
    Sparse,
    /// A chain: member i links to i-1 and i+1 only.
    Line,
    /// One hub (m0) linked to every other member; the others link to the hub only.
    Star,
}

/// (anchors as member indexes, min peers, max peers) of member `i` of `n`.
pub fn plan(topology: Topology, n: usize, seed: u64) -> Vec<(Vec<usize>, usize, usize)> {
    let mut state = seed.max(1);
    let mut rand = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    (0..n)
        .map(|i| match topology {
            Topology::Sparse => {
                let mut anchors = Vec::new();
                if i > 0 {
                    anchors.push(rand(i));
                    if i > 2 {
                        let other = rand(i);
                        if !anchors.contains(&other) {
                            anchors.push(other);
                        }
                    }
                }
                (anchors, 2.min(n - 1), 4)
            }
            Topology::Line => (if i == 0 { vec![] } else { vec![i - 1] }, 1, 2),
            Topology::Star if i == 0 => (vec![], 1, n - 1),
            Topology::Star => (vec![0], 1, 1),
        })
        .collect()
}

/// The sidecars' timers for a mesh of `n` members on one machine. Up to 50, snappy ones:
/// failures show within a second. Beyond, the sidecar's defaults: every member on the same
/// few cores sends a ping per link per hello and its whole table per periodic update, and at
/// 200 members the snappy timers alone kept two cores busy.
pub fn timers(n: usize) -> [&'static str; 8] {
    let (hello, hold, periodic, exchange) =
        if n <= 50 { ("200ms", "1s", "2s", "1s") } else { ("1s", "3s", "10s", "10s") };
    [
        "--hello-interval",
        hello,
        "--hold-time",
        hold,
        "--periodic-update-interval",
        periodic,
        "--exchange-interval",
        exchange,
    ]
}

/// The sidecars' hop limit for `n` members laid out as `topology`: the default 16, or the
/// line's length (its longest path is n - 1 hops), up to the sidecar's ceiling of 64.
pub fn hop_limit(topology: Topology, n: usize) -> Result<u8, String> {
    const DEFAULT: usize = 16;
    const CEILING: usize = 64;
    let longest = match topology {
        Topology::Line => n.saturating_sub(1),
        Topology::Sparse | Topology::Star => 0,
    };
    if longest > CEILING {
        return Err(format!(
            "a line of {n} members has a longest path of {longest} hops, over the hop limit of \
             {CEILING}; use --nodes {} or fewer, or --topology sparse",
            CEILING + 1
        ));
    }
    Ok(longest.max(DEFAULT) as u8)
}

/// Child processes that must not outlive us: killed on drop, and by the signal handler.
#[derive(Debug, Default, Clone)]
pub struct Children(Arc<Mutex<Vec<(String, Child)>>>);

impl Children {
    pub fn push(&self, name: &str, child: Child) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_owned(), child));
    }

    /// SIGTERM to every child (graceful drain), then SIGKILL after `grace`; returns how many
    /// were still running afterwards (0 unless the kernel refused to kill one).
    pub fn stop_all(&self, grace: Duration) -> usize {
        let mut children = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in children.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, c) in children.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let mut left = 0;
        for (_, c) in children.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                left += 1;
            }
        }
        children.clear();
        left
    }

    /// Names of children that exited on their own (a crash, a refused join).
    pub fn exited(&self) -> Vec<(String, String)> {
        let mut children = self.0.lock().unwrap_or_else(|p| p.into_inner());
        children
            .iter_mut()
            .filter_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (n.clone(), s.to_string())))
            .collect()
    }

    /// Collects children that exited (so none lingers as a zombie) and forgets them; returns
    /// their names and exit statuses.
    pub fn reap(&self) -> Vec<(String, String)> {
        let mut children = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        children.retain_mut(|(n, c)| match c.try_wait() {
            Ok(Some(status)) => {
                gone.push((n.clone(), status.to_string()));
                false
            }
            _ => true,
        });
        gone
    }

    pub fn pids(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, c)| c.id()).collect()
    }
}

impl Drop for Children {
    /// Whoever drops a handle first stops them all (a panicking demo included); stopping
    /// twice is harmless.
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(2));
    }
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub dir: PathBuf,
    /// Member addresses are `<subnet>.<i+1>`, the authority `<subnet>.250`.
    pub subnet: String,
    pub nodes: usize,
    pub topology: Topology,
    pub seed: u64,
    pub network: String,
    pub trust_domain: String,
    pub cert_duration: String,
    pub crl_validity: String,
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))
}

fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Waits until `ok` holds, polling every 25 ms; Err(what) after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// Starts the authority (identity service) and writes an admin principal for control messages.
pub fn start_authority(spec: &LaunchSpec, children: &Children) -> Result<Manifest, String> {
    let auth_dir = spec.dir.join("authority");
    let listen = format!("{}.250:0", spec.subnet);
    let child = Command::new(exe()?)
        .args(["internal-operator", "local", "--listen", &listen])
        .arg("--dir")
        .arg(&auth_dir)
        .args(["--trust-domain", &spec.trust_domain, "--network", &spec.network])
        .args(["--cert-duration", &spec.cert_duration, "--crl-validity", &spec.crl_validity])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(&spec.dir.join("authority.log"))?)
        .spawn()
        .map_err(|e| format!("cannot start the authority: {e}"))?;
    children.push("authority", child);
    let addr_file = auth_dir.join("identity-service.addr");
    wait_until(Duration::from_secs(20), "the identity service to listen", || {
        addr_file.exists() || !children.exited().is_empty()
    })?;
    if let Some((_, status)) = children.exited().first() {
        let log = std::fs::read_to_string(spec.dir.join("authority.log")).unwrap_or_default();
        return Err(format!("the authority exited ({status}): {}", last_line(&log)));
    }
    let identity_service = std::fs::read_to_string(&addr_file).map_err(|e| e.to_string())?;
    let authority = LocalAuthority::open(&auth_dir).map_err(|e| e.to_string())?;
    let (principal_cert, principal_key) =
        write_principal(&authority, &spec.dir, Role::Admin, "genesisctl-admin")?;
    Ok(Manifest {
        network: spec.network.clone(),
        trust_domain: spec.trust_domain.clone(),
        authority_dir: auth_dir,
        identity_service,
        principal_cert,
        principal_key,
        supervisor_pid: std::process::id(),
        members: Vec::new(),
    })
}

/// Issues a principal certificate (for signing control messages) into `dir/<node>.crt|.key`.
pub fn write_principal(
    authority: &LocalAuthority,
    dir: &Path,
    role: Role,
    node: &str,
) -> Result<(PathBuf, PathBuf), String> {
    let config = authority.config();
    let id = Identity::new(&config.trust_domain, &config.network, role, node)
        .map_err(|e| e.to_string())?;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| e.to_string())?;
    let csr = create_csr(&id, &key).map_err(|e| e.to_string())?;
    let issued = authority.issue(&csr, &id).map_err(|e| e.to_string())?;
    let cert = dir.join(format!("{node}.crt"));
    let key_path = dir.join(format!("{node}.key"));
    std::fs::write(&cert, genesis_trust::certs_to_pem(&issued.chain))
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    write_secret(&key_path, key.to_pem().as_bytes())?;
    Ok((cert, key_path))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn last_line(text: &str) -> &str {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)")
}

/// Starts member `i` with a fresh one-time join token.
pub fn start_member(
    spec: &LaunchSpec,
    manifest: &Manifest,
    children: &Children,
    i: usize,
    anchors: &[usize],
    min_peers: usize,
    max_peers: usize,
) -> Result<Member, String> {
    let name = format!("m{i}");
    let role = if anchors.is_empty() || i < 2 { Role::Anchor } else { Role::Client };
    let ip = format!("{}.{}", spec.subnet, i + 1);
    let token = manifest
        .authority()?
        .create_token(&name, role)
        .map_err(|e| format!("cannot make a join token for {name}: {e}"))?;
    let member = Member {
        name: name.clone(),
        role: role.to_string(),
        peer: format!("{ip}:{PEER_PORT}"),
        api: format!("{ip}:{API_PORT}"),
        admin: format!("{ip}:{ADMIN_PORT}"),
        anchors: anchors.iter().map(|a| format!("{}.{}:{PEER_PORT}", spec.subnet, a + 1)).collect(),
        log: spec.dir.join(format!("{name}.log")),
        audit: spec.dir.join(format!("{name}.audit.jsonl")),
        ip,
    };
    let mut cmd = Command::new(exe()?);
    cmd.arg("internal-sidecar")
        .args(["--node", &name, "--role", &member.role, "--network", &manifest.network])
        .args(["--trust-domain", &manifest.trust_domain])
        .args(["--identity-service", &manifest.identity_service, "--join-token", &token])
        .arg("--trust-bundle")
        .arg(manifest.authority_dir.join("ca.crt"))
        .args(["--listen", &member.peer, "--api-listen", &member.api])
        .args(["--admin-listen", &member.admin, "--app-host", &member.ip])
        .args(["--allowed-ports", &APP_PORT.to_string()])
        .args(["--zone", zone_of(i)])
        .args(["--min-peers", &min_peers.to_string(), "--max-peers", &max_peers.to_string()])
        .args(["--max-hops", &hop_limit(spec.topology, spec.nodes)?.to_string()])
        .args(timers(spec.nodes))
        .arg("--audit-log")
        .arg(&member.audit);
    if !member.anchors.is_empty() {
        cmd.args(["--anchors", &member.anchors.join(",")]);
    }
    let child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(&member.log)?)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    children.push(&name, child);
    Ok(member)
}

/// Waits until `member` answers on its admin API (it has joined: it holds a certificate).
pub fn wait_joined(member: &Member, children: &Children, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if client::get_json(&member.admin, "/admin/identity").is_ok() {
            return Ok(());
        }
        if let Some((_, status)) = children.exited().iter().find(|(n, _)| *n == member.name) {
            let log = std::fs::read_to_string(&member.log).unwrap_or_default();
            return Err(format!("{} exited ({status}): {}", member.name, last_line(&log)));
        }
        if start.elapsed() > limit {
            return Err(format!(
                "{} did not join within {limit:?}; see {}",
                member.name,
                member.log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Writes the manifest (atomically: a reader never sees half of it).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), String> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let text = serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_children_are_reaped_not_left_as_zombies() {
        let children = Children::default();
        let quick = Command::new("true").spawn().unwrap();
        let pid = quick.id();
        children.push("quick", quick);
        children.push("slow", Command::new("sleep").arg("30").spawn().unwrap());
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten()
        };
        wait_until(Duration::from_secs(5), "the quick child to exit", || state() == Some('Z'))
            .unwrap();
        let gone = children.reap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "quick");
        assert_eq!(state(), None, "the zombie is gone");
        assert_eq!(children.pids().len(), 1, "the running child is kept");
        assert_eq!(children.stop_all(Duration::from_secs(2)), 0);
    }

    #[test]
    fn every_plan_bootstraps_each_member_from_an_earlier_one() {
        for topology in [Topology::Sparse, Topology::Line, Topology::Star] {
            for n in [2, 3, 5, 12, 50] {
                let plan = plan(topology, n, 7);
                assert_eq!(plan.len(), n);
                assert!(plan[0].0.is_empty(), "the first member has no one to dial");
                for (i, (anchors, min, max)) in plan.iter().enumerate().skip(1) {
                    assert!(!anchors.is_empty(), "{topology:?} member {i} is isolated");
                    assert!(anchors.iter().all(|&a| a < i), "{topology:?} dials a later member");
                    assert!(min <= max && *min >= 1);
                }
            }
        }
    }

    #[test]
    fn a_line_chains_and_a_star_hangs_off_its_hub() {
        assert_eq!(plan(Topology::Line, 5, 1)[4].0, vec![3]);
        let star = plan(Topology::Star, 5, 1);
        assert_eq!(star[0], (vec![], 1, 4));
        assert!(star[1..].iter().all(|p| *p == (vec![0], 1, 1)));
    }
}
