//! `genesis-sim`: runs a scenario and prints what it measured (a table, or one JSON object).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Simulate a Genesis Mesh network of N members in virtual time (the sidecar's own protocol
/// code, real certificates and signatures) and report convergence, revocation, control
/// coverage, steady-state churn and cost. Exits 1 if an invariant broke.
#[derive(Parser)]
#[command(name = "genesis-sim", version)]
struct Args {
    /// Members.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=20_000))]
    members: u32,
    /// Zones: members are spread round-robin; links within a zone take --intra-zone-ms, between
    /// zones --inter-zone-ms.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    zones: u32,
    /// Routing areas (1: flat). Above a few hundred members, about one per 100 members keeps
    /// each member's table small (docs/SCALE.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096))]
    areas: u16,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    intra_zone_ms: f64,
    #[arg(long, default_value_t = 30.0)]
    inter_zone_ms: f64,
    /// Probability that a frame's segment is lost once (it arrives after a retransmission).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seconds of virtual time the mesh is watched at rest.
    #[arg(long, default_value_t = 20)]
    steady_secs: u64,
    #[arg(long, default_value_t = 3)]
    min_peers: usize,
    #[arg(long, default_value_t = 8)]
    max_peers: usize,
    /// Hello (ping) interval, hold time and periodic update interval, in milliseconds (the
    /// sidecar's defaults; the demo runs 200, 1000 and 2000).
    #[arg(long, default_value_t = 1000)]
    hello_ms: u64,
    #[arg(long, default_value_t = 3000)]
    hold_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    periodic_ms: u64,
    /// Members start spread over this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    join_spread_ms: u64,
    /// Fraction of the members (anchors spared) that crash together and restart, after the
    /// other phases; 0 skips it.
    #[arg(long, default_value_t = 0.1)]
    churn: f64,
    /// How long the churned members stay down, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    churn_down_ms: u64,
    /// Seconds zone 0 is cut off from the other zones before the heal (needs --zones 2 or
    /// more); 0 skips the phase.
    #[arg(long, default_value_t = 0)]
    partition_secs: u64,
    /// What a link across zones adds to its cost (the sidecar's --zone-penalty; 0 to 2000).
    #[arg(long, default_value_t = genesis_sidecar::config::DEFAULT_ZONE_PENALTY,
          value_parser = clap::value_parser!(u16).range(0..=2000))]
    zone_penalty: u16,
    /// Hop limit (the sidecar's --max-hops).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=64))]
    max_hops: u8,
    /// Seconds of virtual time routes may take to converge (after the joins, and after the
    /// churn and partition phases) before the run calls it a violation and goes on.
    #[arg(long, default_value_t = 120)]
    converge_limit_secs: u64,
    /// Threads that run the members of a window (0: one per core). The run is the same on
    /// any number.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    threads: u16,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if !(0.0..1.0).contains(&a.loss) {
        eprintln!("genesis-sim: --loss must be in [0, 1), got {}", a.loss);
        return ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&a.churn) {
        eprintln!("genesis-sim: --churn must be in [0, 1], got {}", a.churn);
        return ExitCode::from(2);
    }
    if a.hello_ms == 0 || a.hold_ms <= a.hello_ms || a.periodic_ms == 0 {
        eprintln!("genesis-sim: need --hello-ms > 0, --hold-ms > --hello-ms and --periodic-ms > 0");
        return ExitCode::from(2);
    }
    if a.min_peers == 0 || a.min_peers > a.max_peers {
        eprintln!("genesis-sim: need 1 <= --min-peers <= --max-peers");
        return ExitCode::from(2);
    }
    let scenario = genesis_sim::Scenario {
        members: a.members as usize,
        zones: a.zones as usize,
        areas: a.areas,
        seed: a.seed,
        intra_zone: Duration::from_secs_f64(a.intra_zone_ms.max(0.0) / 1e3),
        inter_zone: Duration::from_secs_f64(a.inter_zone_ms.max(0.0) / 1e3),
        loss: a.loss,
        steady: Duration::from_secs(a.steady_secs),
        min_peers: a.min_peers,
        max_peers: a.max_peers,
        hello_interval: Duration::from_millis(a.hello_ms),
        hold_time: Duration::from_millis(a.hold_ms),
        periodic_interval: Duration::from_millis(a.periodic_ms),
        join_spread: Duration::from_millis(a.join_spread_ms),
        churn_fraction: a.churn,
        churn_down: Duration::from_millis(a.churn_down_ms),
        partition: Duration::from_secs(a.partition_secs),
        progress: true,
        max_hops: a.max_hops,
        zone_penalty: a.zone_penalty,
        converge_limit: Duration::from_secs(a.converge_limit_secs),
        threads: usize::from(a.threads),
        ..genesis_sim::Scenario::default()
    };
    let (r, world) = genesis_sim::run_keeping(&scenario);
    // NB: the operating system takes the world back at once; freeing it would take longer.
    std::mem::forget(world);
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("a report serializes"));
    } else {
        let rows = [
            ("members / zones / areas", format!("{} / {} / {}", r.members, r.zones, r.areas)),
            ("invariants", if r.invariants_ok { "ok".into() } else { r.violations.join("; ") }),
            (
                "routes converged",
                r.routes_converged_ms.map_or("never".into(), |m| format!("{m:.0} ms")),
            ),
            ("links / longest path", format!("{} / {} hops", r.links, r.max_hops)),
            (
                "hops crossing zones; same-zone routes leaving",
                match (r.cross_zone_hop_share, r.same_zone_routes_leaving) {
                    (Some(h), Some(l)) => format!("{:.1} %; {:.1} %", h * 100.0, l * 100.0),
                    _ => "one zone".into(),
                },
            ),
            (
                "revocation applied (p50 / p99 / max)",
                format!(
                    "{:.1} / {:.1} / {:.1} ms over {} members",
                    r.revocation_applied_ms.p50,
                    r.revocation_applied_ms.p99,
                    r.revocation_applied_ms.max,
                    r.revocation_applied_ms.count
                ),
            ),
            (
                "control coverage (p50 / p99 / max)",
                format!(
                    "{:.3} ({:.1} / {:.1} / {:.1} ms)",
                    r.control_coverage,
                    r.control_applied_ms.p50,
                    r.control_applied_ms.p99,
                    r.control_applied_ms.max
                ),
            ),
            ("steady route changes / s", format!("{:.2}", r.steady_route_changes_per_sec)),
            ("steady link closes", r.steady_link_closes.to_string()),
            (
                "partition of zone 0: split, rejoined after the heal",
                format!(
                    "{} ms, {} ms",
                    r.partition_split_ms.map_or("never".into(), |v| format!("{v:.0}")),
                    r.partition_healed_ms.map_or("never".into(), |v| format!("{v:.0}")),
                ),
            ),
            (
                "churn: members down together, reconverged",
                format!(
                    "{}, {} ms after their restart ({} route changes, {} link closes)",
                    r.churn_members,
                    r.churn_reconverged_ms.map_or("never".into(), |v| format!("{v:.0}")),
                    r.churn_route_changes,
                    r.churn_link_closes
                ),
            ),
            (
                "frames, bytes per member per s",
                format!("{:.1}, {:.0}", r.frames_per_member_per_sec, r.bytes_per_member_per_sec),
            ),
            (
                "frames / s at rest, by type",
                r.steady_frames_by_type
                    .iter()
                    .map(|(t, n)| format!("{t} {n:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("memory per member", format!("{} KiB", r.memory_per_member_bytes / 1024)),
            ("proofs verified for real", r.proof_verifications.to_string()),
            ("wall time", format!("{:.1} s", r.wall_seconds)),
        ];
        for (k, v) in rows {
            println!("{k:<40} {v}");
        }
    }
    if r.invariants_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
