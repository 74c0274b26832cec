use std::time::{Duration, SystemTime};

use genesis_trust::{
    CertificateAuthority, KeyAlgorithm, LeafPolicy, Role, TrustBundle, TrustPolicy,
};

use super::*;

fn authority(at: SystemTime) -> CertificateAuthority {
    CertificateAuthority::generate("t.local", KeyAlgorithm::Ed25519, Duration::from_secs(86400), at)
        .unwrap()
}

/// A member of `ca`'s network, and the identity its neighbours see on a link to it.
fn member_of(ca: &CertificateAuthority, name: &str, at: SystemTime) -> (Node, PeerIdentity) {
    member_in(ca, name, "", 0, at)
}

/// The same, in `zone`, charging `zone_penalty` for a link to another zone.
fn member_in(
    ca: &CertificateAuthority,
    name: &str,
    zone: &str,
    zone_penalty: u16,
    at: SystemTime,
) -> (Node, PeerIdentity) {
    let id = Identity::new("t.local", "net", Role::Client, name).unwrap();
    let policy = LeafPolicy { duration: Duration::from_secs(3600), renew_before: None };
    let (issued, key) =
        ca.issue_with_generated_key(&id, KeyAlgorithm::Ed25519, &policy, at).unwrap();
    let bundle = TrustBundle::new(vec![ca.cert_der().clone()]).unwrap();
    let policy = TrustPolicy {
        trust_domain: "t.local".into(),
        network: Some("net".into()),
        require_fresh_crl: false,
    };
    let store = Arc::new(TrustStore::new(policy, bundle));
    let config = NodeConfig {
        hello_interval: Duration::from_secs(1),
        hold_time: Duration::from_secs(3),
        routing: RoutingConfig::default(),
        peers: PeerConfig::default(),
        rbac: RbacPolicy::default(),
        anchors: vec![],
        zone: zone.to_owned(),
        zone_penalty,
    };
    let peer = PeerIdentity {
        identity: id.clone(),
        serial: issued.serial.clone(),
        not_after: issued.not_after,
        fingerprint: issued.fingerprint.clone(),
    };
    let leaf = issued.chain[0].to_vec();
    (Node::new(id, config, store, Arc::new(key), leaf, Time::ZERO, at, 7), peer)
}

fn member(name: &str, at: SystemTime) -> Node {
    member_of(&authority(at), name, at).0
}

/// Members on a line, m0 - m1 - ..., exchanging real encoded frames in memory.
struct Line {
    nodes: Vec<Node>,
    wall: SystemTime,
    /// Route adverts delivered so far, and how many of them carried a certificate.
    adverts: usize,
    with_cert: usize,
    /// Links each side closed: (closing member, its neighbour).
    closed: Vec<(usize, usize)>,
}

impl Line {
    fn new(n: usize) -> Line {
        let edges: Vec<(usize, usize, u64)> = (1..n).map(|i| (i - 1, i, 1)).collect();
        Line::mesh(n, &edges, |_| "", 0)
    }

    /// Members m0, m1, ... linked by `edges` (a, b, RTT in ms), member i in `zone(i)`.
    fn mesh(
        n: usize,
        edges: &[(usize, usize, u64)],
        zone: impl Fn(usize) -> &'static str,
        zone_penalty: u16,
    ) -> Line {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = authority(wall);
        let members: Vec<(Node, PeerIdentity)> =
            (0..n).map(|i| member_in(&ca, &format!("m{i}"), zone(i), zone_penalty, wall)).collect();
        let peers: Vec<PeerIdentity> = members.iter().map(|(_, p)| p.clone()).collect();
        let mut line = Line {
            nodes: members.into_iter().map(|(node, _)| node).collect(),
            wall,
            adverts: 0,
            with_cert: 0,
            closed: vec![],
        };
        for &(x, y, rtt) in edges {
            for (a, b, outbound) in [(x, y, true), (y, x, false)] {
                let up = LinkUp {
                    node: format!("m{b}"),
                    addr: format!("m{b}"),
                    peer: peers[b].clone(),
                    outbound,
                    link_id: Line::link_id(a, b),
                    rtt: Some(Duration::from_millis(rtt)),
                    zone: zone(b).to_owned(),
                };
                line.nodes[a].handle_link_up(Time::ZERO, up).unwrap();
            }
        }
        line.pump(Time::ZERO);
        line
    }

    fn link_id(a: usize, b: usize) -> u64 {
        (a.min(b) * 1000 + a.max(b)) as u64
    }

    /// Carries every frame the members send until none is left.
    fn pump(&mut self, now: Time) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(out) = self.nodes[i].poll() {
                    match out {
                        Output::Send { to, frame } => {
                            moved = true;
                            let j: usize = to[1..].parse().unwrap();
                            self.deliver(now, i, j, frame.encode());
                        }
                        Output::Close { node, .. } => {
                            self.closed.push((i, node[1..].parse().unwrap()));
                        }
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Delivers an encoded frame from member `i` to member `j`, as a link reader would.
    fn deliver(&mut self, now: Time, i: usize, j: usize, bytes: Vec<u8>) {
        let mut decoder = crate::frame::FrameDecoder::new();
        decoder.push(&bytes);
        let frame = decoder.next_frame().unwrap().unwrap();
        if let Frame::RouteUpdate { adverts } = &frame {
            self.adverts += adverts.len();
            self.with_cert += adverts.iter().filter(|a| !a.cert.is_empty()).count();
        }
        let from = format!("m{i}");
        self.nodes[j].handle_frame(now, self.wall, &from, Line::link_id(i, j), frame, bytes.len());
    }

    fn tick(&mut self, now: Time) {
        for node in &mut self.nodes {
            node.handle_tick(now, self.wall, &|_| Some(now));
        }
        self.pump(now);
    }

    /// As `tick`, with every ping member `i` sends answered `rtt` later (a busy peer, or a
    /// slow path); everything else is carried at once.
    fn tick_with_late_pongs(&mut self, now: Time, i: usize, rtt: Duration) {
        for node in &mut self.nodes {
            node.handle_tick(now, self.wall, &|_| Some(now));
        }
        loop {
            let mut moved = false;
            for a in 0..self.nodes.len() {
                while let Some(out) = self.nodes[a].poll() {
                    let Output::Send { to, frame } = out else { continue };
                    moved = true;
                    let b: usize = to[1..].parse().unwrap();
                    match frame {
                        Frame::Ping { nonce } if a == i => {
                            let pong = Frame::Pong { nonce };
                            let size = pong.encoded_len();
                            let (wall, id) = (self.wall, Line::link_id(a, b));
                            self.nodes[a].handle_frame(now + rtt, wall, &to, id, pong, size);
                        }
                        frame => self.deliver(now, a, b, frame.encode()),
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn a_member_restarted_a_second_later_starts_ahead_of_its_previous_seqno() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let before = member("m1", t).seqno();
    // Its previous life may have raised its seqno a few times on request.
    let raised = before.wrapping_add(10);
    let after = member("m1", t + Duration::from_secs(1)).seqno();
    assert!(crate::routing::seqno_newer(after, raised), "{after} is not newer than {raised}");
}

#[test]
fn a_link_carries_each_destinations_certificate_once_and_routes_survive_periodic_updates() {
    let mut line = Line::new(4);
    assert_eq!(line.nodes[0].next_hop("m3"), Some("m1"), "the line converged");
    // Each link carries each destination's certificate once: 3 links, each way, 4 members.
    let first = line.with_cert;
    assert!(first > 0 && first <= 2 * 3 * 4, "{first} certificates for 3 links of 4 members");

    // Four whole-table updates later (60 s apart), every route has been re-advertised, without
    // a certificate, and the routes still hold past their expiry (each advert is checked
    // against the certificate the link carried).
    let adverts_before = line.adverts;
    for s in 1..=250 {
        line.tick(Time::from_secs(s));
    }
    assert!(line.adverts > adverts_before + 4 * 6, "periodic updates went out");
    assert_eq!(line.with_cert, first, "no certificate was sent twice on a link");
    assert_eq!(line.nodes[0].next_hop("m3"), Some("m1"), "routes outlived their expiry");
    assert_eq!(line.nodes[3].next_hop("m0"), Some("m2"));
    assert!(line.closed.is_empty(), "no link closed: {:?}", line.closed);
}

#[test]
fn an_advert_naming_a_certificate_the_link_never_carried_closes_the_link() {
    let mut line = Line::new(2);
    let seqno = line.nodes[0].seqno();
    let stranger = RouteAdvert {
        dest: "m9".into(),
        seqno,
        metric: 10,
        hops: 1,
        proof: vec![1; 64],
        cert: Vec::new(),
    };
    let frame = Frame::RouteUpdate { adverts: vec![stranger] };
    line.deliver(Time::from_secs(1), 0, 1, frame.encode());
    line.pump(Time::from_secs(1));
    assert_eq!(line.closed, vec![(1, 0)], "m1 closed its link to m0");
    assert_eq!(line.nodes[1].next_hop("m9"), None);
}

#[test]
fn a_cross_zone_penalty_keeps_traffic_between_members_of_one_zone_inside_it_while_a_path_exists() {
    // m0 and m1 in zone a; m2 in zone b on the short path between them (1 ms links), m3 in
    // zone a on a longer one (3 ms links).
    let zone = |i: usize| if i == 2 { "b" } else { "a" };
    let edges = [(0, 2, 1), (2, 1, 1), (0, 3, 3), (3, 1, 3)];
    let flat = Line::mesh(4, &edges, zone, 0);
    assert_eq!(flat.nodes[0].next_hop("m1"), Some("m2"), "without a penalty, the fastest path");
    let mut line = Line::mesh(4, &edges, zone, 500);
    assert_eq!(line.nodes[0].next_hop("m1"), Some("m3"), "the path inside zone a");
    let route = line.nodes[0].routes().into_iter().find(|r| r.dest == "m1").unwrap();
    assert_eq!(route.next_hop_zone.as_deref(), Some("a"));
    let views = line.nodes[0].peer_views(Time::ZERO);
    let m2 = views.iter().find(|p| p.node == "m2").unwrap();
    assert_eq!(m2.zone.as_deref(), Some("b"), "peers show their zone");
    // The path inside the zone breaks: the route crosses zones rather than fail.
    let id = Line::link_id(0, 3);
    line.nodes[0].handle_link_down(Time::ZERO, "m3", id, true, "test");
    line.nodes[3].handle_link_down(Time::ZERO, "m0", id, true, "test");
    line.pump(Time::ZERO);
    assert_eq!(line.nodes[0].next_hop("m1"), Some("m2"));
}

#[test]
fn a_link_costs_the_least_rtt_of_minutes_so_a_busy_peer_moves_no_route() {
    let mut line = Line::mesh(2, &[(0, 1, 12)], |_| "", 0);
    let metric =
        |line: &Line| line.nodes[0].routes().into_iter().find(|r| r.dest == "m1").map(|r| r.metric);
    let first = crate::routing::link_cost(Duration::from_millis(12));
    assert_eq!(metric(&line), Some(first));
    // The peer answers every ping 300 ms late for two minutes (short of CPU): the cost holds.
    let late = Duration::from_millis(300);
    for s in 1..=120 {
        line.tick_with_late_pongs(Time::from_secs(s), 0, late);
    }
    assert_eq!(metric(&line), Some(first), "late pongs moved the route");
    // Still late after two windows: the path itself is slower now, and the cost follows.
    for s in 121..=2 * RTT_EPOCH.as_secs() + 1 {
        line.tick_with_late_pongs(Time::from_secs(s), 0, late);
    }
    assert_eq!(metric(&line), Some(crate::routing::link_cost(late)));
    assert!(line.closed.is_empty(), "no link closed: {:?}", line.closed);
}
