//! The state the sidecar's tasks share: the core's command queue, the data plane's lookup
//! tables, TLS configurations, the app's inbox, metrics and the audit log. The core (node.rs),
//! the link tasks (link.rs) and the stream tasks (stream.rs) all build on this module, and none
//! of them on each other's, so the driver has no import loop.

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
use crate::frame::{ControlAck, DataKind, Encoded, Frame, FrameError, PeerAddr};
use crate::metrics::Metrics;
use crate::peers::{Conduct, PeerView};
use crate::proto::seen::SeenSet;
use crate::relay::RelayLedger;
use crate::repeats::Repeats;
use crate::routing::{NextHops, RouteView, Time};

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
    pub control: mpsc::Sender<Encoded>,
    pub data: mpsc::Sender<Encoded>,
}
/// Streams in their end-to-end handshake at once (each holds a TLS state and a queue).
pub const MAX_OPENING: usize = 256;
/// Commands queued for the core; senders wait when it is full (backpressure to links/streams).
pub const CORE_QUEUE: usize = 8192;
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
    Data(Bytes),
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

/// One open end-to-end stream, as the data path sees it.
#[derive(Clone)]
pub struct FlowEntry {
    /// Where its frames from the far end go.
    pub tx: mpsc::Sender<FlowEvent>,
    /// A direct stream: no end-to-end TLS inside the link's, so its frames are taken only
    /// from the link to its far end itself (docs/SECURITY.md, "Direct streams").
    pub direct: bool,
}

/// What the data path needs without going through the core: published by the core as
/// snapshots, read by link readers (relaying) and stream writers (sending) so data frames get
/// hop-by-hop backpressure instead of being dropped at a full queue.
pub struct DataPlane {
    /// Destination → next hop.
    pub next_hops: ArcSwap<NextHops>,
    /// Neighbour → its link's frame queue.
    pub links: ArcSwap<HashMap<String, mpsc::Sender<Encoded>>>,
    /// Open end-to-end streams.
    flows: Mutex<HashMap<FlowKey, FlowEntry>>,
    /// Neighbours that refused a direct stream (an older release, or direct streams turned
    /// off there): tunnels to them use end-to-end TLS until their link is replaced.
    no_direct: Mutex<std::collections::HashSet<String>>,
    /// The link each of this member's own streams is pinned to (see `FlowTransport`).
    pinned: Mutex<HashMap<FlowKey, mpsc::Sender<Encoded>>>,
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
            no_direct: Default::default(),
            pinned: Default::default(),
            opening: Arc::new(tokio::sync::Semaphore::new(MAX_OPENING)),
            answered: Mutex::new(SeenSet::new(4096)),
        }
    }
}

impl DataPlane {
    /// The stream registered for `key`.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Registers a stream: its frames from the far end go to `tx`.
    pub fn insert_flow(&self, key: FlowKey, tx: mpsc::Sender<FlowEvent>, direct: bool) {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).insert(key, FlowEntry { tx, direct });
    }

    /// Streams open now.
    pub fn flow_count(&self) -> usize {
        self.flows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The streams with `flow` as their id, whoever their far end is.
    pub fn flows_with_id(&self, flow: u64) -> Vec<mpsc::Sender<FlowEvent>> {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows.iter().filter(|((_, id), _)| *id == flow).map(|(_, e)| e.tx.clone()).collect()
    }

    /// Whether `node` may be offered a direct stream (it has not refused one on its link).
    pub fn direct_allowed(&self, node: &str) -> bool {
        !self.no_direct.lock().unwrap_or_else(|p| p.into_inner()).contains(node)
    }

    /// `node` refused a direct stream: use end-to-end TLS towards it.
    pub fn refuse_direct(&self, node: &str) {
        self.no_direct.lock().unwrap_or_else(|p| p.into_inner()).insert(node.to_owned());
    }

    /// `node`'s link closed: the member on its next link may be another release.
    pub fn forget_direct_refusal(&self, node: &str) {
        self.no_direct.lock().unwrap_or_else(|p| p.into_inner()).remove(node);
    }

    /// Records the link the stream `key` is pinned to.
    pub fn pin(&self, key: &FlowKey, link: mpsc::Sender<Encoded>) {
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
    pub fn end_flows_pinned_to(&self, link: &mpsc::Sender<Encoded>) {
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
            if let Some(FlowEntry { tx, .. }) = flows.get(&key) {
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
    pub fn end_flows_where(&self, gone: impl Fn(&str) -> bool) {
        let flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        for ((remote, _), FlowEntry { tx, .. }) in flows.iter().filter(|((r, _), _)| gone(r)) {
            let _ = tx.try_send(FlowEvent::Unreachable(format!("{remote} became unreachable")));
        }
    }
}

/// A message or broadcast waiting for the app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    pub from: String,
    /// A broadcast's or topic message's source identity, as its signature was verified.
    #[serde(rename = "fromIdentity", skip_serializing_if = "Option::is_none")]
    pub from_identity: Option<String>,
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
    pub messenger: Messenger,
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
    /// What this member relays for others and others for it (link readers and stream writers
    /// record into it; see [`Shared::relay`]).
    relay: Mutex<RelayLedger>,
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

    /// The relay ledger, locked (each record is a few additions).
    pub fn relay(&self) -> std::sync::MutexGuard<'_, RelayLedger> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A data frame of `bytes` relayed for `source`, arrived from `from`.
    pub fn record_relayed(&self, from: &str, source: &str, bytes: usize) {
        let now = self.now();
        self.relay().relayed(now, from, source, bytes);
        self.metrics.relay_bytes.with_label_values(&["for_others"]).inc_by(bytes as u64);
    }

    /// A data frame of ours of `bytes`, sent or delivered; `relay`: the neighbour that relays
    /// it for us, if any.
    pub fn record_own(&self, relay: Option<&str>, bytes: usize) {
        let now = self.now();
        self.relay().own(now, relay, bytes);
        if relay.is_some() {
            self.metrics.relay_bytes.with_label_values(&["by_others"]).inc_by(bytes as u64);
        }
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
    pub services: Vec<crate::services::ServiceView>,
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
    /// The zone its hello named (empty: not known).
    pub zone: String,
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
        reply: oneshot::Sender<Result<u64, crate::error::Error>>,
    },
    /// Offers service `name` on `port` (`None`: withdraws it), published at once.
    OfferService {
        name: String,
        port: Option<u16>,
        reply: oneshot::Sender<Result<(), crate::error::Error>>,
    },
    /// The reachable members offering service `name`, with their ports, nearest first.
    ResolveService {
        name: String,
        reply: oneshot::Sender<Vec<(String, u16)>>,
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
        reply: oneshot::Sender<Result<u64, crate::error::Error>>,
    },
    /// A signed control envelope injected through the admin API.
    InjectControl {
        envelope: Vec<u8>,
        reply: oneshot::Sender<Result<ControlVerdict, ControlVerdict>>,
    },
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
    let config_share = config.max_relay_share;
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
        messenger: Messenger::default(),
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
        relay: Mutex::new(RelayLedger::new(config_share)),
    })
}

/// A hex hash's first 48 bits as a number: a metric value that changes with every record
/// without a label per hash (a series per record would flood Prometheus).
pub(crate) fn head_number(hex: &str) -> i64 {
    hex.get(..12).and_then(|h| i64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// A message waiting for its channel's writer, and the sender waiting for its receipt.
pub(crate) struct Outgoing {
    pub(crate) id: u64,
    pub(crate) body: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<(), String>>,
}

/// Message channels to destinations, opened on first use and reused (stream.rs opens them).
#[derive(Default)]
pub struct Messenger {
    pub(crate) channels: tokio::sync::Mutex<HashMap<String, mpsc::Sender<Outgoing>>>,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Messenger")
    }
}
