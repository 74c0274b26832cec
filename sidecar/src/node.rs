//! The tokio driver's core: one task that owns the sans-IO [`Node`] and the links' IO handles,
//! fed by link and stream tasks through a bounded channel. It hands frames, link events and
//! timer ticks to the node with the time, and carries out what the node asks for: frames onto
//! link queues, dials, audit records, metrics, deliveries to the app.

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
use crate::frame::{ControlAck, DataKind, Frame, FrameError, FrameType, PeerAddr};
use crate::metrics::Metrics;
use crate::peers::{Conduct, Level, PeerView};
use crate::proto::seen::SeenSet;
use crate::proto::{Count, LinkUp, Node, NodeConfig, Output};
use crate::repeats::Repeats;
use crate::routing::{RouteView, Time};

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
/// Commands handled at most before the node's outputs are carried out (bounds the latency a
/// batch adds).
const BATCH_COMMANDS: usize = 64;
/// Envelopes whose acknowledgements are kept for the admin API.
const MAX_ACKED_ENVELOPES: usize = 256;

pub use crate::proto::ControlVerdict;

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
pub struct DataPlane {
    /// Destination → next hop.
    pub next_hops: ArcSwap<HashMap<String, String>>,
    /// Neighbour → its link's frame queue.
    pub links: ArcSwap<HashMap<String, mpsc::Sender<Bytes>>>,
    /// Open end-to-end streams.
    pub flows: Mutex<HashMap<FlowKey, mpsc::Sender<FlowEvent>>>,
    /// The link each of this member's own streams is pinned to (see `FlowTransport`).
    pinned: Mutex<HashMap<FlowKey, mpsc::Sender<Bytes>>>,
    /// Room for streams in their end-to-end handshake (`stream::MAX_OPENING`).
    pub opening: Arc<tokio::sync::Semaphore>,
    /// Unknown streams already answered with a reset (each is answered once, so frames
    /// forged in another member's name cannot turn this member into a reflector).
    answered: Mutex<SeenSet<FlowKey>>,
}

impl Default for DataPlane {
    fn default() -> Self {
        DataPlane {
            next_hops: Default::default(),
            links: Default::default(),
            flows: Default::default(),
            pinned: Default::default(),
            opening: Arc::new(tokio::sync::Semaphore::new(crate::stream::MAX_OPENING)),
            answered: Mutex::new(SeenSet::new(4096)),
        }
    }
}

impl DataPlane {
    /// The stream registered for `key`.
    pub fn flow(&self, key: &FlowKey) -> Option<mpsc::Sender<FlowEvent>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Records the link the stream `key` is pinned to.
    pub fn pin(&self, key: &FlowKey, link: mpsc::Sender<Bytes>) {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), link);
    }

    /// Forgets a stream (it ended).
    pub fn remove_flow(&self, key: &FlowKey) {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Ends every stream pinned to the link whose data queue is `link` (it is gone): its
    /// records are lost with it, so the stream cannot go on, and its app hears so now rather
    /// than at its next write. Matched by channel, not by the queue being closed yet: the core
    /// lets go of a link before its writer task has finished.
    pub fn end_flows_pinned_to(&self, link: &mpsc::Sender<Bytes>) {
        let broken: Vec<FlowKey> = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, pinned)| pinned.same_channel(link))
            .map(|(k, _)| k.clone())
            .collect();
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        for key in broken {
            if let Some(tx) = flows.get(&key) {
                let reason = format!("the stream's path to {} broke (a link closed)", key.0);
                let _ = tx.try_send(FlowEvent::Unreachable(reason));
            }
        }
    }

    /// `true` the first time data for the unknown stream `key` arrives.
    pub fn first_unknown(&self, key: &FlowKey) -> bool {
        self.answered.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone())
    }

    /// Ends every stream with a member that is no longer reachable: its app sees an error
    /// within the hold time, not a hang.
    pub fn end_flows_to(&self, gone: &HashSet<&String>) {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        for ((remote, _), tx) in flows.iter().filter(|((r, _), _)| gone.contains(r)) {
            let _ = tx.try_send(FlowEvent::Unreachable(format!("{remote} became unreachable")));
        }
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
    /// Identical audit records recently written (see [`Shared::audit`]).
    audit_repeats: Mutex<Repeats>,
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
    /// Appends an audit record. An identical record (event, subject, detail) written in the
    /// last [`crate::repeats::AUDIT_REPEAT_WINDOW`] is counted instead, and the next one written carries the
    /// count as `repeated`: a flood of refusals cannot fill the disk or bury other records.
    pub fn audit(&self, event: &str, subject: &str, mut detail: serde_json::Value) {
        if let Some(log) = &self.audit {
            let key = format!("{event}\0{subject}\0{detail}");
            let repeated = {
                let mut repeats = self.audit_repeats.lock().unwrap_or_else(|p| p.into_inner());
                match repeats.check(key, Instant::now()) {
                    Some(n) => n,
                    None => {
                        self.metrics.audit_suppressed.inc();
                        return;
                    }
                }
            };
            if repeated > 0 {
                if let Some(map) = detail.as_object_mut() {
                    map.insert("repeated".into(), repeated.into());
                }
            }
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = log.append(event, subject, detail, SystemTime::now()) {
                self.metrics.audit_errors.inc();
                tracing::error!(error = %e, "cannot write the audit log");
                return;
            }
            self.metrics.audit_head.set(head_number(log.head()));
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
    /// The round-trip time the handshake suggested.
    pub rtt: Option<Duration>,
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
    /// Neighbour `node` delivered a frame the data path refused.
    Misconduct {
        node: String,
        conduct: Conduct,
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
    /// A newer CRL the identity service sent with a renewal.
    RenewalCrl {
        der: Vec<u8>,
    },
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

/// A link as the driver holds it: its queues and tasks (the node holds its protocol state).
struct DriverLink {
    node: String,
    queues: LinkQueues,
    /// Milliseconds since start when the link reader last decoded a frame (any frame: a peer
    /// streaming data is alive even if its pong is still in flight).
    heard: Arc<AtomicU64>,
    cancel: CancellationToken,
}

/// The driver: the [`Node`] and the links' IO handles, fed by link and stream tasks.
struct Core {
    shared: Arc<Shared>,
    node: Node,
    /// By link id: a replaced link and its successor to the same peer are both here until the
    /// old one is gone.
    links: HashMap<u64, DriverLink>,
    /// Peer → the id of its current link (where frames for it go).
    current: HashMap<String, u64>,
}

/// The node's settings from the sidecar's configuration.
pub fn node_config(config: &Config) -> NodeConfig {
    NodeConfig {
        hello_interval: config.hello_interval,
        hold_time: config.hold_time,
        routing: config.routing.clone(),
        peers: config.peers.clone(),
        rbac: config.rbac.clone(),
        // NB: in a cluster every member gets the same anchor list, anchors included; an anchor
        // does not dial itself.
        anchors: config.anchors.iter().filter(|a| **a != config.advertise).cloned().collect(),
    }
}

/// Runs the core until `shutdown` fires.
pub async fn run_core(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut seed = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).ok();
    let tls = shared.tls.load_full();
    let mut node = Node::new(
        shared.identity.clone(),
        node_config(&shared.config),
        shared.store.clone(),
        tls.key.clone(),
        tls.chain[0].to_vec(),
        shared.now(),
        SystemTime::now(),
        u64::from_be_bytes(seed),
    );
    let hook_shared = shared.clone();
    node.set_log_level_hook(Box::new(move |level| {
        let set = hook_shared.log_level.lock().unwrap_or_else(|p| p.into_inner());
        match set.as_ref() {
            Some(set) => set(level),
            None => Err("this sidecar cannot change its log level".into()),
        }
    }));
    let mut core = Core { node, links: HashMap::new(), current: HashMap::new(), shared };
    core.drive();
    let tick_every = (core.shared.config.hello_interval / 4)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = commands.recv() => match cmd {
                Some(cmd) => {
                    core.handle(cmd);
                    // What is already queued is handled before the node's outputs go out, so
                    // route adverts triggered by a burst of frames leave as a few full frames.
                    for _ in 1..BATCH_COMMANDS {
                        match commands.try_recv() {
                            Ok(cmd) => core.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            _ = tick.tick() => core.on_tick(),
        }
        core.drive();
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

    fn handle(&mut self, cmd: Command) {
        let now = self.now();
        let wall = SystemTime::now();
        match cmd {
            Command::LinkUp { link, reply } => {
                let NewLink { node, addr, peer, outbound, queues, heard, cancel, link_id, rtt } =
                    link;
                let up = LinkUp { node: node.clone(), addr, peer, outbound, link_id, rtt };
                // NB: the link is registered before the node hears of it: what the node sends
                // at once (our table, our peers, our CRL number) must find the link. Sent while it
                // was not registered yet, the new neighbour got no routes until the next periodic
                // update.
                self.links
                    .insert(link_id, DriverLink { node: node.clone(), queues, heard, cancel });
                let previous = self.current.insert(node.clone(), link_id);
                let result = self.node.handle_link_up(now, up);
                if result.is_err() {
                    self.links.remove(&link_id);
                    match previous {
                        Some(id) => self.current.insert(node, id),
                        None => self.current.remove(&node),
                    };
                }
                self.publish_links();
                let _ = reply.send(result);
            }
            Command::LinkDown { node, link_id, failure, reason } => {
                self.node.handle_link_down(now, &node, link_id, failure, &reason)
            }
            Command::Frame { node, link_id, frame, size } => {
                self.node.handle_frame(now, wall, &node, link_id, frame, size)
            }
            Command::BadFrame { node, link_id, error } => {
                tracing::warn!(peer = %node, error = %error, "invalid frame: closing the link");
                self.node.handle_bad_frame(now, &node, link_id, &error);
            }
            Command::Misconduct { node, conduct } => {
                self.node.handle_misconduct(now, &node, conduct);
            }
            Command::BadIdentity { node, addr, reason } => {
                tracing::warn!(%addr, ?node, %reason, "peer refused");
                self.node.handle_bad_identity(now, node.as_deref(), &addr, &reason);
            }
            Command::DialFailed { addr, reason } => {
                tracing::debug!(%addr, %reason, "dial failed");
                self.node.handle_dial_failed(now, &addr);
            }
            Command::AdmitInbound { node, reply } => {
                let verdict = self.node.admit_inbound(now, &node);
                if let Err((reason, _)) = &verdict {
                    tracing::debug!(peer = %node, %reason, "inbound link refused");
                }
                let _ = reply.send(verdict);
            }
            Command::DialRefused { addr, reason, peers } => {
                tracing::info!(%addr, %reason, learned = peers.len(), "dialled member refused the link");
                self.node.handle_dial_refused(now, &addr, &peers);
            }
            Command::SendData { dst, kind, flow, payload } => {
                self.node.send_data(dst, kind, flow, payload)
            }
            Command::Broadcast { topic, payload, reply } => {
                let _ = reply.send(self.node.broadcast(topic, payload));
            }
            Command::HasRoute { dst, reply } => {
                let _ = reply.send(self.node.has_route(&dst));
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(Snapshot {
                    peers: self.node.peer_views(now),
                    routes: self.node.routes(),
                    links: self.node.links(),
                    seqno: self.node.seqno(),
                });
            }
            Command::Renewed => {
                let tls = self.shared.tls.load_full();
                self.node.handle_renewed(tls.key.clone(), tls.chain[0].to_vec());
            }
            Command::RenewalCrl { der } => {
                let _ = self.node.handle_crl(now, wall, "identity-service", &der);
            }
            Command::InjectCrl { der, reply } => {
                let _ = reply.send(self.node.handle_crl(now, wall, "admin-api", &der));
            }
            Command::InjectControl { envelope, reply } => {
                let origin = self.node.name().to_owned();
                let _ = reply.send(self.node.handle_control(now, wall, None, origin, envelope));
            }
            Command::Drain => self.node.drain(),
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        let sys_now = SystemTime::now();
        let heard: HashMap<String, Time> = self
            .current
            .iter()
            .filter_map(|(n, id)| {
                let l = self.links.get(id)?;
                Some((n.clone(), Duration::from_millis(l.heard.load(Ordering::Relaxed))))
            })
            .collect();
        self.node.handle_tick(now, sys_now, &|n| heard.get(n).copied());
        self.drive();
        self.metrics().routes.set(self.node.route_count() as i64);
        let views = self.node.peer_views(now);
        for level in [Level::New, Level::Trusted, Level::Suspicious, Level::Banned] {
            let n = views.iter().filter(|p| p.level == level).count();
            self.metrics().peers.with_label_values(&[level.as_str()]).set(n as i64);
        }
        let tls = self.shared.tls.load();
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
        for r in self.node.routes() {
            m.routes_by_hops.with_label_values(&[&r.hops.to_string()]).inc();
        }
    }

    /// Carries out everything the node asked for.
    fn drive(&mut self) {
        while let Some(output) = self.node.poll() {
            match output {
                Output::Send { to, frame } => self.send(&to, frame),
                Output::Close { node, link_id, goodbye } => {
                    if let Some(link) = self.links.get(&link_id).filter(|l| l.node == node) {
                        if let Some(reason) = goodbye {
                            let bye = Frame::Close { reason }.encode();
                            let _ = link.queues.control.try_send(Bytes::from(bye));
                        }
                        link.cancel.cancel();
                    }
                }
                Output::LinkGone { node, link_id } => {
                    if let Some(link) = self.links.remove(&link_id) {
                        if self.current.get(&node) == Some(&link_id) {
                            self.current.remove(&node);
                        }
                        self.publish_links();
                        self.shared.data.end_flows_pinned_to(&link.queues.data);
                    }
                }
                Output::Dial { addr } => {
                    if !self.shared.draining.load(Ordering::Relaxed) {
                        tokio::spawn(crate::link::dial(self.shared.clone(), addr));
                    }
                }
                Output::Audit { event, subject, detail } => {
                    self.shared.audit(event, &subject, detail)
                }
                Output::RoutesChanged => self.publish_routes(),
                Output::AppBroadcast { src, topic, id, payload } => {
                    self.deliver_broadcast(src, topic, id, payload)
                }
                Output::DeliverData(d) => {
                    tokio::spawn(crate::stream::deliver(self.shared.clone(), d, None));
                }
                Output::FlowUnreachable { dst, flow, reason } => {
                    if let Some(tx) = self.shared.data.flow(&(dst, flow)) {
                        let _ = tx.try_send(FlowEvent::Unreachable(reason));
                    }
                }
                Output::Ack(ack) => self.shared.record_ack(ack),
                Output::CrlApplied { .. } => {
                    let at =
                        SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    self.shared.crl_applied_at_ms.store(at.as_millis() as u64, Ordering::Relaxed);
                    self.metrics().crl_applied.set(at.as_secs_f64());
                }
                Output::Draining => self.shared.draining.store(true, Ordering::Relaxed),
                Output::Shutdown => self.shared.shutdown_requested.notify_one(),
                Output::Count(c) => self.count(c),
            }
        }
    }

    fn count(&self, c: Count) {
        let m = self.metrics();
        match c {
            Count::FrameIn(ty, size) => {
                m.frames.with_label_values(&[ty.as_str(), "in"]).inc();
                m.bytes.with_label_values(&["in"]).inc_by(size as u64);
            }
            Count::Dropped(reason) => m.dropped.with_label_values(&[reason]).inc(),
            Count::Invalid(reason) => m.invalid_frames.with_label_values(&[reason]).inc(),
            Count::Handshake(result) => m.handshakes.with_label_values(&[result]).inc(),
            Count::LinkClosed(kind) => m.link_closes.with_label_values(&[kind.as_str()]).inc(),
            Count::RouteChanged => m.route_changes.inc(),
            Count::Forwarded => m.forwarded.inc(),
            Count::Ban => m.bans.inc(),
            Count::CrlUpdate(result) => m.crl_updates.with_label_values(&[result]).inc(),
            Count::Control(verb, result) => m.control.with_label_values(&[&verb, result]).inc(),
            Count::Rtt(rtt) => m.rtt.observe(rtt.as_secs_f64()),
        }
    }

    /// A broadcast for the app, if it asked for its topic.
    fn deliver_broadcast(&self, src: String, topic: String, id: u64, payload: Vec<u8>) {
        let wanted = topic.is_empty()
            || self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).contains(&topic);
        if !wanted {
            return;
        }
        use base64::Engine;
        let item = Received {
            from: src,
            kind: if topic.is_empty() { "broadcast" } else { "topic" },
            topic: (!topic.is_empty()).then_some(topic),
            id,
            body: base64::engine::general_purpose::STANDARD.encode(&payload),
        };
        if !self.shared.deliver(item) {
            self.metrics().dropped.with_label_values(&["inbox_full"]).inc();
        }
    }

    fn send(&self, node: &str, frame: Frame) {
        let Some(link) = self.current.get(node).and_then(|id| self.links.get(id)) else { return };
        if let Frame::Data(d) = &frame {
            if d.src != self.shared.identity.node() {
                self.shared.capture_relayed(&d.payload);
            }
        }
        let ty = frame.frame_type();
        let bytes = Bytes::from(frame.encode());
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

    fn publish_links(&self) {
        let links: HashMap<String, mpsc::Sender<Bytes>> = self
            .current
            .iter()
            .filter_map(|(n, id)| Some((n.clone(), self.links.get(id)?.queues.data.clone())))
            .collect();
        self.metrics().links.set(links.len() as i64);
        self.shared.data.links.store(Arc::new(links));
    }

    fn publish_routes(&self) {
        self.metrics().routes.set(self.node.route_count() as i64);
        let hops: HashMap<String, String> =
            self.node.routes().into_iter().map(|r| (r.dest, r.next_hop)).collect();
        let old = self.shared.data.next_hops.load();
        if **old != hops {
            let gone: HashSet<&String> = old.keys().filter(|d| !hops.contains_key(*d)).collect();
            if !gone.is_empty() {
                self.shared.data.end_flows_to(&gone);
            }
            self.shared.data.next_hops.store(Arc::new(hops));
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
        audit_repeats: Mutex::new(Repeats::default()),
    })
}

/// A hex hash's first 48 bits as a number: a metric value that changes with every record
/// without a label per hash (a series per record would flood Prometheus).
pub(crate) fn head_number(hex: &str) -> i64 {
    hex.get(..12).and_then(|h| i64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// `t - now` in seconds, negative when `t` is past.
fn signed_secs(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
