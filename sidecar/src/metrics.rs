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
    pub stream_bytes: IntCounterVec,
    pub messages: IntCounterVec,
    pub crl_number: IntGauge,
    pub crl_updates: IntCounterVec,
    pub control: IntCounterVec,
    pub audit_records: IntGauge,
    pub audit_head: IntGaugeVec,
    pub certificate_expiry: Gauge,
    pub renewals: IntCounterVec,
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
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        Metrics {
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
            audit_head: reg!(IntGaugeVec::new(
                opts("audit_head_info", "The audit log's chain head (hash label; value 1)"),
                &["head"]
            )),
            certificate_expiry: reg!(Gauge::with_opts(opts(
                "certificate_expiry_seconds",
                "Seconds until this member's certificate expires"
            ))),
            renewals: reg!(IntCounterVec::new(
                opts("certificate_renewals_total", "Certificate renewals by result"),
                &["result"]
            )),
            registry,
        }
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
