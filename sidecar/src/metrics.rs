//! The sidecar's Prometheus metrics (docs/SIDECAR.md lists them).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric of one sidecar, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    pub links: IntGauge,
    pub handshakes: IntCounterVec,
    pub frames: IntCounterVec,
    pub bytes: IntCounterVec,
    pub forwarded: IntCounter,
    pub dropped: IntCounterVec,
    pub routes: IntGauge,
    pub route_changes: IntCounter,
    pub rtt: Histogram,
    pub peers: IntGaugeVec,
    pub bans: IntCounter,
    pub invalid_frames: IntCounterVec,
    pub streams: IntCounterVec,
    pub streams_reset: IntCounterVec,
    pub direct_streams: IntCounterVec,
    pub upstream_connections: IntCounterVec,
    pub stream_bytes: IntCounterVec,
    pub messages: IntCounterVec,
    pub crl_number: IntGauge,
    pub crl_updates: IntCounterVec,
    pub control: IntCounterVec,
    pub audit_records: IntGauge,
    pub audit_head: IntGauge,
    pub certificate_expiry: Gauge,
    pub renewals: IntCounterVec,
    pub admin_refused: IntCounterVec,
    pub link_closes: IntCounterVec,
    pub dials: IntCounterVec,
    pub peer_reputation: IntGaugeVec,
    pub crl_age: Gauge,
    pub crl_expiry: Gauge,
    pub crl_applied: Gauge,
    pub renewal_due: Gauge,
    pub trust_roots: IntGauge,
    pub streams_active: IntGauge,
    pub received: IntCounterVec,
    pub receipt_latency: Histogram,
    pub inbox: IntGauge,
    pub control_acks: IntCounterVec,
    pub routes_by_hops: IntGaugeVec,
    /// Links and routes (by their next hop) by zone: `same`, `other` or `unknown`.
    pub links_by_zone: IntGaugeVec,
    pub routes_by_zone: IntGaugeVec,
    /// Relay accounting (docs/SIDECAR.md, "Relay accounting").
    pub relay_bytes: IntCounterVec,
    pub relay_share: Gauge,
    pub relay_saturated: IntGauge,
    pub services: IntGauge,
    pub start_time: Gauge,
    pub build_info: IntGaugeVec,
    pub audit_errors: IntCounter,
    pub audit_suppressed: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const NS: &str = "genesis_sidecar";

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // The standard process_* families (CPU, resident memory, open descriptors, threads).
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("one process collector");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let m = Metrics {
            links: reg!(IntGauge::with_opts(opts("links", "Open peer links"))),
            handshakes: reg!(IntCounterVec::new(
                opts("handshakes_total", "Peer link handshakes by result"),
                &["result"]
            )),
            frames: reg!(IntCounterVec::new(
                opts("frames_total", "Frames by type and direction"),
                &["type", "direction"]
            )),
            bytes: reg!(IntCounterVec::new(
                opts("link_bytes_total", "Frame bytes on peer links by direction"),
                &["direction"]
            )),
            forwarded: reg!(IntCounter::with_opts(opts(
                "forwarded_frames_total",
                "Data frames relayed for other members"
            ))),
            dropped: reg!(IntCounterVec::new(
                opts("dropped_frames_total", "Frames dropped, by reason"),
                &["reason"]
            )),
            routes: reg!(IntGauge::with_opts(opts("routes", "Reachable destinations"))),
            route_changes: reg!(IntCounter::with_opts(opts(
                "route_changes_total",
                "Changes of a selected route"
            ))),
            rtt: reg!(Histogram::with_opts(
                HistogramOpts::new("rtt_seconds", "Round-trip time to neighbours")
                    .namespace(NS)
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0
                    ])
            )),
            peers: reg!(IntGaugeVec::new(
                opts("peers", "Known peers by reputation level"),
                &["level"]
            )),
            bans: reg!(IntCounter::with_opts(opts("bans_total", "Peers banned"))),
            invalid_frames: reg!(IntCounterVec::new(
                opts("invalid_frames_total", "Frames refused as invalid, by reason"),
                &["reason"]
            )),
            streams: reg!(IntCounterVec::new(
                opts("streams_total", "End-to-end streams by direction and result"),
                &["direction", "result"]
            )),
            streams_reset: reg!(IntCounterVec::new(
                opts(
                    "streams_reset_total",
                    "End-to-end streams ended by a reset instead of a clean close (sent: this \
                     end gave up on one; received: the far end, a relay or a lost path ended it)"
                ),
                &["direction"]
            )),
            direct_streams: reg!(IntCounterVec::new(
                opts(
                    "direct_streams_total",
                    "Tunnels to or from a neighbour opened direct: over the link's mutual TLS, \
                     without an end-to-end TLS session inside it"
                ),
                &["direction"]
            )),
            upstream_connections: reg!(IntCounterVec::new(
                opts(
                    "upstream_connections_total",
                    "Connections to an upstream port (--upstream) by result: ok, tunnelled to \
                     its target; refused, reset because the target could not be reached"
                ),
                &["result"]
            )),
            stream_bytes: reg!(IntCounterVec::new(
                opts("stream_bytes_total", "Application bytes through end-to-end streams"),
                &["direction"]
            )),
            messages: reg!(IntCounterVec::new(
                opts("messages_total", "Messages by result"),
                &["result"]
            )),
            crl_number: reg!(IntGauge::with_opts(opts("crl_number", "CRL number held"))),
            crl_updates: reg!(IntCounterVec::new(
                opts("crl_updates_total", "CRLs received, by result (applied, not_newer, refused)"),
                &["result"]
            )),
            control: reg!(IntCounterVec::new(
                opts("control_messages_total", "Control messages by verb and result"),
                &["verb", "result"]
            )),
            audit_records: reg!(IntGauge::with_opts(opts(
                "audit_records",
                "Records in the audit log"
            ))),
            audit_head: reg!(IntGauge::with_opts(opts(
                "audit_head",
                "The audit log's chain head: its hash's first 48 bits as a number (one series, \
                 a new value per record; the full hash is on /admin/identity)"
            ))),
            certificate_expiry: reg!(Gauge::with_opts(opts(
                "certificate_expiry_seconds",
                "Seconds until this member's certificate expires"
            ))),
            renewals: reg!(IntCounterVec::new(
                opts("certificate_renewals_total", "Certificate renewals by result"),
                &["result"]
            )),
            admin_refused: reg!(IntCounterVec::new(
                opts(
                    "admin_requests_refused_total",
                    "Admin API requests refused, by endpoint and reason (not_loopback, rate_limited)"
                ),
                &["endpoint", "reason"]
            )),
            link_closes: reg!(IntCounterVec::new(
                opts("link_closes_total", "Peer links closed, by reason"),
                &["reason"]
            )),
            dials: reg!(IntCounterVec::new(
                opts("dials_total", "Outbound link attempts by result (ok, failed, refused, declined: the member was full)"),
                &["result"]
            )),
            peer_reputation: reg!(IntGaugeVec::new(
                opts("peer_reputation", "Reputation score (0-100) of each connected neighbour"),
                &["peer"]
            )),
            crl_age: reg!(Gauge::with_opts(opts(
                "crl_age_seconds",
                "Seconds since the held CRL's thisUpdate"
            ))),
            crl_expiry: reg!(Gauge::with_opts(opts(
                "crl_expiry_seconds",
                "Seconds until the held CRL's nextUpdate (negative once stale)"
            ))),
            crl_applied: reg!(Gauge::with_opts(opts(
                "crl_applied_timestamp_seconds",
                "Unix time the held CRL was applied here (max - min across members of one CRL \
                 number is the revocation convergence time)"
            ))),
            renewal_due: reg!(Gauge::with_opts(opts(
                "certificate_renewal_seconds",
                "Seconds until this member renews its certificate (negative: overdue)"
            ))),
            trust_roots: reg!(IntGauge::with_opts(opts(
                "trust_roots",
                "Authority roots in the trust bundle (2 during a CA rotation)"
            ))),
            streams_active: reg!(IntGauge::with_opts(opts(
                "streams_active",
                "Open end-to-end streams (tunnels and message channels) ending here"
            ))),
            received: reg!(IntCounterVec::new(
                opts("messages_received_total", "Messages delivered to the local app, by kind"),
                &["kind"]
            )),
            receipt_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "message_receipt_seconds",
                    "Time from sending a message to its delivery receipt"
                )
                .namespace(NS)
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0])
            )),
            inbox: reg!(IntGauge::with_opts(opts(
                "inbox_messages",
                "Messages waiting in the app inbox"
            ))),
            control_acks: reg!(IntCounterVec::new(
                opts(
                    "control_acks_total",
                    "Acknowledgements of control messages injected here, by result"
                ),
                &["result"]
            )),
            routes_by_hops: reg!(IntGaugeVec::new(
                opts("routes_by_hops", "Reachable destinations by hop count"),
                &["hops"]
            )),
            links_by_zone: reg!(IntGaugeVec::new(
                opts("links_by_zone", "Open links by the peer's zone: same, other or unknown"),
                &["zone"]
            )),
            routes_by_zone: reg!(IntGaugeVec::new(
                opts(
                    "routes_by_zone",
                    "Reachable destinations by their next hop's zone: same, other or unknown"
                ),
                &["zone"]
            )),
            relay_bytes: reg!(IntCounterVec::new(
                opts(
                    "relay_bytes_total",
                    "Data frame bytes relayed: for_others (this member relayed them), by_others \
                     (a neighbour relayed ours, or passed on to us)"
                ),
                &["direction"]
            )),
            relay_share: reg!(Gauge::with_opts(opts(
                "relay_share",
                "Relayed bytes' share of this member's data bytes over the last 10 s"
            ))),
            relay_saturated: reg!(IntGauge::with_opts(opts(
                "relay_saturated",
                "1 while this member relays beyond --max-relay-share and refuses new relay load"
            ))),
            services: reg!(IntGauge::with_opts(opts(
                "services",
                "Services known across the mesh (name and member pairs), this member's included"
            ))),
            start_time: reg!(Gauge::with_opts(opts(
                "start_time_seconds",
                "Unix time the sidecar started"
            ))),
            build_info: reg!(IntGaugeVec::new(
                opts("build_info", "Sidecar version (value 1)"),
                &["version"]
            )),
            audit_errors: reg!(IntCounter::with_opts(opts(
                "audit_write_errors_total",
                "Audit records that could not be written"
            ))),
            audit_suppressed: reg!(IntCounter::with_opts(opts(
                "audit_repeats_suppressed_total",
                "Audit records not written because an identical one was written in the last 10 s \
                 (the next one written carries their count)"
            ))),
            registry,
        };
        m.init_labels();
        m
    }

    /// Known label values start at zero, so they are exported (and `rate()` works) before the
    /// first event.
    fn init_labels(&self) {
        let init = |v: &IntCounterVec, labels: &[&[&str]]| {
            for l in labels {
                v.with_label_values(l);
            }
        };
        init(&self.handshakes, &[&["ok"], &["refused"], &["declined"]]);
        init(&self.dials, &[&["ok"], &["failed"], &["refused"], &["declined"]]);
        let closes: Vec<[&str; 1]> = CloseReason::ALL.iter().map(|r| [r.as_str()]).collect();
        let closes: Vec<&[&str]> = closes.iter().map(|c| c.as_slice()).collect();
        init(&self.link_closes, &closes);
        init(&self.bytes, &[&["in"], &["out"]]);
        init(&self.messages, &[&["delivered"], &["failed"]]);
        init(&self.received, &[&["message"], &["broadcast"], &["topic"]]);
        init(&self.crl_updates, &[&["applied"], &["not_newer"], &["refused"]]);
        init(&self.control_acks, &[&["applied"], &["refused"]]);
        init(&self.renewals, &[&["ok"], &["error"]]);
        init(&self.admin_refused, &[&["renew", "not_loopback"], &["renew", "rate_limited"]]);
        init(
            &self.streams,
            &[&["out", "ok"], &["out", "refused"], &["in", "ok"], &["in", "refused"]],
        );
        init(&self.stream_bytes, &[&["in"], &["out"]]);
        init(&self.dropped, &[&["no_route"], &["ttl_expired"], &["rate_limited"]]);
        init(
            &self.invalid_frames,
            &[&["malformed"], &["protocol"], &["forged_route"], &["forged_broadcast"]],
        );
        init(&self.frames, &[&["data", "in"], &["data", "out"]]);
        for level in ["new", "trusted", "suspicious", "banned"] {
            self.peers.with_label_values(&[level]);
        }
    }

    /// Names of every exported family (docs/METRICS.md lists each).
    pub fn family_names(&self) -> Vec<String> {
        self.registry.gather().iter().map(|f| f.name().to_owned()).collect()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub use crate::proto::CloseReason;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_head_metric_is_the_hash_prefix_as_a_number() {
        assert_eq!(crate::shared::head_number("00000000000f00ff"), 15);
        assert_eq!(crate::shared::head_number("ffffffffffffff"), 0xffff_ffff_ffff);
        assert_eq!(crate::shared::head_number("not hex"), 0);
    }

    #[test]
    fn at_least_thirty_families_are_exported_from_the_start_and_each_is_documented() {
        let names = Metrics::new().family_names();
        assert!(names.len() >= 30, "{} families: {names:?}", names.len());
        let doc = include_str!("../../docs/METRICS.md");
        for name in &names {
            assert!(doc.contains(&format!("`{name}`")), "docs/METRICS.md does not list {name}");
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_documented_metrics_and_shows_every_sidecar_family() {
        let doc = include_str!("../../docs/METRICS.md");
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/grafana-dashboard.json"))
                .expect("the dashboard is JSON");
        let mut used = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("an expression");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("genesis_") || word.starts_with("process_") {
                        let family = ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| word.strip_suffix(s))
                            .unwrap_or(word);
                        assert!(doc.contains(&format!("`{family}`")), "{family} is not documented");
                        used.insert(family.to_owned());
                    }
                }
            }
        }
        // Every Genesis family is on the dashboard (of the process ones, CPU and memory are).
        for name in Metrics::new().family_names().into_iter().filter(|n| n.starts_with("genesis_"))
        {
            assert!(used.contains(&name), "the dashboard does not show {name}");
        }
    }
}
