//! `Node`: the whole protocol of one member as a state machine, in the style of quinn-proto's
//! `Connection`. Inputs come in through `handle_*` with the time (`now`, the node's monotonic
//! clock, and `wall`, for certificate and CRL validity); everything it wants done comes out of
//! [`Node::poll`]: frames to send, links to close, addresses to dial, audit records, counts,
//! deliveries to the app. It owns routing, the peer set, CRL gossip, control flooding,
//! broadcast duplicate suppression and the forwarding decision.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use genesis_trust::{ControlVerifier, Identity, PeerIdentity, PrivateKey, RbacPolicy, TrustStore};
use rustls::pki_types::CertificateDer;

use super::forward::{self, Forward};
use super::seen::SeenSet;
use crate::error::Error;
use crate::frame::{
    Broadcast, ControlAck, Data, DataKind, Frame, FrameError, FrameType, PeerAddr, RouteAdvert,
    MAX_ADVERTS, METRIC_INFINITY,
};
use crate::peers::{Admit, Conduct, PeerAction, PeerConfig, PeerSet, PeerView};
use crate::routing::{link_cost, Advert, RouteAction, RouteTable, RouteView, RoutingConfig, Time};
use crate::services::{Directory, Refusal, ServiceView};

/// Broadcast ids remembered for duplicate suppression.
const SEEN_BROADCASTS: usize = 16_384;
/// Control envelopes remembered for flood duplicate suppression.
const SEEN_CONTROLS: usize = 4096;
/// Proofs kept per destination. NB: more than the newest one: the route in use may still be
/// at an older seqno (a newer one arrived over a longer path), and an advert is only sent with
/// its own seqno's proof; keeping just the newest silently dropped those adverts, routes
/// expired downstream, and the seqno requests that followed kept a 100-member mesh churning.
const PROOFS_KEPT: usize = 3;
/// The RTT a new link is costed at when its handshake gave no estimate: on the slow side for a
/// cluster, so the first measurement lowers the cost (good news) rather than raising it.
const INITIAL_RTT: Duration = Duration::from_millis(5);
/// A link's cost follows the least RTT seen over the last one to two of these. Queueing and a
/// busy member only ever add to a round trip, so the least sample is the path's own delay (as
/// BBR's min-RTT filter). NB: a window of minutes, not of samples: with the least of the last
/// 8 pongs, members short of CPU for a while raised costs all over the mesh at once, and 200
/// real members on two cores changed routes 847,009 times in 100 s with their links standing
/// (converged in 52-78 s, and failed demo stages); with RTT left out of the cost, 7-11 s, and
/// with this window 10-15 s.
const RTT_EPOCH: Duration = Duration::from_secs(150);
/// Own sequence numbers per wall-clock second, when one is derived from the clock at start: a
/// restarted member starts ahead of the proofs others still cache for its previous life, as
/// long as it advanced its seqno fewer than this many times a second on average.
const SEQNO_PER_SECOND: u64 = 16;

/// What a member relaying beyond its share adds to every route it advertises but its own:
/// ten LAN hops (docs/SIDECAR.md, "Relay accounting").
pub const RELAY_PENALTY: u16 = 1000;

/// Wall-clock Unix milliseconds.
fn unix_ms(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The protocol's settings (the sidecar's configuration, or the simulator's).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub hello_interval: Duration,
    pub hold_time: Duration,
    pub routing: RoutingConfig,
    pub peers: PeerConfig,
    pub rbac: RbacPolicy,
    /// Bootstrap addresses (our own advertised address already left out).
    pub anchors: Vec<String>,
    /// Our zone (empty: not known), and what a link to a member of another known zone adds to
    /// its cost (docs/PROTOCOL.md, "Zones").
    pub zone: String,
    pub zone_penalty: u16,
}

/// Checks a member's signed sequence number (`genesis_trust::seqno::verify_seqno`); the
/// simulator passes a memoising wrapper so one proof is verified once for all its nodes.
pub type ProofCheck = Arc<
    dyn Fn(&TrustStore, &[u8], &str, u32, &[u8], SystemTime) -> genesis_trust::Result<Identity>
        + Send
        + Sync,
>;

/// The real check.
pub fn verify_proof() -> ProofCheck {
    Arc::new(genesis_trust::seqno::verify_seqno)
}

/// The bounded label for a closed link (`link_closes_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The link carried an invalid frame.
    InvalidFrame,
    /// Both sides dialled at once; one link is kept.
    Replaced,
    /// Nothing heard within the hold time.
    HoldTimeout,
    /// The peer's certificate expired or was revoked.
    CertificateInvalid,
    /// The peer said goodbye (drain or its own policy).
    PeerClosed,
    /// This member is draining.
    Draining,
    /// Peer management: a ban.
    Policy,
    /// The connection broke.
    ConnectionLost,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::InvalidFrame,
        CloseReason::Replaced,
        CloseReason::HoldTimeout,
        CloseReason::CertificateInvalid,
        CloseReason::PeerClosed,
        CloseReason::Draining,
        CloseReason::Policy,
        CloseReason::ConnectionLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::InvalidFrame => "invalid_frame",
            CloseReason::Replaced => "replaced",
            CloseReason::HoldTimeout => "hold_timeout",
            CloseReason::CertificateInvalid => "certificate_invalid",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Draining => "draining",
            CloseReason::Policy => "policy",
            CloseReason::ConnectionLost => "connection_lost",
        }
    }
}

/// Something the node counted; the driver exports these as metrics, the simulator sums them.
#[derive(Debug, Clone, PartialEq)]
pub enum Count {
    /// A non-data frame received (type, bytes).
    FrameIn(FrameType, usize),
    Dropped(&'static str),
    Invalid(&'static str),
    Handshake(&'static str),
    LinkClosed(CloseReason),
    RouteChanged,
    Forwarded,
    Ban,
    CrlUpdate(&'static str),
    Control(String, &'static str),
    Rtt(Duration),
}

/// How a control message was decided here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlVerdict {
    pub verb: String,
    /// The RBAC rule (or check) that decided.
    pub rule: String,
    pub detail: String,
    pub id: String,
}

/// What the node wants done.
#[derive(Debug)]
pub enum Output {
    /// Send `frame` on the link to `to` (data frames queue behind control frames).
    Send {
        to: String,
        frame: Frame,
    },
    /// Close link `link_id` to `node`: after `goodbye` (a `Close` frame) if any, else at once.
    Close {
        node: String,
        link_id: u64,
        goodbye: Option<String>,
    },
    /// Link `link_id` to `node` left the node's table (closed, lost or replaced).
    LinkGone {
        node: String,
        link_id: u64,
    },
    /// Open a link to this address.
    Dial {
        addr: String,
    },
    /// A security event for the audit log.
    Audit {
        event: &'static str,
        subject: String,
        detail: serde_json::Value,
    },
    /// The routing table changed: next hops to republish.
    RoutesChanged,
    /// A broadcast or topic message for the app (the driver filters by subscription).
    AppBroadcast {
        src: String,
        /// The source's identity, from the certificate its signature was checked with.
        identity: String,
        topic: String,
        id: u64,
        payload: Vec<u8>,
    },
    /// Data for a stream of this member.
    DeliverData(Data),
    /// Our flow to `dst` cannot be delivered.
    FlowUnreachable {
        dst: String,
        flow: u64,
        reason: String,
    },
    /// An acknowledgement of a control message injected here.
    Ack(ControlAck),
    /// A newer CRL was applied.
    CrlApplied {
        number: u64,
    },
    /// A drain or shutdown was ordered: refuse new links from now on.
    Draining,
    /// A shutdown was ordered.
    Shutdown,
    Count(Count),
}

/// A link that finished its handshake and hello.
#[derive(Debug, Clone)]
pub struct LinkUp {
    pub node: String,
    /// The address to redial it at (dialled, or announced in its hello).
    pub addr: String,
    pub peer: PeerIdentity,
    pub outbound: bool,
    pub link_id: u64,
    /// The round-trip time the handshake suggested, if measured: the link's first cost.
    pub rtt: Option<Duration>,
    /// The zone the peer's hello named (empty: not known).
    pub zone: String,
}

struct LinkState {
    id: u64,
    outbound: bool,
    ping: Option<(u64, Time)>,
    /// The least RTT of the previous [`RTT_EPOCH`] and of the current one (since
    /// `rtt_since`), and the link cost last given to routing.
    rtt_prev: Duration,
    rtt_cur: Duration,
    rtt_since: Time,
    cost: u16,
    /// The peer's zone (empty: not known), and what crossing zones adds to the link's cost.
    zone: String,
    penalty: u16,
    peer: PeerIdentity,
    /// When a frame last arrived on it, as far as the node saw.
    heard: Time,
    /// The certificate this link last carried for each destination, each way. An advert
    /// carries a destination's certificate the first time a link needs it and an empty field
    /// after that (docs/PROTOCOL.md, "Route updates"): the certificate was ~85 % of the bytes
    /// of every periodic update. Indexed by `Node::dest_ids`: 16 bytes a destination each way.
    certs_sent: CertSlots,
    certs_heard: CertSlots,
}

/// A link's certificate per destination id (see `LinkState::certs_sent`).
#[derive(Debug, Default)]
struct CertSlots(Vec<Option<Arc<[u8]>>>);

impl CertSlots {
    fn get(&self, id: u32) -> Option<&Arc<[u8]>> {
        self.0.get(id as usize)?.as_ref()
    }
    fn set(&mut self, id: u32, cert: Arc<[u8]>) {
        let i = id as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(cert);
    }
}

/// Verified proofs of other members' sequence numbers: (seqno, signature, leaf DER).
type Proof = (u32, Vec<u8>, Arc<[u8]>);

/// Changes the log filter (`log-level` control messages); the driver's hook.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// The protocol state of one member.
pub struct Node {
    me: String,
    identity: Identity,
    config: NodeConfig,
    store: Arc<TrustStore>,
    key: Arc<PrivateKey>,
    leaf: Arc<[u8]>,
    routes: RouteTable,
    peers: PeerSet,
    links: BTreeMap<String, LinkState>,
    /// Recent verified proofs per destination, oldest first (at most [`PROOFS_KEPT`]).
    proofs: BTreeMap<String, Vec<Proof>>,
    my_proof: Vec<u8>,
    /// A small number for each destination name a link carried a certificate for. Bounded by
    /// the names neighbours sent with certificates: a forged one costs its sender its link
    /// within a frame (32 adverts) and then its reputation.
    dest_ids: HashMap<String, u32>,
    broadcasts: SeenSet<(String, u64)>,
    controls: SeenSet<[u8; 32]>,
    control: ControlVerifier,
    proof_check: ProofCheck,
    next_hello: Time,
    next_id: u64,
    draining: bool,
    log_level: Option<LogLevelHook>,
    out: VecDeque<Output>,
    /// Route adverts to send, per neighbour and destination, flushed when outputs are polled.
    pending_adverts: BTreeMap<String, BTreeMap<String, Advert>>,
    /// Other members' service records.
    services: Directory,
    /// The services we offer, our latest signed record, when it is due again, and when the
    /// last was issued (each issue is later than the one before, so it replaces it).
    own_services: BTreeMap<String, u16>,
    own_record: Option<Broadcast>,
    next_publish: Option<Time>,
    last_issued_ms: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("me", &self.me).field("links", &self.links.len()).finish()
    }
}

impl Node {
    /// A member `identity` holding `key` and its leaf `leaf` (DER). `seed` makes its ids
    /// (pings, broadcasts) unpredictable; its own sequence number starts from `wall`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        config: NodeConfig,
        store: Arc<TrustStore>,
        key: Arc<PrivateKey>,
        leaf: Vec<u8>,
        now: Time,
        wall: SystemTime,
        seed: u64,
    ) -> Self {
        let me = identity.node().to_owned();
        let secs = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let seqno = secs.wrapping_mul(SEQNO_PER_SECOND) as u32;
        let routes = RouteTable::new(&me, seqno, config.routing.clone(), now);
        let peers = PeerSet::new(&me, config.peers.clone(), &config.anchors, now)
            .with_areas(config.routing.areas)
            .with_zone(&config.zone);
        let control = ControlVerifier::new(store.clone(), identity.network(), config.rbac.clone())
            .started_at(wall);
        let mut node = Node {
            me,
            identity,
            config,
            store,
            key,
            leaf: leaf.into(),
            routes,
            peers,
            links: BTreeMap::new(),
            proofs: BTreeMap::new(),
            my_proof: Vec::new(),
            dest_ids: HashMap::new(),
            broadcasts: SeenSet::new(SEEN_BROADCASTS),
            controls: SeenSet::new(SEEN_CONTROLS),
            control,
            proof_check: verify_proof(),
            next_hello: now,
            next_id: seed | 1,
            draining: false,
            log_level: None,
            out: VecDeque::new(),
            pending_adverts: BTreeMap::new(),
            services: Directory::default(),
            own_services: BTreeMap::new(),
            own_record: None,
            next_publish: None,
            last_issued_ms: 0,
        };
        node.sign_own_seqno();
        node
    }

    /// Replaces the seqno proof check (the simulator's shared cache).
    pub fn set_proof_check(&mut self, check: ProofCheck) {
        self.proof_check = check;
    }

    /// Sets the hook `log-level` control messages call.
    pub fn set_log_level_hook(&mut self, hook: LogLevelHook) {
        self.log_level = Some(hook);
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            self.flush_adverts();
        }
        self.out.pop_front()
    }

    /// Route adverts gathered while handling inputs go out together, up to [`MAX_ADVERTS`] a
    /// frame, the latest advert per destination only. NB: one frame per advert (as triggered
    /// updates used to go) was thousands of frames a second per neighbour while a 100-member
    /// mesh converged; a CPU-starved member then read them in bursts, its neighbours' frame
    /// rate limits fired, and they banned each other.
    fn flush_adverts(&mut self) {
        let pending = std::mem::take(&mut self.pending_adverts);
        for (to, adverts) in pending {
            let adverts: Vec<RouteAdvert> =
                adverts.into_values().filter_map(|a| self.with_proof(&to, a)).collect();
            for chunk in adverts.chunks(MAX_ADVERTS) {
                self.send(&to, Frame::RouteUpdate { adverts: chunk.to_vec() });
            }
        }
    }

    // ---- queries ----

    pub fn name(&self) -> &str {
        &self.me
    }

    pub fn seqno(&self) -> u32 {
        self.routes.seqno()
    }

    pub fn next_hop(&self, dst: &str) -> Option<&str> {
        self.routes.next_hop(dst)
    }

    pub fn routes(&self) -> Vec<RouteView> {
        let mut routes = self.routes.routes();
        for r in &mut routes {
            r.next_hop_zone = self.neighbour_zone(&r.next_hop).map(str::to_owned);
        }
        routes
    }

    /// A snapshot of the forwarding decision for the data path.
    pub fn next_hops(&self) -> crate::routing::NextHops {
        self.routes.next_hops()
    }

    pub fn route_count(&self) -> usize {
        self.routes.route_count()
    }

    /// Our routing area (0 in a flat network).
    pub fn area(&self) -> u16 {
        self.routes.area()
    }

    /// Addresses this member knows in routing area `area` (diagnostics).
    pub fn known_in_area(&self, area: u16) -> usize {
        self.peers.known_in(area)
    }

    pub fn peer_views(&self, now: Time) -> Vec<PeerView> {
        self.peers.views(now)
    }

    /// What crossing from our zone into `zone` adds to a link's cost: nothing while either
    /// zone is not known.
    fn zone_penalty(&self, zone: &str) -> u16 {
        let ours = &self.config.zone;
        if ours.is_empty() || zone.is_empty() || ours == zone {
            0
        } else {
            self.config.zone_penalty
        }
    }

    /// Our zone (empty: not known).
    pub fn zone(&self) -> &str {
        &self.config.zone
    }

    /// The zone of neighbour `node`, when linked and known.
    pub fn neighbour_zone(&self, node: &str) -> Option<&str> {
        self.links.get(node).map(|l| l.zone.as_str()).filter(|z| !z.is_empty())
    }

    /// Neighbours with a live link.
    pub fn links(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Whether `node` is linked through link `link_id`.
    pub fn has_link(&self, node: &str, link_id: u64) -> bool {
        self.links.get(node).is_some_and(|l| l.id == link_id)
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    // ---- links ----

    /// Whether an inbound link from `node` may start; a refusal carries addresses worth
    /// dialling instead.
    pub fn admit_inbound(&mut self, now: Time, node: &str) -> Result<(), (String, Vec<PeerAddr>)> {
        if self.draining {
            return Err(("draining".into(), Vec::new()));
        }
        match self.peers.admit_inbound(node, now) {
            Ok(()) => Ok(()),
            Err(reason) => Err((reason, self.peers.referrals(node, now))),
        }
    }

    /// A link finished its handshake and hello. Refused (the caller closes it with the reason)
    /// while the peer is banned or we are full.
    pub fn handle_link_up(&mut self, now: Time, link: LinkUp) -> Result<(), String> {
        let LinkUp { node, addr, peer, outbound, link_id, rtt, zone } = link;
        if let Some(existing) = self.links.get(&node) {
            // Both sides may dial each other at once. Keep the link dialled by the smaller
            // node name; both ends decide the same way.
            let dialer_of =
                |outbound: bool| if outbound { self.me.as_str() } else { node.as_str() };
            if dialer_of(existing.outbound) <= dialer_of(outbound) {
                return Err("already linked".into());
            }
            let old = existing.id;
            self.close_link(
                now,
                &node,
                old,
                CloseReason::Replaced,
                "replaced by a simultaneous link",
            );
        }
        self.peers.on_connected(&node, &addr, now)?;
        self.peers.on_zone(&node, &zone);
        let first = rtt.unwrap_or(INITIAL_RTT);
        let penalty = self.zone_penalty(&zone);
        let cost = link_cost(first).saturating_add(penalty);
        self.links.insert(
            node.clone(),
            LinkState {
                id: link_id,
                outbound,
                ping: None,
                rtt_prev: first,
                rtt_cur: first,
                rtt_since: now,
                cost,
                zone,
                penalty,
                peer,
                heard: now,
                certs_sent: CertSlots::default(),
                certs_heard: CertSlots::default(),
            },
        );
        self.count(Count::Handshake("ok"));
        tracing::info!(peer = %node, %addr, outbound, "link up");
        let actions = self.routes.neighbour_up(&node, cost);
        self.route_actions(actions);
        let exchange = Frame::PeerExchange { peers: self.peers.exchange_list_for(&node, now) };
        self.send(&node, exchange);
        if let Some(n) = self.store.crl_number() {
            self.send(&node, Frame::CrlAnnounce { number: n });
        }
        // The service records we hold, ours first: a new member need not wait for the next
        // republish to resolve names (each is signed by its source and checked there).
        let records: Vec<Broadcast> =
            self.own_record.iter().chain(self.services.frames()).cloned().collect();
        for mut b in records {
            b.ttl = self.config.routing.max_hops;
            self.send(&node, Frame::Broadcast(b));
        }
        Ok(())
    }

    /// Link `link_id` to `node` went down without our doing (the connection broke, or its
    /// reader stopped). `failure`: without a goodbye.
    pub fn handle_link_down(
        &mut self,
        now: Time,
        node: &str,
        link_id: u64,
        failure: bool,
        reason: &str,
    ) {
        self.link_down(now, node, link_id, failure, CloseReason::ConnectionLost, reason);
    }

    /// A frame that does not decode arrived on link `link_id`: the link is closed and the
    /// neighbour loses reputation.
    pub fn handle_bad_frame(&mut self, now: Time, node: &str, link_id: u64, error: &FrameError) {
        self.count(Count::Invalid(error.label()));
        self.audit("frame-refused", node, serde_json::json!({"reason": error.to_string()}));
        let actions = self.peers.record(node, Conduct::InvalidFrame, now);
        self.peer_actions(now, actions);
        self.close_link(
            now,
            node,
            link_id,
            CloseReason::InvalidFrame,
            &format!("invalid frame: {error}"),
        );
    }

    /// Neighbour `node` delivered something the driver refused (a forged stream opening).
    pub fn handle_misconduct(&mut self, now: Time, node: &str, conduct: Conduct) {
        let actions = self.peers.record(node, conduct, now);
        self.peer_actions(now, actions);
    }

    /// A peer's certificate was refused, or its hello did not match it.
    pub fn handle_bad_identity(&mut self, now: Time, node: Option<&str>, addr: &str, reason: &str) {
        self.count(Count::Handshake("refused"));
        self.audit(
            "link-refused",
            node.unwrap_or(addr),
            serde_json::json!({"addr": addr, "reason": reason}),
        );
        if let Some(node) = node {
            let actions = self.peers.record(node, Conduct::BadIdentity, now);
            self.peer_actions(now, actions);
        }
        self.peers.on_dial_failed(addr, now);
    }

    pub fn handle_dial_failed(&mut self, now: Time, addr: &str) {
        self.peers.on_dial_failed(addr, now);
    }

    /// The member at `addr` refused our link and handed us its peers.
    pub fn handle_dial_refused(&mut self, now: Time, addr: &str, peers: &[PeerAddr]) {
        self.peers.on_dial_refused(addr, peers, now);
    }

    /// Says goodbye to every neighbour (the driver's drain on SIGTERM).
    pub fn drain(&mut self) {
        self.draining = true;
        let nodes: Vec<String> = self.links.keys().cloned().collect();
        for n in nodes {
            self.send(&n, Frame::Close { reason: "draining".into() });
        }
    }

    // ---- time ----

    /// The timer: hold times, re-checks of peers' certificates, pings, routing and peer
    /// upkeep. `heard` tells when the driver last saw a frame on a link (its readers handle
    /// most data frames without the node).
    pub fn handle_tick(
        &mut self,
        now: Time,
        wall: SystemTime,
        heard: &dyn Fn(&str) -> Option<Time>,
    ) {
        let hold = self.config.hold_time;
        let silent: Vec<(String, u64)> = self
            .links
            .iter()
            .filter(|(n, l)| {
                let last = heard(n).map_or(l.heard, |h| h.max(l.heard));
                now.saturating_sub(last) > hold
            })
            .map(|(n, l)| (n.clone(), l.id))
            .collect();
        for (node, id) in silent {
            tracing::warn!(peer = %node, "no frame within the hold time: closing the link");
            self.out.push_back(Output::Close { node: node.clone(), link_id: id, goodbye: None });
            self.link_down(now, &node, id, true, CloseReason::HoldTimeout, "hold time expired");
        }
        self.close_invalid_links(now, wall);
        if now >= self.next_hello {
            self.next_hello = now + self.config.hello_interval;
            let nodes: Vec<String> = self.links.keys().cloned().collect();
            for node in nodes {
                let nonce = self.next_id();
                if let Some(l) = self.links.get_mut(&node) {
                    l.ping = Some((nonce, now));
                }
                self.send(&node, Frame::Ping { nonce });
            }
        }
        if self.next_publish.is_some_and(|due| now >= due) {
            if let Err(e) = self.publish_services(now, wall) {
                tracing::error!(error = %e, "cannot republish our services");
            }
        }
        self.services.expire(now);
        let actions = self.routes.on_tick(now);
        self.route_actions(actions);
        let actions = self.peers.on_tick(now);
        self.peer_actions(now, actions);
        let (links, routes) = (&self.links, &self.routes);
        let reachable = |n: &str| links.contains_key(n) || routes.next_hop(n).is_some();
        if let Some(dial) = self.peers.rejoin(now, reachable) {
            self.peer_actions(now, vec![dial]);
        }
    }

    // ---- frames ----

    /// A frame from neighbour `from` on link `link_id` (`size`: its encoded length).
    pub fn handle_frame(
        &mut self,
        now: Time,
        wall: SystemTime,
        from: &str,
        link_id: u64,
        frame: Frame,
        size: usize,
    ) {
        let Some(link) = self.links.get_mut(from).filter(|l| l.id == link_id) else { return };
        link.heard = now;
        let ty = frame.frame_type();
        if ty != FrameType::Data {
            // Data frames are counted by the driver's link readers, which relay most of them.
            self.count(Count::FrameIn(ty, size));
        }
        // NB: route updates pass outside the frame-rate budget: they answer our own link-ups
        // and the mesh's changes, and a member that was short of CPU reads a neighbour's in a
        // burst; counted against the budget, 200 members on two cores banned each other and
        // never converged. A forged advert costs its sender reputation on its own (invalid),
        // and a repeated one is a cache hit.
        if !matches!(ty, FrameType::Data | FrameType::RouteUpdate) {
            let (admit, actions) = self.peers.admit(from, now);
            self.peer_actions(now, actions);
            if admit == Admit::Drop {
                self.count(Count::Dropped("rate_limited"));
                return;
            }
        }
        match frame {
            Frame::Hello { .. } => self.protocol_violation(now, from, "a second hello"),
            Frame::Ping { nonce } => self.send(from, Frame::Pong { nonce }),
            Frame::Pong { nonce } => self.on_pong(now, from, nonce),
            Frame::RouteUpdate { adverts } => {
                for mut a in adverts {
                    let cert = if a.metric == METRIC_INFINITY {
                        None
                    } else {
                        match self.advert_cert(from, &a.dest, std::mem::take(&mut a.cert)) {
                            Some(cert) => Some(cert),
                            None => {
                                let what =
                                    "a route advert named a certificate the link never carried";
                                self.protocol_violation(now, from, what);
                                self.close_link(
                                    now,
                                    from,
                                    link_id,
                                    CloseReason::InvalidFrame,
                                    what,
                                );
                                return;
                            }
                        }
                    };
                    if let Some(advert) = self.verify_advert(now, wall, from, a, cert) {
                        let actions = self.routes.on_advert(from, advert, now);
                        self.route_actions(actions);
                    }
                }
            }
            Frame::SeqnoRequest { dest, seqno, hops_left } => {
                let actions = self.routes.on_seqno_request(from, &dest, seqno, hops_left);
                self.route_actions(actions);
            }
            Frame::PeerExchange { peers } => self.peers.on_exchange(&peers, now),
            Frame::CrlAnnounce { number } => {
                if self.store.crl_number().is_none_or(|n| number > n) {
                    self.send(from, Frame::CrlRequest { number });
                }
            }
            Frame::CrlRequest { number } => {
                let held = self.store.crls().into_iter().max_by_key(|c| c.number());
                if let Some(crl) = held.filter(|c| c.number() >= number) {
                    self.send(from, Frame::CrlData { der: crl.der().to_vec() });
                }
            }
            Frame::CrlData { der } => {
                let _ = self.handle_crl(now, wall, from, &der);
            }
            Frame::Control { origin, envelope } => {
                let _ = self.handle_control(now, wall, Some(from), origin, envelope);
            }
            Frame::ControlAck(mut ack) => {
                if ack.origin == self.me {
                    self.out.push_back(Output::Ack(ack));
                } else if ack.ttl > 1 {
                    ack.ttl -= 1;
                    if let Some(next) = self.routes.next_hop(&ack.origin).map(str::to_owned) {
                        self.send(&next, Frame::ControlAck(ack));
                    }
                }
            }
            Frame::Data(d) => self.route_data(d, true),
            Frame::Broadcast(b) => self.on_broadcast(now, wall, from, b),
            Frame::Certificate { der } => self.on_peer_certificate(now, wall, from, der),
            Frame::Close { reason } => {
                tracing::info!(peer = %from, %reason, "peer said goodbye");
                self.out.push_back(Output::Close { node: from.to_owned(), link_id, goodbye: None });
                self.link_down(now, from, link_id, false, CloseReason::PeerClosed, &reason);
            }
        }
    }

    fn on_pong(&mut self, now: Time, from: &str, nonce: u64) {
        let Some(link) = self.links.get_mut(from) else { return };
        let Some((expected, sent)) = link.ping else { return };
        if expected != nonce {
            return;
        }
        link.ping = None;
        let rtt = now.saturating_sub(sent);
        if now.saturating_sub(link.rtt_since) >= RTT_EPOCH {
            link.rtt_prev = link.rtt_cur;
            link.rtt_cur = rtt;
            link.rtt_since = now;
        } else {
            link.rtt_cur = link.rtt_cur.min(rtt);
        }
        // NB: the least of the samples: a lost segment's retransmission, or a member busy for
        // a moment, makes a sample late, not the path longer; a smoothed mean of such samples
        // raised link costs by hundreds and moved routes all over the mesh.
        let srtt = link.rtt_prev.min(link.rtt_cur);
        // Hysteresis: routing hears about a cost change only when it moved by a fifth, so
        // RTT jitter under load does not churn routes.
        let cost = link_cost(srtt).saturating_add(link.penalty);
        let moved = cost.abs_diff(link.cost) * 5 >= link.cost;
        if moved {
            link.cost = cost;
        }
        self.count(Count::Rtt(rtt));
        let actions = self.peers.record(from, Conduct::Pong(rtt), now);
        self.peer_actions(now, actions);
        if moved {
            let actions = self.routes.neighbour_cost(from, cost);
            self.route_actions(actions);
        }
    }

    /// A neighbour renewed: check its new leaf and re-check the link against it from now on.
    fn on_peer_certificate(&mut self, now: Time, wall: SystemTime, from: &str, der: Vec<u8>) {
        let chain = [CertificateDer::from(der)];
        match self.store.verify(&chain, wall, genesis_trust::PeerRole::Client) {
            Ok(peer) if self.links.get(from).is_some_and(|l| l.peer.identity == peer.identity) => {
                tracing::info!(peer = %from, serial = %peer.serial, "neighbour rotated its certificate");
                if let Some(l) = self.links.get_mut(from) {
                    l.peer = peer;
                }
            }
            Ok(peer) => self.protocol_violation(
                now,
                from,
                &format!("a certificate for {} on its link", peer.identity),
            ),
            Err(e) => {
                self.protocol_violation(now, from, &format!("a renewed certificate we refuse: {e}"))
            }
        }
    }

    fn protocol_violation(&mut self, now: Time, from: &str, what: &str) {
        self.count(Count::Invalid("protocol"));
        let actions = self.peers.record(from, Conduct::InvalidFrame, now);
        self.peer_actions(now, actions);
        tracing::warn!(peer = %from, "protocol violation: {what}");
    }

    /// The certificate an advert for `dest` from `from` is checked with: the one it carries,
    /// remembered for the link (sharing the bytes with a kept proof's copy), or, when it carries
    /// none, the one this link carried last. `None`: it carries none and the link never did.
    fn advert_cert(&mut self, from: &str, dest: &str, cert: Vec<u8>) -> Option<Arc<[u8]>> {
        if cert.is_empty() {
            let id = self.dest_ids.get(dest)?;
            return self.links.get(from)?.certs_heard.get(*id).cloned();
        }
        if !self.links.contains_key(from) {
            return None;
        }
        let id = self.dest_id(dest);
        let link = self.links.get_mut(from)?;
        let same = |c: &&Arc<[u8]>| ***c == *cert;
        let known =
            self.proofs.get(dest).and_then(|kept| kept.iter().map(|(_, _, c)| c).find(same));
        let cert = known
            .or_else(|| link.certs_heard.get(id).filter(same))
            .cloned()
            .unwrap_or_else(|| Arc::from(cert));
        link.certs_heard.set(id, cert.clone());
        Some(cert)
    }

    /// The small number standing for `dest` in the links' certificate maps.
    fn dest_id(&mut self, dest: &str) -> u32 {
        if let Some(id) = self.dest_ids.get(dest) {
            return *id;
        }
        let id = self.dest_ids.len() as u32;
        self.dest_ids.insert(dest.to_owned(), id);
        id
    }

    /// Checks an advert's seqno proof against `cert` (cached per destination and seqno).
    /// `cert` is `None` for a withdrawal, which needs no proof.
    fn verify_advert(
        &mut self,
        now: Time,
        wall: SystemTime,
        from: &str,
        a: RouteAdvert,
        cert: Option<Arc<[u8]>>,
    ) -> Option<Advert> {
        let advert =
            Advert { dest: a.dest.clone(), seqno: a.seqno, metric: a.metric, hops: a.hops };
        let Some(cert) = cert else {
            return Some(advert); // a withdrawal only removes the sender's own candidate
        };
        let known = self.proofs.get(&a.dest).is_some_and(|kept| {
            // NB: the same certificate is almost always the same allocation (advert_cert
            // shares it): the pointer is compared before ~600 bytes are.
            kept.iter().any(|(s, sig, c)| {
                *s == a.seqno && *sig == a.proof && (Arc::ptr_eq(c, &cert) || *c == cert)
            })
        });
        if known {
            return Some(advert);
        }
        match (self.proof_check)(&self.store, &cert, &a.dest, a.seqno, &a.proof, wall) {
            Ok(_) => {
                let kept = self.proofs.entry(a.dest.clone()).or_default();
                kept.retain(|(s, _, _)| *s != a.seqno);
                let at = kept.iter().position(|(s, _, _)| crate::routing::seqno_newer(*s, a.seqno));
                kept.insert(at.unwrap_or(kept.len()), (a.seqno, a.proof, cert));
                if kept.len() > PROOFS_KEPT {
                    kept.remove(0);
                }
                Some(advert)
            }
            Err(genesis_trust::Error::Revoked { .. }) => {
                // A neighbour that has not heard of the revocation yet: not its fault.
                self.count(Count::Dropped("revoked_route"));
                None
            }
            Err(e) => {
                self.count(Count::Invalid("forged_route"));
                tracing::warn!(peer = %from, dest = %a.dest, error = %e, "refused a route advert");
                self.audit(
                    "route-refused",
                    from,
                    serde_json::json!({"dest": a.dest, "reason": e.to_string()}),
                );
                let actions = self.peers.record(from, Conduct::InvalidFrame, now);
                self.peer_actions(now, actions);
                None
            }
        }
    }

    // ---- CRLs ----

    /// A CRL from a neighbour (`from`), the admin API or a control message: applied only if
    /// signed by our authority and newer; anything else is refused, counted and audited, and
    /// the current CRL stays in force. This is the one way a CRL enters the node.
    pub fn handle_crl(
        &mut self,
        now: Time,
        wall: SystemTime,
        from: &str,
        der: &[u8],
    ) -> Result<u64, Error> {
        let crl = match genesis_trust::Crl::parse(der) {
            Ok(c) => c,
            Err(e) => return Err(self.refuse_crl(from, e.to_string())),
        };
        match self.store.install_crl(&crl, wall) {
            Ok(update) => {
                self.count(Count::CrlUpdate("applied"));
                tracing::info!(
                    number = update.number,
                    revoked = update.newly_revoked.len(),
                    "applied a newer CRL"
                );
                self.out.push_back(Output::CrlApplied { number: update.number });
                self.audit(
                    "crl-applied",
                    from,
                    serde_json::json!({"number": update.number, "newlyRevoked": update.newly_revoked.len()}),
                );
                // Emergency push: every neighbour gets it at once.
                self.flood(Frame::CrlData { der: der.to_vec() }, Some(from));
                // Routes to revoked members are forgotten and their proofs dropped, so an
                // advert still in flight from a lagging neighbour is checked again (and refused).
                let revoked: Vec<String> = self
                    .proofs
                    .iter()
                    .filter(|(_, kept)| {
                        kept.iter().any(|(_, _, cert)| {
                            genesis_trust::Serial::of_certificate(cert)
                                .is_ok_and(|serial| crl.is_revoked(&serial))
                        })
                    })
                    .map(|(d, _)| d.clone())
                    .collect();
                for dest in revoked {
                    self.proofs.remove(&dest);
                    let actions = self.routes.forget(&dest);
                    self.route_actions(actions);
                }
                // Their service records go with their routes.
                self.services.revoke(|serial| crl.is_revoked(serial));
                // Links to revoked peers are closed, one by one (not every link).
                self.close_invalid_links(now, wall);
                Ok(update.number)
            }
            Err(genesis_trust::Error::CrlNotNewer { current, offered }) => {
                self.count(Count::CrlUpdate("not_newer"));
                if offered < current {
                    // A stale CRL is not an error of the sender's making, but worth a record.
                    self.audit(
                        "crl-ignored",
                        from,
                        serde_json::json!({"offered": offered, "current": current}),
                    );
                }
                Err(Error::CrlNotNewer { current, offered })
            }
            Err(e) => Err(self.refuse_crl(from, e.to_string())),
        }
    }

    fn refuse_crl(&mut self, from: &str, reason: String) -> Error {
        self.count(Count::CrlUpdate("refused"));
        tracing::warn!(peer = %from, error = %reason, "refused a CRL");
        self.audit("crl-refused", from, serde_json::json!({"reason": reason}));
        Error::CrlRefused(reason)
    }

    /// Re-checks every live link: a peer whose certificate expired or was revoked since the
    /// handshake loses its link, alone (LESSONS: links must not outlive their certificates).
    fn close_invalid_links(&mut self, now: Time, wall: SystemTime) {
        let invalid: Vec<(String, u64, String)> = self
            .links
            .iter()
            .filter_map(|(n, l)| {
                self.store
                    .check_still_valid(&l.peer, wall)
                    .err()
                    .map(|e| (n.clone(), l.id, e.to_string()))
            })
            .collect();
        for (node, id, reason) in invalid {
            self.audit("link-closed", &node, serde_json::json!({"reason": reason}));
            self.close_link(now, &node, id, CloseReason::CertificateInvalid, &reason);
        }
    }

    // ---- control messages ----

    /// A control envelope from a neighbour (`from`), or injected here (`None`): verified once,
    /// audited either way with the rule that decided, flooded on only if accepted, applied by
    /// the members it addresses, which answer the origin.
    pub fn handle_control(
        &mut self,
        now: Time,
        wall: SystemTime,
        from: Option<&str>,
        origin: String,
        wire: Vec<u8>,
    ) -> Result<ControlVerdict, ControlVerdict> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(&wire).into();
        // NB: flood duplicates are dropped quietly; an injection (from == None) always goes to
        // the verifier, so a replay is refused and audited by the replay cache.
        if !self.controls.insert(hash) && from.is_some() {
            return Err(ControlVerdict {
                verb: String::new(),
                rule: "duplicate".into(),
                detail: "already handled".into(),
                id: String::new(),
            });
        }
        let subject = from.unwrap_or("admin-api").to_owned();
        match self.control.verify(&wire, wall) {
            Ok(acc) => {
                let verb = acc.envelope.verb.to_string();
                self.count(Count::Control(verb.clone(), "accepted"));
                self.audit(
                    "control-accepted",
                    &acc.signer.uri(),
                    serde_json::json!({"id": acc.envelope.id, "verb": verb, "scope": acc.envelope.scope.to_string(), "rule": acc.rule, "via": subject}),
                );
                self.flood(Frame::Control { origin: origin.clone(), envelope: wire }, from);
                let verdict = ControlVerdict {
                    verb,
                    rule: acc.rule.clone(),
                    detail: String::new(),
                    id: acc.envelope.id.clone(),
                };
                if acc.envelope.scope.targets(&self.identity) {
                    // NB: drain and shutdown close every link, and a route reset forgets the
                    // way back to the origin, so their answer goes out first (queued control
                    // frames are flushed before a link closes). Answered after the reset, a
                    // network-wide route reset reported "1/18 applied" though all had applied it.
                    let answer_first = matches!(
                        acc.envelope.verb,
                        genesis_trust::Verb::Drain
                            | genesis_trust::Verb::Shutdown
                            | genesis_trust::Verb::RouteReset
                    );
                    let applied = if answer_first {
                        self.ack(&origin, &acc.envelope.id, Ok(acc.rule.clone()));
                        self.apply_control(now, wall, &acc.envelope)
                    } else {
                        let applied = self.apply_control(now, wall, &acc.envelope);
                        self.ack(
                            &origin,
                            &acc.envelope.id,
                            applied.clone().map(|()| acc.rule.clone()),
                        );
                        applied
                    };
                    let detail =
                        applied.as_ref().err().cloned().unwrap_or_else(|| acc.rule.clone());
                    let me = self.identity.uri();
                    self.audit(
                        "control-applied",
                        &me,
                        serde_json::json!({"id": acc.envelope.id, "verb": verdict.verb, "applied": applied.is_ok(), "detail": detail}),
                    );
                }
                Ok(verdict)
            }
            Err(refused) => {
                self.count(Count::Control("unknown".into(), "refused"));
                tracing::warn!(via = %subject, rule = %refused.rule, error = %refused.error, "refused a control message");
                let signer = refused.signer.as_ref().map(|s| s.uri()).unwrap_or_default();
                self.audit(
                    "control-refused",
                    &subject,
                    serde_json::json!({"rule": refused.rule, "error": refused.error.to_string(), "signer": signer}),
                );
                Err(ControlVerdict {
                    verb: String::new(),
                    rule: refused.rule.clone(),
                    detail: refused.error.to_string(),
                    id: String::new(),
                })
            }
        }
    }

    /// Answers the origin of a control message (the member it was injected at).
    fn ack(&mut self, origin: &str, id: &str, result: Result<String, String>) {
        let (applied, detail) = match result {
            Ok(rule) => (true, rule),
            Err(e) => (false, e),
        };
        let ack = ControlAck {
            origin: origin.to_owned(),
            id: id.to_owned(),
            node: self.me.clone(),
            applied,
            detail,
            ttl: self.config.routing.max_hops,
        };
        if origin == self.me {
            self.out.push_back(Output::Ack(ack));
        } else if let Some(next) = self.routes.next_hop(origin).map(str::to_owned) {
            self.send(&next, Frame::ControlAck(ack));
        }
    }

    /// Carries out an accepted control message addressed to this member.
    fn apply_control(
        &mut self,
        now: Time,
        wall: SystemTime,
        env: &genesis_trust::ControlEnvelope,
    ) -> Result<(), String> {
        use genesis_trust::Verb;
        match env.verb {
            Verb::Drain | Verb::Shutdown => {
                tracing::warn!(verb = %env.verb, "draining on a control message");
                self.draining = true;
                self.out.push_back(Output::Draining);
                let links: Vec<(String, u64)> =
                    self.links.iter().map(|(n, l)| (n.clone(), l.id)).collect();
                for (n, id) in links {
                    self.close_link(now, &n, id, CloseReason::Draining, "draining");
                }
                if env.verb == Verb::Shutdown {
                    self.out.push_back(Output::Shutdown);
                }
                Ok(())
            }
            Verb::RouteReset => {
                let seqno = self.routes.seqno().wrapping_add(1);
                self.routes = RouteTable::new(&self.me, seqno, self.config.routing.clone(), now);
                self.proofs.clear();
                self.sign_own_seqno();
                let links: Vec<(String, u16)> =
                    self.links.iter().map(|(n, l)| (n.clone(), l.cost)).collect();
                for (n, cost) in links {
                    let actions = self.routes.neighbour_up(&n, cost);
                    self.route_actions(actions);
                }
                self.out.push_back(Output::RoutesChanged);
                Ok(())
            }
            Verb::LogLevel => {
                let level = env.args.get("level").ok_or("log-level needs args.level")?;
                match &self.log_level {
                    Some(set) => set(level),
                    None => Err("this sidecar cannot change its log level".into()),
                }
            }
            Verb::PolicyUpdate => {
                let policy =
                    env.args.get("policy").ok_or("policy-update needs args.policy (JSON)")?;
                let policy: RbacPolicy =
                    serde_json::from_str(policy).map_err(|e| format!("invalid policy: {e}"))?;
                self.control.set_policy(policy);
                Ok(())
            }
            Verb::Revoke => {
                use base64::Engine;
                let crl = env.args.get("crl").ok_or("revoke needs args.crl (base64 DER)")?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(crl)
                    .map_err(|e| format!("args.crl is not base64: {e}"))?;
                self.handle_crl(now, wall, "control", &der).map(drop).map_err(|e| e.to_string())
            }
        }
    }

    // ---- data, broadcast ----

    /// Data sent by this member's app or streams.
    pub fn send_data(&mut self, dst: String, kind: DataKind, flow: u64, payload: Vec<u8>) {
        let ttl = self.config.routing.max_hops;
        let data = Data { src: self.me.clone(), dst, ttl, kind, flow, payload: payload.into() };
        self.route_data(data, false);
    }

    fn route_data(&mut self, mut d: Data, relayed: bool) {
        match forward::decide(&self.me, &d, relayed, |dst| {
            self.routes.next_hop(dst).map(str::to_owned)
        }) {
            Forward::Deliver => self.out.push_back(Output::DeliverData(d)),
            Forward::Relay { next, ttl } => {
                d.ttl = ttl;
                if relayed {
                    self.count(Count::Forwarded);
                }
                self.send(&next, Frame::Data(d));
            }
            Forward::Drop { label, reason } => {
                self.count(Count::Dropped(label));
                self.unreachable(&d, &reason);
            }
        }
    }

    /// Tells the source its data could not be delivered (never in answer to an Unreachable).
    fn unreachable(&mut self, d: &Data, reason: &str) {
        if d.kind == DataKind::Unreachable || d.src == self.me {
            if d.src == self.me {
                self.out.push_back(Output::FlowUnreachable {
                    dst: d.dst.clone(),
                    flow: d.flow,
                    reason: reason.to_owned(),
                });
            }
            return;
        }
        let back = Data {
            src: self.me.clone(),
            dst: d.src.clone(),
            ttl: self.config.routing.max_hops,
            kind: DataKind::Unreachable,
            flow: d.flow,
            payload: reason.as_bytes().to_vec().into(),
        };
        if let Some(next) = self.routes.next_hop(&back.dst).map(str::to_owned) {
            self.send(&next, Frame::Data(back));
        }
    }

    /// A broadcast (empty topic) or topic message from this member's app, signed with our
    /// key; returns its id.
    pub fn broadcast(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<u64, crate::error::Error> {
        let b = self.signed_broadcast(topic, payload)?;
        let id = b.id;
        self.flood(Frame::Broadcast(b), None);
        Ok(id)
    }

    /// A broadcast of ours, signed, and remembered as seen.
    fn signed_broadcast(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<Broadcast, crate::error::Error> {
        let id = self.next_id();
        let sig = genesis_trust::broadcast::sign_broadcast(
            &self.key,
            &self.identity,
            id,
            &topic,
            &payload,
        )
        .map_err(|e| {
            crate::error::Error::Identity(format!("signing a broadcast with our key: {e}"))
        })?;
        let b = Broadcast {
            src: self.me.clone(),
            id,
            ttl: self.config.routing.max_hops,
            topic,
            payload,
            cert: self.leaf.to_vec(),
            sig,
        };
        self.broadcasts.insert((b.src.clone(), id));
        Ok(b)
    }

    // ---- services ----

    /// Sets the services this member offers and publishes them at once; a set without a name
    /// withdraws it everywhere.
    pub fn set_services(
        &mut self,
        now: Time,
        wall: SystemTime,
        services: BTreeMap<String, u16>,
    ) -> Result<(), crate::error::Error> {
        if services.len() > crate::services::MAX_SERVICES {
            return Err(crate::error::Error::Invalid(format!(
                "{} services: a member offers at most {}",
                services.len(),
                crate::services::MAX_SERVICES
            )));
        }
        if services == self.own_services && self.own_record.is_some() {
            return Ok(());
        }
        let withdrawing = !self.own_services.is_empty();
        self.own_services = services;
        if withdrawing || !self.own_services.is_empty() {
            self.publish_services(now, wall)?;
        }
        Ok(())
    }

    /// Offers `name` on `port`, or withdraws it (`None`).
    pub fn offer_service(
        &mut self,
        now: Time,
        wall: SystemTime,
        name: &str,
        port: Option<u16>,
    ) -> Result<(), crate::error::Error> {
        crate::services::valid_name(name).map_err(crate::error::Error::Invalid)?;
        let mut services = self.own_services.clone();
        match port {
            Some(port) => services.insert(name.to_owned(), port),
            None => services.remove(name),
        };
        self.set_services(now, wall, services)
    }

    /// Signs and floods our service record; republished while we offer anything.
    fn publish_services(&mut self, now: Time, wall: SystemTime) -> Result<(), crate::error::Error> {
        let wall_ms = unix_ms(wall).max(self.last_issued_ms + 1);
        self.last_issued_ms = wall_ms;
        let record = crate::services::Record {
            issued_ms: wall_ms,
            ttl_secs: crate::services::RECORD_TTL.as_secs() as u32,
            services: self.own_services.clone(),
        };
        let payload = serde_json::to_vec(&record).expect("a record serialises");
        let b = self.signed_broadcast(crate::services::TOPIC.to_owned(), payload)?;
        self.flood(Frame::Broadcast(b.clone()), None);
        self.own_record = (!self.own_services.is_empty()).then_some(b);
        self.next_publish = self.own_record.as_ref().map(|_| now + crate::services::REPUBLISH);
        Ok(())
    }

    /// A verified service record from `from`'s flood: held (and passed on) if it is news.
    fn on_service_record(&mut self, now: Time, wall: SystemTime, from: &str, b: &Broadcast) {
        let serial = match genesis_trust::CertInfo::parse(&b.cert) {
            Ok(info) => info.serial,
            Err(e) => {
                // (Its signature checked out against this certificate, so this cannot happen.)
                tracing::warn!(src = %b.src, error = %e, "a service record's certificate");
                return;
            }
        };
        match self.services.apply(now, unix_ms(wall), &b.src, serial, b) {
            Ok(()) => {
                if b.ttl > 1 {
                    let mut b = b.clone();
                    b.ttl -= 1;
                    self.flood(Frame::Broadcast(b), Some(from));
                }
            }
            Err(Refusal::Malformed(reason)) => {
                // Signed by its source: the source's fault, not the relay's.
                self.count(Count::Invalid("bad_service_record"));
                tracing::warn!(src = %b.src, %reason, "refused a service record");
                self.audit(
                    "service-record-refused",
                    &b.src,
                    serde_json::json!({"from": from, "reason": reason}),
                );
            }
            Err(Refusal::Stale) => self.count(Count::Dropped("stale_service_record")),
            Err(Refusal::Full) => self.count(Count::Dropped("service_table_full")),
        }
    }

    /// Every service known: ours (metric 0) and other members' (with the route metric to
    /// them, `None` while there is no route).
    pub fn services(&self, now: Time) -> Vec<ServiceView> {
        let mut views: Vec<ServiceView> = self
            .own_services
            .iter()
            .map(|(name, port)| ServiceView {
                name: name.clone(),
                member: self.me.clone(),
                port: *port,
                metric: Some(0),
                expires_in_secs: None,
            })
            .collect();
        views.extend(self.services.view(now, |m| self.routes.metric_to(m)));
        views.sort_by(|a, b| {
            (&a.name, a.metric.is_none(), a.metric, &a.member).cmp(&(
                &b.name,
                b.metric.is_none(),
                b.metric,
                &b.member,
            ))
        });
        views
    }

    /// The members offering `name` that we can reach now, with their ports, nearest first (by
    /// route metric; this member itself first when it offers it).
    pub fn service_targets(&self, name: &str) -> Vec<(String, u16)> {
        let own = self.own_services.get(name).map(|p| (0, self.me.clone(), *p));
        let mut found: Vec<(u16, String, u16)> = self
            .services
            .offering(name)
            .filter_map(|(m, port)| Some((self.routes.metric_to(m)?, m.to_owned(), port)))
            .collect();
        found.sort();
        own.into_iter().chain(found).map(|(_, m, p)| (m, p)).collect()
    }

    // ---- relay load ----

    /// Our relay load went above (or back below) its share: while above, every route we
    /// advertise but our own costs [`RELAY_PENALTY`] more, so neighbours with another path
    /// take it.
    pub fn set_relay_saturated(&mut self, saturated: bool) {
        let penalty = if saturated { RELAY_PENALTY } else { 0 };
        let actions = self.routes.set_transit_penalty(penalty);
        self.route_actions(actions);
    }

    /// A broadcast from neighbour `from`: delivered and relayed only once its source's
    /// signature checks out. A duplicate is dropped before any check; a forgery is never
    /// remembered as seen, so it cannot shadow the genuine message with the same id.
    fn on_broadcast(&mut self, now: Time, wall: SystemTime, from: &str, mut b: Broadcast) {
        // (Our own broadcasts are in the seen set from the start; one that names us and is
        // not there is checked like any other, so a forgery in our name is refused as such.)
        if self.broadcasts.contains(&(b.src.clone(), b.id)) {
            self.count(Count::Dropped("duplicate"));
            return;
        }
        let claims = genesis_trust::broadcast::SignedBroadcast {
            source: &b.src,
            id: b.id,
            topic: &b.topic,
            payload: &b.payload,
            cert: &b.cert,
            signature: &b.sig,
        };
        let identity = match genesis_trust::broadcast::verify_broadcast(&self.store, claims, wall) {
            Ok(identity) => identity,
            Err(genesis_trust::Error::Revoked { .. }) => {
                // A source revoked after it sent, or a neighbour behind on the CRL.
                self.count(Count::Dropped("revoked_source"));
                return;
            }
            Err(e) => {
                self.count(Count::Invalid("forged_broadcast"));
                tracing::warn!(peer = %from, src = %b.src, error = %e, "refused a broadcast");
                self.audit(
                    "broadcast-refused",
                    from,
                    serde_json::json!({"src": b.src, "id": b.id, "reason": e.to_string()}),
                );
                let actions = self.peers.record(from, Conduct::InvalidFrame, now);
                self.peer_actions(now, actions);
                return;
            }
        };
        if !self.broadcasts.insert((b.src.clone(), b.id)) || b.src == self.me {
            self.count(Count::Dropped("duplicate")); // an echo of ours, older than the seen set
            return;
        }
        if b.topic == crate::services::TOPIC {
            self.on_service_record(now, wall, from, &b);
            return;
        }
        self.out.push_back(Output::AppBroadcast {
            src: b.src.clone(),
            identity: identity.uri(),
            topic: b.topic.clone(),
            id: b.id,
            payload: b.payload.clone(),
        });
        if b.ttl > 1 {
            b.ttl -= 1;
            self.flood(Frame::Broadcast(b), Some(from));
        }
    }

    // ---- identity ----

    /// This member renewed: sign the route seqno with the new key and show neighbours the new
    /// leaf, so they re-check the link against it.
    pub fn handle_renewed(&mut self, key: Arc<PrivateKey>, leaf: Vec<u8>) {
        self.key = key;
        self.leaf = Arc::from(leaf.as_slice());
        self.sign_own_seqno();
        self.flood(Frame::Certificate { der: leaf }, None);
    }

    fn sign_own_seqno(&mut self) {
        match genesis_trust::seqno::sign_seqno(&self.key, &self.identity, self.routes.seqno()) {
            Ok(p) => self.my_proof = p,
            Err(e) => tracing::error!(error = %e, "cannot sign our route seqno"),
        }
    }

    // ---- plumbing ----

    fn next_id(&mut self) -> u64 {
        // A splitmix64 step: distinct for a node's lifetime, unpredictable without the seed.
        self.next_id = self.next_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.next_id;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn count(&mut self, c: Count) {
        self.out.push_back(Output::Count(c));
    }

    fn audit(&mut self, event: &'static str, subject: &str, detail: serde_json::Value) {
        self.out.push_back(Output::Audit { event, subject: subject.to_owned(), detail });
    }

    fn send(&mut self, to: &str, frame: Frame) {
        if self.links.contains_key(to) {
            self.out.push_back(Output::Send { to: to.to_owned(), frame });
        }
    }

    fn flood(&mut self, frame: Frame, except: Option<&str>) {
        let mut nodes: Vec<String> =
            self.links.keys().filter(|n| Some(n.as_str()) != except).cloned().collect();
        nodes.sort();
        for n in nodes {
            self.out.push_back(Output::Send { to: n, frame: frame.clone() });
        }
    }

    fn close_link(&mut self, now: Time, node: &str, link_id: u64, kind: CloseReason, reason: &str) {
        if self.has_link(node, link_id) {
            self.out.push_back(Output::Close {
                node: node.to_owned(),
                link_id,
                goodbye: Some(reason.to_owned()),
            });
            self.link_down(now, node, link_id, false, kind, reason);
        }
    }

    fn link_down(
        &mut self,
        now: Time,
        node: &str,
        link_id: u64,
        failure: bool,
        kind: CloseReason,
        reason: &str,
    ) {
        if !self.has_link(node, link_id) {
            return;
        }
        self.links.remove(node);
        tracing::info!(peer = %node, %reason, failure, "link down");
        self.count(Count::LinkClosed(kind));
        self.out.push_back(Output::LinkGone { node: node.to_owned(), link_id });
        let actions = self.peers.on_disconnected(node, failure, now);
        self.peer_actions(now, actions);
        let actions = self.routes.neighbour_down(node);
        self.route_actions(actions);
    }

    fn route_actions(&mut self, actions: Vec<RouteAction>) {
        let mut changed = false;
        for action in actions {
            match action {
                RouteAction::Send { to, adverts } => {
                    let batch = self.pending_adverts.entry(to).or_default();
                    for a in adverts {
                        batch.insert(a.dest.clone(), a);
                    }
                }
                RouteAction::RequestSeqno { dest, seqno, hops_left, to } => {
                    let frame = Frame::SeqnoRequest { dest, seqno, hops_left };
                    match to {
                        Some(to) => self.send(&to, frame),
                        None => self.flood(frame, None),
                    }
                }
                RouteAction::OwnSeqnoChanged { .. } => self.sign_own_seqno(),
                RouteAction::Changed { .. } => {
                    self.count(Count::RouteChanged);
                    changed = true;
                }
            }
        }
        if changed {
            self.out.push_back(Output::RoutesChanged);
        }
    }

    /// The advert as it goes to neighbour `to`: with its destination's proof, and with the
    /// destination's certificate unless this link already carried it. `None` when the proof
    /// for its seqno is no longer kept (a newer advert replaces it).
    fn with_proof(&mut self, to: &str, a: Advert) -> Option<RouteAdvert> {
        let (proof, cert) = if a.metric == METRIC_INFINITY {
            (Vec::new(), Vec::new())
        } else {
            let (sig, cert) = if a.dest == self.me {
                (&self.my_proof, &self.leaf)
            } else {
                let kept = self.proofs.get(&a.dest)?;
                let (_, sig, cert) = kept.iter().find(|(s, _, _)| *s == a.seqno)?;
                (sig, cert)
            };
            let (sig, cert) = (sig.clone(), cert.clone());
            let id = self.dest_id(&a.dest);
            let link = self.links.get_mut(to)?;
            let carried = link.certs_sent.get(id).is_some_and(|c| *c == cert);
            let bytes = if carried { Vec::new() } else { cert.to_vec() };
            link.certs_sent.set(id, cert);
            (sig, bytes)
        };
        Some(RouteAdvert {
            dest: a.dest,
            seqno: a.seqno,
            metric: a.metric,
            hops: a.hops,
            proof,
            cert,
        })
    }

    fn peer_actions(&mut self, now: Time, actions: Vec<PeerAction>) {
        for action in actions {
            match action {
                PeerAction::Dial { addr } => {
                    if !self.draining {
                        self.out.push_back(Output::Dial { addr });
                    }
                }
                PeerAction::Disconnect { node, reason } => {
                    if let Some(id) = self.links.get(&node).map(|l| l.id) {
                        self.close_link(now, &node, id, CloseReason::Policy, &reason);
                    }
                }
                PeerAction::Exchange => {
                    let mut nodes: Vec<String> = self.links.keys().cloned().collect();
                    nodes.sort();
                    for n in nodes {
                        let peers = self.peers.exchange_list_for(&n, now);
                        self.send(&n, Frame::PeerExchange { peers });
                    }
                    // Members announce their CRL number periodically too: one that missed a
                    // push catches up within an exchange interval.
                    if let Some(number) = self.store.crl_number() {
                        self.flood(Frame::CrlAnnounce { number }, None);
                    }
                }
                PeerAction::Banned { node, until, reason } => {
                    self.count(Count::Ban);
                    tracing::warn!(peer = %node, %reason, "peer banned");
                    let secs = until.saturating_sub(now).as_secs();
                    self.audit(
                        "peer-banned",
                        &node,
                        serde_json::json!({"reason": reason, "seconds": secs}),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
