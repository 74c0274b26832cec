//! The tokio driver's core: one task that owns the sans-IO [`Node`] and the links' IO handles,
//! fed by link and stream tasks through a bounded channel. It hands frames, link events and
//! timer ticks to the node with the time, and carries out what the node asks for: frames onto
//! link queues, dials, audit records, metrics, deliveries to the app.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frame::{Encoded, Frame, FrameType};
use crate::metrics::Metrics;
use crate::peers::Level;
use crate::proto::{Count, LinkUp, Node, NodeConfig, Output};
use crate::routing::Time;
use crate::shared::{
    Command, FlowEntry, FlowEvent, LinkQueues, NewLink, Received, Shared, Snapshot,
};

/// Commands handled at most before the node's outputs are carried out (bounds the latency a
/// batch adds).
const BATCH_COMMANDS: usize = 64;

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
    /// When the gauges are next brought up to date (see [`METRICS_EVERY`]).
    metrics_due: Time,
}

/// How often the core refreshes its gauges. NB: every tick (four a second) it rebuilt every
/// route's view and label for `routes_by_hops` and cloned the CRLs; that was a third of an
/// idle member's CPU (100 idle members: 0.106 of a core in all). Prometheus scrapes every 15 s
/// or so, and a gauge a second old is as good.
const METRICS_EVERY: Duration = Duration::from_secs(1);

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
        zone: config.zone.clone(),
        zone_penalty: config.zone_penalty,
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
    if let Err(e) =
        node.set_services(shared.now(), SystemTime::now(), shared.config.services.clone())
    {
        tracing::error!(error = %e, "cannot publish the configured services");
    }
    let mut core = Core {
        node,
        links: HashMap::new(),
        current: HashMap::new(),
        shared,
        metrics_due: Time::ZERO,
    };
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
                let NewLink {
                    node,
                    addr,
                    peer,
                    outbound,
                    queues,
                    heard,
                    cancel,
                    link_id,
                    rtt,
                    zone,
                } = link;
                let up = LinkUp { node: node.clone(), addr, peer, outbound, link_id, rtt, zone };
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
            Command::OfferService { name, port, reply } => {
                let _ = reply.send(self.node.offer_service(now, wall, &name, port));
            }
            Command::ResolveService { name, reply } => {
                let _ = reply.send(self.node.service_targets(&name));
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(Snapshot {
                    peers: self.node.peer_views(now),
                    routes: self.node.routes(),
                    services: self.node.services(now),
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
        let (saturated, share) = {
            let mut relay = self.shared.relay();
            (relay.update(now), relay.share(now))
        };
        self.node.set_relay_saturated(saturated);
        self.metrics().relay_saturated.set(i64::from(saturated));
        self.metrics().relay_share.set(share);
        self.drive();
        if now < self.metrics_due {
            return;
        }
        self.metrics_due = now + METRICS_EVERY;
        self.metrics().routes.set(self.node.route_count() as i64);
        self.metrics().services.set(self.node.services(now).len() as i64);
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
        let flows = self.shared.data.flow_count();
        self.metrics().streams_active.set(flows as i64);
        let m = self.metrics();
        m.peer_reputation.reset();
        for p in views.iter().filter(|p| p.connected) {
            m.peer_reputation.with_label_values(&[&p.node]).set(i64::from(p.score));
        }
        m.routes_by_hops.reset();
        // Links and routes (by next hop) per zone relation: same, other, unknown.
        let mine = self.node.zone();
        let relation = |zone: Option<&str>| match zone {
            Some(z) if !mine.is_empty() => usize::from(z != mine),
            _ => 2,
        };
        let (mut links, mut routes) = ([0i64; 3], [0i64; 3]);
        for p in views.iter().filter(|p| p.connected) {
            links[relation(p.zone.as_deref())] += 1;
        }
        for r in self.node.routes() {
            m.routes_by_hops.with_label_values(&[&r.hops.to_string()]).inc();
            routes[relation(r.next_hop_zone.as_deref())] += 1;
        }
        for (i, zone) in ["same", "other", "unknown"].into_iter().enumerate() {
            m.links_by_zone.with_label_values(&[zone]).set(links[i]);
            m.routes_by_zone.with_label_values(&[zone]).set(routes[i]);
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
                            let _ = link.queues.control.try_send(Encoded::from(bye));
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
                        self.shared.data.forget_direct_refusal(&node);
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
                Output::AppBroadcast { src, identity, topic, id, payload } => {
                    self.deliver_broadcast(src, identity, topic, id, payload)
                }
                Output::DeliverData(d) => {
                    tokio::spawn(crate::stream::deliver(self.shared.clone(), d, None));
                }
                Output::FlowUnreachable { dst, flow, reason } => {
                    if let Some(FlowEntry { tx, .. }) = self.shared.data.flow(&(dst, flow)) {
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
    fn deliver_broadcast(
        &self,
        src: String,
        identity: String,
        topic: String,
        id: u64,
        payload: Vec<u8>,
    ) {
        let wanted = topic.is_empty()
            || self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).contains(&topic);
        if !wanted {
            return;
        }
        use base64::Engine;
        let item = Received {
            from: src,
            from_identity: Some(identity),
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
        let bytes = match &frame {
            Frame::Data(d) => d.encode_parts(),
            other => Encoded::from(other.encode()),
        };
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
        let links: HashMap<String, mpsc::Sender<Encoded>> = self
            .current
            .iter()
            .filter_map(|(n, id)| Some((n.clone(), self.links.get(id)?.queues.data.clone())))
            .collect();
        self.metrics().links.set(links.len() as i64);
        self.shared.data.links.store(Arc::new(links));
    }

    fn publish_routes(&self) {
        self.metrics().routes.set(self.node.route_count() as i64);
        let hops = self.node.next_hops();
        let old = self.shared.data.next_hops.load();
        if **old != hops {
            self.shared
                .data
                .end_flows_where(|dst| old.contains_key(dst) && !hops.contains_key(dst));
            self.shared.data.next_hops.store(Arc::new(hops));
        }
    }
}

/// `t - now` in seconds, negative when `t` is past.
fn signed_secs(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
