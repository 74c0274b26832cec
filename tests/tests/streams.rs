//! Broken end-to-end streams: the app hears of a break (a reset, an error status) instead of
//! a hang or a clean-looking end, and a break never poisons the next message on the pair.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use genesis_e2e::{
    connect_tunnel, serve_echo, wait_for, Authority, Sidecar, SidecarOptions, Subnet,
};

/// A CONNECT tunnel through `via`'s API to `target`, checked with one echoed byte.
fn tunnel(via: &Sidecar, target: &str) -> TcpStream {
    let (mut s, head) = connect_tunnel(&via.api, target).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"x").unwrap();
    let mut echo = [0u8; 1];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"x");
    s
}

fn signal(node: &Sidecar, sig: &str) {
    let pid = node.pid().expect("running").to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

/// Neighbours a and b (b anchored at a), both allowing port 9100, once a routes to b; `b_extra`
/// goes on b's command line.
fn neighbours(net: &Subnet, auth: &Authority, b_extra: &[&str]) -> (Sidecar, Sidecar) {
    let opts = SidecarOptions { allowed_ports: vec![9100], ..Default::default() };
    let a = Sidecar::start(auth, "a", &net.ip(1), &opts);
    let b_opts = SidecarOptions {
        anchors: vec![format!("{}:7000", net.ip(1))],
        extra: b_extra.iter().map(|s| s.to_string()).collect(),
        ..opts
    };
    let b = Sidecar::start(auth, "b", &net.ip(2), &b_opts);
    wait_for(Duration::from_secs(20), "a to route to b", || a.routes() == ["b"]);
    (a, b)
}

/// Direct streams `s` opened (`dir` "out") or accepted ("in").
fn direct_streams(s: &Sidecar, dir: &str) -> f64 {
    s.metric("genesis_sidecar_direct_streams_total", &format!("direction=\"{dir}\""))
}

#[test]
fn a_tunnel_whose_far_end_dies_is_reset_for_the_app_within_the_hold_time() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "rst", "24h");
    let (a, mut b) = neighbours(&net, &auth, &[]);
    serve_echo(&format!("{}:9100", net.ip(2)));
    let mut app = tunnel(&a, "b.rst:9100");

    b.kill();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let read = app.read(&mut buf);
    let waited = start.elapsed();
    match read {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!(
            "the app should see a reset when the far end dies, got {other:?} after {waited:?}\n{}",
            a.log_text()
        ),
    }
    // The hold time is 1 s here; the reset must not wait for anything longer.
    assert!(waited < Duration::from_secs(5), "the reset took {waited:?}");
    assert!(a.metric("genesis_sidecar_streams_reset_total", "direction=\"received\"") >= 1.0);
}

#[test]
fn a_stalled_relay_neither_hangs_a_tunnel_nor_poisons_later_messages_on_the_pair() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "stall", "24h");
    // A line a - r - b: every stream crosses r (the ends keep one link each, so they do not
    // link to each other while r is up).
    let line = |anchor: Option<u8>, max_peers: usize| SidecarOptions {
        anchors: anchor.map(|i| vec![format!("{}:7000", net.ip(i))]).unwrap_or_default(),
        min_peers: 1,
        max_peers,
        allowed_ports: vec![9101],
        ..Default::default()
    };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &line(None, 1));
    let r = Sidecar::start(&auth, "r", &net.ip(2), &line(Some(1), 2));
    let b = Sidecar::start(&auth, "b", &net.ip(3), &line(Some(2), 1));
    wait_for(Duration::from_secs(30), "a to route to b through r", || {
        a.admin_json("/admin/routes")
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x["dest"] == "b" && x["next_hop"] == "r"))
    });
    let (status, receipt) = a.send("b", b"before the stall");
    assert_eq!(status, 200, "{receipt}");
    serve_echo(&format!("{}:9101", net.ip(3)));
    let mut app = tunnel(&a, "b.stall:9101");
    let via_r = a
        .admin_json("/admin/routes")
        .as_array()
        .is_some_and(|rs| rs.iter().any(|x| x["dest"] == "b" && x["next_hop"] == "r"));
    assert!(via_r, "the tunnel must cross r: {}", a.admin_json("/admin/routes"));

    signal(&r, "-STOP");
    // The tunnel's path is gone: the app gets a reset, not a hang and not a clean end.
    let start = Instant::now();
    let _ = app.write_all(b"y");
    let mut buf = [0u8; 16];
    let read = app.read(&mut buf);
    let waited = start.elapsed();
    // A message sent into the stall may or may not arrive; it must not poison the pair.
    let (stalled, answer) = a.send("b", b"into the stall");
    signal(&r, "-CONT");
    match read {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!(
            "a stalled path should reset the tunnel, got {other:?} after {waited:?}\n--- a\n{}\n--- r\n{}\n--- b\n{}",
            a.log_text(),
            r.log_text(),
            b.log_text()
        ),
    }
    assert!(waited < Duration::from_secs(10), "the reset took {waited:?}");
    assert!(stalled == 200 || answer["error"].is_string(), "{stalled} {answer}");

    wait_for(Duration::from_secs(30), "a to route to b again", || {
        a.routes().contains(&"b".to_owned())
    });
    for i in 0..5 {
        let (status, receipt) = a.send("b", format!("after the stall {i}").as_bytes());
        assert_eq!(
            status,
            200,
            "message {i} after the stall: {receipt}\n--- a\n{}\n--- b\n{}",
            a.log_text(),
            b.log_text()
        );
    }
}

#[test]
fn a_message_pair_keeps_working_after_the_far_end_restarts() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "again", "24h");
    let (a, mut b) = genesis_e2e::linked_pair(&auth, &net);
    let (status, receipt) = a.send("b", b"first");
    assert_eq!(status, 200, "{receipt}");
    b.kill();
    let b_opts = SidecarOptions {
        anchors: vec![format!("{}:7000", net.ip(1))],
        min_peers: 1,
        max_peers: 4,
        ..Default::default()
    };
    let b = Sidecar::start(&auth, "b", &net.ip(2), &b_opts);
    wait_for(Duration::from_secs(20), "a to route to the restarted b", || a.routes() == ["b"]);
    // The channel a held belongs to b's previous life: it must be replaced, not reused for
    // ever (each message would wait out its receipt timeout and fail).
    for i in 0..3 {
        let (status, receipt) = a.send("b", format!("after the restart {i}").as_bytes());
        assert_eq!(status, 200, "message {i}: {receipt}\n--- a\n{}", a.log_text());
    }
    assert!(b.inbox(2000).iter().any(|m| m["from"] == "a"));
}

/// The pattern both ends of the bulk test send: not a repeat of any buffer size, so a byte
/// moved, dropped or doubled changes the checksum.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn checksum(sum: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)))
}

/// Reads `s` to its end: (bytes, checksum). An end that never comes fails the test.
fn drain(s: &mut TcpStream) -> (usize, u64) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 100_000];
    let (mut total, mut sum) = (0, 0);
    loop {
        match s.read(&mut buf).unwrap_or_else(|e| panic!("after {total} bytes: {e}")) {
            0 => return (total, sum),
            n => {
                total += n;
                sum = checksum(sum, &buf[..n]);
            }
        }
    }
}

/// A direct stream (neighbours, no end-to-end TLS) carries bulk both ways at once intact, and
/// passes each side's half-close on, whichever side finishes first: the app that closes its
/// sending side still receives all the other side sends after it.
#[test]
fn a_direct_tunnel_carries_bulk_both_ways_intact_and_passes_each_half_close_on() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "bulk", "24h");
    let (a, b) = neighbours(&net, &auth, &[]);
    let (small, large) = (4 << 20, 32 << 20);
    // The app behind b. First connection: it sends `small` bytes and closes its sending side
    // at once, then reads until the client's half-close, while the client is still sending.
    // Second: it answers only after the client's half-close reached it.
    let server = std::net::TcpListener::bind(format!("{}:9100", net.ip(2))).unwrap();
    let served = std::thread::spawn(move || {
        let mut got = Vec::new();
        for answer_after_eof in [false, true] {
            let (mut s, _) = server.accept().unwrap();
            if !answer_after_eof {
                s.write_all(&pattern(small, 3)).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            got.push(drain(&mut s));
            if answer_after_eof {
                s.write_all(&pattern(small, 3)).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
        got
    });
    let dump = || format!("--- a\n{}--- b\n{}", a.log_text(), b.log_text());
    let expected = (small, checksum(0, &pattern(small, 3)));
    // Both ways at once.
    let (mut s, head) = genesis_e2e::connect_tunnel(&a.api, "b.bulk:9100").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&pattern(large, 5)).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    assert_eq!(drain(&mut s), expected, "{}", dump());
    writer.join().unwrap();
    // The client first, then the answer.
    let (mut s, head) = genesis_e2e::connect_tunnel(&a.api, "b.bulk:9100").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&pattern(large / 4, 5)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(drain(&mut s), expected, "{}", dump());
    let at_server = served.join().unwrap();
    let sent = |len| (len, checksum(0, &pattern(len, 5)));
    assert_eq!(at_server, [sent(large), sent(large / 4)], "{}", dump());
    assert_eq!(
        (direct_streams(&a, "out"), direct_streams(&b, "in")),
        (2.0, 2.0),
        "the streams went direct"
    );
    // Every end closed cleanly: nobody was reset.
    assert_eq!(a.metric("genesis_sidecar_streams_reset_total", "direction=\"sent\""), 0.0);
    assert_eq!(b.metric("genesis_sidecar_streams_reset_total", "direction=\"sent\""), 0.0);
}

/// A neighbour that takes no direct streams (turned off there, or an older release) refuses
/// the direct opening; the opener falls back to end-to-end TLS, remembers the refusal for
/// that link, and the app never notices.
#[test]
fn a_neighbour_that_refuses_direct_streams_gets_end_to_end_tls_and_the_app_never_notices() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "e2e", "24h");
    let (a, b) = neighbours(&net, &auth, &["--direct-streams", "false"]);
    serve_echo(&format!("{}:9100", net.ip(2)));
    let first = tunnel(&a, "b.e2e:9100");
    let second = tunnel(&a, "b.e2e:9100");
    drop((first, second));
    assert_eq!((direct_streams(&a, "out"), direct_streams(&b, "in")), (0.0, 0.0));
    assert_eq!(b.metric("genesis_sidecar_streams_total", "direction=\"in\",result=\"ok\""), 2.0);
    // One refusal, then end-to-end TLS straight away for the second tunnel.
    let refusals = a.log_text().matches("direct stream refused").count();
    assert_eq!(refusals, 1, "{}", a.log_text());
}

/// An app that only knows host and port (no CONNECT) reaches a member, or the nearest member
/// offering a service, through an upstream port; a target that cannot be reached resets the
/// app's connection, and the sidecar says why.
#[test]
fn an_upstream_port_tunnels_a_plain_tcp_app_and_resets_it_when_the_target_is_unreachable() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "e2e", "24h");
    let upstreams = ["15000=b.e2e:9100", "15001=echo.svc.e2e:9100", "15002=nobody.e2e:9100"];
    let a_opts = SidecarOptions {
        allowed_ports: vec![9100],
        extra: vec!["--upstream".into(), upstreams.join(",")],
        ..Default::default()
    };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &a_opts);
    let b_opts = SidecarOptions {
        anchors: vec![format!("{}:7000", net.ip(1))],
        allowed_ports: vec![9100],
        extra: vec!["--service".into(), "echo=9100".into()],
        ..Default::default()
    };
    let _b = Sidecar::start(&auth, "b", &net.ip(2), &b_opts);
    serve_echo(&format!("{}:9100", net.ip(2)));
    wait_for(Duration::from_secs(20), "a to route to b and know its service", || {
        a.routes() == ["b"]
            && a.admin_json("/admin/services").as_array().is_some_and(|s| !s.is_empty())
    });
    // A megabyte each way, byte for byte, through the member and the service upstreams.
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for port in [15000, 15001] {
        let mut s = TcpStream::connect((net.ip(1).as_str(), port)).unwrap();
        let writer = {
            let (mut w, payload) = (s.try_clone().unwrap(), payload.clone());
            std::thread::spawn(move || w.write_all(&payload).unwrap())
        };
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == payload, "port {port}: the echo differs from what was sent");
    }
    // No such member: the app's connection is reset, not left hanging or closed cleanly.
    let mut s = TcpStream::connect((net.ip(1).as_str(), 15002)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    let read = s.read(&mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset, got {read:?}"
    );
    let count = |result: &str| {
        a.metric("genesis_sidecar_upstream_connections_total", &format!("result=\"{result}\""))
    };
    assert_eq!((count("ok"), count("refused")), (2.0, 1.0));
    let log = a.log_text();
    assert!(log.contains("no route to nobody"), "{log}");
}
