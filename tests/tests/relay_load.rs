//! Relay accounting across real sidecar processes: a relay counts what it relays per neighbour
//! and source, the source counts what was relayed for it, and a relay beyond its share refuses
//! new streams with the reason while its routes cost more.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use genesis_e2e::{
    answer_body, connect_tunnel, wait_for, Authority, Sidecar, SidecarOptions, Subnet,
};

const PORT: u16 = 9400;
const MIB: usize = 1 << 20;

/// Reads and drops everything sent to `addr`, answering one byte per connection once it has
/// read `expect` bytes.
fn serve_sink(addr: &str, expect: usize) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                while got < expect {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = s.write_all(b"k");
            });
        }
    });
}

fn metric_to(s: &Sidecar, dest: &str) -> u64 {
    let routes = s.admin_json("/admin/routes");
    let r = routes.as_array().unwrap().iter().find(|r| r["dest"] == dest).cloned();
    r.unwrap_or_else(|| panic!("no route to {dest}: {routes}"))["metric"].as_u64().unwrap()
}

#[test]
fn a_relay_counts_what_it_relays_and_past_its_share_refuses_new_streams_and_costs_more() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "relay", "24h");
    // A line a - b - c; b relays at most half of its traffic.
    let members: Vec<Sidecar> = (0..3u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            let extra = if i == 1 {
                vec!["--max-relay-share".to_owned(), "0.5".to_owned()]
            } else {
                vec![]
            };
            let opts = SidecarOptions {
                anchors,
                max_peers: 2,
                allowed_ports: vec![PORT],
                extra,
                ..Default::default()
            };
            Sidecar::start(&auth, ["a", "b", "c"][i as usize], &net.ip(i + 1), &opts)
        })
        .collect();
    let (a, b) = (&members[0], &members[1]);
    wait_for(Duration::from_secs(30), "a to route to c", || a.routes().contains(&"c".to_owned()));
    let before = metric_to(a, "c");
    serve_sink(&format!("{}:{PORT}", net.ip(3)), 3 * MIB);

    // a sends 3 MiB to c through b.
    let (mut s, head) = connect_tunnel(&a.api, &format!("c.relay:{PORT}")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..(3 * MIB / chunk.len()) {
        s.write_all(&chunk).unwrap();
    }
    let mut done = [0u8; 1];
    s.read_exact(&mut done).unwrap();

    // b's account: relayed for a, from source a; the share is all relay, so b is saturated.
    let relay = b.admin_json("/admin/relay");
    assert!(relay["relayed"]["bytes"].as_u64().unwrap() >= 3 * MIB as u64, "{relay}");
    assert_eq!(relay["sources"][0]["source"], "a", "{relay}");
    assert_eq!(relay["neighbours"][0]["node"], "a", "{relay}");
    assert!(relay["neighbours"][0]["relayed_for_it"]["bytes"].as_u64().unwrap() >= 3 * MIB as u64);
    assert_eq!(relay["saturated"], true, "{relay}");
    assert!(relay["share"].as_f64().unwrap() > 0.5, "{relay}");
    // a's account: b relayed its bytes.
    let mine = a.admin_json("/admin/relay");
    let via_b = mine["neighbours"].as_array().unwrap().iter().find(|n| n["node"] == "b").unwrap();
    assert!(via_b["relayed_for_us"]["bytes"].as_u64().unwrap() >= 3 * MIB as u64, "{mine}");
    assert!(
        b.metric("genesis_sidecar_relay_bytes_total", "direction=\"for_others\"")
            >= 3.0 * MIB as f64
    );
    assert!(
        a.metric("genesis_sidecar_relay_bytes_total", "direction=\"by_others\"")
            >= 3.0 * MIB as f64
    );

    // A new stream through b is refused with the reason; b's routes cost more at a.
    let (mut refused, head) = connect_tunnel(&a.api, &format!("c.relay:{PORT}")).unwrap();
    let body = answer_body(&mut refused, &head);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}{body}");
    assert!(body.contains("relay refused: b relayed") && body.contains("limit of 50 %"), "{body}");
    assert!(b.metric("genesis_sidecar_dropped_frames_total", "reason=\"relay_refused\"") >= 1.0);
    wait_for(Duration::from_secs(5), "b's saturation gauge", || {
        b.metric("genesis_sidecar_relay_saturated", "") == 1.0
    });
    wait_for(Duration::from_secs(5), "a's route to c to cost the relay penalty", || {
        metric_to(a, "c") >= before + 1000
    });
    // The stream already through b went on: it delivered everything above. Once the window
    // passes, b takes relay load again and its routes cost what they did.
    wait_for(Duration::from_secs(20), "b to leave saturation", || {
        b.admin_json("/admin/relay")["saturated"] == false
    });
    wait_for(Duration::from_secs(5), "a's route to c to lose the penalty", || {
        metric_to(a, "c") < before + 1000
    });
    let (_s, head) = connect_tunnel(&a.api, &format!("c.relay:{PORT}")).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
