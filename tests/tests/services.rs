//! Service names across real sidecar processes: published records, nearest-first CONNECT,
//! failover when the nearest goes, withdrawal, and a revoked member's records vanishing.

use std::io::{Read, Write};
use std::time::Duration;

use genesis_e2e::{
    answer_body, connect_tunnel, http, serve_echo, wait_for, Authority, Sidecar, SidecarOptions,
    Subnet,
};

const NET: &str = "svc";
const PORT: u16 = 9200;

/// `CONNECT echo.svc.svc:9200` through `via`: the member that took it (the `genesis-member`
/// header), checked with one echoed byte; or the proxy's answer when it refused.
fn connect_echo(via: &Sidecar) -> Result<String, String> {
    let (mut s, head) =
        connect_tunnel(&via.api, &format!("echo.svc.{NET}:{PORT}")).map_err(|e| e.to_string())?;
    if !head.starts_with("HTTP/1.1 200") {
        let body = answer_body(&mut s, &head);
        return Err(format!("{head}{body}"));
    }
    s.write_all(b"x").unwrap();
    let mut echo = [0u8; 1];
    s.read_exact(&mut echo).map_err(|e| format!("no echo: {e}"))?;
    assert_eq!(&echo, b"x");
    let member = head
        .lines()
        .find_map(|l| l.strip_prefix("genesis-member: "))
        .unwrap_or_else(|| panic!("no genesis-member header in {head}"));
    Ok(member.trim().to_owned())
}

fn services_at(s: &Sidecar) -> Vec<(String, String, Option<u64>)> {
    let v = s.admin_json("/admin/services");
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["member"].as_str().unwrap().to_owned(),
                r["metric"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn a_service_name_reaches_the_nearest_member_offering_it_fails_over_and_vanishes_on_revocation() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    // a, b and c all link to each other; c is in another zone, so the link to it costs 500
    // more and b is a's nearest. b and c offer echo (b from its config, c by the API).
    let zones = ["z1", "z1", "z2"];
    let mut members: Vec<Sidecar> = (0..3u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(1))] };
            let mut extra = vec!["--zone".to_owned(), zones[i as usize].to_owned()];
            if i == 1 {
                extra.extend(["--service".to_owned(), format!("echo={PORT}")]);
            }
            let opts =
                SidecarOptions { anchors, allowed_ports: vec![PORT], extra, ..Default::default() };
            Sidecar::start(&auth, ["a", "b", "c"][i as usize], &net.ip(i + 1), &opts)
        })
        .collect();
    serve_echo(&format!("{}:{PORT}", net.ip(2)));
    serve_echo(&format!("{}:{PORT}", net.ip(3)));
    wait_for(Duration::from_secs(30), "a full mesh of three", || {
        members.iter().all(|s| s.routes().len() == 2)
    });
    // A bad offer is refused with the reason; a good one is published.
    let offer = |s: &Sidecar, name: &str, body: &str| {
        http(&s.api, "PUT", &format!("/v1/services/{name}"), body.as_bytes()).unwrap()
    };
    let (status, body) = offer(&members[2], "Echo", "{\"port\": 9200}");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not a service name"));
    let (status, body) = offer(&members[2], "echo", "{\"port\": 9300}");
    assert_eq!(
        status,
        403,
        "a port the network does not allow: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(offer(&members[2], "echo", "{\"port\": 9200}").0, 204);

    wait_for(Duration::from_secs(10), "a to know both offers", || {
        services_at(&members[0]).iter().filter(|s| s.0 == "echo" && s.2.is_some()).count() == 2
    });
    let known = services_at(&members[0]);
    assert_eq!(known[0].1, "b", "nearest first: {known:?}");
    assert!(known[0].2 < known[1].2, "{known:?}");
    assert_eq!(connect_echo(&members[0]).unwrap(), "b", "the nearest member takes it");
    // c reaches its own service in its own pod.
    assert_eq!(connect_echo(&members[2]).unwrap(), "c");
    // A port the service is not offered on: a clear refusal naming the right one.
    let (mut s, head) = connect_tunnel(&members[0].api, &format!("echo.svc.{NET}:9300")).unwrap();
    let rest = answer_body(&mut s, &head);
    assert!(head.starts_with("HTTP/1.1 403"), "9300 is not an allowed port: {head}{rest}");

    // b goes: a fails over to c once b's route is gone.
    members[1].kill();
    wait_for(Duration::from_secs(20), "a to fail over to c", || {
        connect_echo(&members[0]).is_ok_and(|m| m == "c")
    });

    // c is revoked: its record vanishes with its routes, and the name has no member left.
    auth.revoke("c");
    let crl = std::fs::read(auth.dir.path().join("crl.der")).unwrap();
    assert_eq!(http(&members[0].admin, "POST", "/admin/crl", &crl).unwrap().0, 200);
    wait_for(Duration::from_secs(10), "c's record to vanish at a", || {
        services_at(&members[0]).iter().all(|s| s.1 != "c")
    });
    let refused = connect_echo(&members[0]).unwrap_err();
    assert!(
        refused.contains("HTTP/1.1 502")
            && refused.contains("no reachable member offers service echo"),
        "{refused}"
    );
}

#[test]
fn withdrawing_a_service_removes_it_across_the_mesh() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    // A line a - b - c: the record crosses a relay.
    let members: Vec<Sidecar> = (0..3u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            let extra =
                if i == 2 { vec!["--service".to_owned(), format!("echo={PORT}")] } else { vec![] };
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
    serve_echo(&format!("{}:{PORT}", net.ip(3)));
    wait_for(Duration::from_secs(30), "a to route to c", || {
        members[0].routes().contains(&"c".to_owned())
    });
    wait_for(Duration::from_secs(10), "a to know c's service", || {
        services_at(&members[0]).iter().any(|s| s.1 == "c")
    });
    assert_eq!(connect_echo(&members[0]).unwrap(), "c", "two hops away, through b");
    let (status, _) = http(&members[2].api, "DELETE", "/v1/services/echo", b"").unwrap();
    assert_eq!(status, 204);
    wait_for(Duration::from_secs(10), "the withdrawal to reach a", || {
        services_at(&members[0]).is_empty()
    });
    assert!(connect_echo(&members[0]).unwrap_err().contains("no reachable member offers"));
    wait_for(Duration::from_secs(5), "the services gauge at a to fall to 0", || {
        members[0].metric("genesis_sidecar_services", "") == 0.0
    });
}
