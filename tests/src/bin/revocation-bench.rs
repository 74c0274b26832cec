//! Revocation benchmark: time from pushing a new CRL into one member until every other member
//! holds it, for 10, 20 and 50 sidecar processes in a sparse random topology; and the flood cost
//! of a network-wide control message (frames sent per member).
//!
//! Run: `cargo run --release -p genesis-e2e --bin revocation-bench` (`-- 10 20` for other sizes).
//! Each member records the wall-clock time (ms) it applied the CRL; the figure is the latest of
//! those minus the time of the push, so observing costs the members nothing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use genesis_e2e::{http, sparse_mesh, wait_for, Authority, Sidecar, Subnet};
use genesis_operator::local::LocalAuthority;
use genesis_trust::{
    create_csr, ControlEnvelope, EnvelopeSigner, Identity, KeyAlgorithm, PrivateKey, Role, Scope,
    Verb,
};

fn crl_number(s: &str) -> Option<u64> {
    let (_, body) = http(s, "GET", "/admin/identity", b"").ok()?;
    serde_json::from_slice::<serde_json::Value>(&body).ok()?["crlNumber"].as_u64()
}

fn sum(nodes: &[Sidecar], metric: &str, labels: &str) -> f64 {
    nodes.iter().map(|s| s.metric(metric, labels)).sum()
}

fn main() {
    std::env::set_var("GENESIS_SIDECAR_LOG", "warn");
    let sizes: Vec<u8> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 20, 50] } else { sizes };
    println!("| members | CRL propagation (push → all hold it) | CRL data frames sent per member | control frames sent per member (network-wide message) |");
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let net = Subnet::new();
        let auth = Authority::start(&net, "rbench", "24h");
        let nodes = sparse_mesh(&auth, &net, n, 0x5eed + u64::from(n));
        wait_for(Duration::from_secs(180), "the mesh to converge", || {
            nodes.iter().all(|s| s.routes().len() == usize::from(n) - 1)
        });
        // Control flood cost: one network-wide log-level message from the operator.
        let authority = LocalAuthority::open(auth.dir.path()).unwrap();
        let id = Identity::new("test.local", "rbench", Role::Operator, "genesis-operator").unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let issued = authority.issue(&create_csr(&id, &key).unwrap(), &id).unwrap();
        let signer = EnvelopeSigner::new(key, issued.chain).unwrap();
        let args = BTreeMap::from([("level".to_owned(), "warn".to_owned())]);
        let env =
            ControlEnvelope::new("rbench", Verb::LogLevel, Scope::Network, args, SystemTime::now())
                .unwrap();
        let before =
            sum(&nodes, "genesis_sidecar_frames_total", "direction=\"out\",type=\"control\"");
        // Every member is addressed, the one it is injected at included.
        let live = usize::from(n);
        let accepted_before =
            sum(&nodes, "genesis_sidecar_control_messages_total", "result=\"accepted\"");
        let (status, body) = http(
            &nodes[0].admin,
            "POST",
            &format!("/admin/control?expect={live}&wait=10000"),
            &signer.sign(&env).unwrap().encode(),
        )
        .unwrap();
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let acks = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["acks"]
            .as_array()
            .unwrap()
            .len();
        std::thread::sleep(Duration::from_millis(300));
        let control_frames =
            (sum(&nodes, "genesis_sidecar_frames_total", "direction=\"out\",type=\"control\"")
                - before)
                / f64::from(n);
        let accepted = sum(&nodes, "genesis_sidecar_control_messages_total", "result=\"accepted\"")
            - accepted_before;
        let victim = usize::from(n / 2);
        auth.revoke(&nodes[victim].node);
        let crl = std::fs::read(auth.dir.path().join("crl.der")).unwrap();
        let crl_before =
            sum(&nodes, "genesis_sidecar_frames_total", "direction=\"out\",type=\"crl_data\"");
        // Each member records when it applied the CRL (wall clock, ms); poll gently so the
        // observers do not steal CPU from the 2 cores the members share.
        let pushed_ms =
            SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let (status, _) = http(&nodes[0].admin, "POST", "/admin/crl", &crl).unwrap();
        assert_eq!(status, 200);
        let others: Vec<&Sidecar> =
            nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s).collect();
        wait_for(Duration::from_secs(30), "every member to hold the CRL", || {
            others.iter().all(|s| crl_number(&s.admin) == Some(1))
        });
        let times: Vec<Duration> = others
            .iter()
            .map(|s| {
                let at = s.admin_json("/admin/identity")["crlAppliedAtMs"].as_u64().unwrap();
                Duration::from_millis(at.saturating_sub(pushed_ms))
            })
            .collect();
        let convergence = times.iter().max().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let crl_frames =
            (sum(&nodes, "genesis_sidecar_frames_total", "direction=\"out\",type=\"crl_data\"")
                - crl_before)
                / f64::from(n);

        println!(
            "| {n} | {:.1} ms (median member {:.1} ms) | {crl_frames:.2} | {control_frames:.2} (accepted by {accepted}, {acks} of {live} acknowledged) |",
            convergence.as_secs_f64() * 1e3,
            {
                let mut t = times.clone();
                t.sort();
                t[t.len() / 2].as_secs_f64() * 1e3
            },
        );
    }
}
