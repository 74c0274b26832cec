//! Helpers for the end-to-end tests: a real `genesis-operator local` authority and real
//! `genesis-sidecar` processes on their own 127.x.y.z addresses, plus a tiny HTTP client.
//!
//! Every test gets its own /24 of the loopback range (127.<n>.<m>.0), so tests run in
//! parallel without port clashes. Processes are killed when their handle drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// Paths of the binaries under test.
pub struct Binaries {
    pub sidecar: PathBuf,
    pub operator: PathBuf,
    pub genesisctl: PathBuf,
}

/// Builds the binaries once per process (cheap when they are up to date), in the profile of
/// the running binary: debug for tests, release for the benchmark.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = !cfg!(debug_assertions);
        let mut cmd = Command::new(cargo);
        // NB: the same command scripts/test.sh runs first, so features resolve identically and
        // this is a no-op there instead of a second build of the dependencies.
        cmd.current_dir(&root).args(["build", "--workspace", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo runs").success(), "building the binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        let dir = target.join(if release { "release" } else { "debug" });
        Binaries {
            // A/B benchmarks of two builds in one session: point this at the other sidecar.
            sidecar: std::env::var_os("GENESIS_E2E_SIDECAR")
                .map_or_else(|| dir.join("genesis-sidecar"), PathBuf::from),
            operator: dir.join("genesis-operator"),
            genesisctl: dir.join("genesisctl"),
        }
    })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}

/// Renders the chart with the real Helm engine (scripts/chart.py, helm-python-sdk) and `values`;
/// returns its answer: `manifests` (template → text), `crds`, `lint`.
pub fn render_chart(values: &Value) -> Value {
    let root = workspace_root();
    let python = std::env::var("GENESIS_CHART_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(root.join("scripts/chart.py"))
        .arg(root.join("charts/genesis-mesh"))
        .arg(values.to_string())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        out.status.success(),
        "rendering failed (bash scripts/test.sh installs helm-python-sdk and sets \
         GENESIS_CHART_PYTHON):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("chart.py answers JSON")
}

/// A /24 of loopback addresses for one test.
pub struct Subnet {
    prefix: String,
}

impl Subnet {
    /// The next unused 127.x.y.0/24 in this test process (offset by the process id, so two
    /// test binaries running at once do not collide either).
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 64;
        Subnet { prefix: format!("127.{}.{}", 1 + (n / 250) % 250, 1 + n % 250) }
    }

    /// Host `i` (1-based) of the subnet.
    pub fn ip(&self, i: u8) -> String {
        format!("{}.{}", self.prefix, i)
    }
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet::new()
    }
}

/// A running `genesis-operator local`.
pub struct Authority {
    pub dir: tempfile::TempDir,
    pub network: String,
    pub addr: String,
    /// Where the operator serves Prometheus metrics.
    pub metrics: String,
    child: Option<Child>,
}

impl Authority {
    pub fn start(subnet: &Subnet, network: &str, cert_duration: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let metrics = format!("{}:9090", subnet.ip(250));
        let child = Self::spawn(
            dir.path(),
            &format!("{}:0", subnet.ip(250)),
            &metrics,
            network,
            cert_duration,
        );
        let addr_file = dir.path().join("identity-service.addr");
        wait_for(Duration::from_secs(20), "the identity service to listen", || addr_file.exists());
        let addr = std::fs::read_to_string(addr_file).unwrap();
        Authority { dir, network: network.into(), addr, metrics, child: Some(child) }
    }

    fn spawn(dir: &Path, listen: &str, metrics: &str, network: &str, cert_duration: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("operator.log"))
            .unwrap();
        Command::new(&binaries().operator)
            .args(["local", "--listen", listen, "--metrics-listen", metrics])
            .arg("--dir")
            .arg(dir)
            .args([
                "--trust-domain",
                "test.local",
                "--network",
                network,
                "--cert-duration",
                cert_duration,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("genesis-operator starts")
    }

    /// Stops the identity service (the authority's files stay).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the identity service again on the same address and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.child =
            Some(Self::spawn(self.dir.path(), &self.addr, &self.metrics, &self.network, "24h"));
        let addr = self.addr.clone();
        wait_for(Duration::from_secs(20), "the identity service to listen again", || {
            TcpStream::connect(&addr).is_ok()
        });
    }

    /// A one-time join token (through the real CLI).
    pub fn token(&self, node: &str, role: &str) -> String {
        let out = Command::new(&binaries().operator)
            .args(["local", "token", "--node", node, "--role", role])
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn revoke(&self, node: &str) {
        let out = Command::new(&binaries().operator)
            .args(["local", "revoke", "--node", node])
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options for one sidecar.
#[derive(Clone)]
pub struct SidecarOptions {
    pub anchors: Vec<String>,
    pub min_peers: usize,
    pub max_peers: usize,
    pub allowed_ports: Vec<u16>,
    pub role: &'static str,
    pub extra: Vec<String>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            anchors: Vec::new(),
            min_peers: 1,
            max_peers: 8,
            allowed_ports: vec![],
            role: "client",
            extra: vec![],
        }
    }
}

/// A running `genesis-sidecar`.
pub struct Sidecar {
    pub node: String,
    pub ip: String,
    pub peer: String,
    pub api: String,
    pub admin: String,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Sidecar {
    /// Starts a sidecar at `ip` with a fresh token; returns once its admin API answers.
    pub fn start(authority: &Authority, node: &str, ip: &str, opts: &SidecarOptions) -> Self {
        let token = authority.token(node, opts.role);
        Self::start_with_token(authority, node, ip, opts, &token)
    }

    /// Starts a sidecar with `token`; returns once its admin API answers.
    pub fn start_with_token(
        authority: &Authority,
        node: &str,
        ip: &str,
        opts: &SidecarOptions,
        token: &str,
    ) -> Self {
        let mut s = Self::spawn(authority, node, ip, opts, token);
        s.wait_ready();
        s
    }

    /// Starts the process and returns at once (it may fail to start: see [`Sidecar::exited`]).
    pub fn spawn(
        authority: &Authority,
        node: &str,
        ip: &str,
        opts: &SidecarOptions,
        token: &str,
    ) -> Self {
        let peer = format!("{ip}:7000");
        let api = format!("{ip}:7001");
        let admin = format!("{ip}:7002");
        let log = authority.dir.path().join(format!("{node}.log"));
        let ports: Vec<String> = opts.allowed_ports.iter().map(u16::to_string).collect();
        let mut args: Vec<String> = [
            "--node",
            node,
            "--role",
            opts.role,
            "--network",
            &authority.network,
            "--trust-domain",
            "test.local",
            "--identity-service",
            &authority.addr,
            "--join-token",
            token,
            "--trust-bundle",
            &authority.bundle_path().display().to_string(),
            "--listen",
            &peer,
            "--api-listen",
            &api,
            "--admin-listen",
            &admin,
            "--app-host",
            ip,
            "--min-peers",
            &opts.min_peers.to_string(),
            "--max-peers",
            &opts.max_peers.to_string(),
            "--audit-log",
            &authority.dir.path().join(format!("{node}.audit.jsonl")).display().to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        // Snappy timers, so tests do not wait on the defaults; `extra` may set its own.
        for (flag, value) in SNAPPY_TIMERS {
            if !opts.extra.iter().any(|a| a == flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        if !opts.anchors.is_empty() {
            args.extend(["--anchors".to_owned(), opts.anchors.join(",")]);
        }
        if !ports.is_empty() {
            args.extend(["--allowed-ports".to_owned(), ports.join(",")]);
        }
        args.extend(opts.extra.iter().cloned());
        let mut s =
            Sidecar { node: node.into(), ip: ip.into(), peer, api, admin, log, args, child: None };
        s.spawn_again();
        s
    }

    fn spawn_again(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&binaries().sidecar)
            .args(&self.args)
            .env("RUST_LOG", std::env::var("GENESIS_SIDECAR_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("genesis-sidecar starts");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let what = format!("{}'s admin API", self.node);
        let start = Instant::now();
        while http(&self.admin, "GET", "/healthz", b"").is_err() {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}) before serving:\n{}", self.node, self.log_text());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (as a crash would) and starts it again with the very same command
    /// line, join token included; returns once its admin API answers.
    pub fn restart_same_command(&mut self) {
        self.kill();
        self.spawn_again();
        self.wait_ready();
    }

    /// The sidecar's admin JSON at `path`.
    pub fn admin_json(&self, path: &str) -> Value {
        let (_, body) = http(&self.admin, "GET", path, b"").unwrap();
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }

    /// Reachable destinations.
    pub fn routes(&self) -> Vec<String> {
        self.admin_json("/admin/routes")
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["dest"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// One metric's value (sum over label sets matching `labels`, e.g. `reason="no_route"`).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = http(&self.admin, "GET", "/metrics", b"").unwrap();
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b'{')
                        || l.as_bytes().get(name.len()) == Some(&b' '))
            })
            .filter(|l| labels.is_empty() || l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends a message through the app API; returns (status, body).
    pub fn send(&self, to: &str, body: &[u8]) -> (u16, Value) {
        let (status, resp) =
            http(&self.api, "POST", &format!("/v1/messages/{to}"), body).unwrap_or((0, Vec::new()));
        (status, serde_json::from_slice(&resp).unwrap_or(Value::Null))
    }

    /// Messages received so far.
    pub fn inbox(&self, wait_ms: u64) -> Vec<Value> {
        let (_, resp) =
            http(&self.api, "GET", &format!("/v1/messages?wait={wait_ms}"), b"").unwrap();
        serde_json::from_slice::<Vec<Value>>(&resp).unwrap_or_default()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the process (no drain), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        c.wait().unwrap()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory in KiB (Linux /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The sidecar's stderr, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ok` every 50 ms until it holds; panics naming `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let addr: SocketAddr = addr.parse().map_err(|e| std::io::Error::other(format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = resp[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 4 + size..];
    }
    out
}

/// A one-shot HTTP server that answers every request with `body` (the "app beside a pod").
pub fn serve_page(addr: &str, body: &'static str) -> std::thread::JoinHandle<()> {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

/// An echo server beside a member (the "app"): answers every byte it gets and keeps each
/// connection open.
pub fn serve_echo(addr: &str) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                // An echo answers at once: Nagle's algorithm would hold a reply's tail until
                // the last one is acknowledged, a delayed ACK away.
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 16384];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Asks the CONNECT proxy at `api` for a tunnel to `target`; the socket and the proxy's answer
/// head (status line and headers), or the error that cut the exchange short.
pub fn connect_tunnel(api: &str, target: &str) -> std::io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect(api)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("the proxy closed before its answer"));
        }
        head.push(byte[0]);
    }
    Ok((s, String::from_utf8_lossy(&head).into_owned()))
}

/// The body of a proxy's refusal whose `head` [`connect_tunnel`] returned (by its
/// Content-Length: the connection stays open after it).
pub fn answer_body(s: &mut TcpStream, head: &str) -> String {
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    String::from_utf8_lossy(&body).into_owned()
}

/// A hand-driven peer for hostile tests: real mutual TLS with whatever certificate it is
/// given, then raw frames.
pub struct RawPeer {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl RawPeer {
    /// Connects to `addr` presenting `chain`/`key`; the sidecar is checked against `bundle_pem`.
    pub fn connect(
        addr: &str,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: &genesis_trust::PrivateKey,
        bundle_pem: &str,
        network: &str,
    ) -> Result<RawPeer, String> {
        let store = std::sync::Arc::new(genesis_trust::TrustStore::new(
            genesis_trust::TrustPolicy {
                trust_domain: "test.local".into(),
                network: Some(network.into()),
                require_fresh_crl: false,
            },
            genesis_trust::TrustBundle::from_pem(bundle_pem).map_err(|e| e.to_string())?,
        ));
        let config =
            genesis_trust::tls::peer_client_config(store, chain, key).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("peer.genesis-mesh.invalid").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake to completion (the server's verdict on our certificate arrives
        // with its first records).
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
        }
        Ok(RawPeer { tls })
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Sends a frame.
    pub fn send(&mut self, frame: &genesis_sidecar::frame::Frame) -> std::io::Result<()> {
        self.send_raw(&frame.encode())
    }

    /// Reads until the sidecar closes the link (or `limit` passes); returns whether it closed.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        let mut buf = [0u8; 16 * 1024];
        while start.elapsed() < limit {
            match self.tls.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// The timers a test sidecar runs with unless its options set others.
const SNAPPY_TIMERS: [(&str, &str); 4] = [
    ("--hello-interval", "200ms"),
    ("--hold-time", "1s"),
    ("--periodic-update-interval", "2s"),
    ("--exchange-interval", "1s"),
];

/// `n` members in a sparse random (seeded, so reproducible) topology: each bootstraps from one
/// or two earlier members and keeps 2 to 4 links. Past 50 members they run the sidecar's
/// default timers, as the demo does: with a hold time of 1 s, 200 members sharing two cores
/// lose links to their own CPU starvation.
pub fn sparse_mesh(auth: &Authority, net: &Subnet, n: u8, seed: u64) -> Vec<Sidecar> {
    let mut state = seed;
    let mut rand = move |below: u8| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(below)) as u8
    };
    (0..n)
        .map(|i| {
            let mut anchors = Vec::new();
            if i > 0 {
                anchors.push(format!("{}:7000", net.ip(rand(i) + 1)));
                if i > 2 {
                    let other = format!("{}:7000", net.ip(rand(i) + 1));
                    if !anchors.contains(&other) {
                        anchors.push(other);
                    }
                }
            }
            let extra = if n > 50 {
                let defaults = ["--hello-interval", "1s", "--hold-time", "3s"];
                let more = ["--periodic-update-interval", "10s", "--exchange-interval", "10s"];
                defaults.iter().chain(&more).map(|a| a.to_string()).collect()
            } else {
                Vec::new()
            };
            let opts =
                SidecarOptions { anchors, min_peers: 2, max_peers: 4, extra, ..Default::default() };
            Sidecar::start(auth, &format!("m{i}"), &net.ip(i + 1), &opts)
        })
        .collect()
}

/// Two members, `b` bootstrapped from `a`, linked and routing to each other.
pub fn linked_pair(auth: &Authority, net: &Subnet) -> (Sidecar, Sidecar) {
    let opts = SidecarOptions { min_peers: 1, max_peers: 4, ..Default::default() };
    let a = Sidecar::start(auth, "a", &net.ip(1), &opts);
    let b_opts = SidecarOptions { anchors: vec![format!("{}:7000", net.ip(1))], ..opts };
    let b = Sidecar::start(auth, "b", &net.ip(2), &b_opts);
    wait_for(Duration::from_secs(20), "a and b to link", || {
        a.routes() == ["b"] && b.routes() == ["a"]
    });
    (a, b)
}
