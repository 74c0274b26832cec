//! A bounded chaos run on twelve real sidecars: members are killed and restarted with the same
//! command, and stalled (SIGSTOP) past the hold time, while messages and tunnels cross the
//! mesh. What users rely on, checked at the end:
//! - no message that got a delivery receipt is lost or delivered twice;
//! - no sender/receiver pair is dead afterwards;
//! - every restarted member is routable from every other within a few hello intervals;
//! - every tunnel either completes intact or ends in an error the app sees.
//!
//! The counted messages and the tunnels run between members chaos leaves alone, across the
//! relays it hits.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use genesis_e2e::{
    connect_tunnel, serve_echo, wait_for, Authority, Sidecar, SidecarOptions, Subnet,
};

const MEMBERS: u8 = 12;
/// Members that send and receive the counted messages; never killed, so their inboxes are
/// whole. Every other member is a relay that chaos hits.
const STABLE: [usize; 3] = [0, 7, 11];
/// Per round: the relay killed and restarted, and the relay stalled.
const ROUNDS: [(usize, usize); 3] = [(3, 4), (5, 9), (1, 6)];
const TUNNEL_PORT: u16 = 9300;

fn signal(node: &Sidecar, sig: &str) {
    let pid = node.pid().expect("running").to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

/// How one tunnel ended.
#[derive(Debug, PartialEq)]
enum Tunnel {
    Intact,
    /// The app saw an error: a refused CONNECT, a reset, a failed write.
    Error(String),
    /// The app saw a clean end, or bytes that differ: what must never happen.
    Corrupt(String),
}

/// Bytes a tunnel carries, and how many go out before they are read back.
const TUNNEL_BYTES: usize = 256 * 1024;
const TUNNEL_CHUNK: usize = 32 * 1024;

/// Sends 256 KiB through a tunnel to an echo server and reads it back, a chunk at a time, from
/// one thread. One thread, because a reset is reported to one system call only: with a writer
/// thread beside the reader, a reset that lands while the writer is blocked goes to the writer,
/// and the reader then reads an end of stream that looks clean (the socket is already closed).
fn one_tunnel(via: &str, target: &str, seed: u8) -> Tunnel {
    let err = |e: std::io::Error| Tunnel::Error(e.to_string());
    let (mut s, head) = match connect_tunnel(via, target) {
        Ok(answer) => answer,
        Err(e) => return err(e),
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    // Each chunk waits for its echo: Nagle's algorithm would hold its tail for a delayed ACK.
    s.set_nodelay(true).unwrap();
    if !head.starts_with("HTTP/1.1 200") {
        return Tunnel::Error(head.lines().next().unwrap_or("").into());
    }
    let stalled =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    let data: Vec<u8> =
        (0..TUNNEL_BYTES as u32).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let mut back = vec![0u8; TUNNEL_CHUNK];
    for (i, chunk) in data.chunks(TUNNEL_CHUNK).enumerate() {
        let done = i * TUNNEL_CHUNK;
        match s.write_all(chunk) {
            Ok(()) => {}
            Err(e) if stalled(&e) => {
                return Tunnel::Corrupt(format!(
                    "a write hang after {done} of {TUNNEL_BYTES} bytes"
                ))
            }
            Err(e) => return err(e),
        }
        let mut got = 0;
        while got < chunk.len() {
            match s.read(&mut back[got..chunk.len()]) {
                Ok(0) => {
                    let at = done + got;
                    return Tunnel::Corrupt(format!(
                        "a clean end after {at} of {TUNNEL_BYTES} bytes"
                    ));
                }
                Ok(n) => got += n,
                Err(e) if stalled(&e) => {
                    let at = done + got;
                    return Tunnel::Corrupt(format!("a hang after {at} of {TUNNEL_BYTES} bytes"));
                }
                Err(e) => return err(e),
            }
        }
        if back[..chunk.len()] != *chunk {
            return Tunnel::Corrupt("the bytes came back changed".into());
        }
    }
    Tunnel::Intact
}

#[test]
fn kills_restarts_and_stalls_lose_no_receipted_message_and_leave_no_pair_dead() {
    let net = Subnet::new();
    let auth = Authority::start(&net, "chaos", "24h");
    // A sparse mesh (2 to 4 links each), every member with a state directory so a restart is
    // the same command line.
    let mut members: Vec<Sidecar> = (0..MEMBERS)
        .map(|i| {
            let anchors = match i {
                0 => vec![],
                1 | 2 => vec![format!("{}:7000", net.ip(1))],
                _ => vec![
                    format!("{}:7000", net.ip(i / 2 + 1)),
                    format!("{}:7000", net.ip(i - 1 + 1)),
                ],
            };
            let state = auth.dir.path().join(format!("m{i}-state"));
            let opts = SidecarOptions {
                anchors,
                min_peers: 2,
                max_peers: 4,
                allowed_ports: vec![TUNNEL_PORT],
                extra: vec!["--state-dir".into(), state.display().to_string()],
                ..Default::default()
            };
            Sidecar::start(&auth, &format!("m{i}"), &net.ip(i + 1), &opts)
        })
        .collect();
    let names: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
    let converged =
        |members: &[Sidecar]| members.iter().all(|m| m.routes().len() == usize::from(MEMBERS) - 1);
    wait_for(Duration::from_secs(60), "every member to route to every other", || {
        converged(&members)
    });
    serve_echo(&format!("{}:{TUNNEL_PORT}", net.ip(12)));
    // The counted traffic crosses relays (which chaos hits), not a direct link.
    let hops = |from: &Sidecar, to: &str| {
        from.admin_json("/admin/routes")
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dest"] == to)
            .unwrap()["hops"]
            .as_u64()
            .unwrap()
    };
    assert!(hops(&members[0], "m11") >= 2, "m0 and m11 are neighbours: pick other members");

    // Traffic: counted messages between the stable members, and tunnels m0 -> m1.
    let stop = Arc::new(AtomicBool::new(false));
    let receipted: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let apis: Vec<String> = members.iter().map(|m| m.api.clone()).collect();
    // One sender per ordered pair, so a slow send (a receipt timeout) holds up only its pair.
    let mut senders = Vec::new();
    for &from in &STABLE {
        for &to in STABLE.iter().filter(|t| **t != from) {
            let (stop, receipted) = (stop.clone(), receipted.clone());
            let (api, path) = (apis[from].clone(), format!("/v1/messages/{}", names[to]));
            senders.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!("{from}->{to} #{n}");
                    if let Ok((200, _)) = genesis_e2e::http(&api, "POST", &path, body.as_bytes()) {
                        receipted.lock().unwrap().push((to, body));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
    }
    let tunnels = {
        let (stop, via, target) =
            (stop.clone(), apis[0].clone(), format!("m11.chaos:{TUNNEL_PORT}"));
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut seed = 0u8;
            while !stop.load(Ordering::Relaxed) {
                seed = seed.wrapping_add(1);
                let outcome = one_tunnel(&via, &target, seed);
                if outcome != Tunnel::Intact {
                    // No route for now, most likely: do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                }
                outcomes.push(outcome);
            }
            outcomes
        })
    };

    // Chaos on the relays: kill and restart with the same command, and stall past the hold
    // time (1 s here), three rounds.
    let mut restarted = Vec::new();
    for (killed, stalled) in ROUNDS {
        signal(&members[killed], "-KILL");
        signal(&members[stalled], "-STOP");
        std::thread::sleep(Duration::from_millis(1500));
        signal(&members[stalled], "-CONT");
        members[killed].restart_same_command();
        restarted.push(killed);
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Every restarted member is routable by all others within a few hello intervals of the
    // last restart settling (hello 200 ms, periodic updates 2 s).
    let start = Instant::now();
    wait_for(Duration::from_secs(15), "every member to route to the restarted members", || {
        members.iter().enumerate().all(|(i, m)| {
            let routes = m.routes();
            restarted.iter().all(|r| *r == i || routes.contains(&names[*r]))
        })
    });
    let rejoin = start.elapsed();
    // Traffic goes on a little over the healed mesh, then stops.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let outcomes = tunnels.join().unwrap();

    // Receipted messages: each exactly once at its receiver.
    let mut inboxes: HashMap<usize, BTreeMap<String, usize>> = HashMap::new();
    for &i in &STABLE {
        let seen = inboxes.entry(i).or_default();
        loop {
            let batch = members[i].inbox(500);
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(m["body"].as_str().unwrap())
                    .unwrap();
                *seen.entry(String::from_utf8(body).unwrap()).or_default() += 1;
            }
        }
    }
    let receipted = receipted.lock().unwrap().clone();
    assert!(receipted.len() > 50, "too little traffic to judge: {}", receipted.len());
    let lost: Vec<&String> =
        receipted.iter().filter(|(to, b)| !inboxes[to].contains_key(b)).map(|(_, b)| b).collect();
    let doubled: Vec<(&String, &usize)> =
        inboxes.values().flat_map(|m| m.iter()).filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "{} receipted messages lost: {lost:?}", lost.len());
    assert!(doubled.is_empty(), "messages delivered twice: {doubled:?}");

    // Tunnels: intact, or an error the app saw; never a clean-looking end or changed bytes.
    let corrupt: Vec<&Tunnel> =
        outcomes.iter().filter(|t| matches!(t, Tunnel::Corrupt(_))).collect();
    assert!(corrupt.is_empty(), "tunnels that ended badly: {corrupt:?} of {}", outcomes.len());
    assert!(outcomes.contains(&Tunnel::Intact), "no tunnel completed: {outcomes:?}");

    // No pair dead: every member reaches every other.
    let mut dead = Vec::new();
    for (i, m) in members.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if i != j && m.send(name, b"roll call").0 != 200 {
                dead.push(format!("{} -> {name}", m.node));
            }
        }
    }
    assert!(dead.is_empty(), "dead pairs after the chaos: {dead:?}");
    let intact = outcomes.iter().filter(|t| **t == Tunnel::Intact).count();
    eprintln!(
        "chaos: {} receipted messages, none lost or doubled; {intact} of {} tunnels intact, \
         the rest ended in errors the app saw; restarted members routable {rejoin:?} after \
         the last restart",
        receipted.len(),
        outcomes.len()
    );
}
