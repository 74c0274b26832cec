//! `RouteTable`: distance-vector routing with per-destination sequence numbers (Babel family).
//!
//! Sans-IO: the driver feeds events (neighbour up/down/cost, a verified advert, a seqno
//! request, a timer tick) with the current time, and gets back [`RouteAction`]s to carry out.
//!
//! Loop freedom comes from Babel's feasibility condition: an advert `(seqno, metric)` for a
//! destination is feasible only if its seqno is newer than our feasibility distance's, or equal
//! with a strictly smaller metric. An unfeasible route is never selected, so a metric can never
//! count up to infinity; when only unfeasible routes remain the table asks the destination for a
//! newer sequence number instead. Sequence numbers are signed by their destination (checked by
//! the driver before an advert gets here), so no member can make a fresher route to another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::frame::METRIC_INFINITY;

/// Time since the driver started (monotonic); the simulator uses virtual time.
pub type Time = Duration;

/// Routing parameters (MeshNetwork `spec.routing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Hop limit: routes longer than this are ignored; data TTL starts here.
    pub max_hops: u8,
    /// Interval of full updates to every neighbour.
    pub periodic_interval: Duration,
    /// A route not refreshed for this long is dropped: 3.5 full updates (as Babel counts its
    /// periodic ones), [`FULL_EVERY`] periodic intervals apart.
    pub route_expiry: Duration,
    /// Send an update as soon as a route changes.
    pub triggered_updates: bool,
    /// Routing areas (1: flat). With more, a member holds a route to each member of its own
    /// area and one route to each other area as a whole (see [`area_of`]).
    pub areas: u16,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_hops: 16,
            periodic_interval: Duration::from_secs(10),
            route_expiry: expiry_for(Duration::from_secs(10)),
            triggered_updates: true,
            areas: 1,
        }
    }
}

/// A verified route advert from a neighbour (or to be sent to one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub dest: String,
    pub seqno: u32,
    /// The sender's metric to `dest`; [`METRIC_INFINITY`] withdraws.
    pub metric: u16,
    pub hops: u8,
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Send these adverts to this neighbour (the driver attaches each destination's proof).
    Send { to: String, adverts: Vec<Advert> },
    /// Ask for `dest` to announce at least `seqno`: every neighbour (`to: None`, a request we
    /// originate) or one neighbour (a request passed on towards `dest`).
    RequestSeqno { dest: String, seqno: u32, hops_left: u8, to: Option<String> },
    /// Our own sequence number changed: sign a proof for it before the next send.
    OwnSeqnoChanged { seqno: u32 },
    /// The selected route to `dest` changed (`None`: unreachable). For metrics and logs.
    Changed { dest: String, next_hop: Option<String>, metric: u16 },
}

/// What a route leads to: a member of our own area, or (with areas) another area as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Member(String),
    Area(u16),
}

impl Key {
    fn area(&self) -> Option<u16> {
        match self {
            Key::Member(_) => None,
            Key::Area(a) => Some(*a),
        }
    }
}

/// One destination's candidate route through one neighbour.
#[derive(Debug, Clone)]
struct Candidate {
    /// The member whose seqno the route carries: the destination itself, or for an area route
    /// the member of that area it leads to.
    source: String,
    seqno: u32,
    /// Metric advertised by the neighbour.
    advertised: u16,
    hops: u8,
    expires: Time,
}

/// A feasibility distance whose source no neighbour advertises any more is forgotten after
/// this (Babel's source garbage-collection time, RFC 8966 3.2.5 / appendix B).
const SOURCE_GC: Duration = Duration::from_secs(180);

#[derive(Debug, Default)]
struct Destination {
    candidates: BTreeMap<String, Candidate>,
    selected: Option<String>,
    /// Source, metric and seqno of the selected route when it was selected (its candidate may
    /// be gone).
    selected_source: String,
    selected_metric: u16,
    selected_seqno: u32,
    /// Feasibility distances: per source, the best (seqno, metric) we have advertised. A
    /// member route has one source, itself; an area route one per member of the area it led
    /// to (Babel keeps them per source in the same way, RFC 8966 3.5.1), with when each was
    /// last heard of.
    fd: Vec<(String, u32, u16, Time)>,
}

impl Destination {
    fn fd_of(&self, source: &str) -> Option<(u32, u16)> {
        self.fd.iter().find(|f| f.0 == source).map(|f| (f.1, f.2))
    }

    fn feasible(&self, c: &Candidate) -> bool {
        match self.fd_of(&c.source) {
            None => true,
            Some((s, m)) => seqno_newer(c.seqno, s) || (c.seqno == s && c.advertised < m),
        }
    }

    /// Records (seqno, metric) as advertised for `source` when it improves on the distance.
    fn improve_fd(&mut self, source: &str, seqno: u32, metric: u16, now: Time) {
        match self.fd.iter_mut().find(|f| f.0 == source) {
            Some(fd) => {
                if seqno_newer(seqno, fd.1) || (seqno == fd.1 && metric < fd.2) {
                    (fd.1, fd.2) = (seqno, metric);
                }
                fd.3 = now;
            }
            None => self.fd.push((source.to_owned(), seqno, metric, now)),
        }
    }

    /// Forgets the distances of sources no neighbour has advertised for [`SOURCE_GC`].
    /// NB: never sooner: a source's distance forgotten while an old advert of it can still
    /// arrive lets that advert pass as feasible, and that is how loops form.
    fn collect_sources(&mut self, now: Time) {
        for f in &mut self.fd {
            if self.candidates.values().any(|c| c.source == f.0) {
                f.3 = now;
            }
        }
        self.fd.retain(|f| now.saturating_sub(f.3) < SOURCE_GC);
    }

    /// The seqno to ask `source` for: one past its feasibility distance.
    fn wanted(&self, source: &str) -> u32 {
        self.fd_of(source).map_or(0, |(s, _)| s.wrapping_add(1))
    }
}

/// A route as shown on the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteView {
    /// The destination member; for an area route, the member of that area it leads to.
    pub dest: String,
    pub next_hop: String,
    pub metric: u16,
    pub hops: u8,
    pub seqno: u32,
    /// Set for a route to another area as a whole (networks with routing areas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub area: Option<u16>,
    /// The next hop's zone, when known (filled by the node, which knows its links).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop_zone: Option<String>,
}

/// Is `a` newer than `b` in wrapping sequence-number arithmetic?
pub fn seqno_newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// The routing area of member `name` among `areas`: a hash of the name, so every member
/// knows every other's area without a directory (0 when the network is flat).
pub fn area_of(name: &str, areas: u16) -> u16 {
    if areas <= 1 {
        return 0;
    }
    let h = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // NB: FNV's low bits are weak for short names that differ in their last byte; the
    // splitmix finaliser spreads m1, m2, ... evenly.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % u64::from(areas)) as u16
}

/// The forwarding decision as a snapshot, for the data path outside the core (link readers
/// relaying, streams sending): the same answers as [`RouteTable::next_hop`] gave when it was
/// taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NextHops {
    areas: u16,
    my_area: u16,
    /// Members of our area (everyone, in a flat network) → next hop.
    members: HashMap<String, String>,
    /// Other areas → next hop.
    by_area: HashMap<u16, String>,
    /// Neighbours in other areas, reached directly.
    neighbours: HashSet<String>,
}

impl NextHops {
    /// The neighbour to send traffic for `dest` to.
    pub fn get(&self, dest: &str) -> Option<&str> {
        let area = area_of(dest, self.areas);
        if area == self.my_area {
            return self.members.get(dest).map(String::as_str);
        }
        if let Some(n) = self.neighbours.get(dest) {
            return Some(n.as_str());
        }
        self.by_area.get(&area).map(String::as_str)
    }

    pub fn contains_key(&self, dest: &str) -> bool {
        self.get(dest).is_some()
    }
}

/// The routing state of one member.
///
/// In a network with routing areas ([`RoutingConfig::areas`] above 1), member routes stay
/// inside their area: a member learns them only from neighbours of its own area and tells
/// them only to those. Towards any other area it keeps one route, to whichever member of that
/// area is nearest (the advert is that member's own, with its signed seqno), and tells it to
/// every neighbour outside that area. Data for a member of another area follows the area
/// route until it reaches the area, then the member route.
#[derive(Debug)]
pub struct RouteTable {
    me: String,
    my_area: u16,
    seqno: u32,
    config: RoutingConfig,
    /// Neighbour → link cost.
    neighbours: BTreeMap<String, u16>,
    /// Members of our area.
    dests: BTreeMap<String, Destination>,
    /// Other areas (empty in a flat network).
    areas: BTreeMap<u16, Destination>,
    next_periodic: Time,
    /// Periodic updates since the last full one.
    periodics: u32,
    next_expiry_scan: Time,
    /// Per neighbour, what its link last carried for each destination (a member, or an area):
    /// the advert's name (an area route's source), seqno, metric and hops. A periodic update
    /// sends only what differs (see [`FULL_EVERY`]).
    told: BTreeMap<String, Carried>,
    /// (dest, seqno) requests already passed on: duplicate suppression for the flood.
    seen_requests: HashMap<(String, u32), Time>,
    /// The latest time an input brought (adverts and ticks carry it).
    clock: Time,
    /// Added to every route we advertise but our own while we relay beyond our share
    /// (`Node::set_relay_saturated`), so neighbours with another path take it.
    transit_penalty: u16,
}

/// What a link last carried, per destination: members of our area by name, other areas by
/// area (with the name of the member the route led to).
#[derive(Debug, Default)]
struct Carried {
    members: HashMap<String, (u32, u16, u8)>,
    areas: HashMap<u16, (String, u32, u16, u8)>,
}

impl Carried {
    /// (carried at all, carried exactly this) for a route to `dest` of (seqno, metric, hops)
    /// `now`, whose area route key is `area`.
    fn holds(&self, area: Option<u16>, dest: &str, now: (u32, u16, u8)) -> (bool, bool) {
        match area {
            None => self.members.get(dest).map_or((false, false), |t| (true, *t == now)),
            Some(x) => self
                .areas
                .get(&x)
                .map_or((false, false), |t| (true, t.0 == dest && (t.1, t.2, t.3) == now)),
        }
    }

    fn len(&self) -> usize {
        self.members.len() + self.areas.len()
    }
}

/// One selected route, as adverts and views need it.
struct Selected<'a> {
    /// The area of an area route; `None` for a member route.
    area: Option<u16>,
    source: &'a str,
    via: &'a str,
    metric: u16,
    hops: u8,
    seqno: u32,
}

impl RouteTable {
    /// A table for member `me`, starting at sequence number `seqno` (the driver persists nothing:
    /// it starts from a random seqno so a restarted member's adverts are not mistaken for old).
    pub fn new(me: &str, seqno: u32, config: RoutingConfig, now: Time) -> Self {
        RouteTable {
            me: me.to_owned(),
            my_area: area_of(me, config.areas),
            seqno,
            next_periodic: now + config.periodic_interval,
            next_expiry_scan: now,
            periodics: 0,
            told: BTreeMap::new(),
            config,
            neighbours: BTreeMap::new(),
            dests: BTreeMap::new(),
            areas: BTreeMap::new(),
            seen_requests: HashMap::new(),
            clock: now,
            transit_penalty: 0,
        }
    }

    /// Our own sequence number.
    pub fn seqno(&self) -> u32 {
        self.seqno
    }

    /// Our routing area.
    pub fn area(&self) -> u16 {
        self.my_area
    }

    /// The neighbour to send traffic for `dest` to: the member route in our own area; for a
    /// member of another area, the member itself when it is a neighbour, else the area route.
    pub fn next_hop(&self, dest: &str) -> Option<&str> {
        let area = area_of(dest, self.config.areas);
        if area == self.my_area {
            return self.dests.get(dest).and_then(|d| d.selected.as_deref());
        }
        if let Some((n, _)) = self.neighbours.get_key_value(dest) {
            return Some(n.as_str());
        }
        self.areas.get(&area).and_then(|d| d.selected.as_deref())
    }

    /// A snapshot of [`RouteTable::next_hop`]'s answers.
    pub fn next_hops(&self) -> NextHops {
        let pick = |d: &Destination| d.selected.clone();
        let outside = |n: &&String| area_of(n, self.config.areas) != self.my_area;
        NextHops {
            areas: self.config.areas,
            my_area: self.my_area,
            members: self.dests.iter().filter_map(|(k, d)| Some((k.clone(), pick(d)?))).collect(),
            by_area: self.areas.iter().filter_map(|(a, d)| Some((*a, pick(d)?))).collect(),
            neighbours: self.neighbours.keys().filter(outside).cloned().collect(),
        }
    }

    /// Selected routes.
    pub fn routes(&self) -> Vec<RouteView> {
        self.selected()
            .map(|r| RouteView {
                dest: r.source.to_owned(),
                next_hop: r.via.to_owned(),
                metric: r.metric,
                hops: r.hops,
                seqno: r.seqno,
                area: r.area,
                next_hop_zone: None,
            })
            .collect()
    }

    /// Number of reachable destinations: members of our area, and other areas.
    pub fn route_count(&self) -> usize {
        let live = |d: &&Destination| d.selected.is_some();
        self.dests.values().filter(live).count() + self.areas.values().filter(live).count()
    }

    /// Current neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = &str> {
        self.neighbours.keys().map(String::as_str)
    }

    /// A link to `neighbour` came up with `cost`: send it our whole table.
    pub fn neighbour_up(&mut self, neighbour: &str, cost: u16) -> Vec<RouteAction> {
        self.neighbours.insert(neighbour.to_owned(), cost.max(1));
        self.told.remove(neighbour);
        let full =
            RouteAction::Send { to: neighbour.to_owned(), adverts: self.full_table_for(neighbour) };
        self.record(vec![full])
    }

    /// The link cost to `neighbour` changed (a new RTT measurement).
    pub fn neighbour_cost(&mut self, neighbour: &str, cost: u16) -> Vec<RouteAction> {
        match self.neighbours.get_mut(neighbour) {
            Some(c) if *c != cost.max(1) => *c = cost.max(1),
            _ => return Vec::new(),
        }
        let affected = self.keys_where(|d| d.candidates.contains_key(neighbour));
        let mut actions = Vec::new();
        for key in affected {
            self.reselect(&key, &mut actions);
        }
        self.record(actions)
    }

    /// The link to `neighbour` went down: every route through it is gone.
    pub fn neighbour_down(&mut self, neighbour: &str) -> Vec<RouteAction> {
        self.neighbours.remove(neighbour);
        self.told.remove(neighbour);
        let mut affected = Vec::new();
        for (k, d) in &mut self.dests {
            if d.candidates.remove(neighbour).is_some() {
                affected.push(Key::Member(k.clone()));
            }
        }
        for (a, d) in &mut self.areas {
            if d.candidates.remove(neighbour).is_some() {
                affected.push(Key::Area(*a));
            }
        }
        let mut actions = Vec::new();
        for key in affected {
            self.reselect(&key, &mut actions);
        }
        self.record(actions)
    }

    /// Forgets every route to `dest` (its certificate was revoked) and withdraws ours; an area
    /// route that led to it looks for another member of that area.
    pub fn forget(&mut self, dest: &str) -> Vec<RouteAction> {
        let mut actions = Vec::new();
        let key = self.key_of(dest);
        if let Some(d) = self.get_mut(&key) {
            d.candidates.retain(|_, c| c.source != dest);
            d.fd.retain(|f| f.0 != dest);
            if d.selected_source == dest && d.selected.is_some() {
                // NB: reselect withdraws with the selected source's name, so a route that led
                // to the revoked member is withdrawn as such before another is chosen.
                d.selected = None;
                let withdraw =
                    Advert { dest: dest.to_owned(), seqno: 0, metric: METRIC_INFINITY, hops: 0 };
                actions.extend(self.send_visible(&key, None, &withdraw));
                actions.push(RouteAction::Changed {
                    dest: dest.to_owned(),
                    next_hop: None,
                    metric: METRIC_INFINITY,
                });
            }
            self.reselect(&key, &mut actions);
        }
        // A withdrawn route need not be asked for again: the destination is revoked.
        actions.retain(|a| !matches!(a, RouteAction::RequestSeqno { .. }));
        self.record(actions)
    }

    /// A verified advert from `from`.
    pub fn on_advert(&mut self, from: &str, advert: Advert, now: Time) -> Vec<RouteAction> {
        self.clock = self.clock.max(now);
        let mut actions = Vec::new();
        if advert.dest == self.me || !self.neighbours.contains_key(from) {
            return actions;
        }
        let key = self.key_of(&advert.dest);
        // A member route travels inside its area only: a neighbour from another area has no
        // business telling us how to reach our own area's members.
        if matches!(key, Key::Member(_)) && area_of(from, self.config.areas) != self.my_area {
            return actions;
        }
        let expiry = self.config.route_expiry;
        let hops = advert.hops.saturating_add(1);
        let withdrawn = advert.metric == METRIC_INFINITY || hops > self.config.max_hops;
        let d = match &key {
            Key::Member(name) => self.dests.entry(name.clone()).or_default(),
            Key::Area(a) => self.areas.entry(*a).or_default(),
        };
        if withdrawn {
            if d.candidates.remove(from).is_none() {
                return actions;
            }
        } else if let Some(c) = d.candidates.get_mut(from).filter(|c| {
            c.source == advert.dest
                && c.seqno == advert.seqno
                && c.advertised == advert.metric
                && c.hops == hops
        }) {
            // The periodic refresh of what we already hold (most adverts at rest): it only
            // moves the expiry, and the selection cannot change.
            c.expires = now + expiry;
            return actions;
        } else {
            d.candidates.insert(
                from.to_owned(),
                Candidate {
                    source: advert.dest,
                    seqno: advert.seqno,
                    advertised: advert.metric,
                    hops,
                    expires: now + expiry,
                },
            );
        }
        self.reselect(&key, &mut actions);
        self.record(actions)
    }

    /// A seqno request for `dest` arrived. If it is for us, bump our seqno and
    /// announce it; otherwise pass it on (once per (dest, seqno)) while hops remain.
    ///
    /// As in Babel (RFC 8966, 3.8.1.2), a request is answered by a member whose route already
    /// carries the seqno asked for, else passed on to one neighbour towards `dest`, never
    /// flooded. NB: flooded, one lost link sent a request per destination through the whole
    /// mesh; at 200 real members on two cores those bursts tripped the neighbours' frame-rate
    /// limits, the bans cut more links, and the mesh came apart.
    pub fn on_seqno_request(
        &mut self,
        from: &str,
        dest: &str,
        seqno: u32,
        hops_left: u8,
    ) -> Vec<RouteAction> {
        let actions = self.seqno_request(from, dest, seqno, hops_left);
        self.record(actions)
    }

    fn seqno_request(
        &mut self,
        from: &str,
        dest: &str,
        seqno: u32,
        hops_left: u8,
    ) -> Vec<RouteAction> {
        // NB: bounded: an entry is added per distinct request handled, and entries older than
        // REQUEST_RETRY are dropped at every tick (a repeated request after that is legitimate).
        if !self.fresh_request(dest, seqno) {
            return Vec::new();
        }
        self.seen_requests.insert((dest.to_owned(), seqno), self.clock);
        if dest == self.me {
            let mut actions = Vec::new();
            if seqno_newer(seqno, self.seqno) {
                self.seqno = seqno;
                actions.push(RouteAction::OwnSeqnoChanged { seqno });
            }
            // Re-announce even if our seqno already satisfies the request.
            let me = self_advert_for(&self.me, self.seqno);
            actions.extend(self.send_to_all(|_| vec![me.clone()]));
            return actions;
        }
        let key = self.key_of(dest);
        let Some(d) = self.get(&key) else { return Vec::new() };
        let selected = d.selected.as_deref().filter(|via| *via != from);
        if let Some((via, c)) = selected.and_then(|via| Some((via, d.candidates.get(via)?))) {
            if c.source == dest && !seqno_newer(seqno, c.seqno) && self.visible(key.area(), from) {
                let advert = Advert {
                    dest: dest.to_owned(),
                    seqno: c.seqno,
                    metric: self.advertised(self.total(via, c)),
                    hops: c.hops,
                };
                return vec![RouteAction::Send { to: from.to_owned(), adverts: vec![advert] }];
            }
        }
        if hops_left <= 1 {
            return Vec::new();
        }
        // Towards `dest` (for a member of another area, towards its area): the selected next
        // hop, else the best other neighbour that offers a route; not back to the asker.
        let next = d.selected.clone().filter(|via| via != from).or_else(|| {
            d.candidates
                .iter()
                .filter(|(via, c)| *via != from && c.advertised < METRIC_INFINITY)
                .min_by_key(|(via, c)| self.total(via, c))
                .map(|(via, _)| via.clone())
        });
        next.map(|to| RouteAction::RequestSeqno {
            dest: dest.to_owned(),
            seqno,
            hops_left: hops_left - 1,
            to: Some(to),
        })
        .into_iter()
        .collect()
    }

    /// Timer: expire stale routes, retry seqno requests, send the periodic full update.
    pub fn on_tick(&mut self, now: Time) -> Vec<RouteAction> {
        self.clock = self.clock.max(now);
        if !self.seen_requests.is_empty() {
            self.seen_requests.retain(|_, at| now.saturating_sub(*at) < REQUEST_RETRY);
        }
        let mut actions = Vec::new();
        // NB: expiry is looked for once a second, not at every tick (a route lives 35 s; the
        // scan of every candidate at every tick was the simulator's largest cost at rest).
        let scan = now >= self.next_expiry_scan;
        if scan {
            self.next_expiry_scan = now + EXPIRY_SCAN;
        }
        let expire = |d: &mut Destination| {
            let before = d.candidates.len();
            d.candidates.retain(|_, c| c.expires > now);
            d.candidates.len() != before
        };
        let mut expired = Vec::new();
        if scan {
            for (k, d) in &mut self.dests {
                if expire(d) {
                    expired.push(Key::Member(k.clone()));
                }
            }
            for (a, d) in &mut self.areas {
                if expire(d) {
                    expired.push(Key::Area(*a));
                }
            }
        }
        for key in expired {
            self.reselect(&key, &mut actions);
        }
        if now >= self.next_periodic {
            self.next_periodic = now + self.config.periodic_interval;
            // Destinations we still starve for: ask again.
            let starving = self.keys_where(|d| d.selected.is_none() && !d.candidates.is_empty());
            for key in starving {
                if let Some((source, seqno)) = self.get(&key).and_then(starving_for) {
                    actions.push(self.originate_request(&source, seqno));
                }
            }
            for d in self.dests.values_mut().chain(self.areas.values_mut()) {
                d.collect_sources(now);
            }
            // Forget destinations with nothing left, so state stays bounded by live routes.
            let live = |d: &Destination| !d.candidates.is_empty() || d.selected.is_some();
            self.dests.retain(|_, d| live(d));
            self.areas.retain(|_, d| live(d));
            // NB: links are reliable and ordered (TCP), so what a neighbour was told it still
            // holds: a periodic update carries only what changed since (the metric moves too
            // small for a triggered update, above all), as BGP sends only changes over its TCP
            // sessions. Every FULL_EVERY-th is the whole table, the safety net for an advert
            // the driver could not send (its proof no longer kept). The whole table every 10 s
            // was nearly all the traffic at rest, and at 10,000 simulated members most of the
            // simulator's time.
            self.periodics = (self.periodics + 1) % FULL_EVERY;
            let full = self.periodics == 0;
            let neighbours: Vec<String> = self.neighbours.keys().cloned().collect();
            for n in neighbours {
                let adverts = if full { self.full_table_for(&n) } else { self.changes_for(&n) };
                if !adverts.is_empty() {
                    actions.push(RouteAction::Send { to: n, adverts });
                }
            }
        }
        self.record(actions)
    }

    /// What `neighbour` may hear from us that its link has not carried, plus a withdrawal for
    /// each destination it carried that it may no longer hear. Nothing is built for what is
    /// unchanged (at rest, everything).
    fn changes_for(&self, neighbour: &str) -> Vec<Advert> {
        let empty = Carried::default();
        let carried = self.told.get(neighbour).unwrap_or(&empty);
        let mut changed = Vec::new();
        // Destinations of the table the link carried (exactly or not).
        let mut present = 0;
        // NB: compared before an advert is built: at rest nothing changed, and a name copied
        // per route, neighbour and tick was a large part of a 10,000-member simulation.
        let mut consider = |area: Option<u16>, dest: &str, (seqno, metric, hops)| {
            let (held, same) = carried.holds(area, dest, (seqno, metric, hops));
            present += usize::from(held);
            if !same {
                changed.push(Advert { dest: dest.to_owned(), seqno, metric, hops });
            }
        };
        consider(None, &self.me, (self.seqno, 0, 0));
        for r in self.selected() {
            if r.via != neighbour && r.source != neighbour && self.visible(r.area, neighbour) {
                consider(r.area, r.source, (r.seqno, self.advertised(r.metric), r.hops));
            }
        }
        if present < carried.len() {
            // Some destination it carried is not in the table any more: withdraw it.
            // NB: keyed by destination, not by name: an area route that moved to another
            // source is news about the same area, and withdrawing its old source's name would
            // withdraw the area.
            let table = self.full_table_for(neighbour);
            let members: HashSet<&str> = table
                .iter()
                .filter(|a| self.area_key(&a.dest).is_none())
                .map(|a| a.dest.as_str())
                .collect();
            let areas: HashSet<u16> = table.iter().filter_map(|a| self.area_key(&a.dest)).collect();
            let withdraw = |dest: &str| Advert {
                dest: dest.to_owned(),
                seqno: 0,
                metric: METRIC_INFINITY,
                hops: 0,
            };
            changed.extend(
                carried
                    .members
                    .keys()
                    .filter(|d| !members.contains(d.as_str()))
                    .map(|d| withdraw(d)),
            );
            changed.extend(
                carried
                    .areas
                    .iter()
                    .filter(|(x, _)| !areas.contains(x))
                    .map(|(_, t)| withdraw(&t.0)),
            );
        }
        changed
    }

    /// The area key of an advert's name: `None` for a member of our own area.
    fn area_key(&self, name: &str) -> Option<u16> {
        Some(area_of(name, self.config.areas)).filter(|a| *a != self.my_area)
    }

    /// Notes what each `Send` tells its neighbour, and passes the actions on.
    fn record(&mut self, actions: Vec<RouteAction>) -> Vec<RouteAction> {
        for action in &actions {
            let RouteAction::Send { to, adverts } = action else { continue };
            if !self.neighbours.contains_key(to) {
                continue;
            }
            for a in adverts {
                let area = self.area_key(&a.dest);
                let told = self.told.entry(to.clone()).or_default();
                let now = (a.seqno, a.metric, a.hops);
                match (area, a.metric == METRIC_INFINITY) {
                    (None, true) => drop(told.members.remove(&a.dest)),
                    (None, false) => drop(told.members.insert(a.dest.clone(), now)),
                    (Some(x), true) => drop(told.areas.remove(&x)),
                    (Some(x), false) => {
                        told.areas.insert(x, (a.dest.clone(), now.0, now.1, now.2));
                    }
                }
            }
        }
        actions
    }

    fn key_of(&self, dest: &str) -> Key {
        match area_of(dest, self.config.areas) {
            a if a == self.my_area => Key::Member(dest.to_owned()),
            a => Key::Area(a),
        }
    }

    fn get(&self, key: &Key) -> Option<&Destination> {
        match key {
            Key::Member(name) => self.dests.get(name),
            Key::Area(a) => self.areas.get(a),
        }
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Destination> {
        match key {
            Key::Member(name) => self.dests.get_mut(name),
            Key::Area(a) => self.areas.get_mut(a),
        }
    }

    fn keys_where(&self, pick: impl Fn(&Destination) -> bool) -> Vec<Key> {
        let members =
            self.dests.iter().filter(|(_, d)| pick(d)).map(|(k, _)| Key::Member(k.clone()));
        let areas = self.areas.iter().filter(|(_, d)| pick(d)).map(|(a, _)| Key::Area(*a));
        members.chain(areas).collect()
    }

    /// Whether routes under `key` are told to `neighbour`: a member route to neighbours of
    /// our area, an area route to neighbours outside that area.
    fn visible(&self, area: Option<u16>, neighbour: &str) -> bool {
        match area {
            None => area_of(neighbour, self.config.areas) == self.my_area,
            Some(a) => area_of(neighbour, self.config.areas) != a,
        }
    }

    /// The metric we advertise for a route of ours whose metric is `metric`.
    fn advertised(&self, metric: u16) -> u16 {
        metric.saturating_add(self.transit_penalty).min(METRIC_INFINITY - 1)
    }

    /// Sets what every route we advertise but our own costs extra; a change goes to every
    /// neighbour at once.
    pub fn set_transit_penalty(&mut self, penalty: u16) -> Vec<RouteAction> {
        if penalty == self.transit_penalty {
            return Vec::new();
        }
        self.transit_penalty = penalty;
        let actions = self.send_to_all(|n| self.full_table_for(n));
        self.record(actions)
    }

    /// The metric of our route to `dest` (for a member of another area, to its area), if we
    /// have one.
    pub fn metric_to(&self, dest: &str) -> Option<u16> {
        let area = area_of(dest, self.config.areas);
        let d = if area == self.my_area {
            self.dests.get(dest)?
        } else if let Some(cost) = self.neighbours.get(dest) {
            return Some(*cost);
        } else {
            self.areas.get(&area)?
        };
        let via = d.selected.as_deref()?;
        Some(self.total(via, d.candidates.get(via)?))
    }

    fn total(&self, via: &str, c: &Candidate) -> u16 {
        let cost = self.neighbours.get(via).copied().unwrap_or(METRIC_INFINITY);
        c.advertised.saturating_add(cost).min(METRIC_INFINITY - 1)
    }

    /// Re-runs route selection for `key` and records what changed.
    fn reselect(&mut self, key: &Key, actions: &mut Vec<RouteAction>) {
        let Some(d) = self.get(key) else { return };
        let feasible: Vec<(&String, u16, &Candidate)> = d
            .candidates
            .iter()
            .filter(|(_, c)| d.feasible(c))
            .map(|(via, c)| (via, self.total(via, c), c))
            .collect();
        let best_metric = feasible.iter().map(|f| f.1).min();
        // Hysteresis: the current next hop stays while it is feasible and within a margin of
        // the best, so two near-equal paths (RTT jitter) do not take turns.
        let current = d.selected.as_ref().and_then(|via| {
            feasible.iter().find(|f| f.0 == via).filter(|f| {
                best_metric.is_some_and(|b| u32::from(f.1) <= u32::from(b) + switch_margin(b))
            })
        });
        // (Candidates iterate in next-hop order, so the first of equal metrics is the least.)
        let feasible_best = current
            .or_else(|| feasible.iter().min_by_key(|(_, metric, _)| *metric))
            .map(|(via, metric, c)| ((*via).clone(), *metric, c.seqno, c.hops, c.source.clone()));
        // NB: when only the selected route's metric got worse (same source and seqno, not
        // withdrawn), keep using it and ask for a newer seqno (as Babel allows) rather than
        // dropping traffic while the request travels. Switching to a *different* unfeasible
        // route is what can loop, and stays forbidden; the feasibility distance never grows.
        let mut sticky = false;
        let best = feasible_best.or_else(|| {
            let via = d.selected.as_ref()?;
            let c = d.candidates.get(via)?;
            (c.seqno == d.selected_seqno && c.source == d.selected_source).then(|| {
                sticky = true;
                (via.clone(), self.total(via, c), c.seqno, c.hops, c.source.clone())
            })
        });
        let old = d.selected.clone();
        let old_state = old.as_ref().map(|_| (d.selected_metric, d.selected_seqno));
        let old_source = d.selected_source.clone();
        let now = self.clock;
        let d = self.get_mut(key).expect("checked above");
        match best {
            Some((via, metric, seqno, hops, source)) => {
                d.selected = Some(via.clone());
                d.selected_metric = metric;
                d.selected_seqno = seqno;
                d.selected_source.clone_from(&source);
                d.improve_fd(&source, seqno, metric, now);
                // What neighbours must hear at once: a route they may not know, a newer seqno
                // (how a destination's recovery spreads), a new next hop, or a metric that moved
                // by the switch margin or more (enough to move their choice). Smaller moves wait
                // for the periodic update: announced at once, every jitter in a link's RTT
                // rippled through the whole mesh; held back when larger, an improvement took a
                // periodic interval per hop to spread.
                let moved = old.as_deref() != Some(via.as_str()) || old_source != source;
                let news = moved
                    || match old_state {
                        None => true,
                        Some((old_metric, old_seqno)) => {
                            seqno != old_seqno
                                || u32::from(metric.abs_diff(old_metric))
                                    >= switch_margin(old_metric)
                        }
                    };
                if sticky {
                    let want = d.wanted(&source);
                    if let Some(request) = self.request_once(&source, want) {
                        actions.push(request);
                    }
                }
                if moved || news {
                    actions.push(RouteAction::Changed {
                        dest: source.clone(),
                        next_hop: Some(via.clone()),
                        metric,
                    });
                }
                // NB: an area route through a new next hop also retracts what we told that
                // neighbour before. Its candidate through us may carry another source than the
                // one we now take from it, and no feasibility distance of that source guards
                // against picking it: the two of us sent the area's traffic to each other
                // (found by the simulator: 198 looping paths of 20,000 at 300 members in 5
                // areas). Member routes have one source, whose distance does guard.
                if moved && matches!(key, Key::Area(_)) && self.visible(key.area(), &via) {
                    let retract =
                        Advert { dest: source.clone(), seqno, metric: METRIC_INFINITY, hops: 0 };
                    actions.push(RouteAction::Send { to: via.clone(), adverts: vec![retract] });
                }
                if news && self.config.triggered_updates {
                    let advert =
                        Advert { dest: source, seqno, metric: self.advertised(metric), hops };
                    actions.extend(self.send_visible(key, Some(&via), &advert));
                }
            }
            None => {
                d.selected = None;
                let starving = starving_for(d);
                let fd = d.fd_of(&old_source);
                if old.is_some() {
                    actions.push(RouteAction::Changed {
                        dest: old_source.clone(),
                        next_hop: None,
                        metric: METRIC_INFINITY,
                    });
                    let withdraw = Advert {
                        dest: old_source.clone(),
                        seqno: fd.map_or(0, |(s, _)| s),
                        metric: METRIC_INFINITY,
                        hops: 0,
                    };
                    actions.extend(self.send_visible(key, None, &withdraw));
                }
                // Ask the destination for a newer seqno. Relays pass a request on once per
                // (dest, seqno), so asking again on every event here costs one frame per link.
                let ask = starving.or_else(|| {
                    let want = fd.map_or(0, |(s, _)| s.wrapping_add(1));
                    old.is_some().then(|| (old_source.clone(), want))
                });
                if let Some((source, want)) = ask {
                    if let Some(request) = self.request_once(&source, want) {
                        actions.push(request);
                    }
                }
            }
        }
    }

    /// Whether a request for (`dest`, `seqno`) was not handled within [`REQUEST_RETRY`].
    fn fresh_request(&self, dest: &str, seqno: u32) -> bool {
        self.seen_requests
            .get(&(dest.to_owned(), seqno))
            .is_none_or(|at| self.clock.saturating_sub(*at) >= REQUEST_RETRY)
    }

    /// A request for `dest`'s `seqno`, unless the same one went out within [`REQUEST_RETRY`]
    /// (a route stuck waiting for a newer seqno asked again at every advert it heard, and
    /// each ask was a flood).
    fn request_once(&mut self, dest: &str, seqno: u32) -> Option<RouteAction> {
        self.fresh_request(dest, seqno).then(|| self.originate_request(dest, seqno))
    }

    fn originate_request(&mut self, dest: &str, seqno: u32) -> RouteAction {
        self.seen_requests.insert((dest.to_owned(), seqno), self.clock);
        let hops_left = self.config.max_hops;
        RouteAction::RequestSeqno { dest: dest.to_owned(), seqno, hops_left, to: None }
    }

    /// Every selected route.
    fn selected(&self) -> impl Iterator<Item = Selected<'_>> {
        let members = self.dests.values().map(|d| (None, d));
        let areas = self.areas.iter().map(|(a, d)| (Some(*a), d));
        members.chain(areas).filter_map(|(area, d)| {
            let via = d.selected.as_deref()?;
            let c = &d.candidates[via];
            Some(Selected {
                area,
                source: &c.source,
                via,
                metric: self.total(via, c),
                hops: c.hops,
                seqno: c.seqno,
            })
        })
    }

    /// Our own route plus every selected route `neighbour` may hear, minus those through it
    /// (split horizon).
    fn full_table_for(&self, neighbour: &str) -> Vec<Advert> {
        let mut adverts = vec![self_advert_for(&self.me, self.seqno)];
        for r in self.selected() {
            if r.via != neighbour && r.source != neighbour && self.visible(r.area, neighbour) {
                adverts.push(Advert {
                    dest: r.source.to_owned(),
                    seqno: r.seqno,
                    metric: self.advertised(r.metric),
                    hops: r.hops,
                });
            }
        }
        adverts
    }

    fn send_to_all(&self, adverts: impl Fn(&str) -> Vec<Advert>) -> Vec<RouteAction> {
        self.neighbours
            .keys()
            .map(|n| RouteAction::Send { to: n.clone(), adverts: adverts(n) })
            .collect()
    }

    /// `advert` (a route under `key`) to every neighbour that may hear it, but `via` (split
    /// horizon) and the advert's own destination.
    fn send_visible(&self, key: &Key, via: Option<&str>, advert: &Advert) -> Vec<RouteAction> {
        self.neighbours
            .keys()
            .filter(|n| Some(n.as_str()) != via && n.as_str() != advert.dest)
            .filter(|n| self.visible(key.area(), n))
            .map(|n| RouteAction::Send { to: n.clone(), adverts: vec![advert.clone()] })
            .collect()
    }
}

/// For a destination with candidates but no feasible route: the source to ask for a newer
/// seqno (the best-placed candidate's) and the seqno to ask for.
fn starving_for(d: &Destination) -> Option<(String, u32)> {
    let c = d.candidates.values().min_by_key(|c| c.advertised)?;
    Some((c.source.clone(), d.wanted(&c.source)))
}

fn self_advert_for(me: &str, seqno: u32) -> Advert {
    Advert { dest: me.to_owned(), seqno, metric: 0, hops: 0 }
}

/// Every this many periodic updates, the whole table goes out, not only what changed.
pub const FULL_EVERY: u32 = 6;

/// Route expiry for a periodic interval: 3.5 full updates.
pub fn expiry_for(periodic: Duration) -> Duration {
    periodic * FULL_EVERY * 7 / 2
}

/// How often expired routes are looked for.
const EXPIRY_SCAN: Duration = Duration::from_secs(1);

/// A seqno request is originated, or passed on, at most once per this for one (dest, seqno).
const REQUEST_RETRY: Duration = Duration::from_secs(1);

/// How much better another feasible route must be before traffic moves to it: a tenth of the
/// best metric, at least 10 (a tenth of a hop).
fn switch_margin(best: u16) -> u32 {
    (u32::from(best) / 10).max(10)
}

/// Link cost from a measured round-trip time: 100 per hop plus 1 per 100 µs of RTT, capped at
/// 1000, so hop count dominates on a LAN and latency breaks ties (16 hops stay far below the
/// 65535 metric ceiling).
pub fn link_cost(rtt: Duration) -> u16 {
    let extra = (rtt.as_micros() / 100).min(900) as u16;
    100 + extra
}

#[cfg(test)]
mod tests;
