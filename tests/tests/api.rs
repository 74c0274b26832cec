//! The app API and health endpoints as an app and a probe use them.

use std::time::Duration;

use base64::Engine;
use genesis_e2e::{http, wait_for, Authority, Sidecar, SidecarOptions, Subnet};

#[test]
fn broadcasts_reach_everyone_and_topics_only_their_subscribers() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "pubsub", "24h");
    let nodes: Vec<Sidecar> = (0..4u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            Sidecar::start(
                &auth,
                &format!("m{i}"),
                &net.ip(i + 1),
                &SidecarOptions { anchors, min_peers: 1, max_peers: 2, ..Default::default() },
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "the line to converge", || nodes[0].routes().len() == 3);
    assert_eq!(http(&nodes[3].api, "PUT", "/v1/subscriptions/orders", b"").unwrap().0, 204);
    assert_eq!(http(&nodes[0].api, "POST", "/v1/broadcast", b"to everyone").unwrap().0, 202);
    assert_eq!(http(&nodes[0].api, "POST", "/v1/topics/orders", b"order 42").unwrap().0, 202);
    let decode = |m: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD.decode(m["body"].as_str().unwrap()).unwrap()
    };
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let mut got = Vec::new();
        wait_for(Duration::from_secs(10), "the broadcast to arrive", || {
            got.extend(n.inbox(200));
            got.iter().any(|m| m["kind"] == "broadcast")
        });
        let broadcast = got.iter().find(|m| m["kind"] == "broadcast").unwrap();
        assert_eq!(broadcast["from"], "m0");
        // The source's identity, from the certificate its signature was checked with.
        let identity = broadcast["fromIdentity"].as_str().unwrap_or_default();
        let source: genesis_trust::Identity = identity.parse().expect("an identity URI");
        assert_eq!((source.network(), source.node()), ("pubsub", "m0"), "{identity}");
        assert_eq!(decode(broadcast), b"to everyone");
        std::thread::sleep(Duration::from_millis(300));
        got.extend(n.inbox(0));
        let topic: Vec<_> = got.iter().filter(|m| m["kind"] == "topic").collect();
        if i == 3 {
            assert_eq!(topic.len(), 1, "the subscriber got the topic message once: {got:?}");
            assert_eq!(decode(topic[0]), b"order 42");
        } else {
            assert!(topic.is_empty(), "m{i} is not subscribed but got {topic:?}");
        }
        assert_eq!(
            got.iter().filter(|m| m["kind"] == "broadcast").count(),
            1,
            "duplicates suppressed"
        );
    }
}

#[test]
fn refusals_are_clear_http_errors_and_readyz_names_its_checks() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "api", "24h");
    let opts = |anchors: Vec<String>| SidecarOptions {
        anchors,
        min_peers: 1,
        max_peers: 4,
        allowed_ports: vec![8080],
        ..Default::default()
    };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &opts(vec![]));
    // Alone, a has no peers and no routes: serving nothing, so unhealthy (503), each check named.
    let (status, body) = http(&a.admin, "GET", "/readyz", b"").unwrap();
    let ready: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, ready["status"].as_str()), (503, Some("unhealthy")), "{ready}");
    let failing: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["peers", "routes"]);

    let b = Sidecar::start(&auth, "b", &net.ip(2), &opts(vec![format!("{}:7000", net.ip(1))]));
    wait_for(Duration::from_secs(20), "a and b to link", || a.routes() == ["b"]);
    // One peer of a minimum of one, routes present: healthy.
    let (status, body) = http(&a.admin, "GET", "/readyz", b"").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"healthy\""));

    let err = |r: std::io::Result<(u16, Vec<u8>)>| {
        let (s, b) = r.unwrap();
        let json = serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default();
        let text = json["error"].as_str().map(str::to_owned);
        (s, text.unwrap_or_else(|| String::from_utf8_lossy(&b).into_owned()))
    };
    let (s, e) = err(http(&a.api, "POST", "/v1/messages/nobody", b"hi"));
    assert!(s == 404 && e.contains("no route to nobody"), "{s} {e}");
    let (s, e) = err(http(&a.api, "POST", "/v1/messages/b", &vec![0u8; 40 * 1024]));
    assert!(s == 413 && e.contains("larger than"), "{s} {e}");
    let (s, e) = err(http(&a.api, "CONNECT", "b.api:22", b""));
    assert!(s == 403 && e.contains("port 22"), "{s} {e}");
    let (s, e) = err(http(&a.api, "CONNECT", "b.elsewhere:8080", b""));
    assert!(s == 400 && e.contains("not a member or service of network api"), "{s} {e}");
    let (s, e) = err(http(&a.api, "CONNECT", "nobody.api:8080", b""));
    assert!(s == 502 && e.contains("no route to nobody"), "{s} {e}");
    // Allowed port, but nothing listens there in b's pod: the destination says so.
    let (s, e) = err(http(&a.api, "CONNECT", "b.api:8080", b""));
    assert!(s == 502 && e.contains("nothing accepts connections on port 8080"), "{s} {e}");
    let (s, e) = err(http(&a.api, "PUT", "/v1/subscriptions/Bad_Topic", b""));
    assert!(s == 400 && e.contains("invalid topic"), "{s} {e}");
    let (s, _) = err(http(&a.api, "GET", "/v1/nothing", b""));
    assert_eq!(s, 404);
    drop(b);
}

/// Zones as real sidecars report them: s0 and s1 in zone a, s2 in zone b, all linked to s0.
/// The admin API names each peer's zone and each route's next-hop zone, and the gauges count
/// links and routes by zone.
#[test]
fn zones_show_in_the_admin_api_and_the_metrics() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "zones", "24h");
    let nodes: Vec<Sidecar> = ["a", "a", "b"]
        .iter()
        .enumerate()
        .map(|(i, zone)| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(1))] };
            let extra = vec!["--zone".into(), (*zone).into()];
            let opts = SidecarOptions { anchors, min_peers: 1, extra, ..Default::default() };
            Sidecar::start(&auth, &format!("s{i}"), &net.ip(i as u8 + 1), &opts)
        })
        .collect();
    let s0 = &nodes[0];
    wait_for(Duration::from_secs(30), "s0 to route to both", || s0.routes().len() == 2);
    let peers = s0.admin_json("/admin/peers");
    let zone_of = |node: &str| {
        peers.as_array().unwrap().iter().find(|p| p["node"] == node).map(|p| p["zone"].clone())
    };
    assert_eq!(zone_of("s1"), Some("a".into()), "{peers}");
    assert_eq!(zone_of("s2"), Some("b".into()), "{peers}");
    let routes = s0.admin_json("/admin/routes");
    let via = |dest: &str| {
        let r = routes.as_array().unwrap().iter().find(|r| r["dest"] == dest).unwrap().clone();
        (r["next_hop"].clone(), r["next_hop_zone"].clone())
    };
    assert_eq!(via("s2"), ("s2".into(), "b".into()), "{routes}");
    // The gauges refresh once a second.
    wait_for(Duration::from_secs(5), "the zone gauges", || {
        let gauge = |name: &str, zone: &str| s0.metric(name, &format!("zone=\"{zone}\""));
        gauge("genesis_sidecar_links_by_zone", "other") == 1.0
            && gauge("genesis_sidecar_routes_by_zone", "other") >= 1.0
            && gauge("genesis_sidecar_links_by_zone", "same") >= 1.0
            && gauge("genesis_sidecar_links_by_zone", "unknown") == 0.0
    });
}
