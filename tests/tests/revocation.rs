//! Revocation across a real mesh: a new CRL pushed into one member reaches every member, the
//! revoked member is cut off and cannot come back, and bad CRLs change nothing.

use std::time::Duration;

use genesis_e2e::{http, linked_pair, sparse_mesh, wait_for, Authority, RawPeer, Subnet};
use genesis_operator::local::LocalAuthority;
use genesis_sidecar::frame::Frame;
use genesis_trust::{
    create_csr, CertificateAuthority, Identity, KeyAlgorithm, PrivateKey, RevocationList, Role,
};

#[test]
fn a_revoked_member_is_cut_off_everywhere_and_the_others_keep_talking() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "revoke", "24h");
    let n = 20u8;
    let nodes = sparse_mesh(&auth, &net, n, 0x5eed);
    wait_for(Duration::from_secs(60), "every member to reach every other", || {
        nodes.iter().all(|s| s.routes().len() == usize::from(n) - 1)
    });
    let victim = 7usize;
    auth.revoke(&nodes[victim].node);
    // Push through one member with the real CLI, which waits for every other member.
    let others: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, s)| s.admin.clone())
        .collect();
    let out = std::process::Command::new(&genesis_e2e::binaries().genesisctl)
        .args([
            "crl",
            "push",
            "--via",
            &nodes[0].admin,
            "--members",
            &others.join(","),
            "--timeout",
            "10s",
            "--json",
        ])
        .arg("--crl")
        .arg(auth.dir.path().join("crl.der"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}");
    assert_eq!(
        (report["converged"].as_bool(), report["crlNumber"].as_u64(), report["members"].as_u64()),
        (Some(true), Some(1), Some(19))
    );
    eprintln!(
        "CRL converged on {} members in {:.3}s (genesisctl crl push)",
        n - 1,
        report["seconds"].as_f64().unwrap()
    );

    // The revoked member has no links left and cannot make new ones.
    wait_for(Duration::from_secs(10), "the revoked member to lose every link", || {
        nodes[victim].metric("genesis_sidecar_links", "") == 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        nodes[victim].metric("genesis_sidecar_links", ""),
        0.0,
        "the revoked member got back in"
    );
    for (i, s) in nodes.iter().enumerate() {
        if i != victim {
            assert!(
                !s.routes().contains(&nodes[victim].node),
                "{} still routes to the revoked member",
                s.node
            );
        }
    }
    // The others keep delivering, across the mesh.
    for (a, b) in [(0usize, 19usize), (19, 3), (5, 12)] {
        assert_eq!(
            nodes[a].send(&nodes[b].node, b"after the revocation").0,
            200,
            "{} -> {}",
            nodes[a].node,
            nodes[b].node
        );
    }
    // Each member recorded the CRL in its audit chain, and the chains verify.
    let audit = std::fs::read_to_string(auth.dir.path().join("m3.audit.jsonl")).unwrap();
    assert!(audit.contains("crl-applied"));
    let verified = std::process::Command::new(&genesis_e2e::binaries().genesisctl)
        .args(["audit", "verify"])
        .arg(auth.dir.path().join("m3.audit.jsonl"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[test]
fn stale_foreign_and_garbage_crls_are_refused_and_audited_and_the_current_one_stays() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "badcrl", "24h");
    let (a, b) = linked_pair(&auth, &net);
    let stale = std::fs::read(auth.dir.path().join("crl.der")).unwrap(); // number 0
    auth.revoke("nobody-in-particular"); // nothing issued: no new CRL
    let authority = LocalAuthority::open(auth.dir.path()).unwrap();
    let current =
        authority.publish_crl(&RevocationList { number: 1, ..Default::default() }).unwrap();
    assert_eq!(http(&a.admin, "POST", "/admin/crl", current.der()).unwrap().0, 200);
    wait_for(Duration::from_secs(5), "b to hold CRL 1", || {
        b.admin_json("/admin/identity")["crlNumber"] == 1
    });

    let foreign_ca = CertificateAuthority::generate(
        "test.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let now = std::time::SystemTime::now();
    let foreign = foreign_ca
        .sign_crl(
            &RevocationList { number: 99, ..Default::default() },
            now,
            now + Duration::from_secs(3600),
        )
        .unwrap();
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        ("stale", stale, 409, "not newer"),
        ("foreign", foreign.der().to_vec(), 422, "not signed by this network's authority"),
        ("garbage", b"definitely not a CRL".to_vec(), 422, "malformed CRL"),
    ];
    for (name, der, status, reason) in &cases {
        let (got, body) = http(&a.admin, "POST", "/admin/crl", der).unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, *status, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text}");
    }
    // The same three pushed by a peer over a link.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = Identity::new("test.local", "badcrl", Role::Client, "pusher").unwrap();
    let leaf = authority.issue(&create_csr(&id, &key).unwrap(), &id).unwrap();
    let bundle = std::fs::read_to_string(auth.bundle_path()).unwrap();
    let mut peer = RawPeer::connect(&b.peer, leaf.chain.clone(), &key, &bundle, "badcrl").unwrap();
    let hello = Frame::Hello { identity: id.uri(), listen: String::new(), zone: String::new() };
    peer.send(&hello).unwrap();
    for (_, der, _, _) in &cases {
        peer.send(&Frame::CrlData { der: der.clone() }).unwrap();
    }
    wait_for(Duration::from_secs(5), "b to refuse the pushed CRLs", || {
        b.metric("genesis_sidecar_crl_updates_total", "result=\"refused\"") >= 2.0
            && b.metric("genesis_sidecar_crl_updates_total", "result=\"not_newer\"") >= 1.0
    });
    for s in [&a, &b] {
        assert_eq!(
            s.admin_json("/admin/identity")["crlNumber"],
            1,
            "{} lost its current CRL",
            s.node
        );
        let audit =
            std::fs::read_to_string(auth.dir.path().join(format!("{}.audit.jsonl", s.node)))
                .unwrap();
        assert!(
            audit.contains("crl-refused") && audit.contains("crl-ignored"),
            "{}: {audit}",
            s.node
        );
    }
    // Nothing else was disturbed.
    assert_eq!(a.send("b", b"still linked").0, 200);
}
