//! The simulated network: members (each the sidecar's own sans-IO [`Node`]), links between
//! them with latency, jitter and loss, and one event heap in virtual time. Frames travel as
//! values (their encoded size is counted); a link delivers in order, as TCP does, and a lost
//! segment shows as a retransmission delay, not as a lost frame.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use genesis_sidecar::frame::{Frame, PeerAddr};
use genesis_sidecar::proto::{Count, LinkUp, Node, NodeConfig, Output, ProofCheck};
use genesis_trust::{Identity, PeerIdentity, PrivateKey, Serial, TrustStore};

/// Virtual time since the start of the run.
pub type Time = Duration;

/// A small deterministic generator (splitmix64): the simulator's only randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// How links behave.
#[derive(Debug, Clone)]
pub struct LinkModel {
    /// Zone of each member (latency within a zone, and between zones).
    pub zones: usize,
    pub intra_zone: Duration,
    pub inter_zone: Duration,
    /// Each delivery's latency varies by up to this fraction.
    pub jitter: f64,
    /// Probability that a frame's segment is lost once (TCP retransmits it after an RTO).
    pub loss: f64,
    /// A partition: this zone is cut off from the others (nothing crosses, dials time out).
    pub cut_zone: Option<usize>,
}

/// How long a dial into a partition waits before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl LinkModel {
    /// Whether the partition separates `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) -> bool {
        let zones = self.zones.max(1);
        self.cut_zone.is_some_and(|z| (a % zones == z) != (b % zones == z))
    }

    /// Member `i`'s zone, as its sidecar would be told it: `z0`, `z1`, ..., or empty with one
    /// zone.
    pub fn zone_name(&self, i: usize) -> String {
        if self.zones > 1 {
            format!("z{}", i % self.zones)
        } else {
            String::new()
        }
    }

    /// Whether `a` and `b` are in one zone.
    pub fn same_zone(&self, a: usize, b: usize) -> bool {
        a % self.zones.max(1) == b % self.zones.max(1)
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        if a % self.zones.max(1) == b % self.zones.max(1) {
            self.intra_zone
        } else {
            self.inter_zone
        }
    }
}

/// One member: its node and what the simulator knows of it.
pub struct Member {
    pub name: String,
    pub identity: Identity,
    pub peer: PeerIdentity,
    pub key: Arc<PrivateKey>,
    pub leaf: Vec<u8>,
    pub store: Arc<TrustStore>,
    pub node: Option<Node>,
    /// Live links: peer index → link id.
    pub ends: HashMap<usize, u64>,
    pub started_at: Option<Time>,
}

#[derive(Debug)]
enum Event {
    Start(usize),
    Tick(usize),
    /// A dial of `to` by `from` reaches `to` (after the TCP and TLS handshakes).
    Connect {
        from: usize,
        to: usize,
    },
    Accepted {
        from: usize,
        to: usize,
        link: u64,
    },
    Refused {
        from: usize,
        to: usize,
        peers: Vec<PeerAddr>,
    },
    DialFailed {
        from: usize,
        to: usize,
    },
    Frame {
        to: usize,
        from: usize,
        link: u64,
        frame: Frame,
        size: usize,
    },
    /// The connection `link` broke under `to` (its peer closed it without a goodbye, or died).
    Reset {
        to: usize,
        from: usize,
        link: u64,
    },
}

/// What the run counted, per member and overall.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub route_changes: Vec<u64>,
    pub frames_out: Vec<u64>,
    pub bytes_out: Vec<u64>,
    pub link_closes: u64,
    pub dials: u64,
    pub declined: u64,
    /// When each member applied each CRL number.
    pub crl_applied: HashMap<(usize, u64), Time>,
    /// When each member accepted a control message (by verb).
    pub control_accepted: HashMap<usize, Time>,
    pub invalid: u64,
    pub bans: u64,
    /// Frames sent, by type.
    pub by_type: std::collections::BTreeMap<&'static str, u64>,
    pub last_route_change: Time,
}

/// The seqno proof check shared by every simulated node: a proof is verified once, really,
/// then remembered; revocation is still checked against each node's own CRL.
pub fn shared_proof_check(verifications: Arc<Mutex<u64>>) -> ProofCheck {
    type Key = (String, u32, [u8; 32]);
    let cache: Arc<Mutex<HashMap<Key, (Identity, Serial)>>> = Arc::default();
    Arc::new(move |store, cert, dest, seqno, proof, wall| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(cert);
        h.update(proof);
        let key = (dest.to_owned(), seqno, h.finalize().into());
        if let Some((identity, serial)) = cache.lock().unwrap().get(&key).cloned() {
            if store.is_revoked(&serial) {
                return Err(genesis_trust::Error::Revoked {
                    serial: serial.to_string(),
                    crl_number: store.crl_number().unwrap_or(0),
                });
            }
            return Ok(identity);
        }
        *verifications.lock().unwrap() += 1;
        let identity = genesis_trust::seqno::verify_seqno(store, cert, dest, seqno, proof, wall)?;
        let serial = genesis_trust::Serial::of_certificate(cert)?;
        cache.lock().unwrap().insert(key, (identity.clone(), serial));
        Ok(identity)
    })
}

/// The simulated world.
pub struct World {
    pub members: Vec<Member>,
    pub config: NodeConfig,
    pub links: LinkModel,
    pub wall0: SystemTime,
    pub now: Time,
    pub tally: Tally,
    pub rng: Rng,
    pub proof_check: ProofCheck,
    /// The last whole-network check slot (see `every` in the scenario).
    pub check_slot: Mutex<Option<u128>>,
    events: BinaryHeap<Reverse<(Time, u64, usize)>>,
    payloads: HashMap<usize, Event>,
    next_event: u64,
    next_slot: usize,
    next_link: u64,
    /// Last delivery time per directed link, so a link delivers in order.
    last_delivery: HashMap<(usize, usize, u64), Time>,
    tick_every: Duration,
}

impl World {
    pub fn new(
        members: Vec<Member>,
        config: NodeConfig,
        links: LinkModel,
        wall0: SystemTime,
        seed: u64,
        proof_check: ProofCheck,
    ) -> Self {
        let n = members.len();
        let tick_every = (config.hello_interval / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        World {
            members,
            config,
            links,
            wall0,
            now: Time::ZERO,
            tally: Tally {
                route_changes: vec![0; n],
                frames_out: vec![0; n],
                bytes_out: vec![0; n],
                ..Tally::default()
            },
            rng: Rng::new(seed),
            proof_check,
            check_slot: Mutex::new(None),
            events: BinaryHeap::new(),
            payloads: HashMap::new(),
            next_event: 0,
            next_slot: 0,
            next_link: 1,
            last_delivery: HashMap::new(),
            tick_every,
        }
    }

    pub fn wall(&self) -> SystemTime {
        self.wall0 + self.now
    }

    fn schedule(&mut self, at: Time, event: Event) {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.payloads.insert(slot, event);
        self.next_event += 1;
        self.events.push(Reverse((at, self.next_event, slot)));
    }

    /// Starts member `i` at `at` (its node is created then, from the wall clock of that time).
    pub fn start_at(&mut self, i: usize, at: Time) {
        self.schedule(at, Event::Start(i));
    }

    /// Stops member `i` at once: every neighbour sees its connection reset.
    pub fn crash(&mut self, i: usize) {
        self.members[i].node = None;
        let ends: Vec<(usize, u64)> = self.members[i].ends.drain().collect();
        for (peer, link) in ends {
            if self.links.cut(i, peer) {
                continue; // no reset crosses a partition: the peer's hold time notices
            }
            let at = self.now + self.links.latency(i, peer);
            self.schedule(at, Event::Reset { to: peer, from: i, link });
        }
    }

    /// Runs every event due up to `until`; `check` is called after each event and stops the
    /// run early when it returns true.
    pub fn run_until(&mut self, until: Time, mut check: impl FnMut(&World) -> bool) -> bool {
        while let Some(Reverse((at, _, slot))) = self.events.peek().copied() {
            if at > until {
                break;
            }
            self.events.pop();
            self.now = at;
            let event = self.payloads.remove(&slot).expect("scheduled event");
            self.handle(event);
            if check(self) {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    fn handle(&mut self, event: Event) {
        let now = self.now;
        let wall = self.wall();
        match event {
            Event::Start(i) => {
                let m = &self.members[i];
                let mut node = Node::new(
                    m.identity.clone(),
                    self.config_for(i),
                    m.store.clone(),
                    m.key.clone(),
                    m.leaf.clone(),
                    now,
                    wall,
                    self.rng.next_u64(),
                );
                node.set_proof_check(self.proof_check.clone());
                self.members[i].node = Some(node);
                self.members[i].started_at = Some(now);
                self.schedule(now, Event::Tick(i));
            }
            Event::Tick(i) => {
                let Some(node) = self.members[i].node.as_mut() else { return };
                node.handle_tick(now, wall, &|_| None);
                self.drain(i);
                let at = now + self.tick_every;
                self.schedule(at, Event::Tick(i));
            }
            Event::Connect { from, to } => {
                if self.links.cut(from, to) {
                    self.schedule(now + CONNECT_TIMEOUT, Event::DialFailed { from, to });
                    return;
                }
                let from_name = self.members[from].name.clone();
                let peer = self.members[from].peer.clone();
                let Some(node) = self.members[to].node.as_mut() else {
                    let at = now + self.links.latency(to, from);
                    self.schedule(at, Event::DialFailed { from, to });
                    return;
                };
                let back = now + self.links.latency(to, from);
                match node.admit_inbound(now, &from_name) {
                    Err((_, peers)) => {
                        self.tally.declined += 1;
                        self.schedule(back, Event::Refused { from, to, peers });
                    }
                    Ok(()) => {
                        let link = self.next_link;
                        self.next_link += 1;
                        let up = LinkUp {
                            node: from_name.clone(),
                            addr: from_name,
                            peer,
                            outbound: false,
                            link_id: link,
                            rtt: Some(self.links.latency(from, to) * 2),
                            zone: self.links.zone_name(from),
                        };
                        match node.handle_link_up(now, up) {
                            Ok(()) => {
                                self.members[to].ends.insert(from, link);
                                self.schedule(back, Event::Accepted { from, to, link });
                                // NB: our hello reaches the dialer before anything we send on
                                // the link, as on a real connection; without this a frame could
                                // overtake the link coming up there and be lost.
                                self.last_delivery.insert((to, from, link), back);
                            }
                            Err(_) => {
                                self.schedule(back, Event::Refused { from, to, peers: vec![] })
                            }
                        }
                        self.drain(to);
                    }
                }
            }
            Event::Accepted { from, to, link } => {
                let to_name = self.members[to].name.clone();
                let peer = self.members[to].peer.clone();
                let rtt = Some(self.links.latency(from, to) * 2);
                let Some(node) = self.members[from].node.as_mut() else { return };
                let up = LinkUp {
                    node: to_name.clone(),
                    addr: to_name,
                    peer,
                    outbound: true,
                    link_id: link,
                    rtt,
                    zone: self.links.zone_name(to),
                };
                match node.handle_link_up(now, up) {
                    Ok(()) => {
                        self.members[from].ends.insert(to, link);
                    }
                    Err(reason) => {
                        // Our side refused (already linked, or full meanwhile): say so.
                        let frame = Frame::Close { reason };
                        self.deliver(from, to, link, frame);
                    }
                }
                self.drain(from);
            }
            Event::Refused { from, to, peers } => {
                let addr = self.members[to].name.clone();
                if let Some(node) = self.members[from].node.as_mut() {
                    node.handle_dial_refused(now, &addr, &peers);
                    self.drain(from);
                }
            }
            Event::DialFailed { from, to } => {
                let addr = self.members[to].name.clone();
                if let Some(node) = self.members[from].node.as_mut() {
                    node.handle_dial_failed(now, &addr);
                    self.drain(from);
                }
            }
            Event::Frame { to, from, link, frame, size } => {
                if self.members[to].ends.get(&from) != Some(&link) {
                    return; // the link is gone on this side
                }
                let from_name = self.members[from].name.clone();
                let Some(node) = self.members[to].node.as_mut() else { return };
                node.handle_frame(now, wall, &from_name, link, frame, size);
                self.drain(to);
            }
            Event::Reset { to, from, link } => {
                if self.members[to].ends.get(&from) != Some(&link) {
                    return;
                }
                let from_name = self.members[from].name.clone();
                let Some(node) = self.members[to].node.as_mut() else { return };
                node.handle_link_down(now, &from_name, link, true, "connection reset");
                self.drain(to);
            }
        }
    }

    fn config_for(&self, i: usize) -> NodeConfig {
        NodeConfig { zone: self.links.zone_name(i), ..self.config.clone() }
    }

    /// Schedules `frame` from `from` to `to` on `link`: latency with jitter, a retransmission
    /// delay when its segment is lost, and never before the previous frame on that link.
    fn deliver(&mut self, from: usize, to: usize, link: u64, frame: Frame) {
        let size = frame.encode().len();
        *self.tally.by_type.entry(frame.frame_type().as_str()).or_default() += 1;
        self.tally.frames_out[from] += 1;
        self.tally.bytes_out[from] += size as u64;
        if self.links.cut(from, to) {
            return; // lost in the partition
        }
        let base = self.links.latency(from, to);
        let jitter = 1.0 + self.links.jitter * (self.rng.unit() * 2.0 - 1.0);
        let mut at = self.now + base.mul_f64(jitter.max(0.0));
        if self.rng.unit() < self.links.loss {
            at += Duration::from_millis(200) + base * 2;
        }
        let key = (from, to, link);
        let at = at.max(self.last_delivery.get(&key).copied().unwrap_or_default());
        self.last_delivery.insert(key, at);
        self.schedule(at, Event::Frame { to, from, link, frame, size });
    }

    fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix('m')?.parse().ok()
    }

    /// Carries out what member `i`'s node asked for.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(output) = self.members[i].node.as_mut().and_then(Node::poll) else { return };
            match output {
                Output::Send { to, frame } => {
                    let Some(j) = Self::index_of(&to) else { continue };
                    if let Some(link) = self.members[i].ends.get(&j).copied() {
                        self.deliver(i, j, link, frame);
                    }
                }
                Output::Close { node, link_id, goodbye } => {
                    let Some(j) = Self::index_of(&node) else { continue };
                    match goodbye {
                        Some(reason) => self.deliver(i, j, link_id, Frame::Close { reason }),
                        None if self.links.cut(i, j) => {}
                        None => {
                            let at = self.now + self.links.latency(i, j);
                            self.schedule(at, Event::Reset { to: j, from: i, link: link_id });
                        }
                    }
                }
                Output::LinkGone { node, link_id } => {
                    if let Some(j) = Self::index_of(&node) {
                        if self.members[i].ends.get(&j) == Some(&link_id) {
                            self.members[i].ends.remove(&j);
                        }
                    }
                }
                Output::Dial { addr } => {
                    let Some(j) = Self::index_of(&addr) else { continue };
                    self.tally.dials += 1;
                    // TCP, then TLS 1.3 and the hellos: about two round trips.
                    let at = self.now + self.links.latency(i, j) * 3;
                    self.schedule(at, Event::Connect { from: i, to: j });
                }
                Output::RoutesChanged => self.tally.last_route_change = self.now,
                Output::CrlApplied { number } => {
                    self.tally.crl_applied.insert((i, number), self.now);
                }
                Output::Count(c) => match c {
                    Count::RouteChanged => self.tally.route_changes[i] += 1,
                    Count::LinkClosed(_) => self.tally.link_closes += 1,
                    Count::Invalid(_) => self.tally.invalid += 1,
                    Count::Ban => self.tally.bans += 1,
                    Count::Control(_, "accepted") => {
                        self.tally.control_accepted.entry(i).or_insert(self.now);
                    }
                    _ => {}
                },
                Output::Audit { .. }
                | Output::AppBroadcast { .. }
                | Output::DeliverData(_)
                | Output::FlowUnreachable { .. }
                | Output::Ack(_)
                | Output::Draining
                | Output::Shutdown => {}
            }
        }
    }

    /// Injects `der` (a signed CRL) at member `i`, as the CRL publisher pushes it to an anchor.
    pub fn push_crl(&mut self, i: usize, der: &[u8]) -> Result<u64, String> {
        let (now, wall) = (self.now, self.wall());
        let node = self.members[i].node.as_mut().ok_or("that member is not running")?;
        let result = node.handle_crl(now, wall, "publisher", der);
        self.drain(i);
        result.map_err(|e| e.to_string())
    }

    /// Injects a signed control envelope at member `i` (its admin API).
    pub fn inject_control(&mut self, i: usize, wire: Vec<u8>) -> bool {
        let (now, wall) = (self.now, self.wall());
        let Some(node) = self.members[i].node.as_mut() else { return false };
        let origin = node.name().to_owned();
        let accepted = node.handle_control(now, wall, None, origin, wire).is_ok();
        self.drain(i);
        accepted
    }

    /// The running members' nodes, by index.
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.members.iter().enumerate().filter_map(|(i, m)| m.node.as_ref().map(|n| (i, n)))
    }
}
