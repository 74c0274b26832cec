//! `PeerSet`: who to connect to, how much to trust them, and whom to ban (sans-IO).
//!
//! Members bootstrap from anchor addresses, learn more addresses by peer exchange, and keep
//! between `min_peers` and `max_peers` links; a full member refuses newcomers rather than
//! dropping a healthy link for them. Each peer has a 0–100 reputation built from RTT,
//! uptime (answered pings), failures and invalid frames; below the ban threshold it is banned,
//! for a duration that doubles with every repeated ban. Non-data frames pass a per-peer token
//! bucket, so one noisy peer cannot starve the others.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::frame::PeerAddr;
use crate::routing::{area_of, Time};

/// Discovery and reputation parameters (MeshNetwork `spec.discovery` and `spec.reputation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub min_peers: usize,
    pub max_peers: usize,
    pub exchange_interval: Duration,
    /// Below this score a peer is banned.
    pub ban_threshold: u8,
    /// First ban length; doubles per repeated ban, capped at [`MAX_BAN`].
    pub ban_duration: Duration,
    /// Sustained non-data frames per second allowed from one peer.
    pub frame_rate: u32,
    /// Burst of non-data frames allowed above the rate.
    pub frame_burst: u32,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            min_peers: 3,
            max_peers: 8,
            exchange_interval: Duration::from_secs(10),
            ban_threshold: 20,
            ban_duration: Duration::from_secs(300),
            frame_rate: 200,
            frame_burst: 1000,
        }
    }
}

/// Longest ban, however often a peer misbehaves.
pub const MAX_BAN: Duration = Duration::from_secs(3600);
/// Addresses remembered at most: bounds state however large the mesh is.
pub const MAX_KNOWN: usize = 512;
/// Longest pause between dial attempts to one address.
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(30);
/// Addresses of any area a peer exchange adds, in a network with areas.
const SPREAD_ADDRS: usize = 8;
/// Addresses of each other area an address book keeps room for, in a network with areas.
const PER_AREA_KEPT: usize = 4;
/// Links a member seeks outside its routing area, in a network with areas: long links that
/// keep the areas joined and the mesh's diameter short.
pub const CROSS_AREA_LINKS: usize = 1;
/// How often a member with the links it seeks looks for more.
const DIAL_CHECK: Duration = Duration::from_secs(1);
/// How many times an exchange interval [`PeerSet::rejoin`] looks for lost anchors and members
/// (it acts on losses an interval old; each look walks every known address).
const REJOIN_CHECKS: u32 = 4;
/// How often a member with areas checks that it knows someone of its own area (see
/// [`PeerSet::area_lookup`]), and the first wait between lookups.
const AREA_CHECK: Duration = Duration::from_secs(1);
/// The longest wait between two lookups of our own area.
const MAX_AREA_LOOKUP_WAIT: Duration = Duration::from_secs(300);
/// How long an admitted inbound link holds its place: the peer's hello is due well within it.
const ADMISSION_HOLD: Duration = Duration::from_secs(5);
/// Links accepted at most, as a multiple of `max_peers` (see [`PeerSet::link_limit`]).
const INBOUND_HEADROOM: usize = 2;
/// How a refusal for want of room begins (the dialer's log and metrics tell it apart).
pub const FULL: &str = "full";
/// Score of a peer we know nothing about yet.
const INITIAL_SCORE: u8 = 50;
/// At or above this a peer is trusted.
const TRUSTED_SCORE: u8 = 70;
/// Below this a peer is suspicious.
const SUSPICIOUS_SCORE: u8 = 40;

/// Named reputation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    New,
    Trusted,
    Suspicious,
    Banned,
}

impl Level {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::New => "new",
            Level::Trusted => "trusted",
            Level::Suspicious => "suspicious",
            Level::Banned => "banned",
        }
    }
}

/// Things a peer did that change its reputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduct {
    /// Answered a ping in this RTT.
    Pong(Duration),
    /// A dial failed or the link dropped without a goodbye.
    Failure,
    /// Sent a frame that does not decode, or breaks the protocol.
    InvalidFrame,
    /// Exceeded its frame rate.
    RateLimited,
    /// Delivered a stream opening that failed its end-to-end handshake or claimed a source
    /// that did not authenticate as it (forged, or relayed from a forger).
    RefusedStream,
    /// Presented a certificate we refuse (revoked, foreign CA, expired) or a hello that does
    /// not match it: banned at once.
    BadIdentity,
}

impl Conduct {
    fn delta(self) -> i32 {
        match self {
            Conduct::Pong(rtt) if rtt < Duration::from_millis(50) => 2,
            Conduct::Pong(rtt) if rtt < Duration::from_millis(250) => 1,
            Conduct::Pong(rtt) if rtt < Duration::from_secs(1) => 0,
            Conduct::Pong(_) => -1,
            Conduct::Failure => -5,
            Conduct::InvalidFrame => -25,
            Conduct::RateLimited => -10,
            Conduct::RefusedStream => -10,
            Conduct::BadIdentity => -100,
        }
    }
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Open a link to this address.
    Dial { addr: String },
    /// Close the link to this peer.
    Disconnect { node: String, reason: String },
    /// Send a peer exchange to every connected peer.
    Exchange,
    /// The peer was banned (for metrics and the audit log).
    Banned { node: String, until: Time, reason: String },
}

#[derive(Debug, Clone)]
struct Peer {
    addr: String,
    /// Reached at (or announced) an anchor address: never evicted for a learned peer.
    anchor: bool,
    score: u8,
    connected_since: Option<Time>,
    banned_until: Option<Time>,
    bans: u32,
    rtt: Option<Duration>,
    tokens: f64,
    refilled: Time,
    /// When the rate limit last cost reputation (at most once a second).
    last_penalty: Option<Time>,
    /// Its zone, as its hello named it (empty: not known).
    zone: String,
}

impl Peer {
    /// A peer we know nothing about yet, at `addr` (empty: none known), with a full bucket.
    fn new(addr: &str, anchor: bool, burst: f64, now: Time) -> Self {
        Peer {
            addr: addr.to_owned(),
            anchor,
            score: INITIAL_SCORE,
            connected_since: None,
            banned_until: None,
            bans: 0,
            rtt: None,
            tokens: burst,
            refilled: now,
            last_penalty: None,
            zone: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Dial {
    /// The member at that address, when learned from a peer exchange (empty for anchors).
    node: String,
    /// Its routing area (None while its name is unknown), worked out once.
    area: Option<u16>,
    /// Its zone, as a peer exchange or its hello named it (empty: not known).
    zone: String,
    failures: u32,
    next: Time,
    anchor: bool,
    /// Dialled and not yet reported connected or failed (until `next`, a safety timeout).
    in_flight: bool,
    /// An anchor: since when this member has had neither a link nor a route to it.
    unreachable_since: Option<Time>,
}

/// A peer as shown on the admin API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerView {
    pub node: String,
    pub addr: String,
    pub score: u8,
    pub level: Level,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    /// Its zone, as its hello last named it (peers ever linked, with a known zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Whether a frame may pass the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// Dropped; the driver counts it.
    Drop,
}

/// The peer state of one member.
#[derive(Debug)]
pub struct PeerSet {
    me: String,
    config: PeerConfig,
    peers: BTreeMap<String, Peer>,
    dials: BTreeMap<String, Dial>,
    /// Inbound links admitted and not yet up: node → until when the place is held.
    admitted: BTreeMap<String, Time>,
    /// Where the next referral slice of known members starts.
    referral_cursor: usize,
    /// An anchor linked with us, or turned us away with its peers: we are in the mesh.
    anchor_reached: bool,
    next_exchange: Time,
    /// No rejoin dial before this (see [`PeerSet::rejoin`]), and rejoin dials so far.
    next_rejoin: Time,
    rejoins: u64,
    next_rejoin_check: Time,
    /// Since when, with areas, we have known no address of our own area, and how many
    /// lookups at an anchor that has led to (see [`PeerSet::area_lookup`]).
    alone_since: Option<Time>,
    area_lookups: u32,
    next_area_lookup: Time,
    next_area_check: Time,
    /// Our zone (empty: not known; see [`PeerSet::with_zone`]).
    zone: String,
    /// Routing areas of the network (1: flat; see [`crate::routing::area_of`]), and ours.
    areas: u16,
    my_area: u16,
    /// No look for links to dial before this (see [`PeerSet::on_tick`]).
    next_dial_check: Time,
}

impl PeerSet {
    /// A peer set for `me`, bootstrapping from `anchors` (addresses).
    pub fn new(me: &str, config: PeerConfig, anchors: &[String], now: Time) -> Self {
        let dials = anchors
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    Dial {
                        node: String::new(),
                        area: None,
                        zone: String::new(),
                        failures: 0,
                        next: now,
                        anchor: true,
                        in_flight: false,
                        unreachable_since: None,
                    },
                )
            })
            .collect();
        PeerSet {
            me: me.to_owned(),
            next_exchange: now + config.exchange_interval,
            next_rejoin: now,
            rejoins: 0,
            next_rejoin_check: now,
            alone_since: None,
            area_lookups: 0,
            next_area_lookup: now,
            next_area_check: now,
            config,
            peers: BTreeMap::new(),
            dials,
            admitted: BTreeMap::new(),
            referral_cursor: 0,
            anchor_reached: false,
            zone: String::new(),
            areas: 1,
            my_area: 0,
            next_dial_check: now,
        }
    }

    /// The same, in a network of `areas` routing areas: a member then seeks `min_peers` links
    /// inside its own area (member routes travel only there, so an area must hang together on
    /// its own links) and [`CROSS_AREA_LINKS`] outside it, and it remembers and refers members
    /// of the asker's area first.
    pub fn with_areas(mut self, areas: u16) -> Self {
        self.areas = areas.max(1);
        self.my_area = area_of(&self.me, self.areas);
        for d in self.dials.values_mut().filter(|d| !d.node.is_empty()) {
            d.area = Some(area_of(&d.node, self.areas));
        }
        self
    }

    /// The same, in `zone`: in a flat network, among addresses otherwise equal, it dials
    /// members of its own zone first (keeping one link out of it, see
    /// [`PeerSet::zone_wants`]), so that its links, and the routes over them, stay in the zone
    /// (with the link cost's zone penalty, docs/PROTOCOL.md "Zones"). A penalty alone moved
    /// nothing there: with links dialled regardless of zone, two thirds of a member's links
    /// crossed zones (3 zones), and 45 % of the routes between members of one zone left it
    /// (1,000 simulated members).
    pub fn with_zone(mut self, zone: &str) -> Self {
        zone.clone_into(&mut self.zone);
        self
    }

    /// A linked peer's zone, from its hello: kept with the peer and its address.
    pub fn on_zone(&mut self, node: &str, zone: &str) {
        if let Some(p) = self.peers.get_mut(node) {
            zone.clone_into(&mut p.zone);
            if let Some(d) = self.dials.get_mut(&p.addr) {
                zone.clone_into(&mut d.zone);
            }
        }
    }

    /// Whether `node` (empty: not known yet) is in our routing area.
    fn in_my_area(&self, node: &str) -> bool {
        !node.is_empty() && area_of(node, self.areas) == self.my_area
    }

    /// The same for a known address (its area worked out once).
    fn dial_in_my_area(&self, d: &Dial) -> bool {
        d.area == Some(self.my_area)
    }

    /// Connected peers.
    pub fn connected(&self) -> usize {
        self.peers.values().filter(|p| p.connected_since.is_some()).count()
    }

    /// Whether `node` is banned at `now`.
    pub fn is_banned(&self, node: &str, now: Time) -> bool {
        self.peers.get(node).and_then(|p| p.banned_until).is_some_and(|t| now < t)
    }

    /// A peer's level.
    pub fn level(&self, node: &str, now: Time) -> Option<Level> {
        self.peers.get(node).map(|p| level_of(p, now))
    }

    /// Whether an inbound link from `node` may start (asked before our hello, so a refused
    /// dialer never sees a link come up and go down). Refused while the peer is banned, or
    /// while we are full: a member never closes a healthy link to make room for a newcomer,
    /// since that eviction sets the evicted peer dialling someone else, who evicts in turn
    /// (the churn issue 18 traced a dropped link during rotation to). The refusal carries our
    /// peer list, so the dialer finds a member with room.
    pub fn admit_inbound(&mut self, node: &str, now: Time) -> Result<(), String> {
        self.check_room(node, now)?;
        // NB: the admitted link holds its place until its hello is done, so two newcomers
        // arriving together cannot both pass and leave one to be refused after its link is up.
        let in_flight = self.dials.values().filter(|d| d.in_flight).count();
        self.admitted.retain(|n, until| now < *until && n != node);
        if self.connected() + self.admitted.len() + in_flight >= self.limit_for(node) {
            return Err(format!("{FULL}: already at {} links", self.connected()));
        }
        self.admitted.insert(node.to_owned(), now + ADMISSION_HOLD);
        Ok(())
    }

    fn check_room(&self, node: &str, now: Time) -> Result<(), String> {
        if node == self.me {
            return Err("a link to ourselves".into());
        }
        if let Some(until) = self.peers.get(node).and_then(|p| p.banned_until).filter(|t| now < *t)
        {
            return Err(format!("banned for another {}s", (until - now).as_secs()));
        }
        if self.connected() >= self.limit_for(node) {
            return Err(format!("{FULL}: already at {} links", self.connected()));
        }
        Ok(())
    }

    /// Links we may hold when the next is to `node`: the link limit, less (with areas, for a
    /// member of another area) the places kept for the links to our own area we still lack,
    /// and at least one.
    ///
    /// NB: an anchor that the first joiners of other areas filled held no link into its own
    /// area, could dial none (full) and be dialled by none (full), and never routed to its
    /// own area's members (3,000 simulated members in 30 areas never converged).
    fn limit_for(&self, node: &str) -> usize {
        if self.areas <= 1 || self.in_my_area(node) {
            return self.link_limit();
        }
        let own = self
            .peers
            .iter()
            .filter(|(n, p)| p.connected_since.is_some() && self.in_my_area(n))
            .count();
        // NB: one place stays kept however many links of our own area we hold: a member full
        // of other areas' links could not take, nor make, the link that rejoins its area's
        // island to the rest (four members of one area, each with min peers among themselves
        // and 13 links to other areas, never met their area again: 3,000 simulated members in
        // 30 areas, zones 1.5 ms apart).
        self.link_limit().saturating_sub(self.config.min_peers.saturating_sub(own).max(1))
    }

    /// Links this member holds at most. It dials only up to `min_peers` (and an anchor), and
    /// accepts dialers until twice `max_peers`: the headroom lets every newcomer find a place
    /// (with inbound capped at what it seeks, the members that joined first filled up, every
    /// refusal pointed at them, and later members took seconds to find any room; a full
    /// member never drops a link for a newcomer, so without headroom a mesh could also split
    /// into full parts that never meet).
    pub fn link_limit(&self) -> usize {
        self.config.max_peers.saturating_mul(INBOUND_HEADROOM)
    }

    /// A link to `node` (dialled at or accepted from `addr`) completed its handshake and hello.
    /// Refused as [`PeerSet::admit_inbound`] refuses; a link that finds us full (an outbound
    /// link finishing together with an inbound one) is the one refused, never an established
    /// one.
    pub fn on_connected(&mut self, node: &str, addr: &str, now: Time) -> Result<(), String> {
        self.admitted.remove(node);
        self.check_room(node, now)?;
        let burst = f64::from(self.config.frame_burst);
        let anchor = self.dials.get(addr).is_some_and(|d| d.anchor);
        let peer = self
            .peers
            .entry(node.to_owned())
            .or_insert_with(|| Peer::new(addr, anchor, burst, now));
        if !addr.is_empty() {
            peer.addr = addr.to_owned();
            peer.anchor = anchor;
        }
        peer.connected_since = Some(now);
        peer.tokens = burst;
        peer.refilled = now;
        if let Some(d) = self.dials.get_mut(addr) {
            d.failures = 0;
            d.in_flight = false;
            self.anchor_reached |= d.anchor;
            // The certificate's word, over what a peer exchange said.
            d.node = node.to_owned();
            d.area = Some(area_of(node, self.areas));
        }
        Ok(())
    }

    /// Dialling `addr` reached a member that refused the link (full, or banning us) and
    /// handed over its peers: try those, and back off from `addr` as from a failed dial, without
    /// blaming it (a full member did nothing wrong).
    pub fn on_dial_refused(&mut self, addr: &str, peers: &[PeerAddr], now: Time) {
        if self.dials.get(addr).is_some_and(|d| d.anchor) && !peers.is_empty() {
            self.anchor_reached = true;
        }
        self.on_exchange(peers, now);
        self.on_dial_failed(addr, now);
    }

    /// The link to `node` closed (`failure`: without a goodbye).
    pub fn on_disconnected(&mut self, node: &str, failure: bool, now: Time) -> Vec<PeerAction> {
        let mut actions = Vec::new();
        self.next_dial_check = now;
        if let Some(p) = self.peers.get_mut(node) {
            p.connected_since = None;
        }
        if failure {
            actions.extend(self.record(node, Conduct::Failure, now));
        }
        actions
    }

    /// Dialling `addr` failed: back off exponentially.
    pub fn on_dial_failed(&mut self, addr: &str, now: Time) {
        self.next_dial_check = now;
        if let Some(d) = self.dials.get_mut(addr) {
            d.in_flight = false;
            d.failures += 1;
            let backoff = Duration::from_secs(1) * 2u32.saturating_pow(d.failures.min(6) - 1);
            d.next = now + backoff.min(MAX_DIAL_BACKOFF);
        }
    }

    /// Records conduct; returns a ban (and disconnect) when the score falls below the threshold.
    pub fn record(&mut self, node: &str, conduct: Conduct, now: Time) -> Vec<PeerAction> {
        // A member that never linked can still misbehave (a garbage or lying hello): it is
        // remembered, so the offence counts and a ban holds. Its certificate verified, so these
        // entries are bounded by the network's members.
        if matches!(conduct, Conduct::BadIdentity | Conduct::InvalidFrame)
            && !self.peers.contains_key(node)
            && node != self.me
        {
            let burst = f64::from(self.config.frame_burst);
            self.peers.insert(node.to_owned(), Peer::new("", false, burst, now));
        }
        let Some(p) = self.peers.get_mut(node) else { return Vec::new() };
        if let Conduct::Pong(rtt) = conduct {
            p.rtt = Some(rtt);
        }
        p.score = (i32::from(p.score) + conduct.delta()).clamp(0, 100) as u8;
        if p.score >= self.config.ban_threshold || p.banned_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        p.bans += 1;
        let factor = 2u32.saturating_pow(p.bans.min(16) - 1);
        let until = now + self.config.ban_duration.saturating_mul(factor).min(MAX_BAN);
        p.banned_until = Some(until);
        let reason =
            format!("reputation {} below {} after {conduct:?}", p.score, self.config.ban_threshold);
        let mut actions =
            vec![PeerAction::Banned { node: node.to_owned(), until, reason: reason.clone() }];
        if p.connected_since.is_some() {
            actions.push(PeerAction::Disconnect { node: node.to_owned(), reason });
        }
        actions
    }

    /// Token bucket for a non-data frame from `node`. A dropped frame costs reputation at most
    /// once a second (a flood is one offence per second, not one per frame).
    pub fn admit(&mut self, node: &str, now: Time) -> (Admit, Vec<PeerAction>) {
        let rate = f64::from(self.config.frame_rate);
        let burst = f64::from(self.config.frame_burst);
        let Some(p) = self.peers.get_mut(node) else { return (Admit::Drop, Vec::new()) };
        let elapsed = now.saturating_sub(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + elapsed * rate).min(burst);
        p.refilled = now;
        if p.tokens >= 1.0 {
            p.tokens -= 1.0;
            return (Admit::Pass, Vec::new());
        }
        let penalise = p.last_penalty.is_none_or(|t| now >= t + Duration::from_secs(1));
        if penalise {
            p.last_penalty = Some(now);
            return (Admit::Drop, self.record(node, Conduct::RateLimited, now));
        }
        (Admit::Drop, Vec::new())
    }

    /// Addresses learned from a peer exchange. Our own name and over-the-bound entries are
    /// ignored.
    pub fn on_exchange(&mut self, peers: &[PeerAddr], now: Time) {
        // With a full book, addresses known per area, counted once per exchange and kept as
        // entries come and go (a count per offered address made a full book O(list × book)).
        let mut known: Option<Vec<usize>> = None;
        for p in peers {
            if p.node == self.me || p.addr.is_empty() {
                continue;
            }
            let area = area_of(&p.node, self.areas);
            if self.dials.len() >= MAX_KNOWN && !self.dials.contains_key(&p.addr) {
                let known = known.get_or_insert_with(|| self.known_per_area());
                // With areas, a member of ours takes the place of one from another area:
                // our own area's members are the ones we must be able to find.
                let room = self.areas > 1
                    && if area == self.my_area {
                        self.forget_one_foreign(None, known)
                    } else {
                        // A few of every area, so that whoever asks us for members of its
                        // area finds some (see `exchange_list_for`).
                        known[usize::from(area)] < PER_AREA_KEPT
                            && self.forget_one_foreign(Some(PER_AREA_KEPT), known)
                    };
                if !room {
                    continue;
                }
            }
            let d = self.dials.entry(p.addr.clone()).or_insert_with(|| {
                if let Some(known) = known.as_mut() {
                    known[usize::from(area)] += 1;
                }
                Dial {
                    node: p.node.clone(),
                    area: Some(area),
                    zone: p.zone.clone(),
                    failures: 0,
                    next: now,
                    anchor: false,
                    in_flight: false,
                    unreachable_since: None,
                }
            });
            if d.node.is_empty() {
                d.node = p.node.clone(); // an anchor, known by address until now
                d.area = Some(area);
                if let Some(known) = known.as_mut() {
                    known[usize::from(area)] += 1;
                }
            }
            if d.zone.is_empty() {
                d.zone.clone_from(&p.zone);
            }
        }
    }

    /// Addresses known per area (indexed by area; addresses of unknown area not counted).
    fn known_per_area(&self) -> Vec<usize> {
        let mut known = vec![0; usize::from(self.areas)];
        for a in self.dials.values().filter_map(|d| d.area) {
            known[usize::from(a)] += 1;
        }
        known
    }

    /// Forgets one address of another area that is neither an anchor nor being dialled nor
    /// linked; with `above`, only from the area we know most addresses of, and only if that is
    /// more than `above`. Whether there was one; `known` (see [`PeerSet::known_per_area`])
    /// follows.
    fn forget_one_foreign(&mut self, above: Option<usize>, known: &mut [usize]) -> bool {
        let linked = self.linked_addrs();
        let spare = |(a, d): &(&String, &Dial)| {
            !d.anchor && !d.in_flight && !self.dial_in_my_area(d) && !linked.contains(&a.as_str())
        };
        let victim = match above {
            None => self.dials.iter().find(|e| spare(e)).map(|(a, _)| a.clone()),
            Some(above) => {
                let crowded = (0..self.areas)
                    .filter(|x| *x != self.my_area)
                    .max_by_key(|x| known[usize::from(*x)])
                    .filter(|x| known[usize::from(*x)] > above);
                crowded.and_then(|crowded| {
                    let pick = |e: &(&String, &Dial)| spare(e) && e.1.area == Some(crowded);
                    self.dials.iter().find(|e| pick(e)).map(|(a, _)| a.clone())
                })
            }
        };
        let Some(gone) = victim.and_then(|a| self.dials.remove(&a)) else {
            return false;
        };
        if let Some(a) = gone.area {
            known[usize::from(a)] -= 1;
        }
        true
    }

    /// The addresses of the peers we hold a link to.
    fn linked_addrs(&self) -> Vec<&str> {
        self.peers
            .values()
            .filter(|p| p.connected_since.is_some())
            .map(|p| p.addr.as_str())
            .collect()
    }

    /// Addresses known in `area`.
    pub fn known_in(&self, area: u16) -> usize {
        self.dials.values().filter(|d| d.area == Some(area)).count()
    }

    /// Whom to send a dialer `node` to when we turn it away: our peers, and a rotating slice
    /// of the other members we have heard of. Our peers alone are as full as we are (everyone
    /// who found us found them); the wider slice spreads newcomers over the mesh.
    pub fn referrals(&mut self, node: &str, now: Time) -> Vec<PeerAddr> {
        let mut list = self.exchange_list(now);
        list.retain(|p| p.node != node);
        let known: Vec<PeerAddr> = self
            .dials
            .iter()
            .filter(|(_, d)| !d.node.is_empty() && d.node != node && d.node != self.me)
            .map(|(a, d)| PeerAddr { node: d.node.clone(), addr: a.clone(), zone: d.zone.clone() })
            .collect();
        let mut room = crate::frame::MAX_PEER_ADDRS.saturating_sub(list.len());
        if self.areas > 1 {
            // Members of the dialer's own area first: those are the links it seeks.
            let area = area_of(node, self.areas);
            for p in known.iter().filter(|p| area_of(&p.node, self.areas) == area) {
                if room == 0 {
                    break;
                }
                if !list.iter().any(|l| l.addr == p.addr) {
                    list.push(p.clone());
                    room -= 1;
                }
            }
        }
        for k in 0..known.len().min(room) {
            let p = &known[(self.referral_cursor + k) % known.len()];
            if !list.iter().any(|l| l.addr == p.addr) {
                list.push(p.clone());
            }
        }
        self.referral_cursor = self.referral_cursor.wrapping_add(room.max(1));
        list
    }

    /// What to tell neighbours in a peer exchange: connected peers that are not banned.
    pub fn exchange_list(&self, now: Time) -> Vec<PeerAddr> {
        self.peers
            .iter()
            .filter(|(_, p)| p.connected_since.is_some() && !p.addr.is_empty())
            .filter(|(_, p)| !matches!(level_of(p, now), Level::Banned | Level::Suspicious))
            .take(crate::frame::MAX_PEER_ADDRS)
            .map(|(n, p)| PeerAddr { node: n.clone(), addr: p.addr.clone(), zone: p.zone.clone() })
            .collect()
    }

    /// The peer exchange for neighbour `node`: our connected peers and, with areas, the
    /// members of `node`'s area we know of (a rotating slice), so that an area's members learn
    /// of each other from anywhere in the mesh.
    ///
    /// NB: without it, two groups of one area's members that each met min peers among
    /// themselves could stay apart for good: their links and their exchanges went round their
    /// own group (10,000 simulated members in 100 areas; the other areas' routes to the area
    /// led into one group only).
    pub fn exchange_list_for(&mut self, node: &str, now: Time) -> Vec<PeerAddr> {
        let mut list = self.exchange_list(now);
        if self.areas <= 1 {
            return list;
        }
        let area = area_of(node, self.areas);
        let theirs: Vec<PeerAddr> = self
            .dials
            .iter()
            .filter(|(_, d)| !d.node.is_empty() && d.node != node && d.node != self.me)
            .filter(|(_, d)| d.area == Some(area))
            .map(|(a, d)| PeerAddr { node: d.node.clone(), addr: a.clone(), zone: d.zone.clone() })
            .collect();
        let room = crate::frame::MAX_PEER_ADDRS.saturating_sub(list.len());
        for k in 0..theirs.len().min(room) {
            let p = &theirs[(self.referral_cursor + k) % theirs.len()];
            if !list.iter().any(|l| l.addr == p.addr) {
                list.push(p.clone());
            }
        }
        // A few of anyone we know, whatever their area, so that every area's addresses spread
        // through the whole mesh and each address book keeps some of every area.
        // NB: without them, addresses travelled only to members next to their area, and a
        // member far from its own area's members never heard of one (m9834 of 10,000
        // simulated members: three links to other areas, no address of its own area known).
        let named: Vec<(&String, &Dial)> =
            self.dials.iter().filter(|(_, d)| !d.node.is_empty() && d.node != node).collect();
        let room = crate::frame::MAX_PEER_ADDRS.saturating_sub(list.len()).min(SPREAD_ADDRS);
        for k in 0..named.len().min(room) {
            let (a, d) = named[(self.referral_cursor.wrapping_mul(7) + k) % named.len()];
            if !list.iter().any(|l| &l.addr == a) {
                list.push(PeerAddr { node: d.node.clone(), addr: a.clone(), zone: d.zone.clone() });
            }
        }
        self.referral_cursor = self.referral_cursor.wrapping_add(1);
        list
    }

    /// Timer: dial when under `min_peers`, send peer exchange every interval.
    pub fn on_tick(&mut self, now: Time) -> Vec<PeerAction> {
        let mut actions = Vec::new();
        // NB: a member with the links it seeks looks again once a second (or at once after a
        // loss, see `recheck`), one short of them at every tick: this look walks every known
        // address, and four times a second on every member it was much of the simulator's time.
        if now < self.next_dial_check {
            if now >= self.next_exchange {
                self.next_exchange = now + self.config.exchange_interval;
                actions.push(PeerAction::Exchange);
            }
            return actions;
        }
        self.next_dial_check = now;
        for d in self.dials.values_mut() {
            if d.in_flight && now >= d.next {
                d.in_flight = false; // never reported back: give up on that attempt
            }
        }
        let in_flight = self.dials.values().filter(|d| d.in_flight).count();
        let mut wanted = self.config.min_peers.saturating_sub(self.connected() + in_flight);
        // NB: a member with the links it seeks looks no further (the usual case at rest): the
        // candidate list below costs a sort of every known address, and at 10,000 simulated
        // members that ran four times a second on each was most of the simulator's time.
        let area_wants = self.areas > 1 && {
            let (own, other) = self.area_wants(in_flight);
            own + other > 0
        };
        let zone_wants = self.zone_wants(now, in_flight);
        if wanted == 0 && self.anchor_reached && !area_wants && !zone_wants {
            self.next_dial_check = now + DIAL_CHECK;
            if now >= self.next_exchange {
                self.next_exchange = now + self.config.exchange_interval;
                actions.push(PeerAction::Exchange);
            }
            return actions;
        }
        let connected_addrs: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.connected_since.is_some())
            .map(|p| p.addr.clone())
            .collect();
        let banned_addrs: Vec<String> = self
            .peers
            .values()
            .filter(|p| p.banned_until.is_some_and(|t| now < t))
            .map(|p| p.addr.clone())
            .collect();
        // Anchors first, then learned addresses; skip connected, banned and backing-off ones.
        let mut candidates: Vec<(&String, &Dial)> = self
            .dials
            .iter()
            .filter(|(a, d)| {
                !d.in_flight
                    && d.next <= now
                    && !connected_addrs.contains(a)
                    && !banned_addrs.contains(a)
            })
            .collect();
        // NB: among equals, each member orders addresses its own way (a hash of its name and
        // the address): in one order, every newcomer dialled the same few members first.
        let mine = fnv1a(FNV_OFFSET, self.me.as_bytes());
        // With zones known, members of our own zone first in a flat network (see
        // `PeerSet::with_zone`).
        let other_zone = |d: &Dial| self.prefers_zones() && d.zone != self.zone;
        candidates.sort_by_key(|(a, d)| {
            (!d.anchor, d.failures, other_zone(d), mix(fnv1a(mine, a.as_bytes())))
        });
        // A member with anchors dials one even when inbound links already meet min peers,
        // until it has reached one: otherwise the members that found each other first can
        // form an island that never meets the rest (min peers satisfied on both sides). An
        // anchor that turned us away counts as reached: it is up, and the peers it named are
        // the mesh. (Insisting on a link to a full anchor kept every member of a large mesh
        // redialling the anchors, and each link they won moved routes all over the mesh.)
        let anchor_linked = self.anchor_reached
            || self
                .dials
                .iter()
                .any(|(a, d)| d.anchor && (d.in_flight || connected_addrs.contains(a)));
        let need_anchor = !anchor_linked
            && self.dials.values().any(|d| d.anchor)
            && self.connected() < self.config.max_peers;
        let mut dialled = Vec::new();
        if self.areas > 1 {
            dialled = self.pick_in_areas(&candidates, need_anchor, in_flight);
        } else {
            for (addr, d) in candidates.iter().copied() {
                // Anchors sort first, so the extra dial (beyond min peers) is always an anchor.
                let extra_anchor = need_anchor && d.anchor && dialled.is_empty();
                if wanted == 0 && !extra_anchor {
                    break;
                }
                dialled.push(addr.clone());
                wanted = wanted.saturating_sub(1);
            }
        }
        if zone_wants {
            let crossing = |d: &Dial| self.crosses_zone(d);
            let picked = dialled.iter().any(|a| self.dials.get(a).is_some_and(crossing));
            let room = self.connected() + in_flight + dialled.len() < self.link_limit();
            if let Some((addr, _)) =
                candidates.iter().find(|(_, d)| crossing(d)).filter(|_| !picked && room)
            {
                dialled.push((*addr).clone());
            }
        }
        for addr in dialled {
            // NB: not dialled again until it connects or fails (failure sets the backoff).
            if let Some(d) = self.dials.get_mut(&addr) {
                d.next = now + MAX_DIAL_BACKOFF;
                d.in_flight = true;
            }
            actions.push(PeerAction::Dial { addr });
        }
        if now >= self.next_exchange {
            self.next_exchange = now + self.config.exchange_interval;
            actions.push(PeerAction::Exchange);
        }
        actions
    }

    /// Whether dials prefer our own zone: our zone is known and the network is flat. With
    /// areas they do not: an area's links must hold the area together, and members that filled
    /// up with links inside one zone of their area (every early joiner is soon full) left
    /// that zone's part of the area an island (3,000 simulated members in 30 areas never
    /// converged). There the link cost's zone penalty alone keeps routes in a zone where the
    /// area's links allow it.
    fn prefers_zones(&self) -> bool {
        !self.zone.is_empty() && self.areas <= 1
    }

    /// Whether `d` is a member of another known zone (of our own area, with areas): the kind
    /// of link [`PeerSet::zone_wants`] keeps one of.
    fn crosses_zone(&self, d: &Dial) -> bool {
        !self.zone.is_empty()
            && !d.zone.is_empty()
            && d.zone != self.zone
            && !d.anchor
            && (self.areas <= 1 || self.dial_in_my_area(d))
    }

    /// Whether to dial one member of another zone (of our own area, with areas): while we hold
    /// no such link nor dial, and know one we may dial now. Zones are preferred (candidates of
    /// our own zone sort first), never sealed off.
    ///
    /// NB: a member whose dials all found its own zone could hold no link out of it, and a
    /// zone's members linked only among themselves would be an island.
    fn zone_wants(&self, now: Time, in_flight: usize) -> bool {
        if !self.prefers_zones() || self.connected() + in_flight >= self.link_limit() {
            return false;
        }
        let crosses = |zone: &str| !zone.is_empty() && zone != self.zone;
        let linked = self.peers.iter().any(|(n, p)| {
            p.connected_since.is_some()
                && crosses(&p.zone)
                && (self.areas <= 1 || self.in_my_area(n))
        });
        let flying = || self.dials.values().any(|d| d.in_flight && self.crosses_zone(d));
        let known = || {
            let connected = self.linked_addrs();
            self.dials.iter().any(|(a, d)| {
                self.crosses_zone(d)
                    && !d.in_flight
                    && d.next <= now
                    && !connected.contains(&a.as_str())
            })
        };
        !linked && !flying() && known()
    }

    /// Links still wanted in a network with areas: (inside our area, outside it); none when
    /// the link limit is reached.
    fn area_wants(&self, in_flight: usize) -> (usize, usize) {
        if self.connected() + in_flight >= self.link_limit() {
            return (0, 0);
        }
        let linked = self.peers.iter().filter(|(_, p)| p.connected_since.is_some());
        let own_linked = linked.filter(|(n, _)| self.in_my_area(n)).count();
        let own_flying =
            self.dials.values().filter(|d| d.in_flight && self.dial_in_my_area(d)).count();
        let other = (self.connected() + in_flight).saturating_sub(own_linked + own_flying);
        (
            self.config.min_peers.saturating_sub(own_linked + own_flying),
            CROSS_AREA_LINKS.saturating_sub(other),
        )
    }

    /// Whom to dial in a network with areas: `min_peers` links inside our area, and
    /// [`CROSS_AREA_LINKS`] outside it (never an anchor for that: every member would pick
    /// one), plus an anchor while `need_anchor`. While our area's members are not known yet,
    /// anyone will do up to `min_peers` links in all: the links are how we learn of them.
    fn pick_in_areas(
        &self,
        candidates: &[(&String, &Dial)],
        need_anchor: bool,
        in_flight: usize,
    ) -> Vec<String> {
        let (mut want_own, mut want_other) = self.area_wants(in_flight);
        let mut dialled: Vec<String> = Vec::new();
        if need_anchor {
            if let Some((addr, d)) = candidates.iter().find(|(_, d)| d.anchor) {
                dialled.push((*addr).clone());
                if self.dial_in_my_area(d) {
                    want_own = want_own.saturating_sub(1);
                } else {
                    want_other = want_other.saturating_sub(1);
                }
            }
        }
        for (addr, d) in candidates {
            if dialled.contains(addr) {
                continue;
            }
            let own = self.dial_in_my_area(d);
            if own && want_own > 0 {
                want_own -= 1;
            } else if !own
                && !d.anchor
                && want_other > 0
                && self.connected() + in_flight + dialled.len() < self.limit_for(&d.node)
            {
                want_other -= 1;
            } else {
                continue;
            }
            dialled.push((*addr).clone());
        }
        let short = self.config.min_peers.saturating_sub(self.connected() + in_flight);
        let spare = candidates.iter().filter(|(a, _)| !dialled.contains(a));
        let fill: Vec<String> =
            spare.take(short.saturating_sub(dialled.len())).map(|(a, _)| (*a).clone()).collect();
        dialled.extend(fill);
        // NB: never past the link limit, however few links of our area we hold: a member full
        // of other areas' dialers would dial its own area at every tick, and its own full check
        // close each link as it came up.
        dialled.truncate(self.link_limit().saturating_sub(self.connected() + in_flight));
        dialled
    }

    /// While this member has had neither a link nor a route (`reachable` says) to one of its
    /// anchors for an exchange interval, it dials, once per exchange interval, a member it
    /// knows but cannot reach: the lost anchor first, else a member the anchor referred it to
    /// when it turned it away (full) or any other it lost. A mesh where every anchor is
    /// reachable dials nothing.
    ///
    /// NB: the two sides of a healed partition each met min peers on their own, so nobody
    /// dialled across and they stayed islands for ever (9 of 16 seeds of 200 simulated members
    /// in 3 zones, zone 0 cut for 20 s). Anchors are the mesh's meeting points (Nebula's
    /// lighthouses; Serf likewise keeps reconnecting to failed members), so losing one is the
    /// sign of a split. Dialling the anchor alone healed 6 of those 9: the other anchors were
    /// full and turned the dialers away. (Redialling any lost member, with no anchor lost, was
    /// tried before: it made the ends of a three-member line dial each other whenever their
    /// relay stalled.)
    pub fn rejoin(&mut self, now: Time, reachable: impl Fn(&str) -> bool) -> Option<PeerAction> {
        if let Some(dial) = self.area_lookup(now) {
            return Some(dial);
        }
        let interval = self.config.exchange_interval;
        if now < self.next_rejoin_check {
            return None;
        }
        self.next_rejoin_check = now + interval / REJOIN_CHECKS;
        let banned: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.banned_until.is_some_and(|t| now < t))
            .map(|(n, _)| n.clone())
            .collect();
        let mut lost_anchor = false;
        // With areas, a lost member of our own area is a split too: member routes travel only
        // inside an area, so its two halves do not find each other through the other areas.
        let (areas, my_area) = (self.areas, self.my_area);
        let watched = |d: &Dial| d.anchor || (areas > 1 && d.area == Some(my_area));
        for d in self.dials.values_mut().filter(|d| watched(d)) {
            if d.node.is_empty() || d.node == self.me {
                continue;
            }
            if reachable(&d.node) || banned.contains(&d.node) {
                d.unreachable_since = None;
                continue;
            }
            let since = *d.unreachable_since.get_or_insert(now);
            lost_anchor |= now.saturating_sub(since) >= interval;
        }
        if !lost_anchor || now < self.next_rejoin {
            return None;
        }
        let mine = fnv1a(FNV_OFFSET, self.me.as_bytes());
        let addr = self
            .dials
            .iter()
            .filter(|(_, d)| {
                !d.node.is_empty()
                    && d.node != self.me
                    && !d.in_flight
                    && d.next <= now
                    && !banned.contains(&d.node)
                    && !reachable(&d.node)
            })
            .min_by_key(|(a, d)| {
                (d.failures, !d.anchor, !watched(d), mix(fnv1a(mine, a.as_bytes())))
            })
            .map(|(a, _)| a.clone())?;
        // Half to one and a half intervals, each member its own way: members that lost the
        // same anchor at the same moment must not all try again at the same moments.
        self.rejoins = self.rejoins.wrapping_add(1);
        let spread = mix(mine ^ self.rejoins) % 1000;
        self.next_rejoin = now + interval / 2 + interval * spread as u32 / 1000;
        let d = self.dials.get_mut(&addr).expect("picked from the dials");
        d.next = now + MAX_DIAL_BACKOFF;
        d.in_flight = true;
        Some(PeerAction::Dial { addr })
    }

    /// With areas: while we have known no address of our own area for a second, dial a member
    /// we hold no link to. It refers a dialer to the dialer's own area first when it is full,
    /// and its peer exchange names them when it is not. Lookups come a second apart, three at
    /// a time, then twice as far apart after each three, up to [`MAX_AREA_LOOKUP_WAIT`], so a
    /// member that is alone in its area dials rarely.
    ///
    /// NB: a member whose first links were all to other areas could go on knowing none of
    /// its own: its neighbours knew of few members of its area, and the anchors it reached
    /// had known none of them when it joined (10,000 simulated members in 100 areas: m3562
    /// was still unknown to the 90 members of its area after 60 s).
    fn area_lookup(&mut self, now: Time) -> Option<PeerAction> {
        if self.areas <= 1 || now < self.next_area_check {
            return None;
        }
        self.next_area_check = now + AREA_CHECK;
        let (me, my_area) = (self.me.as_str(), self.my_area);
        let alone = !self.dials.values().any(|d| d.area == Some(my_area) && d.node != me)
            && !self.peers.iter().any(|(n, p)| p.connected_since.is_some() && self.in_my_area(n));
        if !alone {
            self.alone_since = None;
            self.area_lookups = 0;
            return None;
        }
        let since = *self.alone_since.get_or_insert(now);
        if now.saturating_sub(since) < AREA_CHECK || now < self.next_area_lookup {
            return None;
        }
        let linked = self.linked_addrs();
        let mine = fnv1a(FNV_OFFSET, me.as_bytes()) ^ u64::from(self.area_lookups);
        // Anyone we know and hold no link to, anchors included, a different one each time:
        // an address book filled by peer exchanges holds a few members of every area, and the
        // anchors need not answer every lonely member. (Anchors alone, which know only what
        // the first joiners told them, left m4206 of 5,000 simulated members alone for 6 s.)
        let addr = self
            .dials
            .iter()
            .filter(|(a, d)| !d.in_flight && d.node != me && !linked.contains(&a.as_str()))
            .min_by_key(|(a, d)| (d.failures, mix(fnv1a(mine, a.as_bytes()))))
            .map(|(a, _)| a.clone())?;
        let wait = AREA_CHECK.saturating_mul(1 << (self.area_lookups / 3).min(8));
        self.next_area_lookup = now + wait.min(MAX_AREA_LOOKUP_WAIT);
        self.area_lookups = self.area_lookups.saturating_add(1);
        let d = self.dials.get_mut(&addr).expect("picked from the dials");
        d.next = now + MAX_DIAL_BACKOFF;
        d.in_flight = true;
        Some(PeerAction::Dial { addr })
    }

    /// Peers for the admin API.
    pub fn views(&self, now: Time) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(n, p)| PeerView {
                node: n.clone(),
                addr: p.addr.clone(),
                score: p.score,
                level: level_of(p, now),
                connected: p.connected_since.is_some(),
                rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1e3),
                zone: Some(p.zone.clone()).filter(|z| !z.is_empty()),
            })
            .collect()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a from `h`: a cheap, stable hash for spreading choices (not for security).
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The splitmix64 finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn level_of(p: &Peer, now: Time) -> Level {
    if p.banned_until.is_some_and(|t| now < t) {
        Level::Banned
    } else if p.score >= TRUSTED_SCORE {
        Level::Trusted
    } else if p.score < SUSPICIOUS_SCORE {
        Level::Suspicious
    } else {
        Level::New
    }
}

#[cfg(test)]
mod tests;
