//! `genesisctl demo`: a whole Genesis Mesh on this machine, no cluster.
//!
//! A file-backed Network Authority and N sidecar processes (this binary, re-executed) on their
//! own 127.x.y.z addresses join by CSR, converge, carry a message and a tunnelled HTTP request
//! across several hops, rotate a certificate without dropping a link, cut off a revoked
//! member everywhere, refuse a forged control message, and keep verifiable audit logs. Every
//! stage checks its outcome against the members' admin APIs; a summary table (or `--json`)
//! ends the run, and nothing is left running unless `--keep` was given.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use genesis_trust::{Role, Scope, Verb};
use serde::Serialize;
use serde_json::{json, Value};

use crate::client;
use crate::mesh::{self, Children, LaunchSpec, Manifest, Member, Topology, APP_PORT};
use crate::output;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Members to start (3 to 200).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(3..=200))]
    nodes: u16,
    /// How members find each other.
    #[arg(long, value_enum, default_value_t = Topology::Sparse)]
    topology: Topology,
    /// Seed of the sparse topology (same seed, same mesh).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the mesh running after the demo (until Ctrl-C) and print where to look.
    #[arg(long)]
    keep: bool,
    /// Where the authority, logs and audit logs go (default: a temporary directory, or
    /// $GENESIS_MESH / <tmp>/genesis-demo with --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The first three octets of the members' loopback addresses.
    #[arg(long, default_value = "127.42.0")]
    subnet: String,
    /// table: progress and a summary for people; json or yaml: one summary document on
    /// standard output instead.
    #[arg(long, short, value_enum, default_value_t = crate::output::Output::Table)]
    output: crate::output::Output,
    /// The same as `-o json` (kept for scripts).
    #[arg(long, hide = true)]
    json: bool,
}

impl DemoArgs {
    /// The summary's format (`--json` is `-o json`).
    fn format(&self) -> crate::output::Output {
        if self.json {
            crate::output::Output::Json
        } else {
            self.output
        }
    }
}

/// One stage's outcome.
#[derive(Debug, Clone, Serialize)]
struct Stage {
    name: &'static str,
    ok: bool,
    ms: f64,
    detail: String,
}

/// What the run measured, for the summary.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Figures {
    join_ms: Option<f64>,
    convergence_ms: Option<f64>,
    links: Option<usize>,
    max_hops: Option<u64>,
    message_from: Option<String>,
    message_to: Option<String>,
    message_p50_ms: Option<f64>,
    message_p99_ms: Option<f64>,
    tunnel_ms: Option<f64>,
    rotated: Option<String>,
    links_kept: Option<usize>,
    revoked: Option<String>,
    revocation_applied_ms: Option<f64>,
    revocation_cut_off_ms: Option<f64>,
    cut_off_everywhere: Option<bool>,
    healed_ms: Option<f64>,
    control_refused: Option<String>,
    audit_records: Option<u64>,
}

struct Run {
    /// When the first member was started.
    launched: Option<Instant>,
    progress: bool,
    live: bool,
    stages: Vec<Stage>,
    figures: Figures,
}

impl Run {
    /// Runs one stage; false (and recorded) when it failed.
    fn stage(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Run) -> Result<String, String>,
    ) -> bool {
        if self.live {
            print!("\u{25b8} {name} ...");
            let _ = std::io::stdout().flush();
        }
        let start = Instant::now();
        let result = f(self);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        if self.progress {
            let mark = if ok { "\u{2714}" } else { "\u{2718}" };
            let clear = if self.live { "\r\x1b[2K" } else { "" };
            println!("{clear}{mark} {name} ({ms:.0} ms)\n    {detail}");
        }
        self.stages.push(Stage { name, ok, ms, detail });
        ok
    }

    /// A live counter on the current line (terminals only).
    fn tick(&self, text: &str) {
        if self.progress && self.live {
            print!("\r\x1b[2K  {text}");
            let _ = std::io::stdout().flush();
        }
    }
}

pub fn run(args: &DemoArgs) -> ExitCode {
    if let Err(e) = mesh::hop_limit(args.topology, usize::from(args.nodes)) {
        return crate::fail(&e);
    }
    if let Err(e) = check_subnet(&args.subnet, usize::from(args.nodes)) {
        return crate::fail(&e);
    }
    let mut temp = None;
    let dir = match (&args.dir, args.keep) {
        (Some(d), _) => d.clone(),
        (None, true) => mesh::default_dir(),
        (None, false) => match tempfile::Builder::new().prefix("genesis-demo-").tempdir() {
            Ok(t) => temp.insert(t).path().to_owned(),
            Err(e) => return crate::fail(&format!("cannot create a temporary directory: {e}")),
        },
    };
    if let Err(e) = prepare_dir(&dir) {
        return crate::fail(&e);
    }
    let spec = LaunchSpec {
        dir: dir.clone(),
        subnet: args.subnet.clone(),
        nodes: usize::from(args.nodes),
        topology: args.topology,
        seed: args.seed,
        network: "demo".into(),
        trust_domain: "demo.local".into(),
        cert_duration: "24h".into(),
        crl_validity: "12h".into(),
    };
    let children = Children::default();
    stop_on_signal(children.clone());
    let progress = args.format() == crate::output::Output::Table;
    if progress {
        println!(
            "Genesis Mesh demo: an authority and {} sidecar processes ({:?} topology) on {}.0/24\n\
             files in {}\n",
            spec.nodes,
            spec.topology,
            spec.subnet,
            dir.display()
        );
    }
    let mut run = Run {
        launched: None,
        progress,
        live: progress && std::io::stdout().is_terminal(),
        stages: Vec::new(),
        figures: Figures::default(),
    };
    let manifest = stages(&mut run, &spec, &children);
    let ok = run.stages.iter().all(|s| s.ok);
    if args.keep && ok {
        if let Some(m) = &manifest {
            print_summary(&run, &spec, None, args.format());
            keep_running(m, &dir, &children, !progress);
        }
    }
    let left = children.stop_all(Duration::from_secs(3));
    let stopped = left == 0 && manifest.as_ref().is_none_or(nothing_answers);
    run.stages.push(Stage {
        name: "stopped, nothing left running",
        ok: stopped,
        ms: 0.0,
        detail: format!("{left} processes left"),
    });
    let all_ok = run.stages.iter().all(|s| s.ok);
    if !all_ok {
        // The logs explain the failure: keep them.
        if let Some(t) = temp {
            let _ = t.keep();
        }
    }
    if !(args.keep && ok) {
        print_summary(&run, &spec, Some(stopped), args.format());
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn prepare_dir(dir: &std::path::Path) -> Result<(), String> {
    if let Ok(m) = Manifest::load(dir) {
        if std::path::Path::new(&format!("/proc/{}", m.supervisor_pid)).exists()
            && m.supervisor_pid != std::process::id()
        {
            return Err(format!(
                "a demo is already running in {} (process {}); stop it (Ctrl-C) or pass --dir",
                dir.display(),
                m.supervisor_pid
            ));
        }
    }
    if dir.join(mesh::MANIFEST).exists() || dir.join("authority").exists() {
        // A stale demo of ours: start afresh.
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Ctrl-C or SIGTERM: stop every child, then exit (130).
fn stop_on_signal(children: Children) {
    std::thread::spawn(move || {
        // This handle must not stop the mesh by being dropped (when no signal handler can be
        // installed); only a signal does.
        let children = std::mem::ManuallyDrop::new(children);
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        children.stop_all(Duration::from_secs(3));
        eprintln!("\ngenesisctl demo: stopped");
        std::process::exit(130);
    });
}

fn nothing_answers(m: &Manifest) -> bool {
    m.members.iter().all(|m| client::get_json(&m.admin, "/healthz").is_err())
}

/// Every stage in order; a failed stage stops the run. Returns the manifest once written.
fn stages(run: &mut Run, spec: &LaunchSpec, children: &Children) -> Option<Manifest> {
    let mut manifest = None;
    let ok = run.stage("authority started", |_| {
        let m = mesh::start_authority(spec, children)?;
        let detail = format!(
            "file-backed CA for spiffe://{}/{}, identity service on {}",
            m.trust_domain, m.network, m.identity_service
        );
        manifest = Some(m);
        Ok(detail)
    });
    let mut manifest = manifest.filter(|_| ok)?;
    let plan = mesh::plan(spec.topology, spec.nodes, spec.seed);
    let ok = run.stage("members joined by CSR", |run| {
        let start = Instant::now();
        run.launched = Some(start);
        for (i, (anchors, min, max)) in plan.iter().enumerate() {
            let member = mesh::start_member(spec, &manifest, children, i, anchors, *min, *max)?;
            manifest.members.push(member);
        }
        for (i, m) in manifest.members.iter().enumerate() {
            run.tick(&format!("joined {i}/{}", spec.nodes));
            mesh::wait_joined(m, children, Duration::from_secs(60))?;
        }
        mesh::write_manifest(&spec.dir, &manifest)?;
        run.figures.join_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        Ok(format!(
            "{} members generated their keys, sent CSRs with one-time tokens and got \
             certificates (no key left its process)",
            spec.nodes
        ))
    });
    if !ok {
        return Some(manifest);
    }
    let ok = run.stage("routes converged", |run| converge(run, &manifest, children));
    if !ok {
        return Some(manifest);
    }
    let mut pair = None;
    let ok = run.stage("message across the mesh", |run| {
        let (from, to, hops) = farthest_pair(&manifest)?;
        let detail = message(run, &from, &to, hops)?;
        pair = Some((from, to));
        Ok(detail)
    });
    let Some((from, to)) = pair.filter(|_| ok) else { return Some(manifest) };
    let ok = run.stage("tunnelled HTTP request", |run| tunnel(run, &manifest, &from, &to));
    if !ok {
        return Some(manifest);
    }
    let ok = run.stage("service name, nearest member first", |_| service(&manifest, &from, &to));
    if !ok {
        return Some(manifest);
    }
    let ok = run.stage("certificate rotated, no link dropped", |run| rotate(run, &manifest));
    if !ok {
        return Some(manifest);
    }
    let ok = run.stage("member revoked and cut off everywhere", |run| {
        let rotated = run.figures.rotated.clone().unwrap_or_default();
        revoke(run, &manifest, &rotated)
    });
    if !ok {
        return Some(manifest);
    }
    let ok = run.stage("forged control message refused", |run| {
        let revoked = run.figures.revoked.clone().unwrap_or_default();
        let via = [&from, &to].into_iter().find(|m| m.name != revoked).unwrap_or(&from).clone();
        control(run, &manifest, &via)
    });
    if !ok {
        return Some(manifest);
    }
    run.stage("audit logs verified", |run| audit(run, &manifest));
    Some(manifest)
}

/// Waits until every member routes to every other; reports links and the longest path.
fn converge(run: &mut Run, manifest: &Manifest, children: &Children) -> Result<String, String> {
    let start = Instant::now();
    let n = manifest.members.len();
    let want = n * (n - 1);
    loop {
        let got: usize = manifest
            .members
            .iter()
            .map(|m| client::get_json(&m.admin, "/admin/routes").map_or(0, |r| count(&r)))
            .sum();
        run.tick(&format!("routes {got}/{want}"));
        if got == want {
            break;
        }
        if let Some((name, status)) = children.exited().first() {
            let log = manifest.member(name).map(|m| m.log.clone()).unwrap_or_default();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(format!("{name} exited ({status}) before the mesh converged: {last}"));
        }
        if start.elapsed() > Duration::from_secs(90) {
            return Err(format!(
                "only {got} of {want} routes after 90 s; `genesisctl status --mesh DIR` shows \
                 which members are missing"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ms = run.launched.unwrap_or(start).elapsed().as_secs_f64() * 1e3;
    let links: usize = manifest
        .members
        .iter()
        .filter_map(|m| client::get_json(&m.admin, "/admin/peers").ok())
        .map(|p| p.as_array().map_or(0, |a| a.iter().filter(|p| p["connected"] == true).count()))
        .sum::<usize>()
        / 2;
    run.figures.convergence_ms = Some(ms);
    run.figures.links = Some(links);
    Ok(format!("{want} routes over {links} mTLS links (distance-vector, signed seqnos)"))
}

fn count(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// The pair of members furthest apart (most hops), from the members' own route tables.
fn farthest_pair(manifest: &Manifest) -> Result<(Member, Member, u64), String> {
    let mut best: Option<(Member, String, u64)> = None;
    for m in &manifest.members {
        let routes = client::get_json(&m.admin, "/admin/routes")?;
        for r in routes.as_array().into_iter().flatten() {
            let hops = r["hops"].as_u64().unwrap_or(0);
            if best.as_ref().is_none_or(|b| hops > b.2) {
                best = Some((m.clone(), r["dest"].as_str().unwrap_or("").to_owned(), hops));
            }
        }
    }
    let (from, to, hops) = best.ok_or("no routes")?;
    Ok((from, manifest.member(&to)?.clone(), hops))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends messages `from` → `to` through the app API; checks the first arrived intact.
fn message(run: &mut Run, from: &Member, to: &Member, hops: u64) -> Result<String, String> {
    const COUNT: usize = 50;
    let text = format!("hello {} from {}, {hops} hops away", to.name, from.name);
    let mut latencies = Vec::new();
    for i in 0..COUNT {
        let body = if i == 0 { text.clone() } else { format!("message {i}") };
        let (status, receipt) = client::post_json(
            &from.api,
            &format!("/v1/messages/{}", to.name),
            body.as_bytes(),
            Duration::from_secs(10),
        )?;
        if status != 200 {
            return Err(format!(
                "POST /v1/messages/{} at {}: {status} {receipt}",
                to.name, from.name
            ));
        }
        latencies.push(receipt["latencyMs"].as_f64().unwrap_or(0.0));
    }
    let inbox = client::get_json(&to.api, "/v1/messages?wait=1000")?;
    let first = inbox
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| format!("{} received nothing", to.name))?;
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD
        .decode(first["body"].as_str().unwrap_or(""))
        .map_err(|e| e.to_string())?;
    if body != text.as_bytes() || first["from"] != from.name.as_str() {
        return Err(format!("{} received {first} instead of our message", to.name));
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let f = &mut run.figures;
    f.max_hops = Some(hops);
    f.message_from = Some(from.name.clone());
    f.message_to = Some(to.name.clone());
    f.message_p50_ms = Some(p50);
    f.message_p99_ms = Some(p99);
    Ok(format!(
        "{} -> {} over {hops} hops, end-to-end TLS through the relays: {COUNT} messages with \
         receipts, p50 {p50:.2} ms, p99 {p99:.2} ms; {:?} arrived intact",
        from.name, to.name, text
    ))
}

/// A web page beside `to`, fetched from beside `from` through the CONNECT proxy.
fn tunnel(
    run: &mut Run,
    manifest: &Manifest,
    from: &Member,
    to: &Member,
) -> Result<String, String> {
    let page = format!("<h1>served beside {}</h1>", to.name);
    let listener = TcpListener::bind(format!("{}:{APP_PORT}", to.ip))
        .map_err(|e| format!("cannot serve the page on {}:{APP_PORT}: {e}", to.ip))?;
    let served = page.clone();
    std::thread::spawn(move || {
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{served}",
                served.len()
            );
        }
    });
    let target = format!("{}.{}:{APP_PORT}", to.name, manifest.network);
    let start = Instant::now();
    let mut s = TcpStream::connect(&from.api).map_err(|e| format!("{}: {e}", from.api))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return Err(format!("the proxy closed: {}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("CONNECT {target}: {}", head.lines().next().unwrap_or("")));
    }
    write!(s, "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !resp.ends_with(&page) {
        return Err(format!("the tunnel returned {resp:?}"));
    }
    run.figures.tunnel_ms = Some(ms);
    Ok(format!(
        "curl -p -x http://{} http://{target}/ fetched {page:?} from beside {} in {ms:.1} ms",
        from.api, to.name
    ))
}

/// Serves one HTTP page saying `who` on `ip`:APP_PORT, for each connection, in the background.
fn serve_page(ip: &str, who: &str) -> Result<(), String> {
    // (The tunnel stage's one-shot server on this address may still be closing.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let listener = loop {
        match TcpListener::bind(format!("{ip}:{APP_PORT}")) {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot serve a page on {ip}:{APP_PORT}: {e}")),
        }
    };
    let page = format!("<h1>web on {who}</h1>");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    Ok(())
}

/// Two members offer service `web` (one in `from`'s zone if any, and `to`); a CONNECT to
/// `web.svc.<network>` from `from` reaches the nearer, which `from`'s services list names first.
fn service(manifest: &Manifest, from: &Member, to: &Member) -> Result<String, String> {
    let index = |m: &Member| manifest.members.iter().position(|x| x.name == m.name).unwrap_or(0);
    let zone = |m: &Member| mesh::zone_of(index(m));
    // Another member, in `from`'s zone where there is one.
    let others = || manifest.members.iter().filter(|m| m.name != from.name && m.name != to.name);
    let near = others()
        .find(|m| zone(m) == zone(from))
        .or_else(|| others().next())
        .ok_or("the demo needs a third member")?;
    let offer = format!("{{\"port\": {APP_PORT}}}");
    for m in [near, to] {
        serve_page(&m.ip, &m.name)?;
        let (status, body) = client::http(
            &m.api,
            "PUT",
            "/v1/services/web",
            offer.as_bytes(),
            Duration::from_secs(5),
        )?;
        if status != 204 {
            return Err(format!(
                "{} refused the offer: {status} {}",
                m.name,
                String::from_utf8_lossy(&body)
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let known = loop {
        let known = client::get_json(&from.admin, "/admin/services")?;
        let reachable = known
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == "web" && s["metric"].is_u64())
            .count();
        if reachable == 2 {
            break known;
        }
        if Instant::now() > deadline {
            return Err(format!("{} knows {known} after 20 s", from.name));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first = known[0]["member"].as_str().unwrap_or_default().to_owned();
    let metric = |m: &str| {
        known
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["member"] == m)
            .map(|s| s["metric"].clone())
    };
    let target = format!("web.svc.{}:{APP_PORT}", manifest.network);
    let mut s = TcpStream::connect(&from.api).map_err(|e| format!("{}: {e}", from.api))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return Err(format!("the proxy closed: {}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let served_by = head
        .lines()
        .find_map(|l| l.strip_prefix("genesis-member: "))
        .map(str::trim)
        .ok_or_else(|| format!("CONNECT {target}: {}", head.lines().next().unwrap_or("")))?
        .to_owned();
    write!(s, "GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    if served_by != first || !resp.ends_with(&format!("<h1>web on {first}</h1>")) {
        return Err(format!("{target} went to {served_by} ({resp:?}), but the nearest is {first}"));
    }
    let (same, other) = zone_links(manifest)?;
    Ok(format!(
        "web offered by {} ({}, metric {}) and {} ({}, metric {}); CONNECT {target} from {} ({}) \
         reached {first}, the nearer; {same} links within zones, {other} across",
        near.name,
        zone(near),
        short(&metric(&near.name).unwrap_or_default()),
        to.name,
        zone(to),
        short(&metric(&to.name).unwrap_or_default()),
        from.name,
        zone(from),
    ))
}

/// Links within a zone and across zones, each counted once.
fn zone_links(manifest: &Manifest) -> Result<(usize, usize), String> {
    let (mut same, mut other) = (0, 0);
    for m in &manifest.members {
        let peers = client::get_json(&m.admin, "/admin/peers")?;
        for p in peers.as_array().into_iter().flatten().filter(|p| p["connected"] == true) {
            if p["node"].as_str().is_some_and(|n| n > m.name.as_str()) {
                let mine = mesh::zone_of(
                    manifest.members.iter().position(|x| x.name == m.name).unwrap_or(0),
                );
                if p["zone"] == mine {
                    same += 1;
                } else {
                    other += 1;
                }
            }
        }
    }
    Ok((same, other))
}

/// Connected neighbours of a member.
fn links(m: &Member) -> Result<BTreeSet<String>, String> {
    let peers = client::get_json(&m.admin, "/admin/peers")?;
    Ok(peers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["connected"] == true)
        .filter_map(|p| p["node"].as_str().map(str::to_owned))
        .collect())
}

fn closes(m: &Member) -> f64 {
    client::metrics(&m.admin)
        .map(|s| client::metric_sum(&s, "genesis_sidecar_link_closes_total"))
        .unwrap_or(f64::NAN)
}

/// Renews the busiest member's certificate; its links and its neighbours' links stay up.
fn rotate(run: &mut Run, manifest: &Manifest) -> Result<String, String> {
    let mut busiest = None;
    for m in &manifest.members {
        let l = links(m)?;
        if busiest.as_ref().is_none_or(|(_, b): &(&Member, BTreeSet<String>)| l.len() > b.len()) {
            busiest = Some((m, l));
        }
    }
    let (member, before) = busiest.ok_or("no members")?;
    let group: Vec<&Member> = manifest
        .members
        .iter()
        .filter(|m| m.name == member.name || before.contains(&m.name))
        .collect();
    let closes_before: Vec<f64> = group.iter().map(|m| closes(m)).collect();
    let (status, answer) =
        client::post_json(&member.admin, "/admin/renew", b"", Duration::from_secs(20))?;
    if status != 200 {
        return Err(format!("POST /admin/renew at {}: {status} {answer}", member.name));
    }
    // A couple of hello intervals: a link the rotation broke would show by now.
    std::thread::sleep(Duration::from_millis(600));
    let after = links(member)?;
    let closes_after: Vec<f64> = group.iter().map(|m| closes(m)).collect();
    if !before.is_subset(&after) {
        let lost: Vec<&String> = before.difference(&after).collect();
        return Err(format!("{} lost links to {lost:?} when it rotated", member.name));
    }
    if closes_before != closes_after {
        return Err(format!(
            "links closed during the rotation (link_closes_total {closes_before:?} -> \
             {closes_after:?})"
        ));
    }
    run.figures.rotated = Some(member.name.clone());
    run.figures.links_kept = Some(before.len());
    Ok(format!(
        "{} renewed (serial {} -> {}, fresh key, CSR over mTLS); all {} of its links stayed up, \
         no link closed on it or its neighbours",
        member.name,
        short(&answer["previousSerial"]),
        short(&answer["serial"]),
        before.len()
    ))
}

fn short(v: &Value) -> String {
    let s = output::cell(v);
    s.chars().take(12).collect()
}

/// The links as the members report them, each counted when either end reports it: at 200
/// members one end of a link just made or closed often reported it and the other not yet, and
/// a one-way edge made every member look like a cut vertex.
fn link_graph(
    reports: impl IntoIterator<Item = (String, BTreeSet<String>)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (member, linked) in reports {
        for n in &linked {
            graph.entry(n.clone()).or_default().insert(member.clone());
        }
        graph.entry(member).or_default().extend(linked);
    }
    graph
}

/// Whether removing `node` keeps the rest connected (links as the members report them).
fn keeps_mesh_connected(graph: &BTreeMap<String, BTreeSet<String>>, node: &str) -> bool {
    unreached(graph, node).is_empty()
}

/// The members other than `without` that the first of them cannot reach over `graph`'s links
/// once `without` is gone.
fn unreached(graph: &BTreeMap<String, BTreeSet<String>>, without: &str) -> Vec<String> {
    let Some(start) = graph.keys().find(|k| *k != without) else { return vec![] };
    let mut seen = BTreeSet::from([start.clone()]);
    let mut queue = VecDeque::from([start.clone()]);
    while let Some(n) = queue.pop_front() {
        for next in graph.get(&n).into_iter().flatten() {
            if next != without && seen.insert(next.clone()) {
                queue.push_back(next.clone());
            }
        }
    }
    graph.keys().filter(|k| *k != without && !seen.contains(*k)).cloned().collect()
}

/// Revokes a well-connected member whose loss does not split the mesh (sparing `spare`, the
/// member that just rotated, when another will do).
fn revoke(run: &mut Run, manifest: &Manifest, spare: &str) -> Result<String, String> {
    let mut reports = Vec::new();
    for m in &manifest.members {
        reports.push((m.name.clone(), links(m)?));
    }
    let graph = link_graph(reports);
    let apart = unreached(&graph, "");
    if !apart.is_empty() {
        return Err(format!(
            "the mesh is not connected before the revocation: {} reached from the rest by no link",
            apart.join(", ")
        ));
    }
    let candidates: Vec<(&String, usize)> = graph
        .iter()
        .filter(|(n, _)| keeps_mesh_connected(&graph, n))
        .map(|(n, l)| (n, l.len()))
        .collect();
    let victim = candidates
        .iter()
        .max_by_key(|(n, l)| (n.as_str() != spare, *l))
        .map(|(n, _)| (*n).clone())
        .ok_or("every member is needed to keep the mesh connected; try more --nodes")?;
    let neighbours = graph[&victim].len();
    let r = crate::revoke::revoke_and_wait(manifest, &victim, Duration::from_secs(15))?;
    let f = &mut run.figures;
    f.revoked = Some(victim.clone());
    f.cut_off_everywhere = Some(r.confirmed());
    if !r.confirmed() {
        return Err(format!(
            "15 s after CRL {}: still reaching {victim}: [{}]; not answering: [{}]",
            r.crl_number,
            r.still_reaching.join(", "),
            r.unreachable.join(", ")
        ));
    }
    f.revocation_applied_ms = r.applied_everywhere_ms;
    f.revocation_cut_off_ms = r.cut_off_everywhere_ms;
    let victim_member = manifest.member(&victim)?;
    let isolated = links(victim_member).map(|l| l.is_empty()).unwrap_or(true);
    // The members that lost a link to it find other peers; the rest routes around the gap.
    let start = Instant::now();
    let rest: Vec<&Member> = manifest.members.iter().filter(|m| m.name != victim).collect();
    let want = rest.len() * (rest.len() - 1);
    // Members still short of routes at the last look, with how many they lack.
    let mut short: Vec<(usize, String)> = Vec::new();
    mesh::wait_until(
        Duration::from_secs(30),
        "the mesh to route around the revoked member",
        || {
            short.clear();
            for m in &rest {
                let routes = client::get_json(&m.admin, "/admin/routes").ok();
                let got = routes
                    .as_ref()
                    .and_then(|r| r.as_array())
                    .map_or(0, |a| a.iter().filter(|r| r["dest"] != victim.as_str()).count());
                if got < rest.len() - 1 {
                    short.push((rest.len() - 1 - got, m.name.clone()));
                }
            }
            short.is_empty()
        },
    )
    .map_err(|e| {
        let lacking: usize = short.iter().map(|(n, _)| n).sum();
        short.sort_by(|a, b| b.cmp(a));
        let worst: Vec<String> =
            short.iter().take(5).map(|(n, m)| format!("{m} lacks {n}")).collect();
        format!(
            "{e}: {lacking} of {want} routes missing, at {} members ({}{})",
            short.len(),
            worst.join(", "),
            if short.len() > 5 { ", ..." } else { "" }
        )
    })?;
    let healed = start.elapsed().as_secs_f64() * 1e3 + r.cut_off_everywhere_ms.unwrap_or(0.0);
    run.figures.healed_ms = Some(healed);
    Ok(format!(
        "{victim} ({neighbours} links) revoked: CRL {} pushed via {}, applied by all {} other \
         members in {:.0} ms; verified cut off everywhere (no link, no route) in {:.0} ms{}",
        r.crl_number,
        r.via,
        manifest.members.len() - 1,
        r.applied_everywhere_ms.unwrap_or(0.0),
        r.cut_off_everywhere_ms.unwrap_or(0.0),
        if isolated { "; it now has no links at all" } else { "" }
    ) + &format!(
        "; the other {} members route to each other again after {healed:.0} ms",
        rest.len()
    ))
}

/// A forged envelope and an unauthorised one are refused with the rule that refused them;
/// a genuine one is obeyed by every member.
fn control(run: &mut Run, manifest: &Manifest, via: &Member) -> Result<String, String> {
    let admin = crate::control::signer(&manifest.principal_cert, &manifest.principal_key)?;
    let wire = crate::control::sign(
        &admin,
        &manifest.network,
        Verb::Shutdown,
        Scope::Network,
        BTreeMap::new(),
    )?;
    let mut forged = genesis_trust::SignedEnvelope::decode(&wire).map_err(|e| e.to_string())?;
    let last = forged.signature.len() - 1;
    forged.signature[last] ^= 0x01;
    let wait = Duration::from_millis(500);
    let (status, answer) = crate::control::inject(&via.admin, &forged.encode(), 1, wait)?;
    if status != 403 {
        return Err(format!("a forged shutdown was answered {status} {answer}"));
    }
    let forged_reason = output::cell(&answer["error"]);
    // A genuine member's certificate, but a client may not shut the network down.
    let authority = manifest.authority()?;
    let dir = manifest.authority_dir.parent().unwrap_or(&manifest.authority_dir);
    let (cert, key) = mesh::write_principal(&authority, dir, Role::Client, "demo-client")?;
    let client_signer = crate::control::signer(&cert, &key)?;
    let wire = crate::control::sign(
        &client_signer,
        &manifest.network,
        Verb::Shutdown,
        Scope::Network,
        BTreeMap::new(),
    )?;
    let (status, answer) = crate::control::inject(&via.admin, &wire, 1, wait)?;
    if status != 403 {
        return Err(format!("a client's shutdown was answered {status} {answer}"));
    }
    let rbac_rule = output::cell(&answer["rule"]);
    // The genuine admin message, obeyed (and acknowledged) by every member still in the mesh.
    let revoked = run.figures.revoked.clone().unwrap_or_default();
    let expect = manifest.members.iter().filter(|m| m.name != revoked).count();
    let mut args = BTreeMap::new();
    args.insert("level".to_owned(), "info".to_owned());
    let wire =
        crate::control::sign(&admin, &manifest.network, Verb::LogLevel, Scope::Network, args)?;
    let (status, answer) =
        crate::control::inject(&via.admin, &wire, expect, Duration::from_secs(5))?;
    let applied =
        answer["acks"].as_array().map_or(0, |a| a.iter().filter(|a| a["applied"] == true).count());
    if status != 202 || applied != expect {
        return Err(format!("a genuine log-level reached {applied}/{expect} members: {answer}"));
    }
    run.figures.control_refused = Some(forged_reason.clone());
    Ok(format!(
        "forged signature refused at {} ({forged_reason}); a client's shutdown refused by rule \
         {rbac_rule}; a genuine admin log-level obeyed by all {expect} members",
        via.name
    ))
}

/// Every member's audit chain verifies, and the refusals are in it.
fn audit(run: &mut Run, manifest: &Manifest) -> Result<String, String> {
    let mut records = 0;
    let mut refusals = 0;
    for m in &manifest.members {
        let summary = genesis_trust::verify_audit_file(&m.audit)
            .map_err(|e| format!("{}: {e}", m.audit.display()))?;
        records += summary.records;
        let text = std::fs::read_to_string(&m.audit).map_err(|e| e.to_string())?;
        refusals += text.matches("\"control-refused\"").count();
    }
    if refusals < 2 {
        return Err(format!("the two refused control messages left {refusals} audit records"));
    }
    run.figures.audit_records = Some(records);
    Ok(format!(
        "{} hash-chained logs, {records} records, every chain intact; the refusals are recorded \
         ({refusals} control-refused)",
        manifest.members.len()
    ))
}

fn print_summary(
    run: &Run,
    spec: &LaunchSpec,
    stopped: Option<bool>,
    format: crate::output::Output,
) {
    let ok = run.stages.iter().all(|s| s.ok);
    let f = &run.figures;
    if format != crate::output::Output::Table {
        let value = json!({
            "ok": ok,
            "nodes": spec.nodes,
            "topology": spec.topology,
            "stages": run.stages,
            "figures": f,
            "leftRunning": stopped.map(|s| !s),
        });
        crate::output::print(format, &value, String::new);
        return;
    }
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    let rows = vec![
        vec!["nodes".into(), format!("{} ({:?})", spec.nodes, spec.topology)],
        vec!["links".into(), f.links.map_or("-".into(), |l| l.to_string())],
        vec!["join (all members)".into(), ms(f.join_ms)],
        vec!["routes converged (from first start)".into(), ms(f.convergence_ms)],
        vec!["longest path".into(), f.max_hops.map_or("-".into(), |h| format!("{h} hops"))],
        vec![
            "message p50 / p99".into(),
            format!("{} / {}", ms(f.message_p50_ms), ms(f.message_p99_ms)),
        ],
        vec!["tunnelled request".into(), ms(f.tunnel_ms)],
        vec![
            "rotation".into(),
            f.rotated
                .as_ref()
                .map_or("-".into(), |n| format!("{n}, {} links kept", f.links_kept.unwrap_or(0))),
        ],
        vec![
            "revocation applied everywhere".into(),
            format!("{} ({})", ms(f.revocation_applied_ms), f.revoked.as_deref().unwrap_or("-")),
        ],
        vec!["revoked member cut off everywhere".into(), ms(f.revocation_cut_off_ms)],
        vec!["mesh routes around it".into(), ms(f.healed_ms)],
    ];
    println!("\n{}", output::table(&["summary", ""], &rows));
    let passed = run.stages.iter().filter(|s| s.ok).count();
    match stopped {
        Some(true) => {
            println!("{passed}/{} stages passed; every process stopped", run.stages.len())
        }
        Some(false) => {
            println!("{passed}/{} stages passed; SOME PROCESSES DID NOT STOP", run.stages.len())
        }
        None => {}
    }
    if !ok {
        if let Some(s) = run.stages.iter().find(|s| !s.ok) {
            println!("failed at: {} ({})", s.name, s.detail);
        }
        println!("logs: {}", spec.dir.display());
    }
}

/// `--subnet` must be three octets in 127/8, and the members' addresses in it free: a second
/// demo on the same subnet is refused up front, not half started.
fn check_subnet(subnet: &str, nodes: usize) -> Result<(), String> {
    let octets: Vec<&str> = subnet.split('.').collect();
    let valid =
        octets.len() == 3 && octets[0] == "127" && octets.iter().all(|o| o.parse::<u8>().is_ok());
    if !valid {
        return Err(format!(
            "--subnet {subnet:?} is not the first three octets of a loopback address, e.g. 127.42.0"
        ));
    }
    for i in 1..=nodes {
        for port in [mesh::PEER_PORT, mesh::ADMIN_PORT] {
            let addr = format!("{subnet}.{i}:{port}");
            if let Err(e) = std::net::TcpListener::bind(&addr) {
                return Err(format!(
                    "{addr} is not free ({e}): another demo is running on this subnet? Stop it, \
                     or pick another with --subnet (e.g. 127.43.0)"
                ));
            }
        }
    }
    Ok(())
}

/// `--keep`: say where to look, then wait for Ctrl-C.
fn keep_running(m: &Manifest, dir: &std::path::Path, children: &Children, as_json: bool) {
    if !as_json {
        let d = dir.display();
        println!("\nThe mesh keeps running (Ctrl-C stops it). Try:");
        println!("  genesisctl status --mesh {d}");
        println!("  genesisctl check --mesh {d}");
        if let Some(first) = m.members.first() {
            println!("  genesisctl routes {} --mesh {d}", first.name);
            println!("  curl http://{}/metrics", first.admin);
            println!("  curl -X POST --data-binary hi http://{}/v1/messages/<node>", first.api);
        }
        println!("  logs and audit logs: {d}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for (name, status) in children.reap() {
            eprintln!("{name} exited ({status}); the rest of the mesh keeps running");
        }
        if children.pids().is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(member: &str, linked: &[&str]) -> (String, BTreeSet<String>) {
        (member.to_owned(), linked.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_link_reported_by_one_end_counts_and_cut_vertices_are_found() {
        // m2 has not reported its link to m3 yet; m3 has.
        let graph = link_graph([
            report("m0", &["m1", "m2"]),
            report("m1", &["m0", "m2"]),
            report("m2", &["m0", "m1"]),
            report("m3", &["m2"]),
        ]);
        assert!(unreached(&graph, "").is_empty(), "{graph:?}");
        assert!(keeps_mesh_connected(&graph, "m0"));
        assert!(!keeps_mesh_connected(&graph, "m2"), "m3 hangs on m2 alone");
        assert_eq!(unreached(&graph, "m2"), ["m3"]);
        // A member nobody reports a link with, and that reports none, is apart.
        let graph = link_graph([report("m0", &["m1"]), report("m1", &[]), report("m9", &[])]);
        assert_eq!(unreached(&graph, ""), ["m9"]);
    }
}
