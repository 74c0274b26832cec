//! Data-plane benchmark, every figure beside its baselines from the same run: direct TCP, a
//! stunnel4 mutual-TLS tunnel (Debian's stunnel4, certificates from the same CA), and Genesis
//! Mesh tunnels through the CONNECT proxy: 1 hop direct (the link's mutual TLS only), 1 hop
//! with end-to-end TLS inside the link's (a neighbour with `--direct-streams false`), and 3
//! hops (end-to-end TLS inside hop-by-hop TLS). Our own load generator, then iperf3 (needs
//! iperf3 and socat; skipped without) through upstream ports (`--upstream`: host and port, as
//! it reaches stunnel4) and, for the CONNECT proxy, through socat's `PROXY:`. iperf3 also runs
//! through three chained stunnel4 hops, the baseline for what TLS relays cost without the mesh.
//!
//! Run: `cargo run --release -p genesis-e2e --bin mesh-bench` (`-- --quick` for a short run,
//! `-- --peers N` for the memory figure, `-- --messages N` for a longer message run to profile,
//! `-- --seconds N` per iperf3 run, `-- --senders N` concurrent message senders (32),
//! `-- --only iperf3,messages` for some of the sections bulk, iperf3, messages and memory,
//! `-- --paths "stunnel4 mTLS;mesh, 1 hop"` for some of the iperf3 paths, by name).
//! Needs stunnel4 (`apt-get install stunnel4`).
//! Results and the machine they came from go to docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use genesis_e2e::{wait_for, Authority, Sidecar, SidecarOptions, Subnet};
use genesis_operator::local::LocalAuthority;
use genesis_trust::{Identity, KeyAlgorithm, LeafPolicy, Role};

const NET: &str = "bench";
const ECHO: u16 = 9001;
const SINK: u16 = 9002;
/// iperf3 servers listen here on b1, t1 and b3.
const IPERF: u16 = 5201;
/// a's upstream ports (`--upstream`) to iperf3 on b1, t1 and b3.
const UPSTREAM_1: u16 = 15201;
const UPSTREAM_1_E2E: u16 = 15202;
const UPSTREAM_3: u16 = 15203;

fn echo_server(addr: &str) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut s = s;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads until EOF, then answers the byte count (8 bytes).
fn sink_server(addr: &str) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes());
            });
        }
    });
}

/// A connection to `target` through `how`.
#[derive(Clone)]
enum Path {
    Direct(String),
    Stunnel(String),
    Mesh { api: String, node: String },
}

impl Path {
    fn connect(&self, port_kind: u16) -> TcpStream {
        let s = match self {
            Path::Direct(ip) => TcpStream::connect(format!("{ip}:{port_kind}")).unwrap(),
            Path::Stunnel(ip) => TcpStream::connect(format!("{ip}:{}", port_kind + 100)).unwrap(),
            Path::Mesh { api, node } => {
                let mut s = TcpStream::connect(api).unwrap();
                write!(s, "CONNECT {node}.{NET}:{port_kind} HTTP/1.1\r\nHost: {node}.{NET}:{port_kind}\r\n\r\n").unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert!(line.starts_with("HTTP/1.1 200"), "CONNECT refused: {line}");
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                }
                s
            }
        };
        s.set_nodelay(true).unwrap();
        s
    }
}

/// Request/response round trips of `size` bytes on one connection; (p50, p99) in µs.
fn latency(path: &Path, size: usize, iterations: usize) -> (f64, f64) {
    let mut s = path.connect(ECHO);
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    for _ in 0..iterations / 10 {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
    }
    let mut samples: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// Bulk transfer of `bytes`; MB/s (10^6 bytes per second) until the sink confirmed all.
fn throughput(path: &Path, bytes: usize) -> f64 {
    let mut s = path.connect(SINK);
    let chunk = vec![1u8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_be_bytes(count) as usize, bytes, "the sink got everything");
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// A keep-alive HTTP/1.1 client for the message API.
struct Http {
    s: BufReader<TcpStream>,
}

impl Http {
    fn new(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Http { s: BufReader::new(s) }
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        // One write per request, as an HTTP client library sends it: `write!` straight to the
        // socket would send each formatted piece as its own segment (the socket is NODELAY),
        // waking the sidecar several times per request.
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.s.get_mut().write_all(&request).unwrap();
        let mut line = String::new();
        self.s.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut len = 0;
        loop {
            line.clear();
            self.s.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// Messages per second from `from` to `to` with `concurrency` senders; the receiver's inbox is
/// drained meanwhile. Returns (messages/s, failures).
fn messages(from: &Sidecar, to: &Sidecar, total: usize, concurrency: usize) -> (f64, u64) {
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = {
        let api = to.api.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut h = Http::new(&api);
            while !done.load(Ordering::Relaxed) {
                h.request("GET", "/v1/messages?wait=50", b"");
            }
        })
    };
    let t = Instant::now();
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let api = from.api.clone();
            let node = to.node.clone();
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut h = Http::new(&api);
                for _ in 0..total / concurrency {
                    if h.request("POST", &format!("/v1/messages/{node}"), &[b'm'; 64]).0 != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let rate = (total / concurrency * concurrency) as f64 / t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    (rate, failures.load(Ordering::Relaxed))
}

struct Stunnel(Vec<Child>);

impl Drop for Stunnel {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A chain of stunnel4 processes on `ips`, each on its own address: the first takes plain TCP
/// at `ips[0]:port+100` and opens mutual TLS to the next at `port+200`; each one in between is a
/// relay that ends that TLS and opens its own to the next (two services in one process, joined
/// by a loopback connection at `port+300`: stunnel4 has no TLS-to-TLS service); the last ends
/// the TLS and connects to `target_ip:port`. Two addresses make the plain stunnel4 tunnel.
fn stunnel(
    dir: &std::path::Path,
    ca: &LocalAuthority,
    ips: &[String],
    target_ip: &str,
    ports: &[u16],
) -> Stunnel {
    let ca_file = dir.join("ca.crt");
    let mut children = Vec::new();
    // Last first, so that each one's next hop listens before it is started.
    for (i, ip) in ips.iter().enumerate().rev() {
        let node = format!("stunnel-{}", ip.replace('.', "-"));
        let id = Identity::new("test.local", NET, Role::Client, &node).unwrap();
        let (leaf, key) = ca
            .ca()
            .issue_with_generated_key(
                &id,
                KeyAlgorithm::EcdsaP256,
                &LeafPolicy::default(),
                SystemTime::now(),
            )
            .unwrap();
        let crt = dir.join(format!("{node}.crt"));
        let key_path = dir.join(format!("{node}.key"));
        std::fs::write(&crt, leaf.chain_pem()).unwrap();
        std::fs::write(&key_path, key.to_pem()).unwrap();
        let tls = format!(
            "cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
            crt.display(),
            key_path.display(),
            ca_file.display()
        );
        let mut conf = String::from("foreground = yes\npid =\nsyslog = no\n");
        for &port in ports {
            let (plain_in, tls_in, hand_off) = (port + 100, port + 200, port + 300);
            if i > 0 {
                // Ends the TLS from the one before.
                let to = if i + 1 == ips.len() {
                    format!("{target_ip}:{port}")
                } else {
                    format!("{ip}:{hand_off}")
                };
                conf += &format!("[s{port}]\naccept = {ip}:{tls_in}\nconnect = {to}\n{tls}");
            }
            if i + 1 < ips.len() {
                // Opens TLS to the next.
                let from = if i == 0 { plain_in } else { hand_off };
                let next = &ips[i + 1];
                conf += &format!(
                    "[c{port}]\nclient = yes\naccept = {ip}:{from}\nconnect = {next}:{tls_in}\n{tls}"
                );
            }
        }
        let path = dir.join(format!("{node}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("stunnel4")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 is installed (apt-get install stunnel4)");
        children.push(child);
        let listen = format!("{ip}:{}", ports[0] + if i == 0 { 100 } else { 200 });
        wait_for(Duration::from_secs(10), "stunnel to listen", || {
            TcpStream::connect(&listen).is_ok()
        });
    }
    Stunnel(children)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let flag = |name: &str| -> Option<usize> {
        let value = std::env::args().skip_while(|a| a != name).nth(1)?;
        Some(value.parse().unwrap_or_else(|_| panic!("{name} {value:?} is not a number")))
    };
    let only: Vec<String> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    const SECTIONS: [&str; 4] = ["bulk", "iperf3", "messages", "memory"];
    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        panic!("--only {bad:?}: the sections are {SECTIONS:?}");
    }
    let section = |name: &str| only.is_empty() || only.iter().any(|s| s == name);
    let peers = flag("--peers").unwrap_or(if quick { 20 } else { 100 });
    let (iters, bulk, msgs) =
        if quick { (2_000, 64 << 20, 4_000) } else { (20_000, 512 << 20, 40_000) };
    // A longer message run, to profile it.
    let msgs = flag("--messages").unwrap_or(msgs);
    std::env::set_var("GENESIS_SIDECAR_LOG", "warn");

    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let ports = vec![ECHO, SINK, IPERF];
    let line = |anchor: Option<u8>, max: usize| SidecarOptions {
        anchors: anchor.map(|i| vec![format!("{}:7000", net.ip(i))]).unwrap_or_default(),
        min_peers: 1,
        max_peers: max,
        allowed_ports: ports.clone(),
        ..Default::default()
    };
    // a — b1 (1 hop, direct); a — t1 (1 hop, end-to-end TLS: t1 takes no direct streams);
    // a — r1 — r2 — b3 (3 hops).
    // Upstream ports on a: iperf3 reaches each path's end as it reaches stunnel4, by host and
    // port, with no CONNECT and no socat in front.
    let upstreams = [("b1", UPSTREAM_1), ("t1", UPSTREAM_1_E2E), ("b3", UPSTREAM_3)]
        .map(|(node, port)| format!("{port}={node}.{NET}:{IPERF}"))
        .join(",");
    let a = Sidecar::start(
        &auth,
        "a",
        &net.ip(1),
        &SidecarOptions { extra: vec!["--upstream".into(), upstreams], ..line(None, peers + 8) },
    );
    let b1 = Sidecar::start(&auth, "b1", &net.ip(2), &line(Some(1), 2));
    let no_direct = vec!["--direct-streams".to_owned(), "false".to_owned()];
    let t1 = Sidecar::start(
        &auth,
        "t1",
        &net.ip(6),
        &SidecarOptions { extra: no_direct, ..line(Some(1), 2) },
    );
    let r1 = Sidecar::start(&auth, "r1", &net.ip(3), &line(Some(1), 2));
    let r2 = Sidecar::start(&auth, "r2", &net.ip(4), &line(Some(3), 2));
    let b3 = Sidecar::start(&auth, "b3", &net.ip(5), &line(Some(4), 2));
    wait_for(Duration::from_secs(30), "routes", || {
        let r = a.admin_json("/admin/routes");
        r.as_array().is_some_and(|r| {
            r.iter().any(|r| r["dest"] == "b3" && r["hops"] == 3)
                && r.iter().any(|r| r["dest"] == "b1" && r["hops"] == 1)
                && r.iter().any(|r| r["dest"] == "t1" && r["hops"] == 1)
        })
    });
    for ip in [net.ip(2), net.ip(5), net.ip(6)] {
        echo_server(&format!("{ip}:{ECHO}"));
        sink_server(&format!("{ip}:{SINK}"));
    }
    let ca = LocalAuthority::open(auth.dir.path()).unwrap();
    let _stunnel = stunnel(auth.dir.path(), &ca, &[net.ip(10), net.ip(11)], &net.ip(5), &ports);
    let idle_rss = a.rss_kib().unwrap();

    if section("bulk") {
        bulk_and_latency(&net, &a, bulk, iters);
    }
    let secs = flag("--seconds").unwrap_or(if quick { 4 } else { 10 });
    if section("iperf3") {
        // stunnel4 through 3 hops: what hop-by-hop TLS relays cost without the mesh.
        let chain: Vec<String> = (200..=203).map(|i| net.ip(i)).collect();
        let chain = stunnel(auth.dir.path(), &ca, &chain, &b3.ip, &[IPERF]);
        let lines = [&[&a, &b1][..], &[&a, &t1], &[&a, &r1, &r2, &b3]];
        // `--paths "stunnel4 mTLS;mesh, 1 hop"`: only these iperf3 paths, to profile or A/B one.
        let picked: Vec<String> = std::env::args()
            .skip_while(|a| a != "--paths")
            .nth(1)
            .map(|v| v.split(';').map(str::to_owned).collect())
            .unwrap_or_default();
        iperf_paths(&net, &a, &lines, [&_stunnel, &chain], secs, &picked);
    }
    if section("messages") {
        let senders = flag("--senders").unwrap_or(32);
        let (rate3, fail3) = messages(&a, &b3, msgs, senders);
        let (rate1, fail1) = messages(&a, &b1, msgs, senders);
        println!();
        println!("Messages (64 B, receipt awaited, {senders} senders): 1 hop {rate1:.0}/s ({fail1} failed), 3 hops {rate3:.0}/s ({fail3} failed)");
    }
    if section("memory") {
        let extra = (peers, line(Some(1), 2));
        memory(&net, &auth, &a, &b3, &_stunnel, extra, msgs, idle_rss);
    }
    drop((b1, t1, r1, r2, b3));
}

/// Our own load generator through every path: bulk MB/s, then 64 B and 1 KiB round trips.
fn bulk_and_latency(net: &Subnet, a: &Sidecar, bulk: usize, iters: usize) {
    let paths = [
        ("direct TCP", Path::Direct(net.ip(5))),
        ("stunnel4 mTLS", Path::Stunnel(net.ip(10))),
        ("mesh, 1 hop", Path::Mesh { api: a.api.clone(), node: "b1".into() }),
        ("mesh, 1 hop, end-to-end TLS", Path::Mesh { api: a.api.clone(), node: "t1".into() }),
        ("mesh, 3 hops", Path::Mesh { api: a.api.clone(), node: "b3".into() }),
    ];
    println!("| path | bulk MB/s | 64 B p50 µs | 64 B p99 µs | 1 KiB p50 µs | 1 KiB p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, path) in &paths {
        let mbps = throughput(path, bulk);
        let (p50s, p99s) = latency(path, 64, iters);
        let (p50k, p99k) = latency(path, 1024, iters);
        println!("| {name} | {mbps:.0} | {p50s:.0} | {p99s:.0} | {p50k:.0} | {p99k:.0} |");
        rows.push((name.to_string(), mbps, p50s, p99s, p50k, p99k));
    }
    println!();
    println!("Ratios (mesh ÷ baseline; throughput higher is better, latency lower is better):");
    for base in [0usize, 1] {
        for mesh in [2usize, 3, 4] {
            let (b, m) = (&rows[base], &rows[mesh]);
            println!(
                "- {} vs {}: throughput {:.2}×, 64 B p50 {:.2}×, p99 {:.2}×, 1 KiB p50 {:.2}×, p99 {:.2}×",
                m.0, b.0, m.1 / b.1, m.2 / b.2, m.3 / b.3, m.4 / b.4, m.5 / b.5
            );
        }
    }
    // Both with end-to-end TLS, so the difference is the two relays.
    let per_hop_p50 = (rows[4].2 - rows[3].2) / 2.0;
    let per_hop_p99 = (rows[4].3 - rows[3].3) / 2.0;
    println!("- added per extra hop (64 B, from 1 hop with end-to-end TLS to 3 hops): p50 {per_hop_p50:.0} µs, p99 {per_hop_p99:.0} µs");
}

/// The hub `a` with `peers` more sidecars (started with `options`) linked to it, under message
/// load: its peak RSS.
#[allow(clippy::too_many_arguments)]
fn memory(
    net: &Subnet,
    auth: &Authority,
    a: &Sidecar,
    b3: &Sidecar,
    stunnel: &Stunnel,
    (peers, options): (usize, SidecarOptions),
    msgs: usize,
    idle_rss: u64,
) {
    let extra: Vec<Sidecar> = (0..peers)
        .map(|i| {
            let ip = format!("{}.{}", net.ip(0).rsplit_once('.').unwrap().0, 20 + i);
            Sidecar::start(auth, &format!("p{i}"), &ip, &options)
        })
        .collect();
    wait_for(Duration::from_secs(120), "the hub to link every extra peer", || {
        a.admin_json("/admin/routes").as_array().map_or(0, Vec::len) >= peers + 4
    });
    let links = a.metric("genesis_sidecar_links", "");
    let loaded = std::thread::scope(|s| {
        let load = s.spawn(|| messages(a, b3, msgs / 4, 16));
        let mut max_rss = 0;
        while !load.is_finished() {
            max_rss = max_rss.max(a.rss_kib().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        max_rss
    });
    let stunnel_rss: u64 = stunnel.0.iter().filter_map(|c| rss_of(c.id())).max().unwrap_or(0);
    println!();
    println!(
        "Sidecar RSS: idle (2 links, 4 routes) {:.1} MiB; with {links} links and {} routes under message load (peak) {:.1} MiB; stunnel4 process for comparison {:.1} MiB",
        idle_rss as f64 / 1024.0,
        peers + 4,
        loaded as f64 / 1024.0,
        stunnel_rss as f64 / 1024.0
    );
    drop(extra);
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_quiet(program: &str, args: &[String]) -> Option<Killed> {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(Killed)
}

/// CPU seconds a process has used, its reaped children included (socat forks one per
/// connection), from /proc/PID/stat: utime, stime, cutime, cstime in clock ticks of 1/100 s.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    (11..15).filter_map(|i| fields.get(i)?.parse::<u64>().ok()).sum::<u64>() as f64 / 100.0
}

/// One iperf3 client run: (Gbit/s received, bytes received), or why it failed.
fn iperf_client(addr: &str, secs: usize, streams: u32) -> Result<(f64, f64), String> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("iperf3")
        .args(["-c", host, "-p", port, "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        .output()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok((bps / 1e9, bytes)),
        _ => Err(v["error"].as_str().unwrap_or("no result").to_owned()),
    }
}

/// iperf3, an independent load generator, through every path: direct, stunnel4 (one tunnel,
/// and a chain of three hops whose relays end and reopen TLS), the first sidecar's upstream
/// ports over 1 and 3 hops, and socat's `PROXY:` into its CONNECT proxy
/// beside socat alone (the cost of that harness) and socat in front of stunnel4; single stream
/// and 4 streams. CPU per GB counts the path's own processes (the sidecars on it, the
/// stunnel4 processes), then socat's, not iperf3. The busiest process's CPU per GB bounds what
/// the path could carry with a core per process, as a cluster's pods have and this machine's
/// two shared cores do not: a projection, printed as one.
fn iperf_paths(
    net: &Subnet,
    a: &Sidecar,
    lines: &[&[&Sidecar]; 3],
    [stunnel, chain]: [&Stunnel; 2],
    secs: usize,
    picked: &[String],
) {
    let have = |p: &str| Command::new(p).arg("-V").output().is_ok();
    if !have("iperf3") || !have("socat") {
        println!();
        println!("iperf3 paths SKIPPED: needs iperf3 and socat (apt-get install iperf3 socat)");
        return;
    }
    let ends: Vec<&Sidecar> = lines.iter().map(|l| *l.last().unwrap()).collect();
    let b3 = ends[2];
    let _servers: Vec<Killed> = ends
        .iter()
        .map(|s| &s.ip)
        .filter_map(|ip| {
            spawn_quiet(
                "iperf3",
                &["-s".into(), "-B".into(), ip.to_string(), "-p".into(), IPERF.to_string()],
            )
        })
        .collect();
    let (api_ip, api_port) = a.api.rsplit_once(':').unwrap();
    let socat = |listen_ip: String, to: String| {
        let args = [format!("TCP-LISTEN:{IPERF},bind={listen_ip},fork,reuseaddr"), to];
        (spawn_quiet("socat", &args).expect("socat starts"), format!("{listen_ip}:{IPERF}"))
    };
    let proxy = |node: &str| format!("PROXY:{api_ip}:{node}.{NET}:{IPERF},proxyport={api_port}");
    let (plain, plain_addr) = socat(net.ip(12), format!("TCP:{}:{IPERF}", b3.ip));
    let (via1, via1_addr) = socat(net.ip(13), proxy(&ends[0].node));
    // stunnel4 behind the same harness cost as the mesh paths (one socat relay in front).
    let stunnel_in = format!("TCP:{}:{}", net.ip(10), IPERF + 100);
    let (via_stunnel, via_stunnel_addr) = socat(net.ip(16), stunnel_in);
    let chain_in = net.ip(200);
    std::thread::sleep(Duration::from_millis(500));
    let stunnel_pids: Vec<u32> = stunnel.0.iter().map(Child::id).collect();
    let chain_pids: Vec<u32> = chain.0.iter().map(Child::id).collect();
    let pids = |s: &[&Sidecar]| s.iter().filter_map(|s| s.pid()).collect::<Vec<u32>>();
    let paths: Vec<(&str, String, Vec<u32>, Vec<u32>)> = vec![
        ("direct TCP", format!("{}:{IPERF}", b3.ip), vec![], vec![]),
        ("stunnel4 mTLS", format!("{}:{}", net.ip(10), IPERF + 100), stunnel_pids.clone(), vec![]),
        ("stunnel4 mTLS, 3 hops", format!("{}:{}", chain_in, IPERF + 100), chain_pids, vec![]),
        ("socat alone", plain_addr, vec![], vec![plain.0.id()]),
        ("socat + stunnel4", via_stunnel_addr, stunnel_pids.clone(), vec![via_stunnel.0.id()]),
        ("mesh, 1 hop", format!("{}:{UPSTREAM_1}", a.ip), pids(lines[0]), vec![]),
        (
            "mesh, 1 hop, end-to-end TLS",
            format!("{}:{UPSTREAM_1_E2E}", a.ip),
            pids(lines[1]),
            vec![],
        ),
        ("mesh, 3 hops", format!("{}:{UPSTREAM_3}", a.ip), pids(lines[2]), vec![]),
        ("socat + CONNECT + mesh, 1 hop", via1_addr, pids(lines[0]), vec![via1.0.id()]),
    ];
    println!();
    println!("iperf3 through each path ({secs} s per run; CPU per GB: the path's processes, then socat's):");
    println!();
    println!("| path | 1 stream Gbit/s | 4 streams Gbit/s | CPU s per GB, 1 stream | CPU s per GB, 4 streams | busiest process CPU s per GB, 1 stream | socat CPU s per GB | machine idle, 4 streams |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let names: Vec<&str> = paths.iter().map(|p| p.0).collect();
    if let Some(bad) = picked.iter().find(|p| !names.contains(&p.as_str())) {
        panic!("--paths {bad:?}: the iperf3 paths are {names:?}");
    }
    let paths = paths.iter().filter(|p| picked.is_empty() || picked.iter().any(|n| n == p.0));
    for (name, addr, path_pids, socat_pids) in paths {
        let cpu = |p: &[u32]| p.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        let each = |p: &[u32]| p.iter().map(|&p| cpu_seconds(p)).collect::<Vec<f64>>();
        // One run with `streams`: its result, the path's, its busiest process's and socat's CPU
        // seconds, and the machine's idle share meanwhile (0: every core busy).
        let run = |streams| {
            let (path0, socat0, idle0) = (each(path_pids), cpu(socat_pids), machine_idle());
            let result = iperf_client(addr, secs, streams);
            // socat's connection children are counted once it has reaped them.
            std::thread::sleep(Duration::from_millis(500));
            let idle = machine_idle();
            let idle_share = (idle.0 - idle0.0) / (idle.1 - idle0.1).max(1.0);
            let used: Vec<f64> = each(path_pids).iter().zip(&path0).map(|(b, a)| b - a).collect();
            let busiest = used.iter().copied().fold(0.0, f64::max);
            // A path with no processes of its own used 0 s, not the empty sum's -0.
            let total = used.iter().fold(0.0, |sum, c| sum + c);
            (result, total, busiest, cpu(socat_pids) - socat0, idle_share)
        };
        let (single, path_cpu, busiest, socat_cpu, _) = run(1);
        let (four, path_cpu4, _, _, idle4) = run(4);
        match (&single, &four) {
            (Ok((g1, bytes)), Ok((g4, bytes4))) => {
                let per_gb = |c: f64| c / (bytes / 1e9);
                println!(
                    "| {name} | {g1:.2} | {g4:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} % |",
                    per_gb(path_cpu),
                    path_cpu4 / (bytes4 / 1e9),
                    per_gb(busiest),
                    per_gb(socat_cpu),
                    idle4 * 100.0
                );
                rows.push((name.to_string(), *g1, *g4, per_gb(path_cpu), per_gb(busiest)));
            }
            (Err(e), _) | (_, Err(e)) => println!("| {name} | failed: {e} | | | | | | |"),
        }
    }
    let find = |n: &str| rows.iter().find(|r| r.0 == n);
    let compared = [
        ("stunnel4 mTLS", &["mesh, 1 hop", "mesh, 1 hop, end-to-end TLS", "mesh, 3 hops"][..]),
        ("stunnel4 mTLS", &["stunnel4 mTLS, 3 hops"][..]),
        ("stunnel4 mTLS, 3 hops", &["mesh, 3 hops"][..]),
        ("socat + stunnel4", &["socat + CONNECT + mesh, 1 hop"][..]),
    ];
    println!();
    println!("Projected, not measured: with a core of its own for each process on the path (as pods in a cluster have), its busiest process would bound 1 stream at:");
    for name in ["stunnel4 mTLS", "stunnel4 mTLS, 3 hops", "mesh, 1 hop", "mesh, 3 hops"] {
        if let Some(r) = find(name).filter(|r| r.4 > 0.0) {
            println!("- {name}: {:.1} Gbit/s ({:.2} CPU s per GB)", 8.0 / r.4, r.4);
        }
    }
    for (base_name, names) in compared {
        let Some(base) = find(base_name) else { continue };
        println!();
        for &name in names {
            if let Some(m) = find(name) {
                println!(
                    "- iperf3 {name} vs {base_name}: 1 stream {:.2}×, 4 streams {:.2}×, CPU per GB {:.2}× (socat not counted)",
                    m.1 / base.1,
                    m.2 / base.2,
                    m.3 / base.3
                );
            }
        }
    }
}

/// The machine's (idle, all) CPU time so far, in clock ticks, from /proc/stat.
fn machine_idle() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (idle, ticks.iter().take(8).sum())
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
