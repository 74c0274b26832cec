//! A relay forwards end-to-end TLS records it cannot read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use genesis_e2e::{wait_for, Authority, Sidecar, SidecarOptions, Subnet};

#[test]
fn a_relay_sees_no_plaintext_of_a_tunnelled_stream_or_a_message() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "privacy", "24h");
    let capture = auth.dir.path().join("relay-capture.bin");
    let line = |i: u8, extra: Vec<String>| SidecarOptions {
        anchors: if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] },
        min_peers: 1,
        max_peers: 2,
        allowed_ports: vec![9000],
        extra,
        ..Default::default()
    };
    let a = Sidecar::start(&auth, "a", &net.ip(1), &line(0, vec![]));
    let relay = Sidecar::start(
        &auth,
        "relay",
        &net.ip(2),
        &line(1, vec!["--test-capture-relayed".into(), capture.display().to_string()]),
    );
    let b = Sidecar::start(&auth, "b", &net.ip(3), &line(2, vec![]));
    wait_for(Duration::from_secs(30), "a to route to b through the relay", || {
        a.admin_json("/admin/routes")
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["dest"] == "b" && r["next_hop"] == "relay"))
    });

    // An echo server beside b.
    let echo = std::net::TcpListener::bind(format!("{}:9000", net.ip(3))).unwrap();
    std::thread::spawn(move || {
        for mut s in echo.incoming().flatten() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let secret = b"GENESIS-PLAINTEXT-MARKER-7f3a9c1e";
    let mut tunnel = TcpStream::connect(&a.api).unwrap();
    tunnel.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tunnel, "CONNECT b.privacy:9000 HTTP/1.1\r\nHost: b.privacy:9000\r\n\r\n").unwrap();
    let mut head = [0u8; 19];
    tunnel.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let mut rest = Vec::new();
    while !rest.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tunnel.read_exact(&mut byte).unwrap();
        rest.push(byte[0]);
    }
    for _ in 0..20 {
        tunnel.write_all(secret).unwrap();
        let mut echoed = vec![0u8; secret.len()];
        tunnel.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, secret, "the tunnel carries the bytes end to end");
    }
    assert_eq!(a.send("b", secret).0, 200);

    let seen = std::fs::read(&capture).expect("the relay captured what it forwarded");
    assert!(seen.len() > 20 * secret.len(), "the relay forwarded {} bytes", seen.len());
    assert!(!seen.windows(secret.len()).any(|w| w == secret), "plaintext visible at the relay");
    assert!(relay.metric("genesis_sidecar_forwarded_frames_total", "") > 0.0);
    drop(b);
}
