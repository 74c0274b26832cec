//! `genesisctl demo`: Genesis Mesh on one machine.
//!
//! The demo does not drive sidecar processes yet (they run today: README, "A mesh by hand"), so
//! this runs the
//! trust core every sidecar is built on, for real: a file-backed authority, members that keep
//! their keys and get certificates by CSR, mutual TLS 1.3 over loopback TCP, a revocation that
//! cuts one member off, refused forged control messages, and the audit chain recording it all.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use genesis_trust::tls::{peer_client_config, peer_server_config};
use genesis_trust::{
    create_csr, AuditLog, CertificateAuthority, ControlEnvelope, ControlVerifier, EnvelopeSigner,
    Identity, IssuedCertificate, KeyAlgorithm, LeafPolicy, PrivateKey, RbacPolicy, RevocationList,
    RevocationReason, Role, Scope, TrustBundle, TrustPolicy, TrustStore, Verb,
};
use serde::Serialize;

const TRUST_DOMAIN: &str = "demo.local";
const NETWORK: &str = "demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Members to create (at least 3).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(3..=1000))]
    nodes: u16,
    /// Print one JSON summary instead of progress lines.
    #[arg(long)]
    json: bool,
}

/// One member: its identity, key (never leaves it), certificate and trust store.
struct Member {
    key: PrivateKey,
    cert: IssuedCertificate,
    store: Arc<TrustStore>,
}

#[derive(Serialize)]
struct Stage {
    name: &'static str,
    ok: bool,
    detail: String,
    millis: f64,
}

#[derive(Serialize)]
struct Summary {
    ok: bool,
    built: &'static str,
    not_built_yet: &'static str,
    nodes: u16,
    stages: Vec<Stage>,
    audit_records: u64,
    audit_head: String,
}

struct Progress {
    json: bool,
    stages: Vec<Stage>,
}

impl Progress {
    fn stage(&mut self, name: &'static str, f: impl FnOnce() -> Result<String, String>) -> bool {
        let start = Instant::now();
        let result = f();
        let millis = start.elapsed().as_secs_f64() * 1e3;
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        if !self.json {
            println!("{} {name:<34} {detail} ({millis:.1} ms)", if ok { "✔" } else { "✘" });
        }
        self.stages.push(Stage { name, ok, detail, millis });
        ok
    }
}

pub fn run(args: &DemoArgs) -> ExitCode {
    match run_demo(args) {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary).expect("summary serializes"));
            } else {
                println!();
                println!(
                    "{} of {} stages passed; audit log: {} records, head {}",
                    summary.stages.iter().filter(|s| s.ok).count(),
                    summary.stages.len(),
                    summary.audit_records,
                    &summary.audit_head[..16]
                );
                println!("Not built yet: {}", summary.not_built_yet);
            }
            if summary.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("genesisctl demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_demo(args: &DemoArgs) -> Result<Summary, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a work directory: {e}"))?;
    let mut audit = AuditLog::open(&dir.path().join("audit.jsonl")).map_err(|e| e.to_string())?;
    let mut p = Progress { json: args.json, stages: Vec::new() };
    if !args.json {
        println!("Genesis Mesh demo — trust core on one machine ({} members)", args.nodes);
        println!("(sidecar processes are not part of the demo yet: README, \"A mesh by hand\")\n");
    }
    let now = SystemTime::now();
    let mut ca = None;
    p.stage("authority created", || {
        let authority = CertificateAuthority::generate(
            TRUST_DOMAIN,
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(365 * 86400),
            now,
        )
        .map_err(|e| e.to_string())?;
        persist_authority(dir.path(), &authority)?;
        let detail =
            format!("CA {}…, written to {}", &authority.fingerprint()[..16], dir.path().display());
        ca = Some(authority);
        Ok(detail)
    });
    let ca = ca.ok_or("the authority could not be created")?;

    let mut members = Vec::new();
    p.stage("members joined by CSR", || {
        let bundle = TrustBundle::new(vec![ca.cert_der().clone()]).map_err(|e| e.to_string())?;
        for i in 0..args.nodes {
            let role = if i == 0 { Role::Anchor } else { Role::Client };
            let id = Identity::new(TRUST_DOMAIN, NETWORK, role, &format!("node-{i}"))
                .map_err(|e| e.to_string())?;
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| e.to_string())?;
            let csr = create_csr(&id, &key).map_err(|e| e.to_string())?;
            let cert = ca
                .issue_from_csr(&csr, &id, &LeafPolicy::default(), now)
                .map_err(|e| e.to_string())?;
            let policy = TrustPolicy {
                trust_domain: TRUST_DOMAIN.into(),
                network: Some(NETWORK.into()),
                require_fresh_crl: true,
            };
            members.push(Member {
                key,
                cert,
                store: Arc::new(TrustStore::new(policy, bundle.clone())),
            });
        }
        Ok(format!("{} certificates issued, keys never left their members", members.len()))
    });

    let mut list = RevocationList::default();
    p.stage("initial CRL installed everywhere", || {
        let crl =
            ca.sign_crl(&list, now, now + Duration::from_secs(3600)).map_err(|e| e.to_string())?;
        for m in &members {
            m.store.install_crl(&crl, now).map_err(|e| e.to_string())?;
        }
        Ok(format!("CRL number {}", crl.number()))
    });

    p.stage("mutual TLS 1.3 over loopback", || {
        let peer = handshake(&members[0], &members[1])?;
        Ok(format!("node-0 ⇄ node-1 authenticated; node-0 sees {peer}"))
    });

    let revoked = members.len() - 1;
    p.stage("member revoked and cut off", || {
        let start = Instant::now();
        list.revoke(&members[revoked].cert.serial, RevocationReason::KeyCompromise, now);
        let crl = ca.sign_crl(&list, now, now + Duration::from_secs(3600)).map_err(|e| e.to_string())?;
        for m in &members {
            m.store.install_crl(&crl, now).map_err(|e| e.to_string())?;
        }
        let applied = start.elapsed();
        audit_event(&mut audit, "crl-applied", "crl", serde_json::json!({"number": crl.number()}))?;
        match handshake(&members[0], &members[revoked]) {
            Ok(_) => Err(format!("node-{revoked} still got a link after revocation")),
            Err(e) => {
                audit_event(&mut audit, "link-refused", &members[revoked].cert.identity.uri(), serde_json::json!({"reason": e}))?;
                Ok(format!(
                    "node-{revoked}: CRL {} signed and applied by all {} members in {:.2} ms; its handshake is refused ({e})",
                    crl.number(),
                    members.len(),
                    applied.as_secs_f64() * 1e3
                ))
            }
        }
    });

    p.stage("forged control messages refused", || {
        let signer = |m: &Member| {
            let key = PrivateKey::from_pem(&m.key.to_pem()).map_err(|e| e.to_string())?;
            EnvelopeSigner::new(key, m.cert.chain.clone()).map_err(|e| e.to_string())
        };
        let mut verifier =
            ControlVerifier::new(members[0].store.clone(), NETWORK, RbacPolicy::default());
        let client = signer(&members[1])?;
        let shutdown =
            ControlEnvelope::new(NETWORK, Verb::Shutdown, Scope::Network, BTreeMap::new(), now)
                .map_err(|e| e.to_string())?;
        let mut refusals = Vec::new();
        let wire = client.sign(&shutdown).map_err(|e| e.to_string())?.encode();
        let mut forged = client.sign(&shutdown).map_err(|e| e.to_string())?;
        let last = forged.signature.len() - 1;
        forged.signature[last] ^= 1;
        for (what, wire) in [("client shutdown", wire), ("forged signature", forged.encode())] {
            match verifier.verify(&wire, now) {
                Ok(a) => return Err(format!("{what} was accepted by rule {}", a.rule)),
                Err(r) => {
                    audit_event(
                        &mut audit,
                        "control-refused",
                        what,
                        serde_json::json!({"rule": r.rule, "error": r.error.to_string()}),
                    )?;
                    refusals.push(format!("{what}: {}", r.rule));
                }
            }
        }
        Ok(refusals.join("; "))
    });

    let summary_audit = audit_summary(dir.path())?;
    p.stage("audit chain verified", || Ok(format!("{} records intact", summary_audit.records)));
    let ok = p.stages.iter().all(|s| s.ok);
    Ok(Summary {
        ok,
        built: "trust core: authority, CSR issuance, mutual TLS verifier, CRLs, signed control messages, audit log",
        not_built_yet: "demo stages with sidecar processes (they run today: README, 'A mesh by hand'), the Kubernetes operator, the Helm chart",
        nodes: args.nodes,
        stages: p.stages,
        audit_records: summary_audit.records,
        audit_head: summary_audit.head,
    })
}

fn persist_authority(dir: &Path, ca: &CertificateAuthority) -> Result<(), String> {
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ca.key"), ca.key_pem()).map_err(|e| e.to_string())
}

fn audit_event(
    log: &mut AuditLog,
    event: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), String> {
    log.append(event, subject, detail, SystemTime::now()).map(drop).map_err(|e| e.to_string())
}

fn audit_summary(dir: &Path) -> Result<genesis_trust::audit::AuditSummary, String> {
    genesis_trust::verify_audit_file(&dir.join("audit.jsonl")).map_err(|e| e.to_string())
}

/// Connects `client` to `server` over a real loopback TCP socket with mutual TLS; returns the
/// identity the server verified, or why the handshake failed.
fn handshake(server: &Member, client: &Member) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let sc = Arc::new(
        peer_server_config(server.store.clone(), server.cert.chain.clone(), &server.key)
            .map_err(|e| e.to_string())?,
    );
    let cc = Arc::new(
        peer_client_config(client.store.clone(), client.cert.chain.clone(), &client.key)
            .map_err(|e| e.to_string())?,
    );
    let accept = std::thread::spawn(move || -> Result<String, String> {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(sc).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        tls.write_all(b"hello").map_err(|e| e.to_string())?;
        let chain = tls.conn.peer_certificates().ok_or("no client certificate")?;
        let id = genesis_trust::CertInfo::require_identity(&chain[0]).map_err(|e| e.to_string())?;
        Ok(id.uri())
    });
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("peer.genesis-mesh.invalid")
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cc, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let client_side = tls.write_all(b"hello").and_then(|()| {
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf)
    });
    let server_side = accept.join().map_err(|_| "server thread panicked".to_string())?;
    match (server_side, client_side) {
        (Ok(id), Ok(())) => Ok(id),
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(e.to_string()),
    }
}
