//! Names apps use to reach the mesh, shared by the sidecar (which acts on them) and the
//! operator's webhook (which refuses a bad pod annotation before the pod starts): service
//! names, tunnel targets (`<node>.<network>`, `<service>.svc.<network>`) and upstream entries
//! (`LISTEN=TARGET:PORT`).

use std::net::{IpAddr, SocketAddr};

/// Whether `name` can name a service: a DNS label (1 to 63 of a-z, 0-9 and '-', beginning and
/// ending with a letter or digit).
pub fn valid_service_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(inner)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name: 1 to 63 of a-z, 0-9 and '-', beginning and ending with a letter or digit"
        ))
    }
}

/// Where a tunnel goes: a member, or the nearest member offering a service. CONNECT and
/// upstreams name it the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Member(String),
    Service(String),
}

impl Target {
    /// `<node>.<network>` or `<service>.svc.<network>`.
    pub fn parse(host: &str, network: &str) -> Result<Target, String> {
        let target = if let Some(name) = host.strip_suffix(&format!(".svc.{network}")) {
            Target::Service(name.to_owned())
        } else if let Some(node) = host.strip_suffix(&format!(".{network}")) {
            Target::Member(node.to_owned())
        } else {
            return Err(format!("{host} is not a member or service of network {network}"));
        };
        match &target {
            Target::Member(n) | Target::Service(n) if n.is_empty() => {
                Err(format!("{host} names no member or service of network {network}"))
            }
            Target::Service(name) => valid_service_name(name).map(|()| target),
            Target::Member(_) => Ok(target),
        }
    }

    /// The host name CONNECT would use.
    pub fn host(&self, network: &str) -> String {
        match self {
            Target::Member(node) => format!("{node}.{network}"),
            Target::Service(name) => format!("{name}.svc.{network}"),
        }
    }
}

/// A local listener whose connections all tunnel to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where apps connect (loopback only: anything in the pod may use it, nothing outside).
    pub listen: SocketAddr,
    pub target: Target,
    pub port: u16,
}

impl Upstream {
    /// One `LISTEN=TARGET:PORT` entry. LISTEN is a port on `default_ip` (the sidecar's API
    /// address) or a loopback `ip:port`; TARGET names a member or a service of `network`.
    pub fn parse(entry: &str, default_ip: IpAddr, network: &str) -> Result<Upstream, String> {
        let usage = format!(
            "LISTEN=TARGET:PORT, e.g. 15432=db.svc.{network}:5432 or 127.0.0.1:15432=db-0.{network}:5432"
        );
        let bad = |why: String| format!("upstream {entry:?}: {why}");
        let (listen, target) =
            entry.split_once('=').ok_or_else(|| bad(format!("is not {usage}")))?;
        let listen: SocketAddr = match listen.parse::<u16>() {
            Ok(port) => SocketAddr::new(default_ip, port),
            Err(_) => listen
                .parse()
                .map_err(|_| bad(format!("{listen:?} is neither a port nor ip:port ({usage})")))?,
        };
        if listen.port() == 0 {
            return Err(bad("listen port 0 is not a port".into()));
        }
        if !listen.ip().is_loopback() {
            return Err(bad(format!(
                "{} is not a loopback address: an upstream is for apps in this pod, and anyone who reaches it speaks with this member's identity",
                listen.ip()
            )));
        }
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("target {target:?} has no port ({usage})")))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("{port:?} is not a port (1-65535)")))?;
        let target = Target::parse(host, network).map_err(|e| bad(format!("{e} ({usage})")))?;
        Ok(Upstream { listen, target, port })
    }

    /// Every entry of a list, each checked as [`Upstream::parse`] does, with no listen address
    /// used twice and every target port in `allowed`.
    pub fn parse_all<S: AsRef<str>>(
        entries: &[S],
        default_ip: IpAddr,
        network: &str,
        allowed: &[u16],
    ) -> Result<Vec<Upstream>, String> {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for entry in entries.iter().map(|e| e.as_ref().trim()).filter(|e| !e.is_empty()) {
            let u = Upstream::parse(entry, default_ip, network)?;
            if !allowed.contains(&u.port) {
                return Err(format!(
                    "upstream {entry:?}: port {} is not in the network's allowed ports {allowed:?}: it refuses streams to it",
                    u.port
                ));
            }
            if let Some(other) = upstreams.iter().find(|o| o.listen == u.listen) {
                return Err(format!(
                    "upstream {entry:?}: {} is already the upstream to {}",
                    u.listen,
                    other.describe(network)
                ));
            }
            upstreams.push(u);
        }
        Ok(upstreams)
    }

    /// `listen → target:port`, as logs and errors name it.
    pub fn describe(&self, network: &str) -> String {
        format!("{} → {}:{}", self.listen, self.target.host(network), self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_member_or_a_service_of_the_network_and_nothing_else() {
        let t = |host: &str| Target::parse(host, "prod");
        assert_eq!(t("web-0.shop.prod"), Ok(Target::Member("web-0.shop".into())));
        assert_eq!(t("db.svc.prod"), Ok(Target::Service("db".into())));
        assert_eq!(t("db.svc.prod").unwrap().host("prod"), "db.svc.prod");
        for (host, why) in [
            ("db.svc.dev", "not a member or service of network prod"),
            ("prod", "not a member or service"),
            (".prod", "names no member or service"),
            ("DB.svc.prod", "not a service name"),
        ] {
            let e = t(host).unwrap_err();
            assert!(e.contains(why), "{host}: {e}");
        }
    }
}
