use super::*;

fn secs(s: u64) -> Time {
    Duration::from_secs(s)
}

fn set(anchors: &[&str]) -> PeerSet {
    let anchors: Vec<String> = anchors.iter().map(|a| a.to_string()).collect();
    PeerSet::new("me", PeerConfig::default(), &anchors, Time::ZERO)
}

#[test]
fn bootstraps_from_anchors_then_dials_learned_peers_up_to_min_peers() {
    let mut p = set(&["10.0.0.1:7000"]);
    assert_eq!(p.on_tick(Time::ZERO), vec![PeerAction::Dial { addr: "10.0.0.1:7000".into() }]);
    p.on_connected("anchor", "10.0.0.1:7000", Time::ZERO).unwrap();
    p.on_exchange(
        &[
            PeerAddr { zone: String::new(), node: "b".into(), addr: "b:1".into() },
            PeerAddr { zone: String::new(), node: "c".into(), addr: "c:1".into() },
            PeerAddr { zone: String::new(), node: "d".into(), addr: "d:1".into() },
            PeerAddr { zone: String::new(), node: "me".into(), addr: "me:1".into() },
        ],
        Time::ZERO,
    );
    let dials: Vec<_> =
        p.on_tick(secs(1)).into_iter().filter(|a| matches!(a, PeerAction::Dial { .. })).collect();
    assert_eq!(dials.len(), 2, "min_peers 3, one connected: {dials:?}");
    assert!(!dials.contains(&PeerAction::Dial { addr: "me:1".into() }));
    // Nothing dialled twice while in flight.
    assert!(p.on_tick(secs(2)).iter().all(|a| !matches!(a, PeerAction::Dial { .. })));
}

#[test]
fn failed_dials_back_off_exponentially() {
    let mut p = set(&["a:1"]);
    p.on_tick(Time::ZERO);
    p.on_dial_failed("a:1", Time::ZERO);
    assert!(p.on_tick(Duration::from_millis(500)).is_empty(), "1s backoff");
    assert_eq!(p.on_tick(secs(1)), vec![PeerAction::Dial { addr: "a:1".into() }]);
    p.on_dial_failed("a:1", secs(1));
    assert!(p.on_tick(secs(2)).is_empty(), "2s backoff");
    assert_eq!(p.on_tick(secs(3)), vec![PeerAction::Dial { addr: "a:1".into() }]);
}

#[test]
fn reputation_rises_with_fast_pongs_and_levels_are_named() {
    let mut p = set(&[]);
    p.on_connected("x", "x:1", Time::ZERO).unwrap();
    assert_eq!(p.level("x", Time::ZERO), Some(Level::New));
    for i in 0..15 {
        p.record("x", Conduct::Pong(Duration::from_millis(1)), secs(i));
    }
    assert_eq!(p.level("x", secs(15)), Some(Level::Trusted));
    p.record("x", Conduct::InvalidFrame, secs(16));
    p.record("x", Conduct::InvalidFrame, secs(16));
    assert_eq!(p.level("x", secs(16)), Some(Level::Suspicious));
    let v = p.views(secs(16));
    assert_eq!(v[0].score, 30);
    assert_eq!(v[0].rtt_ms, Some(1.0));
}

#[test]
fn invalid_frames_ban_the_peer_with_a_doubling_duration() {
    let mut p = set(&[]);
    p.on_connected("x", "x:1", Time::ZERO).unwrap();
    p.record("x", Conduct::InvalidFrame, Time::ZERO);
    let actions = p.record("x", Conduct::InvalidFrame, Time::ZERO);
    assert!(
        matches!(&actions[0], PeerAction::Banned { until, .. } if *until == secs(300)),
        "{actions:?}"
    );
    assert!(matches!(&actions[1], PeerAction::Disconnect { node, .. } if node == "x"));
    p.on_disconnected("x", false, Time::ZERO);
    assert!(p.on_connected("x", "x:1", secs(10)).unwrap_err().contains("banned"));
    assert!(p.exchange_list(secs(10)).is_empty());
    // After the ban the peer may come back; misbehaving again bans it twice as long.
    p.on_connected("x", "x:1", secs(301)).unwrap();
    let actions = p.record("x", Conduct::InvalidFrame, secs(301));
    assert!(
        matches!(&actions[0], PeerAction::Banned { until, .. } if *until == secs(301 + 600)),
        "{actions:?}"
    );
}

#[test]
fn bad_identity_bans_at_once() {
    let mut p = set(&[]);
    p.on_connected("x", "x:1", Time::ZERO).unwrap();
    let actions = p.record("x", Conduct::BadIdentity, Time::ZERO);
    assert!(matches!(actions[0], PeerAction::Banned { .. }));
    assert!(p.is_banned("x", secs(1)));
}

#[test]
fn a_flooding_peer_is_rate_limited_and_loses_reputation_once_per_second() {
    let config = PeerConfig { frame_rate: 10, frame_burst: 20, ..Default::default() };
    let mut p = PeerSet::new("me", config, &[], Time::ZERO);
    p.on_connected("noisy", "n:1", Time::ZERO).unwrap();
    p.on_connected("quiet", "q:1", Time::ZERO).unwrap();
    let mut passed = 0;
    let mut penalties = 0;
    for i in 0..1000 {
        let (admit, actions) = p.admit("noisy", Duration::from_millis(i));
        passed += usize::from(admit == Admit::Pass);
        penalties += usize::from(actions.iter().any(|a| matches!(a, PeerAction::Banned { .. })));
    }
    // 1 second: the burst of 20 plus about 10 refilled.
    assert!((25..=32).contains(&passed), "passed {passed}");
    assert_eq!(penalties, 0, "one offence per second does not ban at once");
    assert_eq!(p.views(secs(1)).iter().find(|v| v.node == "noisy").unwrap().score, 50 - 10);
    // The quiet peer is unaffected.
    assert_eq!(p.admit("quiet", secs(1)).0, Admit::Pass);
}

#[test]
fn a_full_member_refuses_a_newcomer_and_keeps_every_link_it_has() {
    // max_peers 1: it seeks one link and accepts dialers up to two.
    let config = PeerConfig { max_peers: 1, ..Default::default() };
    let mut p = PeerSet::new("me", config, &[], Time::ZERO);
    assert_eq!(p.link_limit(), 2);
    p.on_connected("good", "g:1", Time::ZERO).unwrap();
    p.on_connected("poor", "p:1", Time::ZERO).unwrap();
    p.record("poor", Conduct::Failure, Time::ZERO);
    let refusal = p.admit_inbound("new", Time::ZERO).unwrap_err();
    assert!(refusal.starts_with(FULL), "{refusal}");
    // A link finishing when we are full anyway is refused, not an established one.
    assert!(p.on_connected("new", "n:1", Time::ZERO).unwrap_err().starts_with(FULL));
    assert_eq!(p.connected(), 2);
    assert!(p.views(Time::ZERO).iter().filter(|v| v.connected).all(|v| v.node != "new"));
    assert!(p.admit_inbound("me", Time::ZERO).is_err());
    // Room again once a link goes; the admitted newcomer holds that place until its hello is
    // done (or the hold lapses), so a second newcomer cannot take it meanwhile.
    p.on_disconnected("poor", false, Time::ZERO);
    assert_eq!(p.admit_inbound("new", Time::ZERO), Ok(()));
    assert!(p.admit_inbound("other", Time::ZERO).unwrap_err().starts_with(FULL));
    assert_eq!(p.admit_inbound("other", secs(6)), Ok(()));
    p.on_connected("other", "o:1", secs(6)).unwrap();
    assert_eq!(p.connected(), 2);
}

#[test]
fn members_dial_their_own_way_through_equal_candidates() {
    let learned: Vec<PeerAddr> = (0..20)
        .map(|i| PeerAddr { zone: String::new(), node: format!("n{i}"), addr: format!("n{i}:1") })
        .collect();
    let first_dial = |me: &str| {
        let mut p =
            PeerSet::new(me, PeerConfig { min_peers: 1, ..Default::default() }, &[], Time::ZERO);
        p.on_exchange(&learned, Time::ZERO);
        p.on_tick(Time::ZERO)
    };
    let firsts: std::collections::BTreeSet<_> =
        (0..10).map(|i| format!("{:?}", first_dial(&format!("newcomer-{i}")))).collect();
    assert!(firsts.len() > 3, "newcomers all dial the same member first: {firsts:?}");
    assert_eq!(
        first_dial("newcomer-0"),
        first_dial("newcomer-0"),
        "and each the same way every time"
    );
}

#[test]
fn a_refused_dial_backs_off_and_dials_the_peers_it_was_handed_instead() {
    let config = PeerConfig { min_peers: 1, max_peers: 3, ..PeerConfig::default() };
    let mut p = PeerSet::new("me", config, &["a:1".to_owned()], Time::ZERO);
    assert_eq!(p.on_tick(Time::ZERO), vec![PeerAction::Dial { addr: "a:1".into() }]);
    p.on_dial_refused(
        "a:1",
        &[PeerAddr { zone: String::new(), node: "b".into(), addr: "b:1".into() }],
        Time::ZERO,
    );
    // The full anchor is not reputation-punished, and not redialled at once.
    assert!(p.views(Time::ZERO).is_empty());
    let dials: Vec<_> = p
        .on_tick(Duration::from_millis(100))
        .into_iter()
        .filter(|a| matches!(a, PeerAction::Dial { .. }))
        .collect();
    assert_eq!(dials, vec![PeerAction::Dial { addr: "b:1".into() }]);
}

#[test]
fn learned_addresses_are_bounded() {
    let mut p = set(&[]);
    let flood: Vec<PeerAddr> = (0..2000)
        .map(|i| PeerAddr { zone: String::new(), node: format!("n{i}"), addr: format!("a{i}:1") })
        .collect();
    for chunk in flood.chunks(32) {
        p.on_exchange(chunk, Time::ZERO);
    }
    assert_eq!(p.dials.len(), MAX_KNOWN);
}

#[test]
fn a_member_whose_inbound_links_meet_min_peers_still_dials_an_anchor() {
    // min_peers 1 is met by an inbound link from "c", but no anchor is linked: without a
    // link to an anchor, {me, c} could be an island.
    let config = PeerConfig { min_peers: 1, max_peers: 2, ..PeerConfig::default() };
    let mut p = PeerSet::new("me", config, &["a:1".to_owned()], Time::ZERO);
    p.on_connected("c", "c:1", Time::ZERO).unwrap();
    assert_eq!(p.on_tick(Time::ZERO), vec![PeerAction::Dial { addr: "a:1".into() }]);
    p.on_connected("a", "a:1", Time::ZERO).unwrap();
    assert!(p.on_tick(secs(1)).iter().all(|a| !matches!(a, PeerAction::Dial { .. })));
}

#[test]
fn an_anchor_that_backs_off_is_not_replaced_by_a_learned_peer_beyond_min_peers() {
    let config = PeerConfig { min_peers: 1, max_peers: 3, ..PeerConfig::default() };
    let mut p = PeerSet::new("me", config, &["a:1".to_owned()], Time::ZERO);
    p.on_connected("c", "c:1", Time::ZERO).unwrap();
    p.on_exchange(
        &[PeerAddr { zone: String::new(), node: "d".into(), addr: "d:1".into() }],
        Time::ZERO,
    );
    p.on_tick(Time::ZERO);
    p.on_dial_failed("a:1", Time::ZERO);
    // The anchor backs off; min peers is met, so nobody else is dialled meanwhile.
    let dials: Vec<_> = p
        .on_tick(Duration::from_millis(500))
        .into_iter()
        .filter(|a| matches!(a, PeerAction::Dial { .. }))
        .collect();
    assert!(dials.is_empty(), "{dials:?}");
}

#[test]
fn a_garbage_hello_from_a_member_that_never_linked_costs_it_and_bans_it() {
    let mut p = set(&[]);
    let actions = p.record("stranger", Conduct::BadIdentity, Time::ZERO);
    assert!(
        matches!(&actions[..], [PeerAction::Banned { node, .. }] if node == "stranger"),
        "{actions:?}"
    );
    assert!(p.is_banned("stranger", secs(1)));
    assert!(p.admit_inbound("stranger", secs(1)).unwrap_err().contains("banned"));
    // Good conduct of a stranger is not remembered: nothing to track it by.
    assert!(p.record("nobody", Conduct::Pong(Duration::from_millis(1)), Time::ZERO).is_empty());
    assert!(p.level("nobody", Time::ZERO).is_none());
}

#[test]
fn a_member_that_lost_its_anchor_for_an_interval_dials_it_then_a_lost_member_it_was_referred_to() {
    let mut p = set(&["anchor:1"]);
    p.on_tick(Time::ZERO);
    p.on_connected("anchor", "anchor:1", Time::ZERO).unwrap();
    let peers = ["b", "c", "d"].map(|n| PeerAddr {
        zone: String::new(),
        node: n.into(),
        addr: format!("{n}:1"),
    });
    p.on_exchange(&peers, Time::ZERO);
    for n in ["b", "c", "d"] {
        p.on_connected(n, &format!("{n}:1"), Time::ZERO).unwrap();
    }
    // A healthy mesh (every anchor reachable) dials nothing.
    assert_eq!(p.rejoin(secs(100), |_| true), None);

    // A partition: the link to the anchor breaks and no route leads to it; min peers still met.
    p.on_disconnected("anchor", true, secs(101));
    let lost = |n: &str| n != "anchor";
    // (It looks four times an interval, so from 103 here.)
    assert_eq!(p.rejoin(secs(103), lost), None, "not before an exchange interval");
    assert_eq!(p.rejoin(secs(113), lost), Some(PeerAction::Dial { addr: "anchor:1".into() }));
    // Full, it turns us away with members on its side, which we cannot reach either.
    let far = [PeerAddr { zone: String::new(), node: "z".into(), addr: "z:1".into() }];
    p.on_dial_refused("anchor:1", &far, secs(113));
    let lost = |n: &str| !matches!(n, "anchor" | "z");
    assert_eq!(p.rejoin(secs(116), lost), None, "one rejoin dial per interval or so");
    assert_eq!(p.rejoin(secs(130), lost), Some(PeerAction::Dial { addr: "z:1".into() }));

    // Healed: the anchor is reachable again, through the new link; nothing more is dialled.
    assert_eq!(p.rejoin(secs(200), |_| true), None);
}

#[test]
fn with_areas_a_member_seeks_its_own_area_and_one_long_link_never_an_anchor_for_that() {
    use crate::routing::area_of;
    let areas = 4;
    let mine = area_of("me", areas);
    let mut p = PeerSet::new("me", PeerConfig::default(), &["anchor:1".to_owned()], Time::ZERO)
        .with_areas(areas);
    assert_eq!(p.on_tick(Time::ZERO), vec![PeerAction::Dial { addr: "anchor:1".into() }]);
    p.on_connected("anchor", "anchor:1", Time::ZERO).unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let peers: Vec<PeerAddr> = names
        .iter()
        .map(|n| PeerAddr { zone: String::new(), node: n.clone(), addr: format!("{n}:1") })
        .collect();
    p.on_exchange(&peers, Time::ZERO);
    let dialled: Vec<String> = p
        .on_tick(secs(1))
        .into_iter()
        .filter_map(|a| match a {
            PeerAction::Dial { addr } => Some(addr.trim_end_matches(":1").to_owned()),
            _ => None,
        })
        .collect();
    let own = dialled.iter().filter(|n| area_of(n, areas) == mine).count();
    let anchor_own = usize::from(area_of("anchor", areas) == mine);
    assert_eq!(own + anchor_own, 3, "min_peers 3 inside the area: {dialled:?}");
    // The anchor link is the long link when the anchor is in another area; else one more.
    let other = dialled.len() - own;
    assert_eq!(other + 1 - anchor_own, 1, "one link outside the area: {dialled:?}");
}

#[test]
fn with_areas_a_full_address_book_makes_room_for_its_own_area_and_refers_the_dialers_area_first() {
    use crate::routing::area_of;
    let areas = 8;
    let mine = area_of("me", areas);
    let mut p = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO).with_areas(areas);
    let foreign: Vec<PeerAddr> = (0..)
        .map(|i| format!("f{i}"))
        .filter(|n| area_of(n, areas) != mine)
        .take(MAX_KNOWN)
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&foreign, Time::ZERO);
    assert_eq!(p.dials.len(), MAX_KNOWN);
    let own: Vec<PeerAddr> = (0..)
        .map(|i| format!("o{i}"))
        .filter(|n| area_of(n, areas) == mine)
        .take(10)
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&own, Time::ZERO);
    assert_eq!(p.dials.len(), MAX_KNOWN, "still bounded");
    assert!(own.iter().all(|o| p.dials.contains_key(&o.addr)), "every member of our area kept");
    // A dialer from area X hears of X's members first.
    let dialer = foreign[0].node.clone();
    let theirs = area_of(&dialer, areas);
    let list = p.referrals(&dialer, Time::ZERO);
    let first = &list[..list.len().min(5)];
    assert!(first.iter().all(|r| area_of(&r.node, areas) == theirs), "{first:?}");
}

#[test]
fn with_areas_places_are_kept_for_links_into_ones_own_area() {
    use crate::routing::area_of;
    let areas = 4;
    let mine = area_of("me", areas);
    let mut p = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO).with_areas(areas);
    let mut names = (0..).map(|i| format!("n{i}"));
    let mut foreign = names.clone().filter(|n| area_of(n, areas) != mine);
    let limit = p.link_limit();
    let kept = PeerConfig::default().min_peers;
    // Other areas' dialers fill all but the kept places...
    for _ in 0..limit - kept {
        let n = foreign.next().unwrap();
        p.admit_inbound(&n, Time::ZERO).unwrap();
        p.on_connected(&n, &format!("{n}:1"), Time::ZERO).unwrap();
    }
    let refused = p.admit_inbound(&foreign.next().unwrap(), Time::ZERO).unwrap_err();
    assert!(refused.starts_with(FULL), "{refused}");
    // ... which a member of our own area still gets.
    let own = names.find(|n| area_of(n, areas) == mine).unwrap();
    p.admit_inbound(&own, Time::ZERO).unwrap();
    p.on_connected(&own, &format!("{own}:1"), Time::ZERO).unwrap();
    // It took one of the kept places; the others stay kept.
    assert!(p.admit_inbound(&foreign.next().unwrap(), Time::ZERO).is_err());
    let second = names.find(|n| area_of(n, areas) == mine).unwrap();
    p.admit_inbound(&second, Time::ZERO).unwrap();
}

#[test]
fn with_areas_a_full_address_book_keeps_a_few_addresses_of_every_area() {
    use crate::routing::area_of;
    let areas = 8;
    let mine = area_of("me", areas);
    let mut p = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO).with_areas(areas);
    let crowded = (mine + 1) % areas;
    let fill: Vec<PeerAddr> = (0..)
        .map(|i| format!("c{i}"))
        .filter(|n| area_of(n, areas) == crowded)
        .take(MAX_KNOWN)
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&fill, Time::ZERO);
    assert_eq!(p.dials.len(), MAX_KNOWN);
    // A rare area's members find room (up to a few), taken from the crowded area.
    let rare = (mine + 2) % areas;
    let few: Vec<PeerAddr> = (0..)
        .map(|i| format!("r{i}"))
        .filter(|n| area_of(n, areas) == rare)
        .take(PER_AREA_KEPT + 3)
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&few, Time::ZERO);
    assert_eq!(p.dials.len(), MAX_KNOWN, "still bounded");
    assert_eq!(p.known_in(rare), PER_AREA_KEPT, "a few of the rare area, no more");
    assert_eq!(p.known_in(crowded), MAX_KNOWN - PER_AREA_KEPT);
}

#[test]
fn with_areas_a_peer_exchange_tells_the_neighbours_area_first_and_a_few_of_any_area() {
    use crate::routing::area_of;
    let areas = 8;
    let mut p = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO).with_areas(areas);
    let known: Vec<PeerAddr> = (0..200)
        .map(|i| format!("k{i}"))
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&known, Time::ZERO);
    let neighbour = "k0";
    let theirs = area_of(neighbour, areas);
    let list = p.exchange_list_for(neighbour, Time::ZERO);
    assert!(list.len() <= crate::frame::MAX_PEER_ADDRS);
    assert!(list.iter().all(|a| a.node != neighbour), "not itself");
    let of_theirs = list.iter().filter(|a| area_of(&a.node, areas) == theirs).count();
    let others = list.len() - of_theirs;
    assert!(of_theirs >= crate::frame::MAX_PEER_ADDRS - SPREAD_ADDRS - 1, "{list:?}");
    assert!(others >= 1, "addresses of other areas spread too: {list:?}");
}

#[test]
fn with_areas_a_member_that_knows_no_one_of_its_area_asks_others_and_backs_off() {
    use crate::routing::area_of;
    let areas = 8;
    let mine = area_of("me", areas);
    let mut foreign = (0..).map(|i| format!("f{i}")).filter(|n| area_of(n, areas) != mine);
    let (first, second) = (foreign.next().unwrap(), foreign.next().unwrap());
    let anchors = [format!("{first}:1"), format!("{second}:1")];
    let mut p = PeerSet::new("me", PeerConfig::default(), &anchors, Time::ZERO).with_areas(areas);
    // Joined through the first anchor, and linked only to other areas' members.
    p.on_connected(&first, &anchors[0], Time::ZERO).unwrap();
    let peers: Vec<PeerAddr> = foreign
        .take(3)
        .map(|n| PeerAddr { zone: String::new(), addr: format!("{n}:1"), node: n })
        .collect();
    p.on_exchange(&peers, Time::ZERO);
    for n in &peers {
        p.on_connected(&n.node, &n.addr, Time::ZERO).unwrap();
    }
    let other = anchors[1].clone();
    let rejoin = |p: &mut PeerSet, s: u64| p.rejoin(secs(s), |_| true);
    assert_eq!(rejoin(&mut p, 1), None, "not before a second alone");
    // Alone for a second, it dials a member it holds no link to (here, the other anchor),
    // which refers it to its own area.
    let dial = Some(PeerAction::Dial { addr: other.clone() });
    assert_eq!(rejoin(&mut p, 2), dial);
    p.on_dial_failed(&other, secs(2));
    // Lookups a second apart three times over...
    for at in [3, 4, 5] {
        assert_eq!(rejoin(&mut p, at), dial, "at {at} s");
        p.on_dial_failed(&other, secs(at));
    }
    // ... then twice as far apart after each three: a member alone in its area dials rarely.
    assert_eq!(rejoin(&mut p, 6), None, "2 s after the fourth");
    assert_eq!(rejoin(&mut p, 7), dial);
    p.on_dial_failed(&other, secs(7));
    let mut dials = 0;
    for s in 8..600 {
        if rejoin(&mut p, s).is_some() {
            dials += 1;
            p.on_dial_failed(&other, secs(s));
        }
    }
    assert!(dials < 20, "{dials} lookups in ten minutes");
    // The anchor turns us away with a member of our area: no more lookups.
    let own = (0..).map(|i| format!("o{i}")).find(|n| area_of(n, areas) == mine).unwrap();
    p.on_dial_refused(
        &other,
        &[PeerAddr { zone: String::new(), addr: format!("{own}:1"), node: own }],
        secs(600),
    );
    for s in 601..1200 {
        assert_eq!(rejoin(&mut p, s), None, "at {s} s");
    }
}

#[test]
fn with_a_zone_a_member_dials_its_own_zone_first_and_keeps_one_link_out_of_it() {
    let mut p = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO).with_zone("a");
    let peers: Vec<PeerAddr> = (0..12)
        .map(|i| PeerAddr {
            node: format!("n{i}"),
            addr: format!("n{i}:1"),
            zone: if i % 3 == 0 { "a" } else { "b" }.into(),
        })
        .collect();
    p.on_exchange(&peers, Time::ZERO);
    let zone_of = |addr: &str| peers.iter().find(|x| x.addr == addr).unwrap().zone.clone();
    let dialled: Vec<String> = p
        .on_tick(secs(1))
        .into_iter()
        .filter_map(|a| match a {
            PeerAction::Dial { addr } => Some(zone_of(&addr)),
            _ => None,
        })
        .collect();
    // min_peers 3, all of zone a (4 are known), and one more to zone b: none is held yet.
    assert_eq!(dialled.iter().filter(|z| *z == "a").count(), 3, "{dialled:?}");
    assert_eq!(dialled.iter().filter(|z| *z == "b").count(), 1, "{dialled:?}");
    // Once linked that way it seeks nothing more.
    for x in [0, 3, 6, 1].map(|i| &peers[i]) {
        p.on_connected(&x.node, &x.addr, secs(1)).unwrap();
        p.on_zone(&x.node, &x.zone);
    }
    let again = p.on_tick(secs(5));
    assert!(again.iter().all(|a| !matches!(a, PeerAction::Dial { .. })), "{again:?}");
    // Without a zone of its own, zones play no part: no extra dial.
    let mut q = PeerSet::new("me", PeerConfig::default(), &[], Time::ZERO);
    q.on_exchange(&peers, Time::ZERO);
    let dials = q.on_tick(secs(1)).iter().filter(|a| matches!(a, PeerAction::Dial { .. })).count();
    assert_eq!(dials, 3);
}
