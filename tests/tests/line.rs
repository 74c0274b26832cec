//! Five sidecar processes in a line, each bootstrapped only with its neighbour.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use genesis_e2e::{serve_page, wait_for, Authority, Sidecar, SidecarOptions, Subnet};

#[test]
fn a_message_and_a_curl_request_cross_four_hops_in_a_line_of_five() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "line", "24h");
    let mut nodes = Vec::new();
    for i in 0..5u8 {
        let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
        let opts = SidecarOptions {
            anchors,
            min_peers: 1,
            max_peers: 2,
            allowed_ports: vec![8080],
            ..Default::default()
        };
        nodes.push(Sidecar::start(&auth, &format!("n{i}"), &net.ip(i + 1), &opts));
    }
    wait_for(Duration::from_secs(30), "n0 and n4 to route to each other", || {
        nodes[0].routes().contains(&"n4".to_owned()) && nodes[4].routes().contains(&"n0".to_owned())
    });
    let route = nodes[0].admin_json("/admin/routes");
    let to_n4 = route.as_array().unwrap().iter().find(|r| r["dest"] == "n4").unwrap().clone();
    assert_eq!(to_n4["hops"], 4, "a line: n0 reaches n4 in four hops ({route})");
    assert_eq!(to_n4["next_hop"], "n1");

    let (status, receipt) = nodes[0].send("n4", b"hello across four hops");
    assert_eq!(status, 200, "{receipt}\n{}", nodes[0].log_text());
    assert_eq!(receipt["delivered"], true);
    let inbox = nodes[4].inbox(2000);
    let msg =
        inbox.iter().find(|m| m["from"] == "n0").unwrap_or_else(|| panic!("n4 got {inbox:?}"));
    let body =
        base64::engine::general_purpose::STANDARD.decode(msg["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, b"hello across four hops");

    // curl, through the CONNECT proxy of n0, fetches a page served beside n4.
    let _page = serve_page(&format!("{}:8080", net.ip(5)), "page served beside n4");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-p",
            "-x",
            &format!("http://{}", nodes[0].api),
            "http://n4.line:8080/",
        ])
        .output()
        .expect("curl is installed (the README's test command installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        nodes[0].log_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "page served beside n4");
    assert!(
        nodes[2].metric("genesis_sidecar_forwarded_frames_total", "") > 0.0,
        "the middle node relayed"
    );
}

#[test]
fn a_bulk_transfer_crosses_three_hops_intact() {
    use std::io::{Read, Write};
    let net = Subnet::new();
    let auth = Authority::start(&net, "bulk", "24h");
    let nodes: Vec<Sidecar> = (0..4u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            let opts = SidecarOptions {
                anchors,
                min_peers: 1,
                max_peers: 2,
                allowed_ports: vec![9002],
                ..Default::default()
            };
            Sidecar::start(&auth, &format!("b{i}"), &net.ip(i + 1), &opts)
        })
        .collect();
    wait_for(Duration::from_secs(30), "b0 to route to b3", || {
        nodes[0].routes().contains(&"b3".to_owned())
    });
    // A sink beside b3 that answers how many bytes it got, and a checksum of them.
    let sink = std::net::TcpListener::bind(format!("{}:9002", net.ip(4))).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let (mut total, mut sum) = (0u64, 0u64);
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            sum = buf[..n].iter().fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
        }
        s.write_all(&total.to_be_bytes()).unwrap();
        s.write_all(&sum.to_be_bytes()).unwrap();
    });
    let (mut s, head) = genesis_e2e::connect_tunnel(&nodes[0].api, "b3.bulk:9002").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let total: usize = 48 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
    let sent = data.chunks(256 * 1024).try_for_each(|c| s.write_all(c));
    let dump =
        || nodes.iter().map(|n| format!("--- {}\n{}", n.node, n.log_text())).collect::<String>();
    assert!(sent.is_ok(), "sending failed: {sent:?}\n{}", dump());
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer).unwrap_or_else(|e| panic!("no answer: {e}\n{}", dump()));
    assert_eq!(u64::from_be_bytes(answer[..8].try_into().unwrap()), total as u64);
    assert_eq!(
        u64::from_be_bytes(answer[8..].try_into().unwrap()),
        expected,
        "bytes changed on the way"
    );
}
