//! Real sidecar processes in a network of three routing areas: every member reaches every
//! other by message and by tunnel, with a table of its own area's members and one route per
//! other area (docs/SCALE.md, "Routing areas").

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use genesis_e2e::{
    connect_tunnel, serve_echo, wait_for, Authority, Sidecar, SidecarOptions, Subnet,
};
use genesis_sidecar::routing::area_of;

const AREAS: u16 = 3;
const MEMBERS: u8 = 15;
const APP_PORT: u16 = 9300;

#[test]
fn members_of_three_areas_reach_each_other_by_message_and_tunnel_on_small_tables() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "areas", "24h");
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let mut per_area: BTreeMap<u16, usize> = BTreeMap::new();
    for n in &names {
        *per_area.entry(area_of(n, AREAS)).or_default() += 1;
    }
    assert_eq!(per_area.len(), usize::from(AREAS), "15 names fill all three areas: {per_area:?}");
    let extra = vec!["--areas".to_owned(), AREAS.to_string()];
    let nodes: Vec<Sidecar> = (0..MEMBERS)
        .map(|i| {
            // Everyone bootstraps from m0 and m1: the areas' links come from peer exchange.
            let anchors =
                [0u8, 1].iter().filter(|a| **a != i).map(|a| format!("{}:7000", net.ip(a + 1)));
            let opts = SidecarOptions {
                anchors: anchors.collect(),
                min_peers: 2,
                max_peers: 6,
                allowed_ports: vec![APP_PORT],
                extra: extra.clone(),
                ..Default::default()
            };
            Sidecar::start(&auth, &names[usize::from(i)], &net.ip(i + 1), &opts)
        })
        .collect();
    let expected = |n: &str| per_area[&area_of(n, AREAS)] - 1 + usize::from(AREAS) - 1;
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(60), "every member's table: its area and the others", || {
            nodes.iter().all(|s| s.routes().len() == expected(&s.node))
        })
    }));
    if converged.is_err() {
        for s in &nodes {
            eprintln!(
                "{} (area {}): {}",
                s.node,
                area_of(&s.node, AREAS),
                s.admin_json("/admin/routes")
            );
        }
        panic!("the areas did not converge");
    }
    // Area routes name their area on the admin API.
    let routes = nodes[0].admin_json("/admin/routes");
    let areas: Vec<u64> =
        routes.as_array().unwrap().iter().filter_map(|r| r["area"].as_u64()).collect();
    assert_eq!(areas.len(), usize::from(AREAS) - 1, "{routes}");
    // Every member sends to every member of another area, with a receipt.
    for a in &nodes {
        for b in nodes.iter().filter(|b| area_of(&b.node, AREAS) != area_of(&a.node, AREAS)) {
            let (status, body) = a.send(&b.node, format!("{} to {}", a.node, b.node).as_bytes());
            assert_eq!(status, 200, "{} to {}: {body}", a.node, b.node);
        }
    }
    for b in &nodes {
        let senders = nodes.iter().filter(|a| area_of(&a.node, AREAS) != area_of(&b.node, AREAS));
        let mut got = b.inbox(0).len();
        wait_for(Duration::from_secs(10), "every message in the inbox", || {
            got += b.inbox(100).len();
            got >= senders.clone().count()
        });
    }
    // A tunnel across areas (the stream's frames follow the area route, then the member
    // route inside the far area).
    let far =
        nodes.iter().find(|b| area_of(&b.node, AREAS) != area_of(&nodes[0].node, AREAS)).unwrap();
    serve_echo(&format!("{}:{APP_PORT}", far.ip));
    let (mut s, head) =
        connect_tunnel(&nodes[0].api, &format!("{}.areas:{APP_PORT}", far.node)).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let payload = vec![7u8; 256 * 1024];
    s.write_all(&payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}
