use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;

enum Msg {
    Adverts(Vec<Advert>),
    Request { dest: String, seqno: u32, hops_left: u8 },
}

/// A deterministic network of route tables: messages are delivered one at a time in order,
/// and after every delivery the next-hop graph is checked for loops.
struct Sim {
    nodes: BTreeMap<String, RouteTable>,
    links: BTreeSet<(String, String)>,
    queue: VecDeque<(String, String, Msg)>,
    now: Time,
    delivered: usize,
}

const COST: u16 = 100;

impl Sim {
    fn new(names: &[&str]) -> Self {
        Self::with_areas(names, 1)
    }

    fn with_areas(names: &[&str], areas: u16) -> Self {
        let config = RoutingConfig { max_hops: 16, areas, ..Default::default() };
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (n.to_string(), RouteTable::new(n, 1000 + i as u32, config.clone(), Time::ZERO))
            })
            .collect();
        Sim { nodes, links: BTreeSet::new(), queue: VecDeque::new(), now: Time::ZERO, delivered: 0 }
    }

    fn apply(&mut self, node: &str, actions: Vec<RouteAction>) {
        for action in actions {
            match action {
                RouteAction::Send { to, adverts } => {
                    if self.links.contains(&(node.to_owned(), to.clone())) {
                        self.queue.push_back((node.to_owned(), to, Msg::Adverts(adverts)));
                    }
                }
                RouteAction::RequestSeqno { dest, seqno, hops_left, to } => {
                    let neighbours: Vec<String> = match to {
                        Some(to) => vec![to],
                        None => self.nodes[node].neighbours().map(str::to_owned).collect(),
                    };
                    for n in neighbours {
                        self.queue.push_back((
                            node.to_owned(),
                            n,
                            Msg::Request { dest: dest.clone(), seqno, hops_left },
                        ));
                    }
                }
                RouteAction::OwnSeqnoChanged { .. } | RouteAction::Changed { .. } => {}
            }
        }
    }

    fn link(&mut self, a: &str, b: &str) {
        self.links.insert((a.into(), b.into()));
        self.links.insert((b.into(), a.into()));
        let actions = self.nodes.get_mut(a).unwrap().neighbour_up(b, COST);
        self.apply(a, actions);
        let actions = self.nodes.get_mut(b).unwrap().neighbour_up(a, COST);
        self.apply(b, actions);
    }

    fn cut(&mut self, a: &str, b: &str) {
        self.links.remove(&(a.to_owned(), b.to_owned()));
        self.links.remove(&(b.to_owned(), a.to_owned()));
        let actions = self.nodes.get_mut(a).unwrap().neighbour_down(b);
        self.apply(a, actions);
        let actions = self.nodes.get_mut(b).unwrap().neighbour_down(a);
        self.apply(b, actions);
    }

    /// Takes a node off the network (all its links cut).
    fn kill(&mut self, dead: &str) {
        let peers: Vec<String> =
            self.links.iter().filter(|(a, _)| a == dead).map(|(_, b)| b.clone()).collect();
        for p in peers {
            self.cut(dead, &p);
        }
    }

    /// Delivers until quiet; panics on a loop or if it never settles.
    fn run(&mut self) {
        let mut steps = 0;
        while let Some((from, to, msg)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 200_000, "routing never settled");
            if !self.links.contains(&(from.clone(), to.clone())) {
                continue; // in flight when the link went down
            }
            let now = self.now;
            let table = self.nodes.get_mut(&to).unwrap();
            let actions = match msg {
                Msg::Adverts(adverts) => {
                    adverts.into_iter().flat_map(|a| table.on_advert(&from, a, now)).collect()
                }
                Msg::Request { dest, seqno, hops_left } => {
                    table.on_seqno_request(&from, &dest, seqno, hops_left)
                }
            };
            self.apply(&to, actions);
            self.delivered += 1;
            self.assert_loop_free();
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            let actions = self.nodes.get_mut(&n).unwrap().on_tick(now);
            self.apply(&n, actions);
        }
        self.run();
    }

    fn assert_loop_free(&self) {
        for dest in self.nodes.keys() {
            for start in self.nodes.keys() {
                let mut at = start.as_str();
                let mut seen = BTreeSet::new();
                while at != dest {
                    assert!(seen.insert(at), "routing loop towards {dest} through {seen:?}");
                    match self.nodes[at].next_hop(dest) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
        }
    }

    fn path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut path = vec![from.to_owned()];
        let mut at = from;
        while at != to {
            at = self.nodes[at].next_hop(to)?;
            path.push(at.to_owned());
        }
        Some(path)
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("n{i}")).collect()
}

#[test]
fn line_of_five_converges_to_shortest_paths() {
    let n = names(5);
    let refs: Vec<&str> = n.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&refs);
    for w in refs.windows(2) {
        sim.link(w[0], w[1]);
    }
    sim.run();
    assert_eq!(sim.path("n0", "n4").unwrap(), ["n0", "n1", "n2", "n3", "n4"]);
    assert_eq!(sim.path("n4", "n0").unwrap(), ["n4", "n3", "n2", "n1", "n0"]);
    let r = sim.nodes["n0"].routes().into_iter().find(|r| r.dest == "n4").unwrap();
    assert_eq!((r.hops, r.metric), (4, 4 * COST));
    assert_eq!(sim.nodes["n2"].route_count(), 4);
}

#[test]
fn ring_of_eight_reroutes_around_a_dead_node_without_waiting_for_a_periodic_update() {
    let n = names(8);
    let refs: Vec<&str> = n.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&refs);
    for i in 0..8 {
        sim.link(refs[i], refs[(i + 1) % 8]);
    }
    sim.run();
    assert_eq!(sim.path("n0", "n2").unwrap(), ["n0", "n1", "n2"]);
    sim.kill("n1");
    sim.run(); // no tick: seqno requests alone must restore the routes
    assert_eq!(sim.path("n0", "n2").unwrap(), ["n0", "n7", "n6", "n5", "n4", "n3", "n2"]);
    for a in &refs {
        for b in &refs {
            if a != b && *a != "n1" && *b != "n1" {
                assert!(sim.path(a, b).is_some(), "{a} lost its route to {b}");
            }
        }
    }
    assert!(sim.path("n0", "n1").is_none());
}

#[test]
fn losing_the_only_path_never_counts_to_infinity() {
    // A triangle a-b-c with d behind c: classic distance vector would have a and b bounce the
    // route to d between them with growing metrics once c-d fails.
    let mut sim = Sim::new(&["a", "b", "c", "d"]);
    sim.link("a", "b");
    sim.link("b", "c");
    sim.link("a", "c");
    sim.link("c", "d");
    sim.run();
    assert!(sim.path("a", "d").is_some());
    let before = sim.delivered;
    sim.cut("c", "d");
    sim.run();
    for n in ["a", "b", "c"] {
        assert!(sim.nodes[n].next_hop("d").is_none(), "{n} still routes to d");
    }
    assert!(
        sim.delivered - before < 100,
        "{} messages to withdraw one route",
        sim.delivered - before
    );
    // Periodic updates afterwards do not resurrect it either.
    sim.tick(Duration::from_secs(11));
    sim.tick(Duration::from_secs(11));
    assert!(sim.path("a", "d").is_none());
}

#[test]
fn unreachable_destination_is_forgotten_after_route_expiry() {
    let mut sim = Sim::new(&["a", "b"]);
    sim.link("a", "b");
    sim.run();
    assert_eq!(sim.nodes["a"].route_count(), 1);
    // b goes silent without the link being torn down: no refresh arrives.
    sim.links.clear();
    sim.tick(Duration::from_secs(200));
    assert_eq!(sim.nodes["a"].route_count(), 1, "still within the expiry");
    sim.tick(Duration::from_secs(20));
    assert_eq!(sim.nodes["a"].route_count(), 0, "expired after 210s without refresh");
}

#[test]
fn a_periodic_update_carries_only_changes_and_every_sixth_the_whole_table() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    t.neighbour_up("x", 100);
    t.neighbour_up("y", 100);
    t.on_advert("x", Advert { dest: "d".into(), seqno: 1, metric: 100, hops: 1 }, Time::ZERO);
    t.on_advert("x", Advert { dest: "e".into(), seqno: 1, metric: 100, hops: 1 }, Time::ZERO);
    let to = |actions: &[RouteAction], n: &str| -> Vec<Advert> {
        actions
            .iter()
            .filter_map(|a| match a {
                RouteAction::Send { to, adverts } if to == n => Some(adverts.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    // y heard d and e at once (triggered): the next periodic update has nothing for it.
    let tick = |t: &mut RouteTable, s: u64| t.on_tick(Duration::from_secs(s));
    assert!(to(&tick(&mut t, 10), "y").is_empty(), "nothing changed");
    // A metric move too small for a triggered update goes out with the next periodic one.
    t.on_advert("x", Advert { dest: "d".into(), seqno: 1, metric: 103, hops: 1 }, Time::ZERO);
    let sent = to(&tick(&mut t, 20), "y");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].dest.as_str(), sent[0].metric), ("d", 203));
    // d now goes through y: y still holds what we told it of d before, and split horizon
    // keeps d out of what y may hear, so the next periodic update withdraws it there.
    t.on_advert("y", Advert { dest: "d".into(), seqno: 2, metric: 50, hops: 1 }, Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("y"));
    let sent = to(&tick(&mut t, 30), "y");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].dest.as_str(), sent[0].metric), ("d", METRIC_INFINITY));
    let mut all = Vec::new();
    for s in [40, 50, 60] {
        all.push(to(&tick(&mut t, s), "y"));
    }
    assert!(all[..2].iter().all(|a| a.is_empty()), "{all:?}");
    // The sixth is the whole table: our own route and e (d goes through y).
    let mut dests: Vec<&str> = all[2].iter().map(|a| a.dest.as_str()).collect();
    dests.sort();
    assert_eq!(dests, ["e", "me"]);
}

#[test]
fn restarted_node_with_an_older_seqno_rejoins_through_a_seqno_request() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    sim.link("a", "b");
    sim.link("b", "c");
    sim.run();
    let old = sim.nodes["c"].seqno();
    sim.kill("c");
    sim.run();
    // A restart takes a while: b's first request for c has gone unanswered meanwhile.
    sim.tick(Duration::from_secs(2));
    // c restarts with a smaller seqno than the network remembers.
    sim.nodes.insert(
        "c".into(),
        RouteTable::new("c", old.wrapping_sub(500), RoutingConfig::default(), sim.now),
    );
    sim.link("b", "c");
    sim.run();
    assert_eq!(sim.path("a", "c").unwrap(), ["a", "b", "c"]);
    assert!(seqno_newer(sim.nodes["c"].seqno(), old), "c raised its seqno on request");
}

#[test]
fn feasibility_rejects_older_seqnos_and_worse_metrics_but_takes_newer_seqnos() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    t.neighbour_up("x", 100);
    t.neighbour_up("y", 100);
    let advert = |seqno, metric| Advert { dest: "d".into(), seqno, metric, hops: 1 };
    t.on_advert("x", advert(10, 100), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));
    // Older seqno through y, even with a better metric: not feasible.
    t.on_advert("y", advert(9, 10), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));
    // Same seqno and a metric not below the feasibility distance (200): not feasible.
    t.on_advert("y", advert(10, 250), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));
    // Same seqno, strictly better: feasible and better.
    t.on_advert("y", advert(10, 50), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("y"));
    // x withdraws; y stays. y withdraws: unreachable, and a seqno request goes out.
    t.on_advert("x", advert(10, METRIC_INFINITY), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("y"));
    let actions = t.on_advert("y", advert(10, METRIC_INFINITY), Time::ZERO);
    assert_eq!(t.next_hop("d"), None);
    assert!(actions.contains(&RouteAction::RequestSeqno {
        dest: "d".into(),
        seqno: 11,
        hops_left: 16,
        to: None,
    }));
    // A newer seqno is feasible whatever its metric.
    t.on_advert("x", advert(11, 5000), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));
    assert!(seqno_newer(0, u32::MAX) && !seqno_newer(u32::MAX, 0), "wrapping comparison");
}

#[test]
fn routes_beyond_the_hop_limit_are_ignored() {
    let config = RoutingConfig { max_hops: 4, ..Default::default() };
    let mut t = RouteTable::new("me", 1, config, Time::ZERO);
    t.neighbour_up("x", 100);
    t.on_advert("x", Advert { dest: "far".into(), seqno: 1, metric: 400, hops: 4 }, Time::ZERO);
    assert_eq!(t.next_hop("far"), None);
    t.on_advert("x", Advert { dest: "near".into(), seqno: 1, metric: 300, hops: 3 }, Time::ZERO);
    assert_eq!(t.next_hop("near"), Some("x"));
}

#[test]
fn adverts_from_strangers_and_about_ourselves_are_ignored() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    assert!(t
        .on_advert(
            "stranger",
            Advert { dest: "d".into(), seqno: 1, metric: 1, hops: 1 },
            Time::ZERO
        )
        .is_empty());
    t.neighbour_up("x", 100);
    t.on_advert("x", Advert { dest: "me".into(), seqno: 99, metric: 1, hops: 1 }, Time::ZERO);
    assert_eq!(t.route_count(), 0);
}

#[test]
fn split_horizon_does_not_advertise_a_route_back_to_its_next_hop() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    t.neighbour_up("x", 100);
    t.on_advert("x", Advert { dest: "d".into(), seqno: 1, metric: 100, hops: 1 }, Time::ZERO);
    let actions = t.neighbour_up("y", 100);
    let to_y = actions.iter().find_map(|a| match a {
        RouteAction::Send { to, adverts } if to == "y" => Some(adverts.clone()),
        _ => None,
    });
    assert!(to_y.unwrap().iter().any(|a| a.dest == "d"));
    // The sixth periodic update is the whole table.
    let full: Vec<RouteAction> =
        (1..=FULL_EVERY).flat_map(|i| t.on_tick(Duration::from_secs(10 * u64::from(i)))).collect();
    let to_x = full.iter().find_map(|a| match a {
        RouteAction::Send { to, adverts } if to == "x" => Some(adverts.clone()),
        _ => None,
    });
    let to_x = to_x.expect("the whole table went to x");
    assert!(to_x.iter().any(|a| a.dest == "me"));
    assert!(!to_x.iter().any(|a| a.dest == "d"), "route to d sent back to its next hop");
}

#[test]
fn link_cost_grows_with_rtt_and_is_capped() {
    assert_eq!(link_cost(Duration::ZERO), 100);
    assert_eq!(link_cost(Duration::from_micros(250)), 102);
    assert_eq!(link_cost(Duration::from_secs(5)), 1000);
}

#[test]
fn a_worse_metric_on_the_selected_route_keeps_it_and_asks_for_a_newer_seqno() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    t.neighbour_up("x", 100);
    t.neighbour_up("y", 100);
    let advert = |seqno, metric| Advert { dest: "d".into(), seqno, metric, hops: 1 };
    t.on_advert("x", advert(10, 100), Time::ZERO);
    // Congestion behind x: same seqno, metric above the feasibility distance (200).
    let actions = t.on_advert("x", advert(10, 400), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"), "traffic keeps flowing on the selected route");
    assert_eq!(t.routes()[0].metric, 500);
    assert!(actions
        .iter()
        .any(|a| matches!(a, RouteAction::RequestSeqno { dest, seqno: 11, .. } if dest == "d")));
    // An unfeasible route through another neighbour is still never taken.
    t.on_advert("y", advert(10, 250), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));
    // The newer seqno makes the better route feasible again.
    t.on_advert("y", advert(11, 250), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("y"));
}

#[test]
fn a_seqno_request_is_answered_by_a_fresh_enough_route_or_passed_on_towards_its_destination_only() {
    let mut t = RouteTable::new("me", 1, RoutingConfig::default(), Time::ZERO);
    for n in ["a", "x", "y"] {
        t.neighbour_up(n, 100);
    }
    let advert = |seqno, metric| Advert { dest: "d".into(), seqno, metric, hops: 2 };
    t.on_advert("x", advert(10, 100), Time::ZERO);
    t.on_advert("y", advert(10, 300), Time::ZERO);
    assert_eq!(t.next_hop("d"), Some("x"));

    // Our route already carries seqno 10: we answer the asker with it, and ask nobody.
    let actions = t.on_seqno_request("a", "d", 10, 16);
    let answer = Advert { dest: "d".into(), seqno: 10, metric: 200, hops: 3 };
    assert_eq!(actions, vec![RouteAction::Send { to: "a".into(), adverts: vec![answer] }]);

    // Seqno 11 is newer than ours: passed on to our next hop towards d, and to no one else.
    let actions = t.on_seqno_request("a", "d", 11, 16);
    let on = RouteAction::RequestSeqno {
        dest: "d".into(),
        seqno: 11,
        hops_left: 15,
        to: Some("x".into()),
    };
    assert_eq!(actions, vec![on]);

    // Asked by our own next hop: not sent back to it, but to the next best neighbour.
    let actions = t.on_seqno_request("x", "d", 12, 16);
    assert!(
        matches!(&actions[..], [RouteAction::RequestSeqno { to: Some(to), .. }] if to == "y"),
        "{actions:?}"
    );
    // A destination we know nothing of, or the hop limit reached: dropped.
    assert!(t.on_seqno_request("a", "nowhere", 1, 16).is_empty());
    assert!(t.on_seqno_request("a", "d", 13, 1).is_empty());
}

/// 36 members in 3 routing areas: each area a ring of its own, and a few links between areas.
fn three_areas() -> (Sim, Vec<String>) {
    let n = names(36);
    let refs: Vec<&str> = n.iter().map(String::as_str).collect();
    let mut sim = Sim::with_areas(&refs, 3);
    let mut by_area: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for name in &refs {
        by_area.entry(area_of(name, 3)).or_default().push(name);
    }
    assert_eq!(by_area.len(), 3, "the hash spreads 36 names over all 3 areas: {by_area:?}");
    for members in by_area.values() {
        for i in 0..members.len() {
            sim.link(members[i], members[(i + 1) % members.len()]);
        }
    }
    for i in 0..36 {
        let j = (i * 7 + 5) % 36;
        if i % 3 == 0 && area_of(refs[i], 3) != area_of(refs[j], 3) {
            sim.link(refs[i], refs[j]);
        }
    }
    (sim, n)
}

#[test]
fn with_areas_every_member_reaches_every_other_loop_free_on_a_table_of_its_area_and_the_other_areas(
) {
    let (mut sim, n) = three_areas();
    sim.run(); // asserts loop freedom after every delivery
    for a in &n {
        let mine = area_of(a, 3);
        let own = n.iter().filter(|b| area_of(b, 3) == mine).count();
        // Own area's other members, plus the two other areas as wholes.
        assert_eq!(sim.nodes[a.as_str()].route_count(), own - 1 + 2, "{a}'s table");
        for b in &n {
            let path = sim.path(a, b).unwrap_or_else(|| panic!("{a} has no path to {b}"));
            // Once inside the destination's area, the path stays there.
            let entered = path.iter().position(|p| area_of(p, 3) == area_of(b, 3)).unwrap();
            assert!(path[entered..].iter().all(|p| area_of(p, 3) == area_of(b, 3)), "{path:?}");
        }
    }
    // At rest, periodic updates (changes only, and a whole table at the sixth) change nothing:
    // an area route is known by its area, whichever member it leads to.
    let before: Vec<Vec<RouteView>> = n.iter().map(|a| sim.nodes[a.as_str()].routes()).collect();
    for _ in 0..7 {
        sim.tick(Duration::from_secs(10));
    }
    let after: Vec<Vec<RouteView>> = n.iter().map(|a| sim.nodes[a.as_str()].routes()).collect();
    assert_eq!(before, after, "routes moved at rest");
    // The data path's snapshot answers as the table does.
    for a in &n {
        let t = &sim.nodes[a.as_str()];
        let snapshot = t.next_hops();
        for b in &n {
            assert_eq!(snapshot.get(b), t.next_hop(b), "{a} towards {b}");
        }
        assert_eq!(snapshot.get("unknown-member"), t.next_hop("unknown-member"));
    }
    // An area route is shown with the area and the member it leads to.
    let a = &n[0];
    let areas: Vec<u16> =
        sim.nodes[a.as_str()].routes().iter().filter_map(|r| r.area).collect::<Vec<_>>();
    assert_eq!(areas.len(), 2);
    assert!(!areas.contains(&area_of(a, 3)));
}

#[test]
fn with_areas_a_dead_border_member_is_routed_around_and_its_revocation_forgets_it() {
    let (mut sim, n) = three_areas();
    sim.run();
    // The busiest border member: linked to another area, and the source of most area routes.
    let border = n
        .iter()
        .max_by_key(|b| {
            sim.nodes
                .values()
                .flat_map(|t| t.routes())
                .filter(|r| r.area.is_some() && &r.dest == *b)
                .count()
        })
        .unwrap()
        .clone();
    for t in sim.nodes.values_mut() {
        let actions = t.forget(&border);
        assert!(!actions.iter().any(|a| matches!(a, RouteAction::RequestSeqno { .. })));
    }
    sim.kill(&border);
    sim.tick(Duration::from_secs(10));
    sim.tick(Duration::from_secs(10));
    for a in n.iter().filter(|a| **a != border) {
        assert!(!sim.nodes[a.as_str()]
            .routes()
            .iter()
            .any(|r| r.dest == border || r.next_hop == border));
        for b in n.iter().filter(|b| **b != border) {
            assert!(sim.path(a, b).is_some(), "{a} lost its path to {b}");
        }
    }
}

#[test]
fn with_areas_a_member_route_from_another_area_is_ignored() {
    let (a, b) = (0..100)
        .map(|i| format!("x{i}"))
        .find_map(|x| {
            let y = (0..100).map(|j| format!("y{j}")).find(|y| area_of(y, 2) != area_of(&x, 2))?;
            Some((x, y))
        })
        .unwrap();
    // c: a member of a's area, told about by b from the other area.
    let c = (0..100).map(|i| format!("z{i}")).find(|c| area_of(c, 2) == area_of(&a, 2)).unwrap();
    let config = RoutingConfig { areas: 2, ..Default::default() };
    let mut t = RouteTable::new(&a, 1, config, Time::ZERO);
    t.neighbour_up(&b, COST);
    let advert = Advert { dest: c.clone(), seqno: 1, metric: 100, hops: 1 };
    assert!(t.on_advert(&b, advert, Time::ZERO).is_empty());
    assert_eq!(t.next_hop(&c), None);
    // b itself is a route to b's area, and b's own neighbour: reached directly.
    let own = Advert { dest: b.clone(), seqno: 1, metric: 0, hops: 0 };
    t.on_advert(&b, own, Time::ZERO);
    assert_eq!(t.route_count(), 1);
    assert_eq!(t.next_hop(&b), Some(b.as_str()));
}

#[test]
fn with_areas_an_area_route_that_moves_to_another_member_is_not_withdrawn_at_the_next_update() {
    let areas = 3;
    let pick = |prefix: &str, area: &dyn Fn(u16) -> bool, skip: usize| {
        (0..).map(|i| format!("{prefix}{i}")).filter(|n| area(area_of(n, areas))).nth(skip).unwrap()
    };
    let me = "me".to_owned();
    let b = (area_of(&me, areas) + 1) % areas;
    let (b1, b2) = (pick("b", &|a| a == b, 0), pick("b", &|a| a == b, 1));
    let x = pick("x", &|a| a != b, 0);
    let (y, z) = (pick("y", &|a| a != b, 0), pick("z", &|a| a != b, 0));
    let config = RoutingConfig { areas, ..Default::default() };
    let mut t = RouteTable::new(&me, 1, config, Time::ZERO);
    for n in [&x, &y, &z] {
        t.neighbour_up(n, 100);
    }
    t.on_advert(&x, Advert { dest: b1.clone(), seqno: 1, metric: 300, hops: 2 }, Time::ZERO);
    t.on_advert(&y, Advert { dest: b2.clone(), seqno: 1, metric: 100, hops: 1 }, Time::ZERO);
    assert_eq!(t.next_hop(&b1), Some(y.as_str()), "the area route moved to b2 through y");
    let sent: Vec<Advert> = t
        .on_tick(Duration::from_secs(10))
        .into_iter()
        .filter_map(|a| match a {
            RouteAction::Send { to, adverts } if to == z => Some(adverts),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(sent.is_empty(), "z was told of b2 already, and b1 is not gone: {sent:?}");
}

#[test]
fn a_member_with_a_transit_penalty_is_routed_around_where_another_path_exists() {
    // A square a - b - d - c - a: a reaches d through b or c at the same cost.
    let mut sim = Sim::new(&["a", "b", "c", "d"]);
    for (x, y) in [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")] {
        sim.link(x, y);
    }
    sim.run();
    let via = sim.nodes["a"].next_hop("d").unwrap().to_owned();
    let other = if via == "b" { "c" } else { "b" };
    // The next hop relays beyond its share: its whole table goes out at once, dearer.
    let actions = sim.nodes.get_mut(&via).unwrap().set_transit_penalty(1000);
    assert!(!actions.is_empty(), "a changed penalty is sent to every neighbour");
    sim.apply(&via, actions);
    sim.run();
    assert_eq!(sim.nodes["a"].next_hop("d"), Some(other), "a now goes around it");
    // Its own route costs it nothing more: a still reaches it directly.
    assert_eq!(sim.nodes["a"].metric_to(&via), Some(COST));
    assert_eq!(sim.nodes["a"].metric_to(other), Some(COST));
    // Setting the same penalty again sends nothing; lifting it restores the old metric.
    assert!(sim.nodes.get_mut(&via).unwrap().set_transit_penalty(1000).is_empty());
    let actions = sim.nodes.get_mut(&via).unwrap().set_transit_penalty(0);
    sim.apply(&via, actions);
    sim.run();
    assert_eq!(sim.nodes["a"].metric_to("d"), Some(2 * COST));
    assert_eq!(sim.nodes["d"].metric_to("a"), Some(2 * COST), "d was never penalised");
}
