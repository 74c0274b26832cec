//! The simulated network: members (each the sidecar's own sans-IO [`Node`]), links between
//! them with latency, jitter and loss, and one event heap in virtual time. Frames travel as
//! values (their encoded size is counted); a link delivers in order, as TCP does, and a lost
//! segment shows as a retransmission delay, not as a lost frame.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rayon::prelude::*;
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

/// One member as the simulator made it: identity, key and trust store. Read-only while the
/// world runs (any member reads any other's name and certificate).
pub struct Member {
    pub name: String,
    pub identity: Identity,
    pub peer: PeerIdentity,
    pub key: Arc<PrivateKey>,
    pub leaf: Vec<u8>,
    pub store: Arc<TrustStore>,
}

/// What changes of one member as the world runs: its node (while running), its links and its
/// own randomness. Only events at this member touch it, so the members of one window run on
/// separate threads (see [`World::run_until`]).
pub struct MemberState {
    pub node: Option<Node>,
    /// Live links: peer index → link id.
    pub ends: HashMap<usize, u64>,
    pub started_at: Option<Time>,
    /// Jitter and loss of the frames it sends, and its node's seed.
    rng: Rng,
    /// Link ids this member handed out (with its index in the high bits, unique in the world).
    next_link: u64,
    /// Last delivery time per link it sends on (peer, link), so a link delivers in order.
    last_delivery: HashMap<(usize, u64), Time>,
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
        let identity = genesis_trust::seqno::verify_seqno(store, cert, dest, seqno, proof, wall)?;
        let serial = genesis_trust::Serial::of_certificate(cert)?;
        // NB: counted once per proof, even when two threads verified it together.
        if cache.lock().unwrap().insert(key, (identity.clone(), serial)).is_none() {
            *verifications.lock().unwrap() += 1;
        }
        Ok(identity)
    })
}

/// The simulated world.
pub struct World {
    pub members: Vec<Member>,
    pub states: Vec<MemberState>,
    pub config: NodeConfig,
    pub links: LinkModel,
    pub wall0: SystemTime,
    pub now: Time,
    pub tally: Tally,
    pub proof_check: ProofCheck,
    /// The last whole-network check slot (see `every` in the scenario).
    pub check_slot: Mutex<Option<u128>>,
    events: BinaryHeap<Reverse<(Time, u64)>>,
    payloads: HashMap<u64, Event>,
    next_event: u64,
    tick_every: Duration,
    /// No event at one member causes one at another sooner than this (see
    /// [`World::run_until`]).
    lookahead: Duration,
}

/// Windows with events at fewer members than this run on the calling thread.
const PARALLEL_FROM: usize = 4;

impl Event {
    /// The member whose node handles the event.
    fn member(&self) -> usize {
        match self {
            Event::Start(i) | Event::Tick(i) => *i,
            Event::Accepted { from, .. }
            | Event::Refused { from, .. }
            | Event::DialFailed { from, .. } => *from,
            Event::Connect { to, .. } | Event::Frame { to, .. } | Event::Reset { to, .. } => *to,
        }
    }
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
        let states = (0..n)
            .map(|i| MemberState {
                node: None,
                ends: HashMap::new(),
                started_at: None,
                rng: Rng::new(
                    Rng::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64(),
                ),
                next_link: 1,
                last_delivery: HashMap::new(),
            })
            .collect();
        // Every frame, reset and answer to a dial crosses a link: at least its latency, less
        // the jitter.
        let lookahead =
            links.intra_zone.min(links.inter_zone).mul_f64((1.0 - links.jitter).max(0.0));
        World {
            members,
            states,
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
            proof_check,
            check_slot: Mutex::new(None),
            events: BinaryHeap::new(),
            payloads: HashMap::new(),
            next_event: 0,
            tick_every,
            lookahead,
        }
    }

    pub fn wall(&self) -> SystemTime {
        self.wall0 + self.now
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.next_event += 1;
        self.payloads.insert(self.next_event, event);
        self.events.push(Reverse((at, self.next_event)));
    }

    /// Starts member `i` at `at` (its node is created then, from the wall clock of that time).
    pub fn start_at(&mut self, i: usize, at: Time) {
        self.schedule(at, Event::Start(i));
    }

    /// Stops member `i` at once: every neighbour sees its connection reset.
    pub fn crash(&mut self, i: usize) {
        self.states[i].node = None;
        let ends: Vec<(usize, u64)> = self.states[i].ends.drain().collect();
        for (peer, link) in ends {
            if self.links.cut(i, peer) {
                continue; // no reset crosses a partition: the peer's hold time notices
            }
            let at = self.now + self.links.latency(i, peer);
            self.schedule(at, Event::Reset { to: peer, from: i, link });
        }
    }

    /// Runs every event due up to `until`; `check` is called after each window of events and
    /// stops the run early when it returns true.
    ///
    /// A window holds the events from the earliest due one to a lookahead later (the shortest
    /// a link takes): nothing one of them causes at another member can fall inside it, so the
    /// members of a window run on separate threads, each its own events in order. What they
    /// cause is merged in member order, so a seed gives the same run on any number of threads.
    pub fn run_until(&mut self, until: Time, mut check: impl FnMut(&World) -> bool) -> bool {
        while let Some(Reverse((start, _))) = self.events.peek().copied() {
            if start > until {
                break;
            }
            let end = if self.lookahead.is_zero() {
                None // one event at a time
            } else {
                Some((start + self.lookahead).min(until + Duration::from_nanos(1)))
            };
            let mut batch: Vec<(usize, Time, Event)> = Vec::new();
            while let Some(Reverse((at, seq))) = self.events.peek().copied() {
                let due = match end {
                    Some(end) => at < end,
                    None => batch.is_empty() && at <= until,
                };
                if !due {
                    break;
                }
                self.events.pop();
                let event = self.payloads.remove(&seq).expect("scheduled event");
                batch.push((event.member(), at, event));
            }
            // Stable: each member's events stay in the order they were due.
            batch.sort_by_key(|(i, _, _)| *i);
            let last = self.run_window(batch, end.unwrap_or(start));
            self.now = self.now.max(last);
            if check(self) {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    /// Runs the events of one window (sorted by member) and merges what they caused; the time
    /// of the last event run.
    fn run_window(&mut self, batch: Vec<(usize, Time, Event)>, end: Time) -> Time {
        let mut groups: Vec<(usize, Vec<(Time, Event)>)> = Vec::new();
        for (i, at, event) in batch {
            match groups.last_mut() {
                Some((j, events)) if *j == i => events.push((at, event)),
                _ => groups.push((i, vec![(at, event)])),
            }
        }
        // The states leave the world for the window, so that the rest of it can be read.
        let mut states = std::mem::take(&mut self.states);
        let ctx = self.ctx();
        // Each member's state, borrowed apart from the others'.
        let mut rest: &mut [MemberState] = &mut states;
        let mut base = 0;
        let mut picked = Vec::with_capacity(groups.len());
        for (i, events) in groups {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - base);
            let (me, tail) = tail.split_first_mut().expect("a member of the world");
            rest = tail;
            base = i + 1;
            picked.push((i, me, events));
        }
        let run = |(i, me, events): (usize, &mut MemberState, Vec<(Time, Event)>)| {
            let mut step = Step::new(&ctx, i, me);
            step.run(events, end);
            step.out
        };
        let outs: Vec<Local> = if picked.len() >= PARALLEL_FROM {
            picked.into_par_iter().map(run).collect()
        } else {
            picked.into_iter().map(run).collect()
        };
        self.states = states;
        let mut last = Time::ZERO;
        for out in outs {
            last = last.max(out.last);
            self.merge(out, end);
        }
        last
    }

    /// Adds what one member's events counted and caused to the world.
    fn merge(&mut self, out: Local, end: Time) {
        let i = out.member;
        let t = &mut self.tally;
        t.route_changes[i] += out.route_changes;
        t.frames_out[i] += out.frames_out;
        t.bytes_out[i] += out.bytes_out;
        t.link_closes += out.link_closes;
        t.dials += out.dials;
        t.declined += out.declined;
        t.invalid += out.invalid;
        t.bans += out.bans;
        for (ty, n) in out.by_type {
            *t.by_type.entry(ty).or_default() += n;
        }
        for (number, at) in out.crl_applied {
            t.crl_applied.insert((i, number), at);
        }
        if let Some(at) = out.control_accepted {
            t.control_accepted.entry(i).or_insert(at);
        }
        if let Some(at) = out.last_route_change {
            t.last_route_change = t.last_route_change.max(at);
        }
        for (at, event) in out.events {
            assert!(
                at >= end || event.member() == i,
                "an event at {at:?} for member {} caused inside the window ending {end:?}",
                event.member()
            );
            self.schedule(at, event);
        }
    }

    /// Runs `f` on member `i`'s node now, outside a window (the scenario's pushes), and carries
    /// out what it asks for.
    fn at_member<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Node, Time, SystemTime) -> R,
    ) -> Option<R> {
        let (now, wall) = (self.now, self.wall());
        let mut states = std::mem::take(&mut self.states);
        let ctx = self.ctx();
        let me = &mut states[i];
        let result = me.node.as_mut().map(|node| f(node, now, wall));
        let out = result.is_some().then(|| {
            let mut step = Step::new(&ctx, i, me);
            step.drain(now);
            step.out
        });
        self.states = states;
        if let Some(out) = out {
            self.merge(out, now);
        }
        result
    }

    /// What every member's step reads (all but the members' states).
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            members: &self.members,
            config: &self.config,
            links: &self.links,
            wall0: self.wall0,
            proof_check: &self.proof_check,
            tick_every: self.tick_every,
        }
    }

    /// Injects `der` (a signed CRL) at member `i`, as the CRL publisher pushes it to an anchor.
    pub fn push_crl(&mut self, i: usize, der: &[u8]) -> Result<u64, String> {
        self.at_member(i, |node, now, wall| node.handle_crl(now, wall, "publisher", der))
            .ok_or("that member is not running")?
            .map_err(|e| e.to_string())
    }

    /// Injects a signed control envelope at member `i` (its admin API).
    pub fn inject_control(&mut self, i: usize, wire: Vec<u8>) -> bool {
        self.at_member(i, |node, now, wall| {
            let origin = node.name().to_owned();
            node.handle_control(now, wall, None, origin, wire).is_ok()
        })
        .unwrap_or(false)
    }

    /// The running members' nodes, by index.
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.states.iter().enumerate().filter_map(|(i, m)| m.node.as_ref().map(|n| (i, n)))
    }
}

/// What every member's step reads and nobody changes during a window.
struct Ctx<'a> {
    members: &'a [Member],
    config: &'a NodeConfig,
    links: &'a LinkModel,
    wall0: SystemTime,
    proof_check: &'a ProofCheck,
    tick_every: Duration,
}

/// What one member's events in a window counted and caused, merged into the world after it.
#[derive(Default)]
struct Local {
    member: usize,
    /// Events caused, in the order they were.
    events: Vec<(Time, Event)>,
    last: Time,
    route_changes: u64,
    frames_out: u64,
    bytes_out: u64,
    link_closes: u64,
    dials: u64,
    declined: u64,
    invalid: u64,
    bans: u64,
    by_type: Vec<(&'static str, u64)>,
    crl_applied: Vec<(u64, Time)>,
    control_accepted: Option<Time>,
    last_route_change: Option<Time>,
}

/// One member running its events of a window.
struct Step<'a> {
    ctx: &'a Ctx<'a>,
    i: usize,
    me: &'a mut MemberState,
    out: Local,
}

impl<'a> Step<'a> {
    fn new(ctx: &'a Ctx<'a>, i: usize, me: &'a mut MemberState) -> Self {
        Step { ctx, i, me, out: Local { member: i, ..Local::default() } }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.out.events.push((at, event));
    }

    /// Runs `events` (due before `end`, in order) and those they cause here before `end`.
    fn run(&mut self, events: Vec<(Time, Event)>, end: Time) {
        let mut queue: VecDeque<(Time, Event)> = events.into();
        while let Some((at, event)) = queue.pop_front() {
            let caused = self.out.events.len();
            self.handle(at, event);
            self.out.last = self.out.last.max(at);
            // Our own events due inside the window (a first tick, or a tick when links are
            // slower than ticks) run now, after those due before them.
            let mut k = caused;
            while k < self.out.events.len() {
                let (due, ref event) = self.out.events[k];
                if due < end && event.member() == self.i {
                    let own = self.out.events.remove(k);
                    let at = queue.partition_point(|(t, _)| *t <= due);
                    queue.insert(at, own);
                } else {
                    k += 1;
                }
            }
        }
    }

    fn handle(&mut self, now: Time, event: Event) {
        let ctx = self.ctx;
        let wall = ctx.wall0 + now;
        let i = self.i;
        match event {
            Event::Start(_) => {
                let m = &ctx.members[i];
                let mut node = Node::new(
                    m.identity.clone(),
                    config_for(ctx, i),
                    m.store.clone(),
                    m.key.clone(),
                    m.leaf.clone(),
                    now,
                    wall,
                    self.me.rng.next_u64(),
                );
                node.set_proof_check(ctx.proof_check.clone());
                self.me.node = Some(node);
                self.me.started_at = Some(now);
                self.schedule(now, Event::Tick(i));
            }
            Event::Tick(_) => {
                let Some(node) = self.me.node.as_mut() else { return };
                node.handle_tick(now, wall, &|_| None);
                self.drain(now);
                self.schedule(now + ctx.tick_every, Event::Tick(i));
            }
            Event::Connect { from, to } => {
                if ctx.links.cut(from, to) {
                    self.schedule(now + CONNECT_TIMEOUT, Event::DialFailed { from, to });
                    return;
                }
                let back = now + ctx.links.latency(to, from);
                let Some(node) = self.me.node.as_mut() else {
                    self.schedule(back, Event::DialFailed { from, to });
                    return;
                };
                let dialer = &ctx.members[from];
                match node.admit_inbound(now, &dialer.name) {
                    Err((_, peers)) => {
                        self.out.declined += 1;
                        self.schedule(back, Event::Refused { from, to, peers });
                    }
                    Ok(()) => {
                        let link = ((to as u64) << 32) | self.me.next_link;
                        self.me.next_link += 1;
                        let up = LinkUp {
                            node: dialer.name.clone(),
                            addr: dialer.name.clone(),
                            peer: dialer.peer.clone(),
                            outbound: false,
                            link_id: link,
                            rtt: Some(ctx.links.latency(from, to) * 2),
                            zone: ctx.links.zone_name(from),
                        };
                        match node.handle_link_up(now, up) {
                            Ok(()) => {
                                self.me.ends.insert(from, link);
                                self.schedule(back, Event::Accepted { from, to, link });
                                // NB: our hello reaches the dialer before anything we send on
                                // the link, as on a real connection; without this a frame could
                                // overtake the link coming up there and be lost.
                                self.me.last_delivery.insert((from, link), back);
                            }
                            Err(_) => {
                                self.schedule(back, Event::Refused { from, to, peers: vec![] })
                            }
                        }
                        self.drain(now);
                    }
                }
            }
            Event::Accepted { from, to, link } => {
                let accepter = &ctx.members[to];
                let Some(node) = self.me.node.as_mut() else { return };
                let up = LinkUp {
                    node: accepter.name.clone(),
                    addr: accepter.name.clone(),
                    peer: accepter.peer.clone(),
                    outbound: true,
                    link_id: link,
                    rtt: Some(ctx.links.latency(from, to) * 2),
                    zone: ctx.links.zone_name(to),
                };
                match node.handle_link_up(now, up) {
                    Ok(()) => {
                        self.me.ends.insert(to, link);
                    }
                    Err(reason) => {
                        // Our side refused (already linked, or full meanwhile): say so.
                        self.deliver(now, to, link, Frame::Close { reason });
                    }
                }
                self.drain(now);
            }
            Event::Refused { to, peers, .. } => {
                if let Some(node) = self.me.node.as_mut() {
                    node.handle_dial_refused(now, &ctx.members[to].name, &peers);
                    self.drain(now);
                }
            }
            Event::DialFailed { to, .. } => {
                if let Some(node) = self.me.node.as_mut() {
                    node.handle_dial_failed(now, &ctx.members[to].name);
                    self.drain(now);
                }
            }
            Event::Frame { from, link, frame, size, .. } => {
                if self.me.ends.get(&from) != Some(&link) {
                    return; // the link is gone on this side
                }
                let Some(node) = self.me.node.as_mut() else { return };
                node.handle_frame(now, wall, &ctx.members[from].name, link, frame, size);
                self.drain(now);
            }
            Event::Reset { from, link, .. } => {
                if self.me.ends.get(&from) != Some(&link) {
                    return;
                }
                let Some(node) = self.me.node.as_mut() else { return };
                node.handle_link_down(now, &ctx.members[from].name, link, true, "connection reset");
                self.drain(now);
            }
        }
    }

    /// Sends `frame` to `to` on `link`: latency with jitter, a retransmission delay when its
    /// segment is lost, and never before the previous frame on that link.
    fn deliver(&mut self, now: Time, to: usize, link: u64, frame: Frame) {
        let from = self.i;
        let size = frame.encoded_len();
        let ty = frame.frame_type().as_str();
        match self.out.by_type.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, n)) => *n += 1,
            None => self.out.by_type.push((ty, 1)),
        }
        self.out.frames_out += 1;
        self.out.bytes_out += size as u64;
        let links = self.ctx.links;
        if links.cut(from, to) {
            return; // lost in the partition
        }
        let base = links.latency(from, to);
        let jitter = 1.0 + links.jitter * (self.me.rng.unit() * 2.0 - 1.0);
        let mut at = now + base.mul_f64(jitter.max(0.0));
        if self.me.rng.unit() < links.loss {
            at += Duration::from_millis(200) + base * 2;
        }
        let last = self.me.last_delivery.entry((to, link)).or_default();
        let at = at.max(*last);
        *last = at;
        self.schedule(at, Event::Frame { to, from, link, frame, size });
    }

    /// Carries out what our node asked for.
    fn drain(&mut self, now: Time) {
        let i = self.i;
        let links = self.ctx.links;
        loop {
            let Some(output) = self.me.node.as_mut().and_then(Node::poll) else { return };
            match output {
                Output::Send { to, frame } => {
                    let Some(j) = index_of(&to) else { continue };
                    if let Some(link) = self.me.ends.get(&j).copied() {
                        self.deliver(now, j, link, frame);
                    }
                }
                Output::Close { node, link_id, goodbye } => {
                    let Some(j) = index_of(&node) else { continue };
                    match goodbye {
                        Some(reason) => self.deliver(now, j, link_id, Frame::Close { reason }),
                        None if links.cut(i, j) => {}
                        None => {
                            let at = now + links.latency(i, j);
                            self.schedule(at, Event::Reset { to: j, from: i, link: link_id });
                        }
                    }
                }
                Output::LinkGone { node, link_id } => {
                    if let Some(j) = index_of(&node) {
                        if self.me.ends.get(&j) == Some(&link_id) {
                            self.me.ends.remove(&j);
                            self.me.last_delivery.remove(&(j, link_id));
                        }
                    }
                }
                Output::Dial { addr } => {
                    let Some(j) = index_of(&addr) else { continue };
                    self.out.dials += 1;
                    // TCP, then TLS 1.3 and the hellos: about two round trips.
                    let at = now + links.latency(i, j) * 3;
                    self.schedule(at, Event::Connect { from: i, to: j });
                }
                Output::RoutesChanged => self.out.last_route_change = Some(now),
                Output::CrlApplied { number } => self.out.crl_applied.push((number, now)),
                Output::Count(c) => match c {
                    Count::RouteChanged => self.out.route_changes += 1,
                    Count::LinkClosed(_) => self.out.link_closes += 1,
                    Count::Invalid(_) => self.out.invalid += 1,
                    Count::Ban => self.out.bans += 1,
                    Count::Control(_, "accepted") => {
                        self.out.control_accepted.get_or_insert(now);
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
}

fn config_for(ctx: &Ctx, i: usize) -> NodeConfig {
    NodeConfig { zone: ctx.links.zone_name(i), ..ctx.config.clone() }
}

fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix('m')?.parse().ok()
}
