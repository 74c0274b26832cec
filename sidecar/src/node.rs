//! The tokio driver's core: one task that owns the sans-IO state machines ([`RouteTable`],
//! [`PeerSet`]) and the link table, fed by link and stream tasks through a bounded channel.
//! It turns frames and timers into events for the state machines and carries out their actions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use genesis_trust::{AuditLog, Identity, PeerIdentity, PrivateKey, TrustStore};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frame::{
    Broadcast, ControlAck, Data, DataKind, Frame, FrameError, FrameType, PeerAddr, RouteAdvert,
    MAX_ADVERTS, METRIC_INFINITY,
};
use crate::metrics::{CloseReason, Metrics};
use crate::peers::{Admit, Conduct, Level, PeerAction, PeerSet, PeerView};
use crate::routing::{link_cost, Advert, RouteAction, RouteTable, RouteView, Time};

/// Data frames queued for one link's writer (4 MiB of 32 KiB frames). Senders of stream data
/// wait when it is full (backpressure), so it need not be deep; a deep queue would only add
/// latency (bufferbloat).
pub const DATA_QUEUE: usize = 128;
/// Control frames queued for one link's writer. They are written before any queued data, so
/// pings and route updates are never stuck behind bulk transfers.
pub const CONTROL_QUEUE: usize = 1024;

/// A link's two queues.
#[derive(Clone)]
pub struct LinkQueues {
    pub control: mpsc::Sender<Bytes>,
    pub data: mpsc::Sender<Bytes>,
}
/// Commands queued for the core; senders wait when it is full (backpressure to links/streams).
pub const CORE_QUEUE: usize = 8192;
/// Broadcast ids remembered for duplicate suppression.
const SEEN_BROADCASTS: usize = 16_384;
/// Control envelopes remembered for flood duplicate suppression.
const SEEN_CONTROLS: usize = 4096;
/// Envelopes whose acknowledgements are kept for the admin API.
const MAX_ACKED_ENVELOPES: usize = 256;

/// How a control message was decided here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlVerdict {
    pub verb: String,
    /// The RBAC rule (or check) that decided.
    pub rule: String,
    pub detail: String,
    pub id: String,
}

/// Messages held for the app before new ones are refused.
pub const INBOX_CAPACITY: usize = 4096;

/// A flow: (remote node, flow id).
pub type FlowKey = (String, u64);

/// What a stream task receives from the core.
#[derive(Debug)]
pub enum FlowEvent {
    /// End-to-end TLS bytes.
    Data(Vec<u8>),
    /// The remote closed the stream.
    Close,
    /// The stream cannot be delivered (reason).
    Unreachable(String),
}

/// Peer-link TLS configurations, swapped as a whole on certificate renewal.
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub key: Arc<PrivateKey>,
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    pub renewal_time: SystemTime,
}

/// What the data path needs without going through the core: published by the core as
/// snapshots, read by link readers (relaying) and stream writers (sending) so data frames get
/// hop-by-hop backpressure instead of being dropped at a full queue.
#[derive(Default)]
pub struct DataPlane {
    /// Destination → next hop.
    pub next_hops: ArcSwap<HashMap<String, String>>,
    /// Neighbour → its link's frame queue.
    pub links: ArcSwap<HashMap<String, mpsc::Sender<Bytes>>>,
    /// Open end-to-end streams.
    pub flows: Mutex<HashMap<FlowKey, mpsc::Sender<FlowEvent>>>,
}

impl DataPlane {
    /// The queue of the link towards `dst`.
    pub fn route(&self, dst: &str) -> Option<(String, mpsc::Sender<Bytes>)> {
        let next = self.next_hops.load().get(dst)?.clone();
        let tx = self.links.load().get(&next)?.clone();
        Some((next, tx))
    }

    /// The stream registered for `key`.
    pub fn flow(&self, key: &FlowKey) -> Option<mpsc::Sender<FlowEvent>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }
}

/// A message or broadcast waiting for the app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    pub from: String,
    /// `message`, `broadcast` or `topic`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub id: u64,
    /// Base64 of the payload.
    pub body: String,
}

/// State shared by the core, links, streams and the HTTP APIs.
pub struct Shared {
    pub config: Config,
    pub identity: Identity,
    pub metrics: Metrics,
    pub store: Arc<TrustStore>,
    pub tls: ArcSwap<TlsConfigs>,
    pub commands: mpsc::Sender<Command>,
    pub started: Instant,
    pub inbox: Mutex<VecDeque<Received>>,
    pub inbox_notify: Notify,
    pub subscriptions: Mutex<HashSet<String>>,
    pub draining: AtomicBool,
    pub audit: Option<Mutex<AuditLog>>,
    pub messenger: crate::stream::Messenger,
    pub data: DataPlane,
    /// Acknowledgements of control messages injected here, by envelope id.
    pub acks: Mutex<HashMap<String, Vec<ControlAck>>>,
    pub acks_notify: Notify,
    /// Wall-clock Unix milliseconds when the current CRL was applied (0: the one from the join).
    pub crl_applied_at_ms: AtomicU64,
    /// Set by a `shutdown` control message; main waits on it beside SIGTERM.
    pub shutdown_requested: Notify,
    /// `POST /admin/renew`: renew the certificate now instead of at renewalTime.
    pub renew_now: Notify,
    /// When the admin API last asked for a renewal (they are rate-limited).
    pub admin_renewal: Mutex<Option<Instant>>,
    /// Changes the log filter (`log-level` control messages); set by main.
    #[allow(clippy::type_complexity)]
    pub log_level: Mutex<Option<Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("identity", &self.identity.uri()).finish()
    }
}

impl Shared {
    /// Time since start, the state machines' clock.
    pub fn now(&self) -> Time {
        self.started.elapsed()
    }

    /// A fresh random-ish id (flows, broadcasts): unique per process, unpredictable across.
    pub fn next_id(&self) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.started.elapsed().as_nanos() as u64
    }

    /// Appends a security event to the audit log, if one is configured, and publishes the new
    /// chain head (admin API and metric) so a rewritten history can be noticed from outside.
    pub fn audit(&self, event: &str, subject: &str, detail: serde_json::Value) {
        if let Some(log) = &self.audit {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let old = log.head().to_owned();
            if let Err(e) = log.append(event, subject, detail, SystemTime::now()) {
                self.metrics.audit_errors.inc();
                tracing::error!(error = %e, "cannot write the audit log");
                return;
            }
            let _ = self.metrics.audit_head.remove_label_values(&[&old]);
            self.metrics.audit_head.with_label_values(&[log.head()]).set(1);
            self.metrics.audit_records.set(log.len() as i64);
        }
    }

    /// Records a control acknowledgement for an envelope injected here (bounded: the oldest
    /// envelopes' acks are dropped beyond a limit).
    pub fn record_ack(&self, ack: ControlAck) {
        let result = if ack.applied { "applied" } else { "refused" };
        self.metrics.control_acks.with_label_values(&[result]).inc();
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if acks.len() >= MAX_ACKED_ENVELOPES && !acks.contains_key(&ack.id) {
            if let Some(k) = acks.keys().next().cloned() {
                acks.remove(&k);
            }
        }
        acks.entry(ack.id.clone()).or_default().push(ack);
        drop(acks);
        self.acks_notify.notify_waiters();
    }

    /// The audit log's (records, head), if one is configured.
    pub fn audit_head(&self) -> Option<(u64, String)> {
        let log = self.audit.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        Some((log.len(), log.head().to_owned()))
    }

    /// Test hook (`--test-capture-relayed`): what this relay could see of other members' data.
    pub fn capture_relayed(&self, payload: &[u8]) {
        if let Some(path) = &self.config.test_capture_relayed {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = f.write_all(payload);
            }
        }
    }

    /// Queues an app-visible message, refusing when the inbox is full.
    pub fn deliver(&self, item: Received) -> bool {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if inbox.len() >= INBOX_CAPACITY {
            return false;
        }
        self.metrics.received.with_label_values(&[item.kind]).inc();
        inbox.push_back(item);
        self.metrics.inbox.set(inbox.len() as i64);
        drop(inbox);
        self.inbox_notify.notify_waiters();
        true
    }
}

/// Snapshot for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub peers: Vec<PeerView>,
    pub routes: Vec<RouteView>,
    pub links: Vec<String>,
    pub seqno: u32,
}

/// A link that finished its handshake and hello, offered to the core.
pub struct NewLink {
    pub node: String,
    /// The address to redial it at (dialled, or announced in its hello).
    pub addr: String,
    pub peer: PeerIdentity,
    pub outbound: bool,
    pub queues: LinkQueues,
    pub heard: Arc<AtomicU64>,
    pub cancel: CancellationToken,
    pub link_id: u64,
}

/// Everything that reaches the core.
pub enum Command {
    LinkUp {
        link: NewLink,
        reply: oneshot::Sender<Result<(), String>>,
    },
    LinkDown {
        node: String,
        link_id: u64,
        failure: bool,
        reason: String,
    },
    Frame {
        node: String,
        link_id: u64,
        frame: Frame,
        size: usize,
    },
    BadFrame {
        node: String,
        link_id: u64,
        error: FrameError,
    },
    /// A peer's hello did not match its certificate, or its certificate was refused.
    BadIdentity {
        node: Option<String>,
        addr: String,
        reason: String,
    },
    DialFailed {
        addr: String,
        reason: String,
    },
    /// May an inbound link from `node` start? Asked before our hello; a refusal carries our
    /// peer list for the dialer.
    AdmitInbound {
        node: String,
        reply: oneshot::Sender<Result<(), (String, Vec<PeerAddr>)>>,
    },
    /// The member at `addr` refused our link (full or banning us) and handed us its peers.
    DialRefused {
        addr: String,
        reason: String,
        peers: Vec<PeerAddr>,
    },
    SendData {
        dst: String,
        kind: DataKind,
        flow: u64,
        payload: Vec<u8>,
    },
    Broadcast {
        topic: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<u64>,
    },
    HasRoute {
        dst: String,
        reply: oneshot::Sender<bool>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    /// Certificate renewed: sign our route seqno proof with the new key.
    Renewed,
    /// Drain: say goodbye to every peer.
    Drain,
    /// A CRL pushed through the admin API (the operator's or genesisctl's injection point).
    InjectCrl {
        der: Vec<u8>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// A signed control envelope injected through the admin API.
    InjectControl {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<ControlVerdict, ControlVerdict>>,
    },
}

struct Link {
    id: u64,
    queues: LinkQueues,
    /// Milliseconds since start when the link reader last decoded a frame (any frame: a peer
    /// streaming data is alive even if its pong is still in flight).
    heard: Arc<AtomicU64>,
    cancel: CancellationToken,
    outbound: bool,
    ping: Option<(u64, Time)>,
    /// Smoothed RTT (EWMA, 1/4 weight to each sample) and the link cost last given to routing.
    srtt: Option<Duration>,
    cost: u16,
    peer: PeerIdentity,
}

/// Verified proofs of other members' sequence numbers: (seqno, signature, leaf DER).
type Proof = (u32, Vec<u8>, Vec<u8>);

struct Core {
    shared: Arc<Shared>,
    me: String,
    routes: RouteTable,
    peers: PeerSet,
    links: HashMap<String, Link>,
    proofs: HashMap<String, Proof>,
    my_proof: Vec<u8>,
    seen_broadcasts: HashSet<(String, u64)>,
    seen_order: VecDeque<(String, u64)>,
    next_hello: Time,
    control: genesis_trust::ControlVerifier,
    /// Hashes of control envelopes already handled: each is verified and flooded once.
    seen_controls: HashSet<[u8; 32]>,
    seen_controls_order: VecDeque<[u8; 32]>,
}

/// Runs the core until `shutdown` fires.
pub async fn run_core(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let now = shared.now();
    let me = shared.identity.node().to_owned();
    let mut seed = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).ok();
    let routes = RouteTable::new(&me, u32::from_be_bytes(seed), shared.config.routing.clone(), now);
    // NB: in a cluster every member gets the same anchor list, anchors included; an anchor
    // does not dial itself.
    let anchors: Vec<String> =
        shared.config.anchors.iter().filter(|a| **a != shared.config.advertise).cloned().collect();
    let peers = PeerSet::new(&me, shared.config.peers.clone(), &anchors, now);
    let mut core = Core {
        me,
        routes,
        peers,
        links: HashMap::new(),
        proofs: HashMap::new(),
        my_proof: Vec::new(),
        seen_broadcasts: HashSet::new(),
        seen_order: VecDeque::new(),
        next_hello: now,
        control: genesis_trust::ControlVerifier::new(
            shared.store.clone(),
            shared.identity.network(),
            shared.config.rbac.clone(),
        ),
        seen_controls: HashSet::new(),
        seen_controls_order: VecDeque::new(),
        shared,
    };
    core.sign_own_seqno();
    let tick_every = (core.shared.config.hello_interval / 4)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = commands.recv() => match cmd {
                Some(cmd) => core.handle(cmd),
                None => break,
            },
            _ = tick.tick() => core.on_tick(),
        }
    }
    for (_, link) in core.links.drain() {
        link.cancel.cancel();
    }
}

impl Core {
    fn now(&self) -> Time {
        self.shared.now()
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn sign_own_seqno(&mut self) {
        let tls = self.shared.tls.load();
        match genesis_trust::seqno::sign_seqno(&tls.key, &self.shared.identity, self.routes.seqno())
        {
            Ok(p) => self.my_proof = p,
            Err(e) => tracing::error!(error = %e, "cannot sign our route seqno"),
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::LinkUp { link, reply } => {
                let result = self.link_up(link);
                let _ = reply.send(result);
            }
            Command::LinkDown { node, link_id, failure, reason } => {
                self.link_down(&node, link_id, failure, CloseReason::ConnectionLost, &reason)
            }
            Command::Frame { node, link_id, frame, size } => {
                if self.links.get(&node).is_some_and(|l| l.id == link_id) {
                    self.on_frame(&node, frame, size);
                }
            }
            Command::BadFrame { node, link_id, error } => {
                self.metrics().invalid_frames.with_label_values(&[error.label()]).inc();
                tracing::warn!(peer = %node, error = %error, "invalid frame: closing the link");
                self.shared.audit(
                    "frame-refused",
                    &node,
                    serde_json::json!({"reason": error.to_string()}),
                );
                let now = self.now();
                let actions = self.peers.record(&node, Conduct::InvalidFrame, now);
                self.peer_actions(actions);
                self.close_link(
                    &node,
                    link_id,
                    CloseReason::InvalidFrame,
                    &format!("invalid frame: {error}"),
                );
            }
            Command::BadIdentity { node, addr, reason } => {
                self.metrics().handshakes.with_label_values(&["refused"]).inc();
                tracing::warn!(%addr, ?node, %reason, "peer refused");
                self.shared.audit(
                    "link-refused",
                    node.as_deref().unwrap_or(&addr),
                    serde_json::json!({"addr": addr, "reason": reason}),
                );
                if let Some(node) = node {
                    let now = self.now();
                    let actions = self.peers.record(&node, Conduct::BadIdentity, now);
                    self.peer_actions(actions);
                }
                let now = self.now();
                self.peers.on_dial_failed(&addr, now);
            }
            Command::DialFailed { addr, reason } => {
                tracing::debug!(%addr, %reason, "dial failed");
                let now = self.now();
                self.peers.on_dial_failed(&addr, now);
            }
            Command::AdmitInbound { node, reply } => {
                let now = self.now();
                let verdict = self
                    .peers
                    .admit_inbound(&node, now)
                    .map_err(|reason| (reason, self.peers.exchange_list(now)));
                if let Err((reason, _)) = &verdict {
                    tracing::debug!(peer = %node, %reason, "inbound link refused");
                }
                let _ = reply.send(verdict);
            }
            Command::DialRefused { addr, reason, peers } => {
                tracing::info!(%addr, %reason, learned = peers.len(), "dialled member refused the link");
                let now = self.now();
                self.peers.on_dial_refused(&addr, &peers, now);
            }
            Command::SendData { dst, kind, flow, payload } => {
                let ttl = self.shared.config.routing.max_hops;
                let data = Data { src: self.me.clone(), dst, ttl, kind, flow, payload };
                self.route_data(data, None);
            }
            Command::Broadcast { topic, payload, reply } => {
                let id = self.shared.next_id();
                let b = Broadcast {
                    src: self.me.clone(),
                    id,
                    ttl: self.shared.config.routing.max_hops,
                    topic,
                    payload,
                };
                self.remember_broadcast(&b.src, b.id);
                self.flood(Frame::Broadcast(b), None);
                let _ = reply.send(id);
            }
            Command::HasRoute { dst, reply } => {
                let _ = reply.send(dst == self.me || self.routes.next_hop(&dst).is_some());
            }
            Command::Snapshot { reply } => {
                let now = self.now();
                let _ = reply.send(Snapshot {
                    peers: self.peers.views(now),
                    routes: self.routes.routes(),
                    links: self.links.keys().cloned().collect(),
                    seqno: self.routes.seqno(),
                });
            }
            Command::Renewed => {
                self.sign_own_seqno();
                let der = self.shared.tls.load().chain[0].to_vec();
                self.flood(Frame::Certificate { der }, None);
            }
            Command::InjectCrl { der, reply } => {
                let _ = reply.send(self.on_crl("admin-api", &der));
            }
            Command::InjectControl { envelope, reply } => {
                let origin = self.me.clone();
                let _ = reply.send(self.on_control(None, origin, envelope));
            }
            Command::Drain => {
                let nodes: Vec<String> = self.links.keys().cloned().collect();
                for n in nodes {
                    self.send(&n, &Frame::Close { reason: "draining".into() });
                }
            }
        }
    }

    fn link_up(&mut self, link: NewLink) -> Result<(), String> {
        let NewLink { node, addr, peer, outbound, queues, heard, cancel, link_id } = link;
        let (node, addr) = (node.as_str(), addr.as_str());
        let now = self.now();
        if let Some(existing) = self.links.get(node) {
            // Both sides may dial each other at once. Keep the link dialled by the smaller
            // node name; both ends decide the same way.
            let dialer_of = |outbound: bool| if outbound { self.me.as_str() } else { node };
            let keep_existing = dialer_of(existing.outbound) <= dialer_of(outbound);
            if keep_existing {
                return Err("already linked".into());
            }
            let old = existing.id;
            self.close_link(node, old, CloseReason::Replaced, "replaced by a simultaneous link");
        }
        self.peers.on_connected(node, addr, now)?;
        self.links.insert(
            node.to_owned(),
            Link {
                id: link_id,
                queues,
                heard,
                cancel,
                outbound,
                ping: None,
                srtt: None,
                cost: link_cost(Duration::ZERO),
                peer,
            },
        );
        self.publish_links();
        self.metrics().handshakes.with_label_values(&["ok"]).inc();
        tracing::info!(peer = %node, %addr, outbound, "link up");
        let actions = self.routes.neighbour_up(node, link_cost(Duration::ZERO));
        self.route_actions(actions);
        let exchange = Frame::PeerExchange { peers: self.peers.exchange_list(now) };
        self.send(node, &exchange);
        if let Some(n) = self.shared.store.crl_number() {
            self.send(node, &Frame::CrlAnnounce { number: n });
        }
        Ok(())
    }

    fn link_down(
        &mut self,
        node: &str,
        link_id: u64,
        failure: bool,
        kind: CloseReason,
        reason: &str,
    ) {
        if self.links.get(node).is_none_or(|l| l.id != link_id) {
            return;
        }
        self.links.remove(node);
        self.metrics().link_closes.with_label_values(&[kind.as_str()]).inc();
        self.publish_links();
        tracing::info!(peer = %node, %reason, failure, "link down");
        let now = self.now();
        let actions = self.peers.on_disconnected(node, failure, now);
        self.peer_actions(actions);
        let actions = self.routes.neighbour_down(node);
        self.route_actions(actions);
    }

    fn close_link(&mut self, node: &str, link_id: u64, kind: CloseReason, reason: &str) {
        if let Some(link) = self.links.get(node).filter(|l| l.id == link_id) {
            let _ = link
                .queues
                .control
                .try_send(Bytes::from(Frame::Close { reason: reason.to_owned() }.encode()));
            link.cancel.cancel();
            self.link_down(node, link_id, false, kind, reason);
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        let hold = self.shared.config.hold_time;
        let silent: Vec<(String, u64)> = self
            .links
            .iter()
            .filter(|(_, l)| {
                now.saturating_sub(Duration::from_millis(l.heard.load(Ordering::Relaxed))) > hold
            })
            .map(|(n, l)| (n.clone(), l.id))
            .collect();
        for (node, id) in silent {
            tracing::warn!(peer = %node, "no frame within the hold time: closing the link");
            if let Some(l) = self.links.get(&node) {
                l.cancel.cancel();
            }
            self.link_down(&node, id, true, CloseReason::HoldTimeout, "hold time expired");
        }
        self.close_invalid_links();
        if now >= self.next_hello {
            self.next_hello = now + self.shared.config.hello_interval;
            let nodes: Vec<String> = self.links.keys().cloned().collect();
            for node in nodes {
                let nonce = self.shared.next_id();
                if let Some(l) = self.links.get_mut(&node) {
                    l.ping = Some((nonce, now));
                }
                self.send(&node, &Frame::Ping { nonce });
            }
        }
        let actions = self.routes.on_tick(now);
        self.route_actions(actions);
        let actions = self.peers.on_tick(now);
        self.peer_actions(actions);
        self.metrics().routes.set(self.routes.route_count() as i64);
        let views = self.peers.views(now);
        for level in [Level::New, Level::Trusted, Level::Suspicious, Level::Banned] {
            let n = views.iter().filter(|p| p.level == level).count();
            self.metrics().peers.with_label_values(&[level.as_str()]).set(n as i64);
        }
        let tls = self.shared.tls.load();
        let sys_now = SystemTime::now();
        let left = tls.not_after.duration_since(sys_now).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.metrics().certificate_expiry.set(left);
        self.metrics().renewal_due.set(signed_secs(tls.renewal_time, sys_now));
        self.metrics().crl_number.set(self.shared.store.crl_number().unwrap_or(0) as i64);
        if let Some(crl) = self.shared.store.crls().into_iter().max_by_key(|c| c.number()) {
            self.metrics().crl_age.set(-signed_secs(crl.this_update(), sys_now));
            self.metrics().crl_expiry.set(signed_secs(crl.next_update(), sys_now));
        }
        self.metrics().trust_roots.set(self.shared.store.bundle().roots().len() as i64);
        let flows = self.shared.data.flows.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.metrics().streams_active.set(flows as i64);
        let m = self.metrics();
        m.peer_reputation.reset();
        for p in views.iter().filter(|p| p.connected) {
            m.peer_reputation.with_label_values(&[&p.node]).set(i64::from(p.score));
        }
        m.routes_by_hops.reset();
        for r in self.routes.routes() {
            m.routes_by_hops.with_label_values(&[&r.hops.to_string()]).inc();
        }
    }

    /// Re-checks every live link: a peer whose certificate expired or was revoked since the
    /// handshake loses its link, alone (LESSONS: links must not outlive their certificates).
    fn close_invalid_links(&mut self) {
        let sys_now = SystemTime::now();
        let invalid: Vec<(String, u64, String)> = self
            .links
            .iter()
            .filter_map(|(n, l)| {
                self.shared
                    .store
                    .check_still_valid(&l.peer, sys_now)
                    .err()
                    .map(|e| (n.clone(), l.id, e.to_string()))
            })
            .collect();
        for (node, id, reason) in invalid {
            self.shared.audit("link-closed", &node, serde_json::json!({"reason": reason}));
            self.close_link(&node, id, CloseReason::CertificateInvalid, &reason);
        }
    }

    fn on_frame(&mut self, from: &str, frame: Frame, size: usize) {
        let now = self.now();
        let ty = frame.frame_type();
        if ty != FrameType::Data {
            // Data frames are counted by the link reader, which handles most of them.
            self.metrics().frames.with_label_values(&[ty.as_str(), "in"]).inc();
            self.metrics().bytes.with_label_values(&["in"]).inc_by(size as u64);
        }
        if !matches!(ty, FrameType::Data) {
            let (admit, actions) = self.peers.admit(from, now);
            self.peer_actions(actions);
            if admit == Admit::Drop {
                self.metrics().dropped.with_label_values(&["rate_limited"]).inc();
                return;
            }
        }
        match frame {
            Frame::Hello { .. } => self.protocol_violation(from, "a second hello"),
            Frame::Ping { nonce } => self.send(from, &Frame::Pong { nonce }),
            Frame::Pong { nonce } => {
                let Some(link) = self.links.get_mut(from) else { return };
                let Some((expected, sent)) = link.ping else { return };
                if expected != nonce {
                    return;
                }
                link.ping = None;
                let rtt = now.saturating_sub(sent);
                let srtt = link.srtt.map_or(rtt, |s| (s * 3 + rtt) / 4);
                link.srtt = Some(srtt);
                // Hysteresis: routing hears about a cost change only when it moved by a fifth,
                // so RTT jitter under load does not churn routes.
                let cost = link_cost(srtt);
                let moved = cost.abs_diff(link.cost) * 5 >= link.cost;
                if moved {
                    link.cost = cost;
                }
                self.metrics().rtt.observe(rtt.as_secs_f64());
                let actions = self.peers.record(from, Conduct::Pong(rtt), now);
                self.peer_actions(actions);
                if moved {
                    let actions = self.routes.neighbour_cost(from, cost);
                    self.route_actions(actions);
                }
            }
            Frame::RouteUpdate { adverts } => {
                for a in adverts {
                    if let Some(advert) = self.verify_advert(from, a) {
                        let actions = self.routes.on_advert(from, advert, now);
                        self.route_actions(actions);
                    }
                }
            }
            Frame::SeqnoRequest { dest, seqno, hops_left } => {
                let actions = self.routes.on_seqno_request(&dest, seqno, hops_left);
                self.route_actions(actions);
            }
            Frame::PeerExchange { peers } => self.peers.on_exchange(&peers, now),
            Frame::CrlAnnounce { number } => {
                if self.shared.store.crl_number().is_none_or(|n| number > n) {
                    self.send(from, &Frame::CrlRequest { number });
                }
            }
            Frame::CrlRequest { number } => {
                let held = self.shared.store.crls().into_iter().max_by_key(|c| c.number());
                if let Some(crl) = held.filter(|c| c.number() >= number) {
                    self.send(from, &Frame::CrlData { der: crl.der().to_vec() });
                }
            }
            Frame::CrlData { der } => {
                let _ = self.on_crl(from, &der);
            }
            Frame::Control { origin, envelope } => {
                let _ = self.on_control(Some(from), origin, envelope);
            }
            Frame::ControlAck(mut ack) => {
                if ack.origin == self.me {
                    self.shared.record_ack(ack);
                } else if ack.ttl > 1 {
                    ack.ttl -= 1;
                    if let Some(next) = self.routes.next_hop(&ack.origin).map(str::to_owned) {
                        self.send(&next, &Frame::ControlAck(ack));
                    }
                }
            }
            Frame::Data(d) => self.route_data(d, Some(from)),
            Frame::Broadcast(b) => self.on_broadcast(from, b),
            Frame::Certificate { der } => self.on_peer_certificate(from, der),
            Frame::Close { reason } => {
                tracing::info!(peer = %from, %reason, "peer said goodbye");
                if let Some(l) = self.links.get(from) {
                    let id = l.id;
                    l.cancel.cancel();
                    self.link_down(from, id, false, CloseReason::PeerClosed, &reason);
                }
            }
        }
    }

    /// A neighbour renewed: check its new leaf and re-check the link against it from now on.
    fn on_peer_certificate(&mut self, from: &str, der: Vec<u8>) {
        let chain = [CertificateDer::from(der)];
        match self.shared.store.verify(&chain, SystemTime::now(), genesis_trust::PeerRole::Client) {
            Ok(peer) if self.links.get(from).is_some_and(|l| l.peer.identity == peer.identity) => {
                tracing::info!(peer = %from, serial = %peer.serial, "neighbour rotated its certificate");
                if let Some(l) = self.links.get_mut(from) {
                    l.peer = peer;
                }
            }
            Ok(peer) => self.protocol_violation(
                from,
                &format!("a certificate for {} on its link", peer.identity),
            ),
            Err(e) => {
                self.protocol_violation(from, &format!("a renewed certificate we refuse: {e}"))
            }
        }
    }

    fn protocol_violation(&mut self, from: &str, what: &str) {
        self.metrics().invalid_frames.with_label_values(&["protocol"]).inc();
        let now = self.now();
        let actions = self.peers.record(from, Conduct::InvalidFrame, now);
        self.peer_actions(actions);
        tracing::warn!(peer = %from, "protocol violation: {what}");
    }

    /// Checks an advert's seqno proof (cached per destination and seqno).
    fn verify_advert(&mut self, from: &str, a: RouteAdvert) -> Option<Advert> {
        let advert =
            Advert { dest: a.dest.clone(), seqno: a.seqno, metric: a.metric, hops: a.hops };
        if a.metric == METRIC_INFINITY {
            return Some(advert); // a withdrawal only removes the sender's own candidate
        }
        if let Some((s, sig, cert)) = self.proofs.get(&a.dest) {
            if *s == a.seqno && *sig == a.proof && *cert == a.cert {
                return Some(advert);
            }
        }
        match genesis_trust::seqno::verify_seqno(
            &self.shared.store,
            &a.cert,
            &a.dest,
            a.seqno,
            &a.proof,
            SystemTime::now(),
        ) {
            Ok(_) => {
                let newer = self
                    .proofs
                    .get(&a.dest)
                    .is_none_or(|(s, _, _)| crate::routing::seqno_newer(a.seqno, *s));
                if newer {
                    self.proofs.insert(a.dest.clone(), (a.seqno, a.proof, a.cert));
                }
                Some(advert)
            }
            Err(genesis_trust::Error::Revoked { .. }) => {
                // A neighbour that has not heard of the revocation yet: not its fault.
                self.metrics().dropped.with_label_values(&["revoked_route"]).inc();
                None
            }
            Err(e) => {
                self.metrics().invalid_frames.with_label_values(&["forged_route"]).inc();
                tracing::warn!(peer = %from, dest = %a.dest, error = %e, "refused a route advert");
                self.shared.audit(
                    "route-refused",
                    from,
                    serde_json::json!({"dest": a.dest, "reason": e.to_string()}),
                );
                let now = self.now();
                let actions = self.peers.record(from, Conduct::InvalidFrame, now);
                self.peer_actions(actions);
                None
            }
        }
    }

    /// A CRL from a peer or the admin API: applied only if signed by our authority and newer;
    /// anything else is refused, counted and audited, and the current CRL stays in force.
    fn on_crl(&mut self, from: &str, der: &[u8]) -> Result<u64, String> {
        let refuse = |core: &mut Self, e: String| {
            core.metrics().crl_updates.with_label_values(&["refused"]).inc();
            tracing::warn!(peer = %from, error = %e, "refused a CRL");
            core.shared.audit("crl-refused", from, serde_json::json!({"reason": e}));
            Err(e)
        };
        let crl = match genesis_trust::Crl::parse(der) {
            Ok(c) => c,
            Err(e) => return refuse(self, e.to_string()),
        };
        match self.shared.store.install_crl(&crl, SystemTime::now()) {
            Ok(update) => {
                let at =
                    SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                self.shared.crl_applied_at_ms.store(at.as_millis() as u64, Ordering::Relaxed);
                self.metrics().crl_applied.set(at.as_secs_f64());
                self.metrics().crl_updates.with_label_values(&["applied"]).inc();
                tracing::info!(
                    number = update.number,
                    revoked = update.newly_revoked.len(),
                    "applied a newer CRL"
                );
                self.shared.audit("crl-applied", from, serde_json::json!({"number": update.number, "newlyRevoked": update.newly_revoked.len()}));
                // Emergency push: every neighbour gets it at once.
                self.flood(Frame::CrlData { der: der.to_vec() }, Some(from));
                // Routes to revoked members are forgotten and their proofs dropped, so an advert
                // still in flight from a lagging neighbour is checked again (and refused).
                let revoked: Vec<String> = self
                    .proofs
                    .iter()
                    .filter(|(_, (_, _, cert))| {
                        genesis_trust::CertInfo::parse(cert)
                            .is_ok_and(|i| crl.is_revoked(&i.serial))
                    })
                    .map(|(d, _)| d.clone())
                    .collect();
                for dest in revoked {
                    self.proofs.remove(&dest);
                    let actions = self.routes.forget(&dest);
                    self.route_actions(actions);
                }
                // Links to revoked peers are closed, one by one (not every link).
                self.close_invalid_links();
                Ok(update.number)
            }
            Err(genesis_trust::Error::CrlNotNewer { current, offered }) => {
                self.metrics().crl_updates.with_label_values(&["not_newer"]).inc();
                if offered < current {
                    // A stale CRL is not an error of the sender's making, but it is worth a record.
                    self.shared.audit(
                        "crl-ignored",
                        from,
                        serde_json::json!({"offered": offered, "current": current}),
                    );
                }
                Err(format!(
                    "CRL number {offered} is not newer than the current CRL number {current}"
                ))
            }
            Err(e) => refuse(self, e.to_string()),
        }
    }

    /// A control envelope from a neighbour (or injected here): verified once, audited either
    /// way with the rule that decided, flooded on only if accepted, applied by the members it
    /// addresses, which answer the origin.
    fn on_control(
        &mut self,
        from: Option<&str>,
        origin: String,
        wire: Vec<u8>,
    ) -> Result<ControlVerdict, ControlVerdict> {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(&wire).into();
        // NB: flood duplicates are dropped quietly; an injection (from == None) always goes to
        // the verifier, so a replay is refused and audited by the replay cache.
        if !self.seen_controls.insert(hash) && from.is_some() {
            return Err(ControlVerdict {
                verb: String::new(),
                rule: "duplicate".into(),
                detail: "already handled".into(),
                id: String::new(),
            });
        }
        self.seen_controls_order.push_back(hash);
        if self.seen_controls_order.len() > SEEN_CONTROLS {
            if let Some(old) = self.seen_controls_order.pop_front() {
                self.seen_controls.remove(&old);
            }
        }
        let subject = from.unwrap_or("admin-api").to_owned();
        match self.control.verify(&wire, SystemTime::now()) {
            Ok(acc) => {
                let verb = acc.envelope.verb.to_string();
                self.metrics().control.with_label_values(&[&verb, "accepted"]).inc();
                self.shared.audit(
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
                if acc.envelope.scope.targets(&self.shared.identity) {
                    // NB: drain and shutdown close every link, so their answer goes out first
                    // (queued control frames are flushed before a link closes).
                    let closes_links = matches!(
                        acc.envelope.verb,
                        genesis_trust::Verb::Drain | genesis_trust::Verb::Shutdown
                    );
                    let applied = if closes_links {
                        self.ack(&origin, &acc.envelope.id, Ok(acc.rule.clone()));
                        self.apply_control(&acc.envelope)
                    } else {
                        let applied = self.apply_control(&acc.envelope);
                        self.ack(
                            &origin,
                            &acc.envelope.id,
                            applied.clone().map(|()| acc.rule.clone()),
                        );
                        applied
                    };
                    let detail =
                        applied.as_ref().err().cloned().unwrap_or_else(|| acc.rule.clone());
                    self.shared.audit(
                        "control-applied",
                        &self.shared.identity.uri(),
                        serde_json::json!({"id": acc.envelope.id, "verb": verdict.verb, "applied": applied.is_ok(), "detail": detail}),
                    );
                }
                Ok(verdict)
            }
            Err(refused) => {
                self.metrics().control.with_label_values(&["unknown", "refused"]).inc();
                let signer = refused.signer.as_ref().map(|s| s.uri()).unwrap_or_default();
                tracing::warn!(via = %subject, rule = %refused.rule, error = %refused.error, "refused a control message");
                self.shared.audit(
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
            ttl: self.shared.config.routing.max_hops,
        };
        if origin == self.me {
            self.shared.record_ack(ack);
        } else if let Some(next) = self.routes.next_hop(origin).map(str::to_owned) {
            self.send(&next, &Frame::ControlAck(ack));
        }
    }

    /// Carries out an accepted control message addressed to this member.
    fn apply_control(&mut self, env: &genesis_trust::ControlEnvelope) -> Result<(), String> {
        use genesis_trust::Verb;
        match env.verb {
            Verb::Drain | Verb::Shutdown => {
                tracing::warn!(verb = %env.verb, "draining on a control message");
                self.shared.draining.store(true, Ordering::Relaxed);
                let nodes: Vec<String> = self.links.keys().cloned().collect();
                for n in nodes {
                    if let Some(id) = self.links.get(&n).map(|l| l.id) {
                        self.close_link(&n, id, CloseReason::Draining, "draining");
                    }
                }
                if env.verb == Verb::Shutdown {
                    self.shared.shutdown_requested.notify_one();
                }
                Ok(())
            }
            Verb::RouteReset => {
                let now = self.now();
                let seqno = self.routes.seqno().wrapping_add(1);
                self.routes =
                    RouteTable::new(&self.me, seqno, self.shared.config.routing.clone(), now);
                self.proofs.clear();
                self.sign_own_seqno();
                let nodes: Vec<(String, u16)> =
                    self.links.iter().map(|(n, l)| (n.clone(), l.cost)).collect();
                for (n, cost) in nodes {
                    let actions = self.routes.neighbour_up(&n, cost);
                    self.route_actions(actions);
                }
                Ok(())
            }
            Verb::LogLevel => {
                let level = env.args.get("level").ok_or("log-level needs args.level")?;
                let set = self.shared.log_level.lock().unwrap_or_else(|p| p.into_inner());
                match set.as_ref() {
                    Some(set) => set(level),
                    None => Err("this sidecar cannot change its log level".into()),
                }
            }
            Verb::PolicyUpdate => {
                let policy =
                    env.args.get("policy").ok_or("policy-update needs args.policy (JSON)")?;
                let policy: genesis_trust::RbacPolicy =
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
                self.on_crl("control", &der).map(drop)
            }
        }
    }

    fn route_data(&mut self, mut d: Data, from: Option<&str>) {
        if d.dst == self.me {
            self.deliver_data(d);
            return;
        }
        if from.is_some() {
            if d.ttl <= 1 {
                self.metrics().dropped.with_label_values(&["ttl_expired"]).inc();
                self.unreachable(&d, "hop limit reached");
                return;
            }
            d.ttl -= 1;
        }
        let Some(next) = self.routes.next_hop(&d.dst).map(str::to_owned) else {
            self.metrics().dropped.with_label_values(&["no_route"]).inc();
            self.unreachable(&d, &format!("no route to {}", d.dst));
            return;
        };
        if from.is_some() {
            self.metrics().forwarded.inc();
            self.shared.capture_relayed(&d.payload);
        }
        self.send(&next, &Frame::Data(d));
    }

    /// Tells the source its data could not be delivered (never in answer to an Unreachable).
    fn unreachable(&mut self, d: &Data, reason: &str) {
        if d.kind == DataKind::Unreachable || d.src == self.me {
            if d.src == self.me {
                if let Some(tx) = self.shared.data.flow(&(d.dst.clone(), d.flow)) {
                    let _ = tx.try_send(FlowEvent::Unreachable(reason.to_owned()));
                }
            }
            return;
        }
        let back = Data {
            src: self.me.clone(),
            dst: d.src.clone(),
            ttl: self.shared.config.routing.max_hops,
            kind: DataKind::Unreachable,
            flow: d.flow,
            payload: reason.as_bytes().to_vec(),
        };
        if let Some(next) = self.routes.next_hop(&back.dst).map(str::to_owned) {
            self.send(&next, &Frame::Data(back));
        }
    }

    /// Data for this member that reached the core (self-addressed, or the first frames of a
    /// stream racing its registration): handed to the stream layer off the core task.
    fn deliver_data(&mut self, d: Data) {
        tokio::spawn(crate::stream::deliver(self.shared.clone(), d));
    }

    fn remember_broadcast(&mut self, src: &str, id: u64) -> bool {
        let key = (src.to_owned(), id);
        if !self.seen_broadcasts.insert(key.clone()) {
            return false;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > SEEN_BROADCASTS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen_broadcasts.remove(&old);
            }
        }
        true
    }

    fn on_broadcast(&mut self, from: &str, mut b: Broadcast) {
        if b.src == self.me || !self.remember_broadcast(&b.src, b.id) {
            self.metrics().dropped.with_label_values(&["duplicate"]).inc();
            return;
        }
        let wanted = b.topic.is_empty()
            || self
                .shared
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&b.topic);
        if wanted {
            use base64::Engine;
            let item = Received {
                from: b.src.clone(),
                kind: if b.topic.is_empty() { "broadcast" } else { "topic" },
                topic: (!b.topic.is_empty()).then(|| b.topic.clone()),
                id: b.id,
                body: base64::engine::general_purpose::STANDARD.encode(&b.payload),
            };
            if !self.shared.deliver(item) {
                self.metrics().dropped.with_label_values(&["inbox_full"]).inc();
            }
        }
        if b.ttl > 1 {
            b.ttl -= 1;
            self.flood(Frame::Broadcast(b), Some(from));
        }
    }

    fn flood(&mut self, frame: Frame, except: Option<&str>) {
        let nodes: Vec<String> =
            self.links.keys().filter(|n| Some(n.as_str()) != except).cloned().collect();
        let bytes = Bytes::from(frame.encode());
        for n in nodes {
            self.send_encoded(&n, frame.frame_type(), bytes.clone());
        }
    }

    fn send(&mut self, node: &str, frame: &Frame) {
        let bytes = Bytes::from(frame.encode());
        self.send_encoded(node, frame.frame_type(), bytes);
    }

    fn send_encoded(&mut self, node: &str, ty: FrameType, bytes: Bytes) {
        let Some(link) = self.links.get(node) else { return };
        let len = bytes.len() as u64;
        let queue = if ty == FrameType::Data { &link.queues.data } else { &link.queues.control };
        match queue.try_send(bytes) {
            Ok(()) => {
                self.metrics().frames.with_label_values(&[ty.as_str(), "out"]).inc();
                self.metrics().bytes.with_label_values(&["out"]).inc_by(len);
            }
            Err(_) => {
                self.metrics().dropped.with_label_values(&["link_queue_full"]).inc();
            }
        }
    }

    fn route_actions(&mut self, actions: Vec<RouteAction>) {
        for action in actions {
            match action {
                RouteAction::Send { to, adverts } => {
                    let adverts: Vec<RouteAdvert> =
                        adverts.into_iter().filter_map(|a| self.with_proof(a)).collect();
                    for chunk in adverts.chunks(MAX_ADVERTS) {
                        self.send(&to, &Frame::RouteUpdate { adverts: chunk.to_vec() });
                    }
                }
                RouteAction::RequestSeqno { dest, seqno, hops_left } => {
                    self.flood(Frame::SeqnoRequest { dest, seqno, hops_left }, None);
                }
                RouteAction::OwnSeqnoChanged { .. } => self.sign_own_seqno(),
                RouteAction::Changed { dest, next_hop, metric } => {
                    self.metrics().route_changes.inc();
                    tracing::debug!(%dest, ?next_hop, metric, "route changed");
                }
            }
        }
        self.metrics().routes.set(self.routes.route_count() as i64);
        self.publish_routes();
    }

    fn publish_links(&self) {
        let links: HashMap<String, mpsc::Sender<Bytes>> =
            self.links.iter().map(|(n, l)| (n.clone(), l.queues.data.clone())).collect();
        self.metrics().links.set(links.len() as i64);
        self.shared.data.links.store(Arc::new(links));
    }

    fn publish_routes(&self) {
        let hops: HashMap<String, String> =
            self.routes.routes().into_iter().map(|r| (r.dest, r.next_hop)).collect();
        if **self.shared.data.next_hops.load() != hops {
            self.shared.data.next_hops.store(Arc::new(hops));
        }
    }

    fn with_proof(&self, a: Advert) -> Option<RouteAdvert> {
        let (proof, cert) = if a.metric == METRIC_INFINITY {
            (Vec::new(), Vec::new())
        } else if a.dest == self.me {
            (self.my_proof.clone(), self.shared.tls.load().chain[0].to_vec())
        } else {
            let (s, sig, cert) = self.proofs.get(&a.dest)?;
            if *s != a.seqno {
                return None;
            }
            (sig.clone(), cert.clone())
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

    fn peer_actions(&mut self, actions: Vec<PeerAction>) {
        for action in actions {
            match action {
                PeerAction::Dial { addr } => {
                    if !self.shared.draining.load(Ordering::Relaxed) {
                        tokio::spawn(crate::link::dial(self.shared.clone(), addr));
                    }
                }
                PeerAction::Disconnect { node, reason } => {
                    if let Some(id) = self.links.get(&node).map(|l| l.id) {
                        self.close_link(&node, id, CloseReason::Policy, &reason);
                    }
                }
                PeerAction::Exchange => {
                    let now = self.now();
                    let frame = Frame::PeerExchange { peers: self.peers.exchange_list(now) };
                    self.flood(frame, None);
                    // Members announce their CRL number periodically too: one that missed a
                    // push catches up within an exchange interval.
                    if let Some(number) = self.shared.store.crl_number() {
                        self.flood(Frame::CrlAnnounce { number }, None);
                    }
                }
                PeerAction::Banned { node, until, reason } => {
                    self.metrics().bans.inc();
                    tracing::warn!(peer = %node, %reason, "peer banned");
                    let secs = until.saturating_sub(self.now()).as_secs();
                    self.shared.audit(
                        "peer-banned",
                        &node,
                        serde_json::json!({"reason": reason, "seconds": secs}),
                    );
                }
            }
        }
    }
}

/// Builds the shared state; the caller starts the tasks with [`crate::start`].
pub fn new_shared(
    config: Config,
    identity: Identity,
    store: Arc<TrustStore>,
    tls: TlsConfigs,
    commands: mpsc::Sender<Command>,
    audit: Option<AuditLog>,
) -> Arc<Shared> {
    let metrics = Metrics::new();
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics.start_time.set(now.as_secs_f64());
    metrics.crl_applied.set(now.as_secs_f64());
    metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    Arc::new(Shared {
        config,
        identity,
        metrics,
        store,
        tls: ArcSwap::from_pointee(tls),
        commands,
        started: Instant::now(),
        inbox: Mutex::new(VecDeque::new()),
        inbox_notify: Notify::new(),
        subscriptions: Mutex::new(HashSet::new()),
        draining: AtomicBool::new(false),
        audit: audit.map(Mutex::new),
        messenger: crate::stream::Messenger::default(),
        data: DataPlane::default(),
        acks: Mutex::new(HashMap::new()),
        acks_notify: Notify::new(),
        shutdown_requested: Notify::new(),
        renew_now: Notify::new(),
        admin_renewal: Mutex::new(None),
        crl_applied_at_ms: AtomicU64::new(now.as_millis() as u64),
        log_level: Mutex::new(None),
        next_id: AtomicU64::new(1),
    })
}

/// `t - now` in seconds, negative when `t` is past.
fn signed_secs(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
