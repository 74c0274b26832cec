//! A ring of eight sidecar processes: kill one, traffic reroutes; restart it, it rejoins.

use std::time::{Duration, Instant};

use genesis_e2e::{wait_for, Authority, Sidecar, SidecarOptions, Subnet};

/// Member `i` (0-based) of a ring of `n`: its anchors are both ring neighbours.
///
/// NB: max-peers 3, not 2. A graph where every node has degree at most 2 is a set of cycles,
/// so after a kill two survivors could close a small cycle of their own and cut the ring in
/// two. With one spare slot, the surviving ring path (anchor links, never evicted) stays whole
/// and a node below min-peers may add one chord.
fn ring_opts(net: &Subnet, i: u8, n: u8) -> SidecarOptions {
    let ip = |j: u8| format!("{}:7000", net.ip(j % n + 1));
    SidecarOptions {
        anchors: vec![ip(i + n - 1), ip(i + 1)],
        min_peers: 2,
        max_peers: 3,
        ..Default::default()
    }
}

#[test]
fn a_ring_of_eight_reroutes_around_a_killed_node_and_takes_it_back() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "ring", "24h");
    let n = 8u8;
    let mut nodes: Vec<Sidecar> = (0..n)
        .map(|i| Sidecar::start(&auth, &format!("r{i}"), &net.ip(i + 1), &ring_opts(&net, i, n)))
        .collect();
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(40), "every ring member to reach every other", || {
            nodes.iter().all(|s| s.routes().len() == usize::from(n) - 1)
        })
    }));
    if converged.is_err() {
        for s in &nodes {
            let peers = s.admin_json("/admin/peers");
            eprintln!("{}: routes {:?} peers {}", s.node, s.routes(), peers);
        }
        panic!("not converged");
    }
    let via = |s: &Sidecar, dest: &str| {
        s.admin_json("/admin/routes")
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dest"] == dest)
            .map(|r| r["next_hop"].as_str().unwrap().to_owned())
    };
    // A destination at least two hops from r0, and the member relaying for it.
    let routes = nodes[0].admin_json("/admin/routes");
    let far = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hops"].as_u64() >= Some(2))
        .expect("a ring has far members")
        .clone();
    let dest = far["dest"].as_str().unwrap().to_owned();
    let victim = far["next_hop"].as_str().unwrap().to_owned();
    let vi: usize = victim[1..].parse().unwrap();
    assert_eq!(nodes[0].send(&dest, b"before").0, 200);

    nodes[vi].kill();
    let killed = Instant::now();
    // Rerouted: delivered again, and not through the dead member.
    let rerouted = wait_for(
        Duration::from_secs(20),
        "r0 to reach the far member without the dead relay",
        || {
            via(&nodes[0], &dest).is_some_and(|v| v != victim)
                && nodes[0].send(&dest, b"after").0 == 200
        },
    );
    eprintln!(
        "rerouted around {victim} to {dest} {:?} after the kill (hold time 1s)",
        killed.elapsed().min(rerouted)
    );
    let di: usize = dest[1..].parse().unwrap();
    assert!(nodes[di].inbox(1000).iter().any(|m| m["from"] == "r0"));

    // Restart the dead member with a new token: it rejoins and everyone reaches it again.
    nodes[vi] =
        Sidecar::start(&auth, &victim, &net.ip(vi as u8 + 1), &ring_opts(&net, vi as u8, n));
    wait_for(Duration::from_secs(30), "every member to reach the restarted member again", || {
        nodes.iter().filter(|s| s.node != victim).all(|s| via(s, &victim).is_some())
            && nodes[vi].routes().len() == usize::from(n) - 1
    });
    assert_eq!(nodes[0].send(&victim, b"welcome back").0, 200);
    let opposite = format!("r{}", (vi + 4) % usize::from(n));
    assert_eq!(nodes[vi].send(&opposite, b"and on to the far side").0, 200);
}
