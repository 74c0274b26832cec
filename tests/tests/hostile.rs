//! Hostile peers against a real three-member mesh: garbage, oversized and flooding frames, an
//! exhausted TTL, a forged route, a forged direct stream, and certificates that are foreign,
//! expired or revoked. Each is refused and counted, misbehaving peers lose reputation, and the
//! mesh keeps delivering.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, SystemTime};

use genesis_e2e::{connect_tunnel, wait_for, Authority, RawPeer, Sidecar, SidecarOptions, Subnet};
use genesis_operator::local::LocalAuthority;
use genesis_sidecar::frame::{Data, DataKind, Frame, FrameType, RouteAdvert, PROTOCOL_VERSION};
use genesis_sidecar::stream::{DIRECT, SERVICE_TUNNEL};
use genesis_trust::{
    create_csr, CertificateAuthority, Identity, IssuedCertificate, KeyAlgorithm, LeafPolicy,
    PrivateKey, Role,
};

const NET: &str = "hostile";

struct Mint {
    authority: LocalAuthority,
    bundle: String,
}

impl Mint {
    fn id(node: &str) -> Identity {
        Identity::new("test.local", NET, Role::Client, node).unwrap()
    }

    /// A valid member certificate, recorded by the authority (so it can be revoked).
    fn member(&self, node: &str) -> (IssuedCertificate, PrivateKey) {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let issued = self
            .authority
            .issue(&create_csr(&Self::id(node), &key).unwrap(), &Self::id(node))
            .unwrap();
        (issued, key)
    }

    fn connect(
        &self,
        s: &Sidecar,
        cert: &(IssuedCertificate, PrivateKey),
    ) -> Result<RawPeer, String> {
        let mut p = RawPeer::connect(&s.peer, cert.0.chain.clone(), &cert.1, &self.bundle, NET)?;
        let hello = Frame::Hello {
            identity: cert.0.identity.uri(),
            listen: String::new(),
            zone: String::new(),
        };
        p.send(&hello).map_err(|e| e.to_string())?;
        Ok(p)
    }
}

/// Tries a link with `cert` and reports whether `s` counted exactly one more refused handshake.
/// (Whether the client side notices depends on timing: in TLS 1.3 the server judges the client
/// certificate after the client finished, so the refusal counter is the reliable signal.)
fn refused_handshake(mint: &Mint, s: &Sidecar, cert: &(IssuedCertificate, PrivateKey)) -> bool {
    let refused = || s.metric("genesis_sidecar_handshakes_total", "result=\"refused\"");
    let before = refused();
    if let Ok(mut p) = mint.connect(s, cert) {
        p.closed_within(Duration::from_millis(500));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if refused() == before + 1.0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn hostile_peers_are_refused_counted_and_penalised_while_the_mesh_keeps_delivering() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let opts = |i: u8| SidecarOptions {
        anchors: if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] },
        min_peers: 1,
        max_peers: 8,
        ..Default::default()
    };
    let s0 = Sidecar::start(&auth, "s0", &net.ip(1), &opts(0));
    let s1 = Sidecar::start(&auth, "s1", &net.ip(2), &opts(1));
    let s2 = Sidecar::start(&auth, "s2", &net.ip(3), &opts(2));
    wait_for(Duration::from_secs(30), "s0 and s2 to route to each other", || {
        s0.routes().contains(&"s2".to_owned()) && s2.routes().contains(&"s0".to_owned())
    });
    let mint = Mint {
        authority: LocalAuthority::open(auth.dir.path()).unwrap(),
        bundle: std::fs::read_to_string(auth.bundle_path()).unwrap(),
    };
    let invalid = |reason: &str| {
        s0.metric("genesis_sidecar_invalid_frames_total", &format!("reason=\"{reason}\""))
    };
    let dropped = |reason: &str| {
        s0.metric("genesis_sidecar_dropped_frames_total", &format!("reason=\"{reason}\""))
    };
    let score = |node: &str| {
        s0.admin_json("/admin/peers")
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == node)
            .map(|p| p["score"].as_u64().unwrap())
    };

    // Garbage: a frame of an unknown protocol version closes the link and costs reputation.
    let mut p = mint.connect(&s0, &mint.member("h-garbage")).unwrap();
    p.send_raw(b"\x00\x00\x00\x0a\x07\x01garbage!").unwrap();
    assert!(p.closed_within(Duration::from_secs(5)), "garbage did not close the link");
    wait_for(Duration::from_secs(5), "the garbage to be counted", || invalid("version") >= 1.0);
    assert!(score("h-garbage").unwrap() < 50, "no reputation cost");

    // Oversized: a header announcing 10 MiB is refused before any body is read.
    let mut p = mint.connect(&s0, &mint.member("h-oversized")).unwrap();
    let mut header = (10u32 << 20).to_be_bytes().to_vec();
    header.extend_from_slice(&[PROTOCOL_VERSION, FrameType::Data as u8]);
    p.send_raw(&header).unwrap();
    assert!(p.closed_within(Duration::from_secs(5)));
    wait_for(Duration::from_secs(5), "the oversized frame to be counted", || {
        invalid("too_large") >= 1.0
    });

    // A flood of control frames is rate limited.
    let mut p = mint.connect(&s0, &mint.member("h-flood")).unwrap();
    let pings: Vec<u8> = (0..5000u64).flat_map(|n| Frame::Ping { nonce: n }.encode()).collect();
    let _ = p.send_raw(&pings);
    wait_for(Duration::from_secs(5), "the flood to be rate limited", || {
        dropped("rate_limited") >= 1.0
    });
    assert!(score("h-flood").unwrap() < 50);

    // A data frame whose hop limit is exhausted is dropped, not forwarded.
    let mut p = mint.connect(&s0, &mint.member("h-ttl")).unwrap();
    let data = Data {
        src: "h-ttl".into(),
        dst: "s2".into(),
        ttl: 1,
        kind: DataKind::StreamData,
        flow: 1,
        payload: b"x".to_vec().into(),
    };
    p.send(&Frame::Data(data)).unwrap();
    wait_for(Duration::from_secs(5), "the TTL drop to be counted", || {
        dropped("ttl_expired") >= 1.0
    });

    // A forged route: a fresher seqno for s2 signed by someone else.
    let forger = mint.member("h-forger");
    let mut p = mint.connect(&s0, &forger).unwrap();
    let proof = genesis_trust::seqno::sign_seqno(&forger.1, &Mint::id("s2"), u32::MAX / 2).unwrap();
    let advert = RouteAdvert {
        dest: "s2".into(),
        seqno: u32::MAX / 2,
        metric: 1,
        hops: 0,
        proof,
        cert: forger.0.leaf().to_vec(),
    };
    p.send(&Frame::RouteUpdate { adverts: vec![advert] }).unwrap();
    wait_for(Duration::from_secs(5), "the forged route to be refused", || {
        invalid("forged_route") >= 1.0
    });
    let to_s2 = s0
        .admin_json("/admin/routes")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dest"] == "s2")
        .cloned()
        .unwrap();
    assert_eq!(to_s2["next_hop"], "s1", "the forged route was not taken");

    // Certificates the mesh refuses at the handshake; a valid one is not refused (control).
    assert!(!refused_handshake(&mint, &s0, &mint.member("h-valid")), "a valid member was refused");
    let foreign_ca = CertificateAuthority::generate(
        "test.local",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(86400),
        SystemTime::now(),
    )
    .unwrap();
    let foreign = foreign_ca
        .issue_with_generated_key(
            &Mint::id("h-foreign"),
            KeyAlgorithm::EcdsaP256,
            &LeafPolicy::default(),
            SystemTime::now(),
        )
        .unwrap();
    assert!(refused_handshake(&mint, &s0, &foreign), "a foreign CA's member got a link");
    let long_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
    let expired = mint
        .authority
        .ca()
        .issue_with_generated_key(
            &Mint::id("h-expired"),
            KeyAlgorithm::EcdsaP256,
            &LeafPolicy { duration: Duration::from_secs(3600), renew_before: None },
            long_ago,
        )
        .unwrap();
    assert!(refused_handshake(&mint, &s0, &expired), "an expired certificate got a link");

    // Revoked: revoke a member, push the new CRL into the mesh through a courier peer, and the
    // revoked member is refused everywhere it goes.
    let revoked = mint.member("h-revoked");
    auth.revoke("h-revoked");
    let crl = std::fs::read(auth.dir.path().join("crl.der")).unwrap();
    let mut courier = mint.connect(&s0, &mint.member("h-courier")).unwrap();
    courier.send(&Frame::CrlData { der: crl }).unwrap();
    wait_for(Duration::from_secs(10), "every member to hold the new CRL", || {
        [&s0, &s1, &s2].iter().all(|s| s.admin_json("/admin/identity")["crlNumber"] == 1)
    });
    assert!(refused_handshake(&mint, &s2, &revoked), "a revoked certificate got a link at s2");
    assert!(refused_handshake(&mint, &s0, &revoked), "a revoked certificate got a link at s0");

    // Through all of it the members keep delivering.
    assert_eq!(s0.send("s2", b"still here").0, 200);
    assert_eq!(s2.send("s0", b"and back").0, 200);
    assert_eq!(s1.send("s0", b"and from the middle").0, 200);
}

#[test]
fn a_flood_of_forged_stream_openings_costs_its_sender_and_little_else() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let opts = SidecarOptions { min_peers: 1, max_peers: 8, ..Default::default() };
    let victim = Sidecar::start(&auth, "victim", &net.ip(1), &opts);
    let innocent_opts =
        SidecarOptions { anchors: vec![format!("{}:7000", net.ip(1))], ..opts.clone() };
    let innocent = Sidecar::start(&auth, "innocent", &net.ip(2), &innocent_opts);
    wait_for(Duration::from_secs(20), "the two to link", || victim.routes() == ["innocent"]);
    let mint = Mint {
        authority: LocalAuthority::open(auth.dir.path()).unwrap(),
        bundle: std::fs::read_to_string(auth.bundle_path()).unwrap(),
    };
    let rss_before = victim.rss_kib().unwrap();
    let mut forger = mint.connect(&victim, &mint.member("h-streams")).unwrap();
    // 3,000 stream openings in the innocent member's name; the bytes are no TLS handshake.
    let flood: Vec<u8> = (0..3000u64)
        .flat_map(|flow| {
            Frame::Data(Data {
                src: "innocent".into(),
                dst: "victim".into(),
                ttl: 8,
                kind: DataKind::StreamOpen,
                flow,
                payload: [&[2u8, 0, 0][..], b"not a client hello"].concat().into(),
            })
            .encode()
        })
        .collect();
    let _ = forger.send_raw(&flood);
    // The neighbour that delivered them pays: it is banned and its link closed.
    assert!(forger.closed_within(Duration::from_secs(10)), "the forger kept its link");
    wait_for(Duration::from_secs(5), "the forger to be banned", || {
        victim.metric("genesis_sidecar_bans_total", "") >= 1.0
    });
    // The innocent member is blamed in a handful of audit records, not thousands.
    let audit =
        std::fs::read_to_string(auth.dir.path().join("victim.audit.jsonl")).unwrap_or_default();
    let blamed = audit
        .lines()
        .filter(|l| l.contains("\"stream-refused\"") && l.contains("\"innocent\""))
        .count();
    assert!((1..=5).contains(&blamed), "{blamed} audit records blame the innocent member");
    // Memory stays put (the refused openings hold nothing), and the mesh keeps delivering.
    let rss_after = victim.rss_kib().unwrap();
    assert!(rss_after < rss_before + 16 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
    assert_eq!(victim.send("innocent", b"still friends").0, 200);
    assert_eq!(innocent.send("victim", b"and back").0, 200);
}

/// A hostile member relays broadcasts it forged: one claiming another member as its source,
/// and its own with the payload changed after signing. Every member it reaches refuses both
/// (counted and audited), no app receives them, and a genuine broadcast still arrives
/// everywhere, with its source's verified identity.
#[test]
fn forged_broadcasts_are_refused_everywhere_and_genuine_ones_still_arrive() {
    use genesis_sidecar::frame::Broadcast;
    use genesis_trust::broadcast::sign_broadcast;
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let opts = |i: u8| SidecarOptions {
        anchors: if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(1))] },
        min_peers: 1,
        max_peers: 8,
        ..Default::default()
    };
    let members: Vec<Sidecar> = (0..3u8)
        .map(|i| Sidecar::start(&auth, &format!("s{i}"), &net.ip(i + 1), &opts(i)))
        .collect();
    wait_for(Duration::from_secs(30), "the three to route to each other", || {
        members.iter().all(|s| s.routes().len() == 2)
    });
    let mint = Mint {
        authority: LocalAuthority::open(auth.dir.path()).unwrap(),
        bundle: std::fs::read_to_string(auth.bundle_path()).unwrap(),
    };
    let hostile = mint.member("h-bcast");
    let id = hostile.0.identity.clone();
    // "s2 says": signed by h-bcast, with h-bcast's certificate, claiming s2 as the source.
    let as_s2 = Broadcast {
        src: "s2".into(),
        id: 1,
        ttl: 8,
        topic: String::new(),
        payload: b"forged: s2 says".to_vec(),
        cert: hostile.0.leaf().to_vec(),
        sig: sign_broadcast(&hostile.1, &Mint::id("s2"), 1, "", b"forged: s2 says").unwrap(),
    };
    // Its own broadcast, altered after signing (what a relay that rewrites would send).
    let altered = Broadcast {
        src: "h-bcast".into(),
        id: 2,
        payload: b"forged: altered".to_vec(),
        sig: sign_broadcast(&hostile.1, &id, 2, "", b"the original").unwrap(),
        ..as_s2.clone()
    };
    let forged_at = |s: &Sidecar| {
        s.metric("genesis_sidecar_invalid_frames_total", "reason=\"forged_broadcast\"")
    };
    // The hostile member links to every member and hands each both forgeries.
    let mut links: Vec<_> = members.iter().map(|s| mint.connect(s, &hostile).unwrap()).collect();
    for p in &mut links {
        p.send(&Frame::Broadcast(as_s2.clone())).unwrap();
        p.send(&Frame::Broadcast(altered.clone())).unwrap();
    }
    for s in &members {
        wait_for(Duration::from_secs(10), "both forgeries to be refused", || forged_at(s) >= 2.0);
        let log = s.log_text();
        assert!(log.contains("forged broadcast: it names s2"), "the reason is logged");
        assert!(log.contains("forged broadcast: the signature does not verify"), "logged");
    }
    // Each forgery cost the sender reputation: it is cut off.
    for p in &mut links {
        assert!(p.closed_within(Duration::from_secs(10)), "the forger kept a link");
    }
    // A genuine broadcast from another member, h-source, linked to s2 only: the members
    // relay it and it arrives everywhere with h-source's verified identity. The forgeries
    // never reached an app.
    let source = mint.member("h-source");
    let mut at_s2 = mint.connect(&members[2], &source).unwrap();
    let genuine = Broadcast {
        src: "h-source".into(),
        id: 3,
        payload: b"genuine".to_vec(),
        cert: source.0.leaf().to_vec(),
        sig: sign_broadcast(&source.1, &source.0.identity, 3, "", b"genuine").unwrap(),
        ..as_s2.clone()
    };
    at_s2.send(&Frame::Broadcast(genuine)).unwrap();
    use base64::Engine;
    let body = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for (i, s) in members.iter().enumerate() {
        let mut got = Vec::new();
        wait_for(Duration::from_secs(10), "the genuine broadcast to arrive", || {
            got.extend(s.inbox(200));
            got.iter().any(|m| m["from"] == "h-source")
        });
        let from_source = got.iter().find(|m| m["from"] == "h-source").unwrap();
        assert_eq!(from_source["fromIdentity"], source.0.identity.uri());
        assert_eq!(from_source["body"], body(b"genuine"));
        for forged in [b"forged: s2 says".as_slice(), b"forged: altered"] {
            assert!(
                got.iter().all(|m| m["body"] != body(forged)),
                "s{i} delivered a forgery: {got:?}"
            );
        }
    }
}

#[test]
fn forged_malformed_and_replayed_service_records_are_refused_and_genuine_ones_are_held() {
    use genesis_sidecar::frame::Broadcast;
    use genesis_sidecar::services::{Record, TOPIC};
    use genesis_trust::broadcast::sign_broadcast;
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let opts = |i: u8| SidecarOptions {
        anchors: if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(1))] },
        ..Default::default()
    };
    let members: Vec<Sidecar> = (0..2u8)
        .map(|i| Sidecar::start(&auth, &format!("s{i}"), &net.ip(i + 1), &opts(i)))
        .collect();
    wait_for(Duration::from_secs(30), "the two to route to each other", || {
        members.iter().all(|s| s.routes().len() == 1)
    });
    let mint = Mint {
        authority: LocalAuthority::open(auth.dir.path()).unwrap(),
        bundle: std::fs::read_to_string(auth.bundle_path()).unwrap(),
    };
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    let record = |issued_ms: u128, services: &[(&str, u16)]| {
        serde_json::to_vec(&Record {
            issued_ms: issued_ms as u64,
            ttl_secs: 90,
            services: services.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        })
        .unwrap()
    };
    let signed = |who: &(IssuedCertificate, PrivateKey), src: &str, id: u64, payload: Vec<u8>| {
        let sig = sign_broadcast(&who.1, &Mint::id(src), id, TOPIC, &payload).unwrap();
        Broadcast {
            src: src.into(),
            id,
            ttl: 8,
            topic: TOPIC.into(),
            payload,
            cert: who.0.leaf().to_vec(),
            sig,
        }
    };
    let hostile = mint.member("h-svc");
    let mut link = mint.connect(&members[0], &hostile).unwrap();
    let services = |s: &Sidecar| s.admin_json("/admin/services");
    // 1. A record in s1's name, signed with h-svc's key: "s1 offers pay".
    link.send(&Frame::Broadcast(signed(&hostile, "s1", 1, record(now_ms, &[("pay", 9999)]))))
        .unwrap();
    // 2. Its own record, signed, but not a record (the source's fault, not a relay's).
    link.send(&Frame::Broadcast(signed(&hostile, "h-svc", 2, b"{\"services\": 7}".to_vec())))
        .unwrap();
    // 3. Its own, well-formed record: held everywhere, under its own name.
    link.send(&Frame::Broadcast(signed(&hostile, "h-svc", 3, record(now_ms, &[("pay", 9999)]))))
        .unwrap();
    for s in &members {
        wait_for(Duration::from_secs(10), "the genuine record to arrive", || {
            services(s).as_array().unwrap().iter().any(|r| r["member"] == "h-svc")
        });
        let held = services(s);
        assert!(held.as_array().unwrap().iter().all(|r| r["member"] != "s1"), "{held}");
    }
    let s0 = &members[0];
    wait_for(Duration::from_secs(5), "the forgery and the bad record to be counted", || {
        s0.metric("genesis_sidecar_invalid_frames_total", "reason=\"forged_broadcast\"") >= 1.0
            && s0.metric("genesis_sidecar_invalid_frames_total", "reason=\"bad_service_record\"")
                >= 1.0
    });
    // 4. A newer record withdraws pay; a replay of the older one (a new id, same signed
    //    record content) is stale and brings nothing back.
    link.send(&Frame::Broadcast(signed(&hostile, "h-svc", 4, record(now_ms + 1, &[])))).unwrap();
    for s in &members {
        wait_for(Duration::from_secs(10), "the withdrawal to arrive", || {
            services(s).as_array().unwrap().is_empty()
        });
    }
    link.send(&Frame::Broadcast(signed(&hostile, "h-svc", 5, record(now_ms, &[("pay", 9999)]))))
        .unwrap();
    wait_for(Duration::from_secs(5), "the replay to be dropped as stale", || {
        s0.metric("genesis_sidecar_dropped_frames_total", "reason=\"stale_service_record\"") >= 1.0
    });
    assert!(services(s0).as_array().unwrap().is_empty(), "{}", services(s0));
    // 5. A record that outlived its lifetime is stale on arrival too.
    let expired = record(now_ms - 120_000, &[("pay", 9999)]);
    link.send(&Frame::Broadcast(signed(&hostile, "h-svc", 6, expired))).unwrap();
    wait_for(Duration::from_secs(5), "the expired record to be dropped", || {
        s0.metric("genesis_sidecar_dropped_frames_total", "reason=\"stale_service_record\"") >= 2.0
    });
    assert!(services(s0).as_array().unwrap().is_empty());
    assert!(s0.log_text().contains("refused a service record"), "the bad record is logged");
}

/// A direct stream carries no end-to-end TLS, so its opening counts only over the link to its
/// source: one delivered in another member's name is refused (counted, audited, its deliverer
/// blamed) and reaches no app, while a genuine direct tunnel between the two still works.
#[test]
fn a_direct_stream_opening_in_another_members_name_is_refused_and_a_genuine_one_works() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let opts = SidecarOptions { allowed_ports: vec![9100], ..Default::default() };
    let victim = Sidecar::start(&auth, "victim", &net.ip(1), &opts);
    let innocent_opts =
        SidecarOptions { anchors: vec![format!("{}:7000", net.ip(1))], ..opts.clone() };
    let innocent = Sidecar::start(&auth, "innocent", &net.ip(2), &innocent_opts);
    wait_for(Duration::from_secs(20), "the two to link", || victim.routes() == ["innocent"]);
    // The app behind the victim: it must see no connection for the forged opening.
    let app = TcpListener::bind(format!("{}:9100", net.ip(1))).unwrap();
    app.set_nonblocking(true).unwrap();
    let mint = Mint {
        authority: LocalAuthority::open(auth.dir.path()).unwrap(),
        bundle: std::fs::read_to_string(auth.bundle_path()).unwrap(),
    };
    let mut forger = mint.connect(&victim, &mint.member("h-direct")).unwrap();
    let port = 9100u16.to_be_bytes();
    forger
        .send(&Frame::Data(Data {
            src: "innocent".into(),
            dst: "victim".into(),
            ttl: 8,
            kind: DataKind::StreamOpen,
            flow: 7,
            payload: vec![SERVICE_TUNNEL | DIRECT, port[0], port[1]].into(),
        }))
        .unwrap();
    let refused = "reason=\"direct_not_from_source\"";
    wait_for(Duration::from_secs(5), "the forged direct opening to be refused", || {
        victim.metric("genesis_sidecar_dropped_frames_total", refused) >= 1.0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(app.accept().is_err(), "the forged opening reached the app");
    assert_eq!(victim.metric("genesis_sidecar_direct_streams_total", "direction=\"in\""), 0.0);
    let audit =
        std::fs::read_to_string(auth.dir.path().join("victim.audit.jsonl")).unwrap_or_default();
    assert!(
        audit.lines().any(|l| l.contains("\"stream-refused\"") && l.contains("came from h-direct")),
        "no audit record names the deliverer:\n{audit}"
    );

    // The genuine member's tunnel to its neighbour is direct, and works.
    app.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = app.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let (mut s, head) = connect_tunnel(&innocent.api, &format!("victim.{NET}:9100")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(innocent.metric("genesis_sidecar_direct_streams_total", "direction=\"out\""), 1.0);
    assert_eq!(victim.metric("genesis_sidecar_direct_streams_total", "direction=\"in\""), 1.0);
}
