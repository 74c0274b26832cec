//! The operator's Prometheus metrics (docs/METRICS.md lists them). Local mode exposes them on
//! `--metrics-listen`; the cluster controllers add theirs to the same registry.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::local::LocalAuthority;

const NS: &str = "genesis_operator";

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Registry,
    pub issued: IntCounterVec,
    pub refused: IntCounterVec,
    pub requests: IntCounterVec,
    pub issue_seconds: Histogram,
    pub crl_number: IntGauge,
    pub revoked: IntGauge,
    pub crl_expiry: Gauge,
    pub ca_expiry: Gauge,
    pub start_time: Gauge,
    pub build_info: IntGaugeVec,
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    pub injections: IntCounterVec,
    pub leader: IntGauge,
    pub crl_pushes: IntCounterVec,
    pub authority_crl_number: IntGaugeVec,
    pub authority_ca_expiration: GaugeVec,
    pub certificate_expiration: GaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
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
            issued: reg!(IntCounterVec::new(
                opts("certificates_issued_total", "Certificates issued, by kind (join, renewal)"),
                &["kind"]
            )),
            refused: reg!(IntCounterVec::new(
                opts(
                    "certificate_requests_refused_total",
                    "Certificate requests refused, by reason"
                ),
                &["reason"]
            )),
            requests: reg!(IntCounterVec::new(
                opts("identity_requests_total", "Identity service requests by endpoint and code"),
                &["endpoint", "code"]
            )),
            issue_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("issue_duration_seconds", "Time to authenticate and issue")
                    .namespace(NS)
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5])
            )),
            crl_number: reg!(IntGauge::with_opts(opts(
                "crl_number",
                "Number of the authority's newest CRL"
            ))),
            revoked: reg!(IntGauge::with_opts(opts(
                "revoked_certificates",
                "Certificates on the revocation list"
            ))),
            crl_expiry: reg!(Gauge::with_opts(opts(
                "crl_expiry_seconds",
                "Seconds until the newest CRL's nextUpdate (negative once stale)"
            ))),
            ca_expiry: reg!(Gauge::with_opts(opts(
                "ca_expiry_seconds",
                "Seconds until the authority's CA certificate expires"
            ))),
            start_time: reg!(Gauge::with_opts(opts(
                "start_time_seconds",
                "Unix time the operator started"
            ))),
            build_info: reg!(IntGaugeVec::new(
                opts("build_info", "Operator version (value 1)"),
                &["version"]
            )),
            reconciles: reg!(IntCounterVec::new(
                opts("reconciles_total", "Reconciles by controller and result (ok, error)"),
                &["controller", "result"]
            )),
            reconcile_seconds: reg!(HistogramVec::new(
                HistogramOpts::new("reconcile_duration_seconds", "Time one reconcile takes")
                    .namespace(NS)
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                &["controller"]
            )),
            injections: reg!(IntCounterVec::new(
                opts(
                    "webhook_injections_total",
                    "Pods the injection webhook answered, by outcome (injected, skipped, refused)"
                ),
                &["outcome"]
            )),
            leader: reg!(IntGauge::with_opts(opts(
                "leader",
                "1 while this replica holds the leader Lease and runs the controllers"
            ))),
            crl_pushes: reg!(IntCounterVec::new(
                opts(
                    "crl_pushes_total",
                    "CRLs pushed into the mesh by target (anchor, member) and outcome (applied, failed)"
                ),
                &["target", "outcome"]
            )),
            authority_crl_number: reg!(IntGaugeVec::new(
                opts("authority_crl_number", "Cluster mode: number of each authority's newest CRL"),
                &["authority"]
            )),
            authority_ca_expiration: reg!(GaugeVec::new(
                opts(
                    "authority_ca_expiration_timestamp_seconds",
                    "Cluster mode: when each authority's signing CA expires (Unix time)"
                ),
                &["authority"]
            )),
            certificate_expiration: reg!(GaugeVec::new(
                opts(
                    "certificate_expiration_timestamp_seconds",
                    "Cluster mode: when each Certificate's current leaf expires (Unix time)"
                ),
                &["namespace", "name"]
            )),
            registry,
        };
        for target in ["anchor", "member"] {
            for outcome in ["applied", "failed"] {
                m.crl_pushes.with_label_values(&[target, outcome]);
            }
        }
        for outcome in ["injected", "skipped", "refused"] {
            m.injections.with_label_values(&[outcome]);
        }
        for controller in ["certificate", "networkauthority", "meshnetwork", "crlpublisher"] {
            for result in ["ok", "error"] {
                m.reconciles.with_label_values(&[controller, result]);
            }
        }
        for kind in ["join", "renewal"] {
            m.issued.with_label_values(&[kind]);
        }
        for reason in ["unauthenticated", "bad_request", "not_entitled", "unknown_network", "error"]
        {
            m.refused.with_label_values(&[reason]);
        }
        m.start_time.set(secs(SystemTime::now()));
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// Refreshes the authority gauges, then renders the Prometheus text.
    pub fn render(&self, authority: &LocalAuthority) -> String {
        let now = secs(SystemTime::now());
        if let Ok(crl) = authority.current_crl() {
            self.crl_number.set(crl.number() as i64);
            self.revoked.set(crl.revoked().len() as i64);
            self.crl_expiry.set(secs(crl.next_update()) - now);
        }
        self.ca_expiry.set(secs(authority.ca().not_after()) - now);
        self.text()
    }

    /// Cluster mode: the gauges a Certificate's status feeds.
    pub fn observe_certificate(&self, cert: &genesis_crds::Certificate) {
        use kube::ResourceExt;
        let not_after = cert.status.as_ref().and_then(|s| s.not_after.as_deref());
        if let Some(t) = not_after.and_then(crate::controller::parse_rfc3339) {
            let (ns, name) = (cert.namespace().unwrap_or_default(), cert.name_any());
            self.certificate_expiration.with_label_values(&[&ns, &name]).set(secs(t));
        }
    }

    /// Cluster mode: the gauges a NetworkAuthority's status feeds.
    pub fn observe_authority(&self, na: &genesis_crds::NetworkAuthority) {
        use kube::ResourceExt;
        let (name, status) = (na.name_any(), na.status.as_ref());
        if let Some(n) = status.and_then(|s| s.crl_number) {
            self.authority_crl_number.with_label_values(&[&name]).set(n);
        }
        let not_after = status.and_then(|s| s.ca_not_after.as_deref());
        if let Some(t) = not_after.and_then(crate::controller::parse_rfc3339) {
            self.authority_ca_expiration.with_label_values(&[&name]).set(secs(t));
        }
    }

    /// The Prometheus text as it stands.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    /// Names of every family, for the docs test.
    pub fn family_names(&self) -> Vec<String> {
        self.registry.gather().iter().map(|f| f.name().to_owned()).collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_gauges_follow_the_resources_status() {
        let m = Metrics::new();
        let cert: genesis_crds::Certificate = serde_json::from_value(serde_json::json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "billing", "namespace": "shop"},
            "spec": {"networkRef": {"name": "payments"}, "nodeName": "billing"},
            "status": {"notAfter": "2027-01-15T08:00:00Z"}
        }))
        .unwrap();
        m.observe_certificate(&cert);
        assert_eq!(
            m.certificate_expiration.with_label_values(&["shop", "billing"]).get(),
            1_800_000_000.0
        );
        let na: genesis_crds::NetworkAuthority = serde_json::from_value(serde_json::json!({
            "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
            "metadata": {"name": "prod-ca"},
            "spec": {"trustDomain": "prod.example"},
            "status": {"crlNumber": 7, "caNotAfter": "2036-01-01T00:00:00Z"}
        }))
        .unwrap();
        m.observe_authority(&na);
        assert_eq!(m.authority_crl_number.with_label_values(&["prod-ca"]).get(), 7);
        assert_eq!(
            m.authority_ca_expiration.with_label_values(&["prod-ca"]).get(),
            2_082_758_400.0
        );
        let text = m.text();
        assert!(
            text.contains("genesis_operator_authority_crl_number{authority=\"prod-ca\"} 7"),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_documented() {
        let doc = include_str!("../../docs/METRICS.md");
        for name in Metrics::new().family_names() {
            assert!(doc.contains(&format!("`{name}`")), "docs/METRICS.md does not list {name}");
        }
    }
}
