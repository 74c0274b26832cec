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

use std::collections::{BTreeMap, HashMap};
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
    /// A route not refreshed for this long is dropped (3.5 periodic intervals, as in Babel).
    pub route_expiry: Duration,
    /// Send an update as soon as a route changes.
    pub triggered_updates: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_hops: 16,
            periodic_interval: Duration::from_secs(10),
            route_expiry: Duration::from_secs(35),
            triggered_updates: true,
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

/// One destination's candidate route through one neighbour.
#[derive(Debug, Clone)]
struct Candidate {
    seqno: u32,
    /// Metric advertised by the neighbour.
    advertised: u16,
    hops: u8,
    expires: Time,
}

#[derive(Debug, Default)]
struct Destination {
    candidates: BTreeMap<String, Candidate>,
    selected: Option<String>,
    /// Metric and seqno of the selected route when it was selected (its candidate may be gone).
    selected_metric: u16,
    selected_seqno: u32,
    /// Feasibility distance: the best (seqno, metric) we have advertised.
    fd: Option<(u32, u16)>,
}

/// A route as shown on the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteView {
    pub dest: String,
    pub next_hop: String,
    pub metric: u16,
    pub hops: u8,
    pub seqno: u32,
}

/// Is `a` newer than `b` in wrapping sequence-number arithmetic?
pub fn seqno_newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// The routing state of one member.
#[derive(Debug)]
pub struct RouteTable {
    me: String,
    seqno: u32,
    config: RoutingConfig,
    /// Neighbour → link cost.
    neighbours: BTreeMap<String, u16>,
    dests: BTreeMap<String, Destination>,
    next_periodic: Time,
    /// (dest, seqno) requests already passed on: duplicate suppression for the flood.
    seen_requests: HashMap<(String, u32), Time>,
    /// The latest time an input brought (adverts and ticks carry it).
    clock: Time,
}

impl RouteTable {
    /// A table for member `me`, starting at sequence number `seqno` (the driver persists nothing:
    /// it starts from a random seqno so a restarted member's adverts are not mistaken for old).
    pub fn new(me: &str, seqno: u32, config: RoutingConfig, now: Time) -> Self {
        RouteTable {
            me: me.to_owned(),
            seqno,
            next_periodic: now + config.periodic_interval,
            config,
            neighbours: BTreeMap::new(),
            dests: BTreeMap::new(),
            seen_requests: HashMap::new(),
            clock: now,
        }
    }

    /// Our own sequence number.
    pub fn seqno(&self) -> u32 {
        self.seqno
    }

    /// The neighbour to send traffic for `dest` to.
    pub fn next_hop(&self, dest: &str) -> Option<&str> {
        self.dests.get(dest).and_then(|d| d.selected.as_deref())
    }

    /// Selected routes.
    pub fn routes(&self) -> Vec<RouteView> {
        self.dests
            .iter()
            .filter_map(|(dest, d)| {
                let via = d.selected.as_ref()?;
                let c = &d.candidates[via];
                Some(RouteView {
                    dest: dest.clone(),
                    next_hop: via.clone(),
                    metric: self.total(via, c),
                    hops: c.hops,
                    seqno: c.seqno,
                })
            })
            .collect()
    }

    /// Number of reachable destinations.
    pub fn route_count(&self) -> usize {
        self.dests.values().filter(|d| d.selected.is_some()).count()
    }

    /// Current neighbours.
    pub fn neighbours(&self) -> impl Iterator<Item = &str> {
        self.neighbours.keys().map(String::as_str)
    }

    /// A link to `neighbour` came up with `cost`: send it our whole table.
    pub fn neighbour_up(&mut self, neighbour: &str, cost: u16) -> Vec<RouteAction> {
        self.neighbours.insert(neighbour.to_owned(), cost.max(1));
        vec![RouteAction::Send {
            to: neighbour.to_owned(),
            adverts: self.full_table_for(neighbour),
        }]
    }

    /// The link cost to `neighbour` changed (a new RTT measurement).
    pub fn neighbour_cost(&mut self, neighbour: &str, cost: u16) -> Vec<RouteAction> {
        match self.neighbours.get_mut(neighbour) {
            Some(c) if *c != cost.max(1) => *c = cost.max(1),
            _ => return Vec::new(),
        }
        let affected: Vec<String> = self
            .dests
            .iter()
            .filter(|(_, d)| d.candidates.contains_key(neighbour))
            .map(|(k, _)| k.clone())
            .collect();
        let mut actions = Vec::new();
        for dest in affected {
            self.reselect(&dest, &mut actions);
        }
        actions
    }

    /// The link to `neighbour` went down: every route through it is gone.
    pub fn neighbour_down(&mut self, neighbour: &str) -> Vec<RouteAction> {
        self.neighbours.remove(neighbour);
        let affected: Vec<String> = self
            .dests
            .iter_mut()
            .filter_map(|(k, d)| d.candidates.remove(neighbour).map(|_| k.clone()))
            .collect();
        let mut actions = Vec::new();
        for dest in affected {
            self.reselect(&dest, &mut actions);
        }
        actions
    }

    /// Forgets every route to `dest` (its certificate was revoked) and withdraws ours.
    pub fn forget(&mut self, dest: &str) -> Vec<RouteAction> {
        let mut actions = Vec::new();
        if let Some(d) = self.dests.get_mut(dest) {
            d.candidates.clear();
            self.reselect(dest, &mut actions);
        }
        // A withdrawn route need not be asked for again: the destination is revoked.
        actions.retain(|a| !matches!(a, RouteAction::RequestSeqno { .. }));
        actions
    }

    /// A verified advert from `from`.
    pub fn on_advert(&mut self, from: &str, advert: Advert, now: Time) -> Vec<RouteAction> {
        self.clock = self.clock.max(now);
        let mut actions = Vec::new();
        if advert.dest == self.me || !self.neighbours.contains_key(from) {
            return actions;
        }
        let dest = self.dests.entry(advert.dest.clone()).or_default();
        let hops = advert.hops.saturating_add(1);
        if advert.metric == METRIC_INFINITY || hops > self.config.max_hops {
            if dest.candidates.remove(from).is_none() {
                return actions;
            }
        } else {
            dest.candidates.insert(
                from.to_owned(),
                Candidate {
                    seqno: advert.seqno,
                    advertised: advert.metric,
                    hops,
                    expires: now + self.config.route_expiry,
                },
            );
        }
        self.reselect(&advert.dest, &mut actions);
        actions
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
        let Some(d) = self.dests.get(dest) else { return Vec::new() };
        let selected = d.selected.as_deref().filter(|via| *via != from);
        if let Some((via, c)) = selected.and_then(|via| Some((via, d.candidates.get(via)?))) {
            if !seqno_newer(seqno, c.seqno) {
                let advert = Advert {
                    dest: dest.to_owned(),
                    seqno: c.seqno,
                    metric: self.total(via, c),
                    hops: c.hops,
                };
                return vec![RouteAction::Send { to: from.to_owned(), adverts: vec![advert] }];
            }
        }
        if hops_left <= 1 {
            return Vec::new();
        }
        // Towards `dest`: the selected next hop, else the best other neighbour that offers a
        // route; not back to the asker.
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
        self.seen_requests.retain(|_, at| now.saturating_sub(*at) < REQUEST_RETRY);
        let mut actions = Vec::new();
        let expired: Vec<String> = self
            .dests
            .iter_mut()
            .filter_map(|(k, d)| {
                let before = d.candidates.len();
                d.candidates.retain(|_, c| c.expires > now);
                (d.candidates.len() != before).then(|| k.clone())
            })
            .collect();
        for dest in expired {
            self.reselect(&dest, &mut actions);
        }
        if now >= self.next_periodic {
            self.next_periodic = now + self.config.periodic_interval;
            // Destinations we still starve for: ask again.
            let starving: Vec<(String, u32)> = self
                .dests
                .iter()
                .filter(|(_, d)| d.selected.is_none() && !d.candidates.is_empty())
                .map(|(k, d)| (k.clone(), d.fd.map_or(0, |(s, _)| s.wrapping_add(1))))
                .collect();
            for (dest, seqno) in starving {
                actions.push(self.originate_request(&dest, seqno));
            }
            // Forget destinations with nothing left, so state stays bounded by live routes.
            self.dests.retain(|_, d| !d.candidates.is_empty() || d.selected.is_some());
            let neighbours: Vec<String> = self.neighbours.keys().cloned().collect();
            for n in neighbours {
                actions.push(RouteAction::Send { to: n.clone(), adverts: self.full_table_for(&n) });
            }
        }
        actions
    }

    fn total(&self, via: &str, c: &Candidate) -> u16 {
        let cost = self.neighbours.get(via).copied().unwrap_or(METRIC_INFINITY);
        c.advertised.saturating_add(cost).min(METRIC_INFINITY - 1)
    }

    fn feasible(fd: Option<(u32, u16)>, c: &Candidate) -> bool {
        match fd {
            None => true,
            Some((s, m)) => seqno_newer(c.seqno, s) || (c.seqno == s && c.advertised < m),
        }
    }

    /// Re-runs route selection for `dest` and records what changed.
    fn reselect(&mut self, dest: &str, actions: &mut Vec<RouteAction>) {
        let Some(d) = self.dests.get(dest) else { return };
        let feasible: Vec<(String, u16, u32, u8)> = d
            .candidates
            .iter()
            .filter(|(_, c)| Self::feasible(d.fd, c))
            .map(|(via, c)| (via.clone(), self.total(via, c), c.seqno, c.hops))
            .collect();
        let best_metric = feasible.iter().map(|f| f.1).min();
        // Hysteresis: the current next hop stays while it is feasible and within a margin of
        // the best, so two near-equal paths (RTT jitter) do not take turns.
        let current = d.selected.as_ref().and_then(|via| {
            feasible.iter().find(|f| &f.0 == via).filter(|f| {
                best_metric.is_some_and(|b| u32::from(f.1) <= u32::from(b) + switch_margin(b))
            })
        });
        let feasible_best = current.cloned().or_else(|| {
            feasible.iter().min_by_key(|(via, metric, _, _)| (*metric, via.clone())).cloned()
        });
        // NB: when only the selected route's metric got worse (same seqno, not withdrawn), keep
        // using it and ask for a newer seqno (as Babel allows) rather than dropping traffic
        // while the request travels. Switching to a *different* unfeasible route is what can
        // loop, and stays forbidden; the feasibility distance never grows.
        let mut sticky = false;
        let best = feasible_best.or_else(|| {
            let via = d.selected.as_ref()?;
            let c = d.candidates.get(via)?;
            (c.seqno == d.selected_seqno).then(|| {
                sticky = true;
                (via.clone(), self.total(via, c), c.seqno, c.hops)
            })
        });
        let old = d.selected.clone();
        let old_state = old.as_ref().map(|_| (d.selected_metric, d.selected_seqno));
        let d = self.dests.get_mut(dest).expect("checked above");
        match best {
            Some((via, metric, seqno, hops)) => {
                d.selected = Some(via.clone());
                d.selected_metric = metric;
                d.selected_seqno = seqno;
                let improves = match d.fd {
                    None => true,
                    Some((s, m)) => seqno_newer(seqno, s) || (seqno == s && metric < m),
                };
                if improves {
                    d.fd = Some((seqno, metric));
                }
                // What neighbours must hear at once: a route they may not know, a newer seqno
                // (how a destination's recovery spreads), a new next hop, or a metric that moved
                // by the switch margin or more (enough to move their choice). Smaller moves wait
                // for the periodic update: announced at once, every jitter in a link's RTT
                // rippled through the whole mesh; held back when larger, an improvement took a
                // periodic interval per hop to spread.
                let moved = old.as_deref() != Some(via.as_str());
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
                    let want = d.fd.map_or(0, |(s, _)| s.wrapping_add(1));
                    if let Some(request) = self.request_once(dest, want) {
                        actions.push(request);
                    }
                }
                if moved || news {
                    actions.push(RouteAction::Changed {
                        dest: dest.to_owned(),
                        next_hop: Some(via.clone()),
                        metric,
                    });
                }
                if news && self.config.triggered_updates {
                    let advert = Advert { dest: dest.to_owned(), seqno, metric, hops };
                    actions.extend(self.send_to_all_except(&via, &advert));
                }
            }
            None => {
                d.selected = None;
                let starving = !d.candidates.is_empty();
                let fd = d.fd;
                if old.is_some() {
                    actions.push(RouteAction::Changed {
                        dest: dest.to_owned(),
                        next_hop: None,
                        metric: METRIC_INFINITY,
                    });
                    let withdraw = Advert {
                        dest: dest.to_owned(),
                        seqno: fd.map_or(0, |(s, _)| s),
                        metric: METRIC_INFINITY,
                        hops: 0,
                    };
                    actions.extend(self.send_to_all(|_| vec![withdraw.clone()]));
                }
                // Ask the destination for a newer seqno. Relays pass a request on once per
                // (dest, seqno), so asking again on every event here costs one frame per link.
                if starving || old.is_some() {
                    let want = fd.map_or(0, |(s, _)| s.wrapping_add(1));
                    if let Some(request) = self.request_once(dest, want) {
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

    /// Our own route plus every selected route, minus those through `neighbour` (split horizon).
    fn full_table_for(&self, neighbour: &str) -> Vec<Advert> {
        let mut adverts = vec![self_advert_for(&self.me, self.seqno)];
        for r in self.routes() {
            if r.next_hop != neighbour && r.dest != neighbour {
                adverts.push(Advert {
                    dest: r.dest,
                    seqno: r.seqno,
                    metric: r.metric,
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

    fn send_to_all_except(&self, via: &str, advert: &Advert) -> Vec<RouteAction> {
        self.neighbours
            .keys()
            .filter(|n| n.as_str() != via && n.as_str() != advert.dest)
            .map(|n| RouteAction::Send { to: n.clone(), adverts: vec![advert.clone()] })
            .collect()
    }
}

fn self_advert_for(me: &str, seqno: u32) -> Advert {
    Advert { dest: me.to_owned(), seqno, metric: 0, hops: 0 }
}

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
