//! The Genesis Mesh simulator: thousands of members, each the sidecar's own sans-IO protocol
//! ([`genesis_sidecar::proto::Node`]), on an event heap in virtual time, deterministic for a
//! seed. Links have latency (within and between zones), jitter and loss; the scenario joins
//! every member, lets the mesh settle, watches it at rest, revokes a member, floods a control
//! message, and checks the invariants users rely on at each step.
//!
//! Crypto is real on the protocol path: certificates are issued by a real CA, CRLs are signed
//! and verified, control envelopes are signed and checked against RBAC. One shortcut: a route
//! advert's seqno proof is verified once for all simulated members and then remembered
//! ([`world::shared_proof_check`]); each member still checks it against its own CRL.

pub mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use genesis_sidecar::peers::PeerConfig;
use genesis_sidecar::proto::NodeConfig;
use genesis_sidecar::routing::RoutingConfig;
use genesis_trust::{
    CertificateAuthority, ControlEnvelope, EnvelopeSigner, Identity, KeyAlgorithm, LeafPolicy,
    PeerIdentity, RbacPolicy, RevocationList, RevocationReason, Role, Scope, TrustBundle,
    TrustPolicy, TrustStore, Verb,
};
use rayon::prelude::*;
use serde::Serialize;
use world::{LinkModel, Member, Rng, World};

const TRUST_DOMAIN: &str = "sim.local";
const NETWORK: &str = "sim";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub members: usize,
    pub zones: usize,
    /// Routing areas (1: flat).
    pub areas: u16,
    pub seed: u64,
    pub intra_zone: Duration,
    pub inter_zone: Duration,
    pub jitter: f64,
    pub loss: f64,
    /// Members every other member bootstraps from (as a cluster's genesis document lists them).
    pub anchors: usize,
    pub min_peers: usize,
    pub max_peers: usize,
    pub hello_interval: Duration,
    pub hold_time: Duration,
    pub periodic_interval: Duration,
    pub max_hops: u8,
    /// What a link across zones adds to its cost (the sidecar's `--zone-penalty`).
    pub zone_penalty: u16,
    /// Members start spread over this long.
    pub join_spread: Duration,
    /// How long to wait for routes to converge before giving up.
    pub converge_limit: Duration,
    /// How long the mesh is watched at rest.
    pub steady: Duration,
    /// Churn: this fraction of the members (never an anchor) crash at once and restart
    /// `churn_down` later with the same identity; 0 skips the phase.
    pub churn_fraction: f64,
    pub churn_down: Duration,
    /// Partition: zone 0 is cut off from the others this long, then healed (needs 2+ zones;
    /// zero skips the phase).
    pub partition: Duration,
    /// Print a line on standard error as each phase ends.
    pub progress: bool,
    /// Threads that run the members of a window of virtual time (0: one per core; see
    /// `World::run_until`). The run is the same on any number.
    pub threads: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            members: 100,
            zones: 1,
            areas: 1,
            seed: 1,
            intra_zone: Duration::from_micros(1000),
            inter_zone: Duration::from_millis(30),
            jitter: 0.1,
            loss: 0.0,
            anchors: 3,
            min_peers: 3,
            max_peers: 8,
            hello_interval: Duration::from_secs(1),
            hold_time: Duration::from_secs(3),
            periodic_interval: Duration::from_secs(10),
            max_hops: 16,
            zone_penalty: genesis_sidecar::config::DEFAULT_ZONE_PENALTY,
            join_spread: Duration::from_secs(1),
            converge_limit: Duration::from_secs(120),
            steady: Duration::from_secs(20),
            churn_fraction: 0.1,
            churn_down: Duration::from_secs(5),
            partition: Duration::ZERO,
            progress: false,
            threads: 0,
        }
    }
}

/// Percentiles of a set of times, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// How many members the figures cover.
    pub count: usize,
}

impl Spread {
    fn of(mut ms: Vec<f64>) -> Spread {
        if ms.is_empty() {
            return Spread::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Spread { p50: at(0.5), p99: at(0.99), max: at(1.0), count: ms.len() }
    }
}

/// What a run measured (times in virtual milliseconds).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub members: usize,
    pub zones: usize,
    pub areas: u16,
    pub seed: u64,
    pub invariants_ok: bool,
    /// Each broken invariant, said plainly.
    pub violations: Vec<String>,
    /// From the first start until every member routes to every other (None: never, within
    /// the limit).
    pub routes_converged_ms: Option<f64>,
    /// Longest route, in hops, once converged.
    pub max_hops: u8,
    pub links: usize,
    /// Traffic between random pairs of members at rest, one unit per pair along its route:
    /// the share of its hops that cross zones, and the share of same-zone pairs whose route
    /// leaves their zone (None with one zone).
    pub cross_zone_hop_share: Option<f64>,
    pub same_zone_routes_leaving: Option<f64>,
    /// Per member: from the CRL's push at one anchor until the member applied it.
    pub revocation_applied_ms: Spread,
    /// Fraction of running members that accepted the network-wide control message.
    pub control_coverage: f64,
    pub control_applied_ms: Spread,
    pub steady_route_changes_per_sec: f64,
    pub steady_link_closes: u64,
    pub frames_per_member_per_sec: f64,
    /// Frames per second at rest, by type, for the whole network.
    pub steady_frames_by_type: BTreeMap<String, f64>,
    pub bytes_per_member_per_sec: f64,
    /// Resident memory the members added, divided among them.
    pub memory_per_member_bytes: u64,
    /// Seqno proofs verified for real (the rest came from the shared cache).
    pub proof_verifications: u64,
    pub dials: u64,
    pub declined_dials: u64,
    /// Members crashed and restarted together in the churn phase.
    pub churn_members: usize,
    /// From their restart until every running member routes to every other (None: never
    /// within the limit, or no churn phase).
    pub churn_reconverged_ms: Option<f64>,
    /// Route changes, summed over all members, from the crash until reconverged.
    pub churn_route_changes: u64,
    /// Link closes from the crash until reconverged (the crashed members' own links included).
    pub churn_link_closes: u64,
    /// From the cut until every member routes to exactly its own side (None: never, or no
    /// partition phase).
    pub partition_split_ms: Option<f64>,
    /// From the heal until every member routes to every other again.
    pub partition_healed_ms: Option<f64>,
    pub wall_seconds: f64,
}

/// Resident set size of this process, in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How often (virtual time) the whole-network checks run; figures they time are this precise.
const CHECK_EVERY: Duration = Duration::from_millis(5);

/// True once per `period` of virtual time (at the first event of each period).
fn every(w: &World, period: Duration) -> bool {
    let slot = w.now.as_nanos() / period.as_nanos().max(1);
    let mut last = w.check_slot.lock().expect("slot");
    let due = *last != Some(slot);
    *last = Some(slot);
    due
}

/// Every member routes to every other running member: with routing areas, to each member of
/// its own area and to each other area that has a running member.
fn converged(w: &World) -> bool {
    converged_within(w, |_| 0, false)
}

/// As [`converged`], where members only reach those on their own side (`side` of a member's
/// index); `exact`: and route to nothing else (no route left over to the other side).
fn converged_within(w: &World, side: impl Fn(usize) -> usize, exact: bool) -> bool {
    // (side, area) → running members.
    let mut counts: BTreeMap<(usize, u16), usize> = BTreeMap::new();
    for (i, n) in w.nodes() {
        *counts.entry((side(i), n.area())).or_default() += 1;
    }
    w.nodes().all(|(i, n)| {
        let here = side(i);
        let own = counts.get(&(here, n.area())).copied().unwrap_or(0);
        let areas = counts.keys().filter(|(s, a)| *s == here && *a != n.area()).count();
        let held = n.route_count() + 1;
        if exact {
            held == own + areas
        } else {
            held >= own + areas
        }
    })
}

/// Who lacks which routes: how many members are short, and the first one's missing
/// destinations (members of its area, and other areas) and links.
fn unconverged(w: &World) -> String {
    let mut areas: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for (_, n) in w.nodes() {
        areas.entry(n.area()).or_default().push(n.name());
    }
    let lacking = |n: &genesis_sidecar::proto::Node| -> Vec<String> {
        let mut missing: Vec<String> = areas[&n.area()]
            .iter()
            .filter(|m| **m != n.name() && n.next_hop(m).is_none())
            .map(|m| m.to_string())
            .collect();
        let held: Vec<u16> = n.routes().iter().filter_map(|r| r.area).collect();
        let other = areas.keys().filter(|a| **a != n.area() && !held.contains(a));
        missing.extend(other.map(|a| format!("area {a}")));
        missing
    };
    let short: Vec<(&genesis_sidecar::proto::Node, Vec<String>)> = w
        .nodes()
        .map(|(_, n)| (n, lacking(n)))
        .filter(|(_, missing)| !missing.is_empty())
        .collect();
    let Some((first, missing)) = short.first() else { return "every member converged".into() };
    let shown: Vec<&String> = missing.iter().take(8).collect();
    // The member most often lacked, and where it stands: its links (with their areas) and
    // how many routes it holds.
    let mut lacked: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, m) in &short {
        for name in m.iter().filter(|m| !m.starts_with("area ")) {
            *lacked.entry(name.as_str()).or_default() += 1;
        }
    }
    let most = lacked.iter().max_by_key(|(_, n)| **n).map(|(m, n)| (*m, *n));
    let about = most
        .and_then(|(m, n)| {
            let node = w.nodes().map(|(_, x)| x).find(|x| x.name() == m)?;
            let links: Vec<String> =
                node.links().iter().map(|l| format!("{l}@{}", area_of_member(w, l))).collect();
            Some(format!(
                "; most lacked: {m} (area {}, lacked by {n}, holds {} routes, knows {} addresses in its area, links {links:?})",
                node.area(),
                node.route_count(),
                node.known_in_area(node.area())
            ))
        })
        .unwrap_or_default();
    format!(
        "{} members lack routes; {} (area {}, links {:?}) lacks {} of them: {shown:?}{about}",
        short.len(),
        first.name(),
        first.area(),
        first.links(),
        missing.len()
    )
}

/// The routing area of running member `name` (`?` if it is not running).
fn area_of_member(w: &World, name: &str) -> String {
    w.nodes().find(|(_, n)| n.name() == name).map_or("?".into(), |(_, n)| n.area().to_string())
}

/// Whether `node` keeps a route to or through `victim` (a route to another area that leads
/// elsewhere in the victim's area is fine).
fn routes_via(node: &genesis_sidecar::proto::Node, victim: &str) -> bool {
    node.routes().iter().any(|r| r.dest == victim || r.next_hop == victim)
}

/// Follows next hops from each source to each destination (all pairs up to 200 members, a
/// sample beyond): every walk must arrive, never revisit a member, and never pass `avoid`.
/// Walks the routes of random pairs of members (at most 20,000): the share of all hops that
/// cross zones, and the share of same-zone pairs whose route leaves the zone.
fn zone_traffic(w: &World, rng: &mut Rng) -> Option<(f64, f64)> {
    let names: Vec<(usize, String)> = w.nodes().map(|(i, n)| (i, n.name().to_owned())).collect();
    let by_name: BTreeMap<&str, usize> = names.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    let (mut hops, mut crossing, mut same, mut leaving) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..20_000 {
        let (a, b) = (rng.below(names.len()), rng.below(names.len()));
        if a == b {
            continue;
        }
        let (from, dst) = (names[a].0, names[b].1.as_str());
        let same_zone = w.links.same_zone(from, names[b].0);
        let (mut at, mut left) = (from, false);
        for _ in 0..64 {
            let node = w.states[at].node.as_ref().expect("a running member");
            let Some(&next) = node.next_hop(dst).and_then(|n| by_name.get(n)) else { break };
            hops += 1;
            if !w.links.same_zone(at, next) {
                crossing += 1;
                left = true;
            }
            at = next;
            if at == names[b].0 {
                break;
            }
        }
        if same_zone {
            same += 1;
            leaving += u64::from(left);
        }
    }
    (hops > 0 && same > 0).then(|| (crossing as f64 / hops as f64, leaving as f64 / same as f64))
}

fn check_paths(w: &World, avoid: Option<&str>, rng: &mut Rng, violations: &mut Vec<String>) {
    let names: Vec<(usize, String)> = w.nodes().map(|(i, n)| (i, n.name().to_owned())).collect();
    let by_name: BTreeMap<&str, usize> = names.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    let pairs: Vec<(usize, usize)> = if names.len() <= 200 {
        (0..names.len()).flat_map(|a| (0..names.len()).map(move |b| (a, b))).collect()
    } else {
        (0..20_000).map(|_| (rng.below(names.len()), rng.below(names.len()))).collect()
    };
    let mut broken = 0usize;
    for (a, b) in pairs {
        if a == b || avoid == Some(names[b].1.as_str()) {
            continue;
        }
        let (mut at, dst) = (names[a].0, names[b].1.as_str());
        let mut seen = std::collections::HashSet::new();
        let problem = loop {
            let node = w.states[at].node.as_ref().expect("a running member");
            if node.name() == dst {
                break None;
            }
            if !seen.insert(at) {
                break Some("a forwarding loop");
            }
            let Some(next) = node.next_hop(dst) else { break Some("no route") };
            if avoid == Some(next) {
                break Some("a route through the revoked member");
            }
            match by_name.get(next) {
                Some(&j) => at = j,
                None => break Some("a next hop that is not running"),
            }
        };
        if let Some(p) = problem {
            broken += 1;
            if broken <= 5 {
                violations.push(format!("{} -> {dst}: {p}", names[a].1));
            }
        }
    }
    if broken > 5 {
        violations.push(format!("... {broken} broken paths in all"));
    }
}

/// Builds the members: a real CA, a key and certificate for each, a trust store holding the
/// CA and its first CRL.
fn members(s: &Scenario, ca: &CertificateAuthority, wall0: SystemTime) -> Vec<Member> {
    let policy = LeafPolicy { duration: Duration::from_secs(24 * 3600), renew_before: None };
    let bundle = TrustBundle::new(vec![ca.cert_der().clone()]).expect("a bundle");
    let crl =
        ca.sign_crl(&RevocationList::default(), wall0, wall0 + Duration::from_secs(12 * 3600));
    let crl = crl.expect("the first CRL");
    (0..s.members)
        .into_par_iter()
        .map(|i| {
            let name = format!("m{i}");
            let role = if i < s.anchors { Role::Anchor } else { Role::Client };
            let identity = Identity::new(TRUST_DOMAIN, NETWORK, role, &name).expect("an identity");
            // NB: Ed25519 for the members: issuing 10,000 P-256 keys is slow; the protocol path
            // is the same.
            let (issued, key) = ca
                .issue_with_generated_key(&identity, KeyAlgorithm::Ed25519, &policy, wall0)
                .expect("a certificate");
            let store = TrustStore::new(
                TrustPolicy {
                    trust_domain: TRUST_DOMAIN.into(),
                    network: Some(NETWORK.into()),
                    require_fresh_crl: true,
                },
                bundle.clone(),
            );
            store.install_crl(&crl, wall0).expect("the first CRL installs");
            let peer = PeerIdentity {
                identity: identity.clone(),
                serial: issued.serial.clone(),
                not_after: issued.not_after,
                fingerprint: issued.fingerprint.clone(),
            };
            Member {
                name,
                identity,
                peer,
                key: Arc::new(key),
                leaf: issued.chain[0].to_vec(),
                store: Arc::new(store),
            }
        })
        .collect()
}

/// How often (wall time) a long phase says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// A line on standard error as each phase ends, when `s.progress` asks (a 10,000-member run
/// takes minutes).
fn progress(s: &Scenario, w: &World, started: Instant, phase: &str) {
    if s.progress {
        let (virt, wall) = (w.now.as_secs_f64(), started.elapsed().as_secs_f64());
        eprintln!("genesis-sim: {phase}: virtual {virt:.1} s, wall {wall:.1} s");
    }
}

/// Runs `s` and reports.
pub fn run(s: &Scenario) -> Report {
    let (report, world) = run_keeping(s);
    drop(world);
    report
}

/// As [`run`], handing back the world too: a command line that ends after the report can leave
/// it to the operating system (freeing 10,000 members' state one allocation at a time took
/// half a minute).
pub fn run_keeping(s: &Scenario) -> (Report, World) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(s.threads)
        .thread_name(|i| format!("genesis-sim-{i}"))
        .build()
        .expect("a thread pool");
    pool.install(|| run_in_pool(s))
}

fn run_in_pool(s: &Scenario) -> (Report, World) {
    let started = Instant::now();
    let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ca = CertificateAuthority::generate(
        TRUST_DOMAIN,
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(365 * 86400),
        wall0 - Duration::from_secs(3600),
    )
    .expect("a CA");
    let rss_before = rss_bytes();
    let members = members(s, &ca, wall0);
    let anchors: Vec<String> = (0..s.anchors.min(s.members)).map(|i| format!("m{i}")).collect();
    let config = NodeConfig {
        hello_interval: s.hello_interval,
        hold_time: s.hold_time,
        routing: RoutingConfig {
            max_hops: s.max_hops,
            periodic_interval: s.periodic_interval,
            route_expiry: genesis_sidecar::routing::expiry_for(s.periodic_interval),
            triggered_updates: true,
            areas: s.areas,
        },
        peers: PeerConfig {
            min_peers: s.min_peers,
            max_peers: s.max_peers,
            ..PeerConfig::default()
        },
        rbac: RbacPolicy::default(),
        anchors,
        zone: String::new(),
        zone_penalty: s.zone_penalty,
    };
    let links = LinkModel {
        zones: s.zones.max(1),
        intra_zone: s.intra_zone,
        inter_zone: s.inter_zone,
        jitter: s.jitter,
        loss: s.loss,
        cut_zone: None,
    };
    let verifications = Arc::new(Mutex::new(0u64));
    let check = world::shared_proof_check(verifications.clone());
    let mut w = World::new(members, config, links, wall0, s.seed, check);
    let mut rng = Rng::new(s.seed ^ 0xA5A5);
    let mut violations = Vec::new();

    // 1. Everyone joins, spread over join_spread; routes converge.
    for i in 0..s.members {
        let at = s.join_spread.mul_f64(i as f64 / s.members.max(1) as f64);
        w.start_at(i, at);
    }
    let mut report_at = Instant::now() + PROGRESS_EVERY;
    let converged_at = w
        .run_until(s.converge_limit, |w| {
            if s.progress && Instant::now() >= report_at {
                report_at = Instant::now() + PROGRESS_EVERY;
                let routes: usize = w.nodes().map(|(_, n)| n.route_count()).sum();
                let (virt, wall) = (w.now.as_secs_f64(), started.elapsed().as_secs_f64());
                eprintln!("genesis-sim: joining: virtual {virt:.2} s, wall {wall:.0} s, {routes} routes held");
            }
            w.now >= s.join_spread && every(w, CHECK_EVERY) && converged(w)
        })
        .then_some(w.now);
    if converged_at.is_none() {
        let why = unconverged(&w);
        if s.progress {
            eprintln!("genesis-sim: not converged: {why}");
        }
        violations.push(format!("routes did not converge within {:?}: {why}", s.converge_limit));
    }
    let max_hops = w.nodes().flat_map(|(_, n)| n.routes()).map(|r| r.hops).max().unwrap_or(0);

    progress(s, &w, started, "joined and converged");
    // 2. At rest: no route or link churn, and the traffic it costs.
    let settle = w.now + s.periodic_interval;
    w.run_until(settle, |_| false);
    let (changes0, closes0) = (w.tally.route_changes.iter().sum::<u64>(), w.tally.link_closes);
    let (frames0, bytes0): (u64, u64) =
        (w.tally.frames_out.iter().sum(), w.tally.bytes_out.iter().sum());
    let types0 = w.tally.by_type.clone();
    let steady_from = w.now;
    w.run_until(steady_from + s.steady, |_| false);
    let secs = s.steady.as_secs_f64();
    let members_running = w.nodes().count().max(1) as f64;
    let changes = w.tally.route_changes.iter().sum::<u64>() - changes0;
    let frames = w.tally.frames_out.iter().sum::<u64>() - frames0;
    let bytes = w.tally.bytes_out.iter().sum::<u64>() - bytes0;
    let steady_closes = w.tally.link_closes - closes0;
    let steady_frames_by_type: BTreeMap<String, f64> = w
        .tally
        .by_type
        .iter()
        .map(|(t, n)| (t.to_string(), (n - types0.get(t).copied().unwrap_or(0)) as f64 / secs))
        .filter(|(_, r)| *r > 0.0)
        .collect();
    let memory = rss_bytes().saturating_sub(rss_before) / s.members.max(1) as u64;
    let links = w.states.iter().map(|m| m.ends.len()).sum::<usize>() / 2;
    check_paths(&w, None, &mut rng, &mut violations);
    let (cross_zone_hop_share, same_zone_routes_leaving) = match s.zones {
        0 | 1 => (None, None),
        _ => zone_traffic(&w, &mut rng).map_or((None, None), |(a, b)| (Some(a), Some(b))),
    };

    progress(s, &w, started, "watched at rest");
    // 3. Revocation: a well-connected client is revoked; the CRL is pushed at one anchor.
    let victim = (s.anchors..s.members).max_by_key(|&i| w.states[i].ends.len());
    let mut revocation = Spread::default();
    if let Some(victim) = victim {
        let victim_name = w.members[victim].name.clone();
        let mut list = RevocationList::default();
        list.revoke(&w.members[victim].peer.serial, RevocationReason::KeyCompromise, w.wall());
        let crl = ca.sign_crl(&list, w.wall(), w.wall() + Duration::from_secs(12 * 3600));
        let crl = crl.expect("the CRL");
        let number = crl.number();
        let pushed_at = w.now;
        if let Err(e) = w.push_crl(0, crl.der()) {
            violations.push(format!("the anchor refused the CRL: {e}"));
        }
        let others: Vec<usize> = w.nodes().map(|(i, _)| i).filter(|&i| i != victim).collect();
        let mut broken = Vec::new();
        let mut checked = std::collections::HashSet::new();
        let mut tallied = 0;
        w.run_until(pushed_at + Duration::from_secs(30), |w| {
            // Whoever applied it routes nothing to or through the revoked member from then on
            // (checked as each member applies it, and for everyone at the end of the phase).
            // NB: only when someone applied it since the last event: walking every member
            // after every event was most of this phase's time at 10,000 members.
            if w.tally.crl_applied.len() == tallied {
                return false;
            }
            tallied = w.tally.crl_applied.len();
            let fresh: Vec<usize> = w
                .tally
                .crl_applied
                .keys()
                .filter(|(i, n)| *n == number && !checked.contains(i))
                .map(|(i, _)| *i)
                .collect();
            for i in fresh {
                checked.insert(i);
                let node = w.states[i].node.as_ref().expect("running");
                if i != victim && routes_via(node, &victim_name) {
                    broken.push(format!(
                        "{} still routes via {victim_name} after the CRL",
                        node.name()
                    ));
                }
            }
            others.iter().all(|i| checked.contains(i))
        });
        for &i in &others {
            let node = w.states[i].node.as_ref().expect("running");
            if routes_via(node, &victim_name) {
                broken.push(format!("{} routes via {victim_name} at the end", node.name()));
            }
        }
        broken.dedup();
        violations.extend(broken.into_iter().take(5));
        let applied: Vec<f64> = others
            .iter()
            .filter_map(|i| w.tally.crl_applied.get(&(*i, number)))
            .map(|t| ms(t.saturating_sub(pushed_at)))
            .collect();
        if applied.len() < others.len() {
            violations.push(format!(
                "{} of {} members never applied the CRL",
                others.len() - applied.len(),
                others.len()
            ));
        }
        revocation = Spread::of(applied);
        // The rest of the mesh routes around it.
        w.crash(victim);
        let heal = w.now + s.hold_time + s.periodic_interval;
        w.run_until(heal, |w| every(w, CHECK_EVERY) && converged(w));
        check_paths(&w, Some(&victim_name), &mut rng, &mut violations);
    }

    progress(s, &w, started, "revocation");
    // 4. A network-wide control message from an admin reaches every member.
    let admin = Identity::new(TRUST_DOMAIN, NETWORK, Role::Admin, "sim-admin").expect("admin");
    let policy = LeafPolicy { duration: Duration::from_secs(3600), renew_before: None };
    let (issued, key) = ca
        .issue_with_generated_key(&admin, KeyAlgorithm::EcdsaP256, &policy, w.wall())
        .expect("the admin's certificate");
    let signer = EnvelopeSigner::new(key, issued.chain.clone()).expect("a signer");
    let args = BTreeMap::from([("level".to_owned(), "info".to_owned())]);
    let envelope = ControlEnvelope::new(NETWORK, Verb::LogLevel, Scope::Network, args, w.wall())
        .expect("an envelope");
    let wire = signer.sign(&envelope).expect("signed").encode();
    w.tally.control_accepted.clear();
    let sent_at = w.now;
    let origin = s.anchors.min(s.members.saturating_sub(1));
    if !w.inject_control(origin, wire) {
        violations.push("the origin refused the admin's control message".into());
    }
    let running: Vec<usize> = w.nodes().map(|(i, _)| i).collect();
    w.run_until(sent_at + Duration::from_secs(30), |w| {
        w.tally.control_accepted.len() >= running.len()
            && running.iter().all(|i| w.tally.control_accepted.contains_key(i))
    });
    let reached = running.iter().filter(|i| w.tally.control_accepted.contains_key(i)).count();
    let coverage = reached as f64 / running.len().max(1) as f64;
    if reached < running.len() {
        violations.push(format!("the control message reached {reached} of {}", running.len()));
    }
    let control = Spread::of(
        w.tally.control_accepted.values().map(|t| ms(t.saturating_sub(sent_at))).collect(),
    );

    progress(s, &w, started, "control message");
    // 5. Churn: a fraction of the members crash together and come back with the same
    //    identity (a rolling restart gone wrong, a node lost and rescheduled).
    let candidates: Vec<usize> = w.nodes().map(|(i, _)| i).filter(|&i| i >= s.anchors).collect();
    let count = ((s.members as f64 * s.churn_fraction).round() as usize).min(candidates.len());
    let mut churned = Vec::new();
    let mut pool = candidates;
    for _ in 0..count {
        churned.push(pool.swap_remove(rng.below(pool.len())));
    }
    let (mut churn_reconverged, mut churn_changes, mut churn_closes) = (None, 0, 0);
    if !churned.is_empty() {
        let (changes0, closes0) = (w.tally.route_changes.iter().sum::<u64>(), w.tally.link_closes);
        for &i in &churned {
            w.crash(i);
        }
        let back_at = w.now + s.churn_down;
        for &i in &churned {
            w.start_at(i, back_at);
        }
        w.run_until(back_at, |_| false);
        let down_changes = w.tally.route_changes.iter().sum::<u64>() - changes0;
        if s.progress {
            eprintln!(
                "genesis-sim: churn: {down_changes} route changes while the members were down"
            );
        }
        let done = w.run_until(back_at + s.converge_limit, |w| {
            w.now > back_at && every(w, CHECK_EVERY) && converged(w)
        });
        if done {
            churn_reconverged = Some(ms(w.now.saturating_sub(back_at)));
        } else {
            violations.push(format!(
                "{} members restarted together and the mesh did not reconverge within {:?}",
                churned.len(),
                s.converge_limit
            ));
        }
        churn_changes = w.tally.route_changes.iter().sum::<u64>() - changes0;
        churn_closes = w.tally.link_closes - closes0;
        check_paths(&w, None, &mut rng, &mut violations);
    }

    progress(s, &w, started, "churn");
    // 6. Partition: zone 0 is cut off from the rest, then healed.
    let (mut split_ms, mut healed_ms) = (None, None);
    if s.zones > 1 && !s.partition.is_zero() {
        let zones = s.zones;
        w.links.cut_zone = Some(0);
        let cut_at = w.now;
        let split = |w: &World| converged_within(w, |i| usize::from(i.is_multiple_of(zones)), true);
        if w.run_until(cut_at + s.partition, |w| every(w, CHECK_EVERY) && split(w)) {
            split_ms = Some(ms(w.now.saturating_sub(cut_at)));
        }
        w.run_until(cut_at + s.partition, |_| false);
        w.links.cut_zone = None;
        let healed_at = w.now;
        if w.run_until(healed_at + s.converge_limit, |w| every(w, CHECK_EVERY) && converged(w)) {
            healed_ms = Some(ms(w.now.saturating_sub(healed_at)));
        } else {
            violations.push(format!(
                "zone 0 was cut off for {:?} and the mesh did not rejoin within {:?} of the heal",
                s.partition, s.converge_limit
            ));
        }
        check_paths(&w, None, &mut rng, &mut violations);
    }

    progress(s, &w, started, "done");
    let proof_verifications = *verifications.lock().expect("counter");
    let report = Report {
        members: s.members,
        zones: s.zones.max(1),
        areas: s.areas,
        seed: s.seed,
        invariants_ok: violations.is_empty(),
        violations,
        routes_converged_ms: converged_at.map(ms),
        max_hops,
        links,
        cross_zone_hop_share,
        same_zone_routes_leaving,
        revocation_applied_ms: revocation,
        control_coverage: coverage,
        control_applied_ms: control,
        steady_route_changes_per_sec: changes as f64 / secs,
        steady_link_closes: steady_closes,
        frames_per_member_per_sec: frames as f64 / secs / members_running,
        steady_frames_by_type,
        bytes_per_member_per_sec: bytes as f64 / secs / members_running,
        memory_per_member_bytes: memory,
        proof_verifications,
        dials: w.tally.dials,
        declined_dials: w.tally.declined,
        churn_members: churned.len(),
        churn_reconverged_ms: churn_reconverged,
        churn_route_changes: churn_changes,
        churn_link_closes: churn_closes,
        partition_split_ms: split_ms,
        partition_healed_ms: healed_ms,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    (report, w)
}
