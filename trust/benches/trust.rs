//! Trust-core benchmark: leaf issuance, peer verification against a 10,000-entry CRL, and
//! control-envelope verification, each beside the raw ring signature operation it is built
//! on, measured in the same run. Single-threaded, so every figure is per core.
//!
//! Run: `cargo bench -p genesis-trust --bench trust` (add `-- --quick` for a short run).
//! Figures and the machine they came from are kept in docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use genesis_trust::{
    create_csr, CertificateAuthority, ControlEnvelope, ControlVerifier, EnvelopeSigner, Identity,
    KeyAlgorithm, LeafPolicy, PeerRole, PrivateKey, RbacPolicy, RevocationList, RevocationReason,
    Role, Scope, Serial, TrustBundle, TrustPolicy, TrustStore, Verb,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

const TD: &str = "cluster.local";
const NET: &str = "bench";

struct Figure {
    name: &'static str,
    ops_per_sec: f64,
}

/// Runs `op` over `inputs` (each once) and returns operations per second.
fn measure<T>(inputs: &mut Vec<T>, mut op: impl FnMut(T)) -> f64 {
    let n = inputs.len();
    let start = Instant::now();
    for input in inputs.drain(..) {
        op(input);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Repeats `op` for about `budget` and returns operations per second.
fn measure_for(budget: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            op();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, budget) =
        if quick { (500, Duration::from_millis(300)) } else { (5000, Duration::from_secs(2)) };
    let now = SystemTime::now();
    let rng = SystemRandom::new();
    let mut figures = Vec::new();

    // Baselines: the raw ECDSA P-256 operations everything below is built on.
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let raw =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
    let msg = [7u8; 300];
    let sig = raw.sign(&rng, &msg).unwrap();
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        raw.public_key().as_ref().to_vec(),
    );
    let raw_sign = measure_for(budget, || {
        black_box(raw.sign(&rng, black_box(&msg)).unwrap());
    });
    let raw_verify = measure_for(budget, || {
        public.verify(black_box(&msg), sig.as_ref()).unwrap();
    });
    figures.push(Figure { name: "baseline: raw ring ECDSA P-256 sign", ops_per_sec: raw_sign });
    figures.push(Figure { name: "baseline: raw ring ECDSA P-256 verify", ops_per_sec: raw_verify });

    // Leaf issuance from a CSR (verify the CSR's signature, check entitlement, sign the leaf).
    let ca = CertificateAuthority::generate(
        TD,
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400 * 365),
        now,
    )
    .unwrap();
    let mut csrs: Vec<(Identity, Vec<u8>)> = (0..n)
        .map(|i| {
            let id = Identity::new(TD, NET, Role::Client, &format!("node-{i}")).unwrap();
            let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            let csr = create_csr(&id, &key).unwrap();
            (id, csr)
        })
        .collect();
    let policy = LeafPolicy::default();
    let issue = measure(&mut csrs, |(id, csr)| {
        black_box(ca.issue_from_csr(&csr, &id, &policy, now).unwrap());
    });
    figures.push(Figure { name: "leaf issuance from CSR (P-256)", ops_per_sec: issue });

    let id = Identity::new(TD, NET, Role::Admin, "tool").unwrap();
    let issue_keyed = measure_for(budget, || {
        black_box(ca.issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &policy, now).unwrap());
    });
    figures.push(Figure {
        name: "leaf issuance with generated key (P-256)",
        ops_per_sec: issue_keyed,
    });

    // Peer verification with a 10,000-entry CRL held.
    let mut list = RevocationList::default();
    let mut bytes = [0u8; 16];
    for i in 0..10_000u64 {
        bytes[..8].copy_from_slice(&(0x1000_0000_0000_0000 + i).to_be_bytes());
        list.revoke(&Serial::from_bytes(&bytes).unwrap(), RevocationReason::Unspecified, now);
    }
    let crl = ca.sign_crl(&list, now, now + Duration::from_secs(3600)).unwrap();
    let store = Arc::new(TrustStore::new(
        TrustPolicy { trust_domain: TD.into(), network: Some(NET.into()), require_fresh_crl: true },
        TrustBundle::new(vec![ca.cert_der().clone()]).unwrap(),
    ));
    let install_start = Instant::now();
    store.install_crl(&crl, now).unwrap();
    let install_ms = install_start.elapsed().as_secs_f64() * 1e3;
    let peer_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let peer_id = Identity::new(TD, NET, Role::Client, "peer").unwrap();
    let peer = ca
        .issue_from_csr(&create_csr(&peer_id, &peer_key).unwrap(), &peer_id, &policy, now)
        .unwrap();
    let verify = measure_for(budget, || {
        black_box(store.verify(&peer.chain, now, PeerRole::Client).unwrap());
    });
    figures.push(Figure { name: "peer verification, 10,000-entry CRL held", ops_per_sec: verify });

    // Control envelope verification (decode, chain + CRL, signature, RBAC, replay cache).
    let (op_cert, op_key) = {
        let id = Identity::new(TD, NET, Role::Operator, "operator").unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        (ca.issue_from_csr(&create_csr(&id, &key).unwrap(), &id, &policy, now).unwrap(), key)
    };
    let signer = EnvelopeSigner::new(op_key, op_cert.chain).unwrap();
    let mut wires: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let env = ControlEnvelope::new(NET, Verb::Drain, Scope::Network, BTreeMap::new(), now)
                .unwrap();
            signer.sign(&env).unwrap().encode()
        })
        .collect();
    let mut verifier = ControlVerifier::new(store.clone(), NET, RbacPolicy::default())
        .with_limits(Duration::from_secs(600), 2 * n);
    let envelope = measure(&mut wires, |wire| {
        black_box(verifier.verify(&wire, now).unwrap());
    });
    figures.push(Figure { name: "control envelope verification", ops_per_sec: envelope });

    println!("| operation | ops/s per core | vs raw sign | vs raw verify |");
    println!("|---|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} |",
            f.name,
            f.ops_per_sec,
            f.ops_per_sec / raw_sign,
            f.ops_per_sec / raw_verify
        );
    }
    println!();
    println!("signing a 10,000-entry CRL and installing it in a store: {install_ms:.1} ms to install, {} bytes", crl.der().len());
}
