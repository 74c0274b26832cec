//! Simulated meshes at the sizes users run, checked for what they rely on: routes converge,
//! no forwarding loop, no route through a revoked member once the CRL is applied, every member
//! gets the CRL and the network-wide control message, the mesh is quiet at rest, and it heals
//! after churn and after a partition. Times are reported (`genesis-sim --json`, docs/BENCHMARKS.md), never asserted here.

use std::time::Duration;

use genesis_sim::{run, Scenario};

fn check(s: Scenario) {
    let r = run(&s);
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert!(r.invariants_ok, "{} members, seed {}: {:#?}", s.members, s.seed, r.violations);
    assert!(r.routes_converged_ms.is_some());
    assert_eq!(r.control_coverage, 1.0);
    assert_eq!(r.revocation_applied_ms.count, s.members - 1, "every other member applied the CRL");
    assert_eq!(r.steady_link_closes, 0, "links stay up at rest");
    // A tenth of the members crashed together and came back: the mesh reconverged (the
    // invariants above include loop-free paths afterwards).
    assert_eq!(r.churn_members, (s.members as f64 * s.churn_fraction).round() as usize);
    assert!(r.churn_reconverged_ms.is_some(), "no reconvergence after churn");
    if !s.partition.is_zero() {
        // Zone 0 was cut off and healed: both sides routed to exactly themselves, then the
        // whole mesh routed again (every path walked; an island is a violation above).
        assert!(r.partition_split_ms.is_some(), "the sides never settled into their split");
        assert!(r.partition_healed_ms.is_some(), "the mesh did not rejoin after the heal");
    }

    // Quiet at rest: at most a handful of route changes over the whole window.
    assert!(
        r.steady_route_changes_per_sec * s.steady.as_secs_f64() <= 5.0,
        "{} route changes/s at rest",
        r.steady_route_changes_per_sec
    );
}

#[test]
fn a_hundred_members_in_one_zone_converge_and_hold_every_invariant() {
    check(Scenario { members: 100, steady: Duration::from_secs(5), ..Scenario::default() });
}

#[test]
fn two_hundred_members_in_three_zones_with_loss_hold_every_invariant_and_rejoin_after_a_partition()
{
    // NB: seed 7 stayed two islands after the heal until members redialled lost anchors
    // (peers.rs, `PeerSet::rejoin`); so did 8 more of seeds 1 to 16.
    check(Scenario {
        members: 200,
        zones: 3,
        seed: 7,
        loss: 0.01,
        steady: Duration::from_secs(5),
        partition: Duration::from_secs(20),
        ..Scenario::default()
    });
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let s = Scenario { members: 40, steady: Duration::from_secs(2), ..Scenario::default() };
    let (a, b) = (run(&s), run(&s));
    assert_eq!(a.routes_converged_ms, b.routes_converged_ms);
    assert_eq!(a.links, b.links);
    assert_eq!(a.revocation_applied_ms.max, b.revocation_applied_ms.max);
}

#[test]
fn one_thread_and_several_give_the_same_run() {
    // Members of a window run in parallel; what they cause is merged in member order.
    let s =
        Scenario { members: 120, zones: 3, steady: Duration::from_secs(2), ..Scenario::default() };
    let one = run(&Scenario { threads: 1, ..s.clone() });
    let four = run(&Scenario { threads: 4, ..s });
    assert!(one.invariants_ok, "{:#?}", one.violations);
    let same = |r: &genesis_sim::Report| {
        let mut v = serde_json::to_value(r).expect("a report");
        let o = v.as_object_mut().expect("an object");
        o.remove("wallSeconds");
        o.remove("memoryPerMemberBytes");
        v
    };
    assert_eq!(same(&one), same(&four));
}

#[test]
fn five_hundred_members_in_five_routing_areas_and_three_zones_hold_every_invariant_and_rejoin() {
    // With areas, a member holds routes to its own area's members and one per other area; an
    // area split by the partition must find its halves again (peers.rs, `PeerSet::rejoin`:
    // a lost member of one's own area counts as a split, as a lost anchor does).
    check(Scenario {
        members: 500,
        zones: 3,
        areas: 5,
        seed: 3,
        loss: 0.01,
        steady: Duration::from_secs(5),
        partition: Duration::from_secs(20),
        ..Scenario::default()
    });
}
