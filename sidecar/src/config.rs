//! Sidecar configuration: a file (YAML or JSON) overridden by flags and `GENESIS_*` environment
//! variables, with the defaults of docs/SIDECAR.md, validated at start with errors that say
//! which setting is wrong and why.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use genesis_trust::duration::parse_duration;
use genesis_trust::{Identity, Role};
use serde::Deserialize;

pub use genesis_trust::names::{Target, Upstream};

use crate::peers::PeerConfig;
use crate::routing::RoutingConfig;

/// Routing areas a network may have at most.
pub const MAX_AREAS: u16 = 4096;
/// What a link across zones may add to its cost at most: 16 hops of the dearest links with
/// it stay below the metric's ceiling (65,535).
pub const MAX_ZONE_PENALTY: u16 = 2000;
/// The cross-zone penalty by default: five hops on a LAN (a hop costs 100 to 1,000 by RTT).
pub const DEFAULT_ZONE_PENALTY: u16 = 500;

/// Settings as they may appear in the file; every field optional.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// This member's node name (pod name).
    #[arg(long, env = "GENESIS_NODE")]
    pub node: Option<String>,
    /// Role to expect in the certificate (anchor or client).
    #[arg(long, env = "GENESIS_ROLE")]
    pub role: Option<String>,
    /// The MeshNetwork name.
    #[arg(long, env = "GENESIS_NETWORK")]
    pub network: Option<String>,
    /// The trust domain of the network's authority.
    #[arg(long, env = "GENESIS_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// host:port of the identity service.
    #[arg(long, env = "GENESIS_IDENTITY_SERVICE")]
    pub identity_service: Option<String>,
    /// PEM trust bundle used to check the identity service at first join.
    #[arg(long, env = "GENESIS_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// One-time join token.
    #[arg(long, env = "GENESIS_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token (instead of --join-token).
    #[arg(long, env = "GENESIS_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Address for peer links.
    #[arg(long, env = "GENESIS_LISTEN")]
    pub listen: Option<String>,
    /// Address other members should dial (defaults to --listen).
    #[arg(long, env = "GENESIS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Loopback address of the app API (CONNECT proxy and message API).
    #[arg(long, env = "GENESIS_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Address of the admin API (health, metrics, peers, routes).
    #[arg(long, env = "GENESIS_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Anchor addresses to bootstrap from (comma separated).
    #[arg(long, env = "GENESIS_ANCHORS", value_delimiter = ',')]
    pub anchors: Option<Vec<String>>,
    /// Host that tunnels to allowed ports connect to (the app in this pod).
    #[arg(long, env = "GENESIS_APP_HOST")]
    pub app_host: Option<String>,
    /// Ports apps in other pods may tunnel to here (comma separated).
    #[arg(long, env = "GENESIS_ALLOWED_PORTS", value_delimiter = ',')]
    pub allowed_ports: Option<Vec<u16>>,
    #[arg(long, env = "GENESIS_HELLO_INTERVAL")]
    pub hello_interval: Option<String>,
    #[arg(long, env = "GENESIS_HOLD_TIME")]
    pub hold_time: Option<String>,
    #[arg(long, env = "GENESIS_MAX_HOPS")]
    pub max_hops: Option<u8>,
    /// Routing areas (default 1, flat): above a few hundred members, each member keeps routes
    /// to its own area's members and one per other area (docs/SCALE.md). Every member of a
    /// network must use the same value.
    #[arg(long, env = "GENESIS_AREAS")]
    pub areas: Option<u16>,
    /// This member's zone (a Kubernetes label value, such as its node's
    /// `topology.kubernetes.io/zone`). Empty or unset: not known, no link is charged for it.
    #[arg(long, env = "GENESIS_ZONE")]
    pub zone: Option<String>,
    /// What a link to a member of another zone adds to its cost (0 to 2000, default 500, five
    /// LAN hops): traffic between members of one zone stays in the zone while a path there is
    /// not much longer.
    #[arg(long, env = "GENESIS_ZONE_PENALTY")]
    pub zone_penalty: Option<u16>,
    /// The most of its data traffic this member relays for others, as a share in (0, 1]
    /// (default 1: no limit). Above it, over the last 10 s and past 1 MiB relayed, it refuses
    /// new streams through it with a reason and advertises its routes as costlier, so routes
    /// steer around it; streams already through it go on (docs/SIDECAR.md, "Relay accounting").
    #[arg(long, env = "GENESIS_MAX_RELAY_SHARE")]
    pub max_relay_share: Option<f64>,
    /// Services this member offers to the mesh, as `name=port` (comma separated): members reach
    /// one with `CONNECT <name>.svc.<network>:<port>`. The port must also be allowed.
    #[arg(long = "service", env = "GENESIS_SERVICES", value_delimiter = ',')]
    pub services: Option<Vec<String>>,
    /// Local ports that tunnel every connection to one fixed target, for apps that cannot
    /// speak CONNECT: `LISTEN=TARGET:PORT` (comma separated), LISTEN a port on the API's
    /// loopback address or a loopback `ip:port`, TARGET `<node>.<network>` or
    /// `<service>.svc.<network>`, e.g. `--upstream 15432=db.svc.prod:5432`.
    #[arg(long = "upstream", env = "GENESIS_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Option<Vec<String>>,
    /// Streams to a neighbour ride the link's mutual TLS without a second, end-to-end TLS
    /// session inside it (default true): the link already authenticates and encrypts between
    /// the same two members. Streams through relays always use end-to-end TLS. False: every
    /// stream gets its own TLS session, as before (docs/SECURITY.md, "Direct streams").
    #[arg(long, env = "GENESIS_DIRECT_STREAMS")]
    pub direct_streams: Option<bool>,
    /// Send route updates as soon as a route changes (default true), not only periodically.
    #[arg(long, env = "GENESIS_TRIGGERED_UPDATES")]
    pub triggered_updates: Option<bool>,
    #[arg(long, env = "GENESIS_PERIODIC_UPDATE_INTERVAL")]
    pub periodic_update_interval: Option<String>,
    #[arg(long, env = "GENESIS_MIN_PEERS")]
    pub min_peers: Option<usize>,
    #[arg(long, env = "GENESIS_MAX_PEERS")]
    pub max_peers: Option<usize>,
    #[arg(long, env = "GENESIS_EXCHANGE_INTERVAL")]
    pub exchange_interval: Option<String>,
    #[arg(long, env = "GENESIS_BAN_THRESHOLD")]
    pub ban_threshold: Option<u8>,
    #[arg(long, env = "GENESIS_BAN_DURATION")]
    pub ban_duration: Option<String>,
    /// Threads that run the sidecar's tasks (default 1; at most 64). More help a sidecar that
    /// relays bulk traffic and was given more than one core.
    #[arg(long, env = "GENESIS_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Hash-chained audit log file.
    #[arg(long, env = "GENESIS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Directory this member owns (mode 0700) for its key and certificate (mode 0600): a
    /// restarted member renews with them instead of spending a new join token.
    #[arg(long, env = "GENESIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// RBAC policy for control messages (file only; defaults to the network default policy).
    #[arg(skip)]
    pub rbac: Option<genesis_trust::RbacPolicy>,
    /// Test hook: append every data payload this member relays for others to this file, so a
    /// test can show relays never see plaintext. Not for production.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub test_capture_relayed: Option<PathBuf>,
}

impl Settings {
    /// Reads a YAML or JSON settings file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Reads a network's genesis document (the operator's signed sidecar configuration),
    /// refusing it unless a root of the trust bundle at `bundle` signed it.
    pub fn from_genesis(path: &Path, bundle: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read genesis document {}: {e}", path.display()))?;
        let signed: genesis_trust::SignedDocument = serde_json::from_str(&text)
            .map_err(|e| format!("genesis document {}: {e}", path.display()))?;
        let roots = std::fs::read_to_string(bundle)
            .map_err(|e| e.to_string())
            .and_then(|pem| genesis_trust::certs_from_pem(&pem).map_err(|e| e.to_string()))
            .map_err(|e| format!("trust bundle {}: {e}", bundle.display()))?;
        let document = signed.verify(&roots).map_err(|e| format!("{}: {e}", path.display()))?;
        let settings: Settings = serde_json::from_str(document)
            .map_err(|e| format!("genesis document {}: {e}", path.display()))?;
        // Per-member settings come from the pod, never from the network's document.
        if settings.node.is_some()
            || settings.listen.is_some()
            || settings.advertise.is_some()
            || settings.zone.is_some()
            || settings.services.is_some()
            || settings.upstreams.is_some()
        {
            return Err(format!(
                "genesis document {} sets node, listen, advertise, zone, services or upstreams, which are per member",
                path.display()
            ));
        }
        Ok(settings)
    }

    /// `self` where set, else `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(fallback.$f)),* } };
        }
        pick!(
            node,
            role,
            network,
            trust_domain,
            identity_service,
            trust_bundle,
            join_token,
            join_token_file,
            listen,
            advertise,
            api_listen,
            admin_listen,
            anchors,
            app_host,
            allowed_ports,
            hello_interval,
            hold_time,
            max_hops,
            areas,
            zone,
            zone_penalty,
            max_relay_share,
            services,
            upstreams,
            direct_streams,
            triggered_updates,
            periodic_update_interval,
            min_peers,
            max_peers,
            exchange_interval,
            ban_threshold,
            ban_duration,
            worker_threads,
            audit_log,
            state_dir,
            test_capture_relayed,
            rbac
        )
    }
}

/// Worker threads by default. A sidecar is one small process per pod; with one worker an idle
/// member wakes once per event instead of waking a second thread to look for work (100 idle
/// members: 0.124 of a core with two workers on two cores, 0.107 with one; docs/BENCHMARKS.md).
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub role: Role,
    pub network: String,
    pub trust_domain: String,
    pub identity_service: String,
    pub trust_bundle: PathBuf,
    pub join_token: String,
    pub listen: SocketAddr,
    pub advertise: String,
    pub api_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub anchors: Vec<String>,
    pub app_host: IpAddr,
    pub allowed_ports: Vec<u16>,
    pub hello_interval: Duration,
    pub hold_time: Duration,
    pub routing: RoutingConfig,
    pub peers: PeerConfig,
    /// This member's zone (empty: not known) and the cost of a link across zones.
    pub zone: String,
    pub zone_penalty: u16,
    /// Relayed bytes' largest share of this member's data traffic (1: no limit).
    pub max_relay_share: f64,
    /// Services offered: name → port (each port allowed).
    pub services: std::collections::BTreeMap<String, u16>,
    /// Local listeners that tunnel to one fixed target each (`--upstream`).
    pub upstreams: Vec<Upstream>,
    /// Streams to a neighbour without end-to-end TLS inside the link's (`--direct-streams`).
    pub direct_streams: bool,
    pub worker_threads: usize,
    pub audit_log: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub test_capture_relayed: Option<PathBuf>,
    pub rbac: genesis_trust::RbacPolicy,
}

/// `name=port` service entries, each name a DNS label and each port one the member allows.
fn parse_services(
    entries: Vec<String>,
    allowed: &[u16],
) -> Result<std::collections::BTreeMap<String, u16>, String> {
    let mut services = std::collections::BTreeMap::new();
    for entry in entries.iter().filter(|e| !e.is_empty()) {
        let (name, port) = entry.split_once('=').ok_or_else(|| {
            format!("service {entry:?} is not name=port (e.g. --service web=8080)")
        })?;
        crate::services::valid_name(name).map_err(|e| format!("service {entry:?}: {e}"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("service {entry:?}: {port:?} is not a port (1-65535)"))?;
        if !allowed.contains(&port) {
            return Err(format!(
                "service {entry:?}: port {port} is not in allowed-ports {allowed:?}; allow it too, or members could not reach the service"
            ));
        }
        if services.insert(name.to_owned(), port).is_some() {
            return Err(format!("service {name:?} is named twice"));
        }
    }
    Ok(services)
}

/// Whether `zone` is empty or a Kubernetes label value.
pub fn valid_zone(zone: &str) -> bool {
    let b = zone.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    zone.is_empty()
        || (b.len() <= crate::frame::MAX_ZONE
            && b.iter().all(inner)
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

impl Config {
    /// Applies defaults and validates. Every error names the setting.
    pub fn resolve(s: Settings) -> Result<Config, String> {
        let node = s.node.ok_or("node is required (--node or GENESIS_NODE)")?;
        let network = s.network.ok_or("network is required (--network or GENESIS_NETWORK)")?;
        let trust_domain = s.trust_domain.unwrap_or_else(|| "cluster.local".into());
        let role: Role =
            s.role.as_deref().unwrap_or("client").parse().map_err(|e| format!("role: {e}"))?;
        if !matches!(role, Role::Anchor | Role::Client) {
            return Err(format!("role: a sidecar runs as anchor or client, not {role}"));
        }
        Identity::new(&trust_domain, &network, role, &node).map_err(|e| e.to_string())?;
        let identity_service = s
            .identity_service
            .ok_or("identity-service is required (host:port of the operator's identity service)")?;
        let trust_bundle =
            s.trust_bundle.ok_or("trust-bundle is required (the network's CA bundle, PEM)")?;
        let join_token = match (s.join_token, s.join_token_file) {
            (Some(t), _) => t,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|e| format!("join-token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err("join-token (or join-token-file) is required for the first join".into())
            }
        };
        let addr = |name: &str, v: Option<String>, default: &str| -> Result<SocketAddr, String> {
            let v = v.unwrap_or_else(|| default.to_owned());
            v.parse().map_err(|e| format!("{name} {v:?} is not host:port: {e}"))
        };
        let listen = addr("listen", s.listen, "0.0.0.0:7000")?;
        let advertise = s.advertise.unwrap_or_else(|| listen.to_string());
        let api_listen = addr("api-listen", s.api_listen, "127.0.0.1:7001")?;
        let admin_listen = addr("admin-listen", s.admin_listen, "0.0.0.0:7002")?;
        let app_host: IpAddr = s
            .app_host
            .unwrap_or_else(|| "127.0.0.1".into())
            .parse()
            .map_err(|e| format!("app-host: {e}"))?;
        let allowed_ports = s.allowed_ports.unwrap_or_default();
        if allowed_ports.contains(&0) {
            return Err("allowed-ports: port 0 is not a port".into());
        }
        let dur = |name: &str, v: Option<String>, default: &str| -> Result<Duration, String> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| format!("{name}: {e}"))
        };
        let hello_interval = dur("hello-interval", s.hello_interval, "1s")?;
        let hold_time = dur("hold-time", s.hold_time, "3s")?;
        if hold_time <= hello_interval {
            return Err(format!(
                "hold-time ({hold_time:?}) must be longer than hello-interval ({hello_interval:?}); three intervals is typical"
            ));
        }
        let periodic = dur("periodic-update-interval", s.periodic_update_interval, "10s")?;
        let max_hops = s.max_hops.unwrap_or(16);
        if !(1..=64).contains(&max_hops) {
            return Err(format!("max-hops {max_hops} is outside 1..=64"));
        }
        let areas = s.areas.unwrap_or(1);
        if !(1..=MAX_AREAS).contains(&areas) {
            return Err(format!(
                "areas {areas} is outside 1..={MAX_AREAS}; about one area per 100 members suits a large network"
            ));
        }
        let zone = s.zone.unwrap_or_default();
        if !valid_zone(&zone) {
            return Err(format!(
                "zone {zone:?} is not a label value: at most 63 of A-Z, a-z, 0-9, '-', '_', '.', beginning and ending with a letter or digit (as topology.kubernetes.io/zone, e.g. eu-west-1a)"
            ));
        }
        let zone_penalty = s.zone_penalty.unwrap_or(DEFAULT_ZONE_PENALTY);
        if zone_penalty > MAX_ZONE_PENALTY {
            return Err(format!(
                "zone-penalty {zone_penalty} is above {MAX_ZONE_PENALTY} (a hop costs 100 to 1,000; 500 is five LAN hops)"
            ));
        }
        let max_relay_share = s.max_relay_share.unwrap_or(1.0);
        if !(max_relay_share > 0.0 && max_relay_share <= 1.0) {
            return Err(format!(
                "max-relay-share {max_relay_share} is outside (0, 1]: it is the share of this member's traffic it may relay for others (0.5: half; 1: no limit)"
            ));
        }
        let services = parse_services(s.services.unwrap_or_default(), &allowed_ports)?;
        let upstreams = Upstream::parse_all(
            &s.upstreams.unwrap_or_default(),
            api_listen.ip(),
            &network,
            &allowed_ports,
        )?;
        // An own listener on 0.0.0.0 takes its port on every address, loopback included.
        let clash = |own: SocketAddr, u: SocketAddr| {
            own.port() == u.port() && (own.ip().is_unspecified() || own.ip() == u.ip())
        };
        if let Some(u) = upstreams
            .iter()
            .find(|u| [api_listen, admin_listen, listen].iter().any(|&own| clash(own, u.listen)))
        {
            return Err(format!(
                "upstream on {}: the sidecar's own listeners use that address",
                u.listen
            ));
        }
        let min_peers = s.min_peers.unwrap_or(3);
        let max_peers = s.max_peers.unwrap_or(8);
        if min_peers == 0 || min_peers > max_peers || max_peers > 256 {
            return Err(format!(
                "min-peers {min_peers} and max-peers {max_peers}: need 1 <= min <= max <= 256"
            ));
        }
        let worker_threads = s.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS);
        if !(1..=64).contains(&worker_threads) {
            return Err(format!("worker-threads {worker_threads} is outside 1..=64"));
        }
        let ban_threshold = s.ban_threshold.unwrap_or(20);
        if ban_threshold > 100 {
            return Err(format!("ban-threshold {ban_threshold} is above 100"));
        }
        Ok(Config {
            node,
            role,
            network,
            trust_domain,
            identity_service,
            trust_bundle,
            join_token,
            listen,
            advertise,
            api_listen,
            admin_listen,
            anchors: s.anchors.unwrap_or_default().into_iter().filter(|a| !a.is_empty()).collect(),
            app_host,
            allowed_ports,
            hello_interval,
            hold_time,
            routing: RoutingConfig {
                max_hops,
                periodic_interval: periodic,
                route_expiry: crate::routing::expiry_for(periodic),
                triggered_updates: s.triggered_updates.unwrap_or(true),
                areas,
            },
            peers: PeerConfig {
                min_peers,
                max_peers,
                exchange_interval: dur("exchange-interval", s.exchange_interval, "10s")?,
                ban_threshold,
                ban_duration: dur("ban-duration", s.ban_duration, "5m")?,
                ..PeerConfig::default()
            },
            zone,
            zone_penalty,
            max_relay_share,
            services,
            upstreams,
            direct_streams: s.direct_streams.unwrap_or(true),
            worker_threads,
            audit_log: s.audit_log,
            state_dir: s.state_dir,
            test_capture_relayed: s.test_capture_relayed,
            rbac: s.rbac.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Settings {
        Settings {
            node: Some("web-1".into()),
            network: Some("demo".into()),
            identity_service: Some("127.0.0.1:7443".into()),
            trust_bundle: Some("/tmp/ca.crt".into()),
            join_token: Some("t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_genesis_document_is_used_only_when_the_authority_signed_it() {
        use genesis_trust::{CertificateAuthority, KeyAlgorithm, SignedDocument};
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        let ca = CertificateAuthority::generate("prod.example", KeyAlgorithm::EcdsaP256, day, now)
            .unwrap();
        let bundle = dir.path().join("ca.crt");
        std::fs::write(&bundle, ca.cert_pem()).unwrap();
        let write = |doc: &SignedDocument| {
            let path = dir.path().join("genesis.json");
            std::fs::write(&path, serde_json::to_string(doc).unwrap()).unwrap();
            path
        };
        let doc = SignedDocument::sign(&ca, r#"{"maxHops":9,"anchors":["10.0.0.7:7000"]}"#.into())
            .unwrap();
        let settings = Settings::from_genesis(&write(&doc), &bundle).unwrap();
        assert_eq!(settings.max_hops, Some(9));
        assert_eq!(settings.anchors.as_deref(), Some(&["10.0.0.7:7000".to_owned()][..]));

        // Someone edits the ConfigMap: refused, saying why.
        let edited = SignedDocument { document: doc.document.replace('9', "64"), ..doc.clone() };
        let e = Settings::from_genesis(&write(&edited), &bundle).unwrap_err();
        assert!(e.contains("does not match the document"), "{e}");

        // A per-member setting in the network's document is refused even when signed.
        for member in
            [r#"{"node":"web-1"}"#, r#"{"zone":"eu-west-1a"}"#, r#"{"upstreams":["1=a.b:1"]}"#]
        {
            let doc = SignedDocument::sign(&ca, member.into()).unwrap();
            let e = Settings::from_genesis(&write(&doc), &bundle).unwrap_err();
            assert!(e.contains("per member"), "{member}: {e}");
        }
        // The zone penalty is the network's.
        let doc = SignedDocument::sign(&ca, r#"{"zonePenalty":800}"#.into()).unwrap();
        assert_eq!(Settings::from_genesis(&write(&doc), &bundle).unwrap().zone_penalty, Some(800));
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let c = Config::resolve(minimal()).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:7001");
        assert_eq!(
            (c.hello_interval, c.hold_time),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
        assert_eq!(c.routing.max_hops, 16);
        assert_eq!((c.peers.min_peers, c.peers.max_peers), (3, 8));
        assert_eq!(c.role, Role::Client);
        assert_eq!((c.zone.as_str(), c.zone_penalty), ("", DEFAULT_ZONE_PENALTY));
        assert_eq!((c.max_relay_share, c.services.len()), (1.0, 0));
        let offered = Settings {
            services: Some(vec!["web=80".into(), "db=5432".into()]),
            allowed_ports: Some(vec![80, 5432]),
            ..minimal()
        };
        let c = Config::resolve(offered).unwrap();
        assert_eq!(c.services.get("web"), Some(&80));
        assert_eq!(c.services.get("db"), Some(&5432));
        assert!(c.upstreams.is_empty());
        let upstreams = Settings {
            upstreams: Some(vec![
                "15432=db.svc.demo:5432".into(),
                "127.0.0.2:8080=web-1.ns.demo:80".into(),
            ]),
            allowed_ports: Some(vec![80, 5432]),
            ..minimal()
        };
        let c = Config::resolve(upstreams).unwrap();
        let expected = [
            ("127.0.0.1:15432", Target::Service("db".into()), 5432),
            ("127.0.0.2:8080", Target::Member("web-1.ns".into()), 80),
        ];
        for (u, (listen, target, port)) in c.upstreams.iter().zip(expected) {
            assert_eq!((u.listen.to_string().as_str(), &u.target, u.port), (listen, &target, port));
        }
        assert_eq!(c.upstreams.len(), 2);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file: Settings =
            serde_yaml::from_str("node: from-file\nnetwork: demo\nmaxHops: 8\nminPeers: 2\n")
                .unwrap();
        let flags = Settings { node: Some("from-flag".into()), ..minimal() };
        let c = Config::resolve(flags.or(file)).unwrap();
        assert_eq!(c.node, "from-flag");
        assert_eq!(c.routing.max_hops, 8);
        assert_eq!(c.peers.min_peers, 2);
        assert!(serde_yaml::from_str::<Settings>("nod: typo\n")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
    }

    #[test]
    fn every_invalid_setting_is_named_in_its_error() {
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { node: None, ..minimal() }, "node is required"),
            (Settings { node: Some("Web_1".into()), ..minimal() }, "DNS"),
            (Settings { role: Some("admin".into()), ..minimal() }, "role"),
            (Settings { hold_time: Some("1s".into()), ..minimal() }, "hold-time"),
            (Settings { hello_interval: Some("soon".into()), ..minimal() }, "hello-interval"),
            (Settings { max_hops: Some(0), ..minimal() }, "max-hops"),
            (Settings { min_peers: Some(9), ..minimal() }, "min-peers"),
            (Settings { listen: Some("nowhere".into()), ..minimal() }, "listen"),
            (Settings { allowed_ports: Some(vec![0]), ..minimal() }, "allowed-ports"),
            (Settings { join_token: None, ..minimal() }, "join-token"),
            (Settings { ban_threshold: Some(101), ..minimal() }, "ban-threshold"),
            (Settings { worker_threads: Some(0), ..minimal() }, "worker-threads"),
            (Settings { areas: Some(0), ..minimal() }, "areas 0 is outside"),
            (Settings { areas: Some(MAX_AREAS + 1), ..minimal() }, "areas 4097 is outside"),
            (Settings { zone: Some("eu west".into()), ..minimal() }, "zone \"eu west\" is not"),
            (Settings { zone: Some("-a".into()), ..minimal() }, "not a label value"),
            (Settings { zone: Some("z".repeat(64)), ..minimal() }, "at most 63"),
            (Settings { zone_penalty: Some(2001), ..minimal() }, "zone-penalty 2001 is above"),
            (Settings { max_relay_share: Some(0.0), ..minimal() }, "max-relay-share 0 is outside"),
            (Settings { max_relay_share: Some(1.5), ..minimal() }, "max-relay-share 1.5"),
            (Settings { max_relay_share: Some(f64::NAN), ..minimal() }, "max-relay-share NaN"),
            (Settings { services: Some(vec!["web".into()]), ..minimal() }, "is not name=port"),
            (Settings { services: Some(vec!["Web=80".into()]), ..minimal() }, "not a service name"),
            (Settings { services: Some(vec!["web=http".into()]), ..minimal() }, "is not a port"),
            (
                Settings { services: Some(vec!["web=81".into()]), ..minimal() },
                "not in allowed-ports",
            ),
            (
                Settings {
                    services: Some(vec!["web=80".into(), "web=80".into()]),
                    allowed_ports: Some(vec![80]),
                    ..minimal()
                },
                "named twice",
            ),
        ];
        let upstream = |entries: &[&str]| Settings {
            upstreams: Some(entries.iter().map(|e| e.to_string()).collect()),
            allowed_ports: Some(vec![5432]),
            ..minimal()
        };
        let cases = cases.into_iter().chain([
            (upstream(&["db.svc.demo:5432"]), "is not LISTEN=TARGET:PORT"),
            (upstream(&["db=db.svc.demo:5432"]), "\"db\" is neither a port nor ip:port"),
            (upstream(&["0=db.svc.demo:5432"]), "listen port 0"),
            (upstream(&["10.0.0.1:15432=db.svc.demo:5432"]), "not a loopback address"),
            (upstream(&["15432=db.svc.demo"]), "has no port"),
            (upstream(&["15432=db.svc.demo:pg"]), "\"pg\" is not a port"),
            (upstream(&["15432=db.svc.prod:5432"]), "not a member or service of network demo"),
            (upstream(&["15432=.demo:5432"]), "names no member or service"),
            (upstream(&["15432=DB.svc.demo:5432"]), "not a service name"),
            (
                upstream(&["15432=db.svc.demo:80"]),
                "port 80 is not in the network's allowed ports [5432]",
            ),
            (upstream(&["7001=db.svc.demo:5432"]), "the sidecar's own listeners"),
            (upstream(&["127.0.0.1:7000=db.svc.demo:5432"]), "the sidecar's own listeners"),
            (upstream(&["127.0.0.3:7002=db.svc.demo:5432"]), "the sidecar's own listeners"),
            (
                upstream(&["15432=db.svc.demo:5432", "127.0.0.1:15432=db-0.demo:5432"]),
                "127.0.0.1:15432 is already the upstream to 127.0.0.1:15432 → db.svc.demo:5432",
            ),
        ]);
        for (settings, expected) in cases {
            let err = Config::resolve(settings).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
}
