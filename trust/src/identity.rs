//! Mesh identities as SPIFFE-style URIs: the one formatter and the one strict parser.
//!
//! The form is `spiffe://<trust-domain>/mesh/<network>/<role>/<node>`. Every certificate a
//! Genesis Mesh authority issues carries exactly one such URI SAN, and every check of a peer,
//! a CSR or a control message goes through [`Identity::parse`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// SPIFFE caps a SPIFFE ID at 2048 bytes; we hold identities to the same bound.
pub const MAX_IDENTITY_LEN: usize = 2048;
/// SPIFFE trust domains are at most 255 characters (a DNS name).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Networks are Kubernetes object names used as DNS labels.
const MAX_NETWORK_LEN: usize = 63;
/// Node names are pod names: DNS-1123 subdomains.
const MAX_NODE_LEN: usize = 253;

const SCHEME: &str = "spiffe://";
const MESH_SEGMENT: &str = "mesh";

/// What a principal may be in a network; RBAC policies grant control verbs per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A well-known member that new members bootstrap from.
    Anchor,
    /// An ordinary member (an application pod's sidecar).
    Client,
    /// The operator: pushes CRLs and control messages.
    Operator,
    /// A human administrator's principal (for example `genesisctl`).
    Admin,
}

impl Role {
    /// All roles, in a stable order.
    pub const ALL: [Role; 4] = [Role::Anchor, Role::Client, Role::Operator, Role::Admin];

    /// The lowercase name used in URIs, CRDs and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Anchor => "anchor",
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!("unknown role {s:?} (expected anchor, client, operator or admin)")
        })
    }
}

/// One principal of one network: who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    network: String,
    role: Role,
    node: String,
}

impl Identity {
    /// Builds an identity, checking every part with the same rules as [`Identity::parse`].
    pub fn new(trust_domain: &str, network: &str, role: Role, node: &str) -> Result<Self> {
        let id = Identity {
            trust_domain: trust_domain.to_owned(),
            network: network.to_owned(),
            role,
            node: node.to_owned(),
        };
        let uri = id.to_string();
        let reject = |reason: String| Error::InvalidIdentity { uri: uri.clone(), reason };
        check_trust_domain(trust_domain).map_err(reject)?;
        check_dns_label(network, "network", MAX_NETWORK_LEN).map_err(reject)?;
        check_node(node).map_err(reject)?;
        if uri.len() > MAX_IDENTITY_LEN {
            return Err(reject(format!("longer than {MAX_IDENTITY_LEN} bytes")));
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/mesh/<network>/<role>/<node>`, refusing anything else:
    /// other schemes, upper case, ports, user info, queries, fragments, percent-encoding,
    /// empty, extra or missing path segments.
    pub fn parse(uri: &str) -> Result<Self> {
        let reject = |reason: &str| Error::InvalidIdentity {
            uri: truncate_for_error(uri),
            reason: reason.to_owned(),
        };
        if uri.len() > MAX_IDENTITY_LEN {
            return Err(reject("longer than 2048 bytes"));
        }
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| reject("scheme must be spiffe://"))?;
        if rest.contains(['?', '#']) {
            return Err(reject("query and fragment are not allowed"));
        }
        if rest.contains('%') {
            return Err(reject("percent-encoding is not allowed"));
        }
        let mut parts = rest.split('/');
        let trust_domain = parts.next().unwrap_or_default();
        let segments: Vec<&str> = parts.collect();
        let [mesh, network, role, node] = segments[..] else {
            return Err(reject(
                "path must be exactly /mesh/<network>/<role>/<node> (four segments)",
            ));
        };
        if mesh != MESH_SEGMENT {
            return Err(reject("first path segment must be \"mesh\""));
        }
        let role = Role::from_str(role).map_err(|e| reject(&e))?;
        Identity::new(trust_domain, network, role, node).map_err(|e| match e {
            Error::InvalidIdentity { reason, .. } => reject(&reason),
            other => other,
        })
    }

    /// The trust domain (one per Network Authority).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The network (MeshNetwork name) the principal belongs to.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The principal's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The node name (pod name for members).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The URI form, as written into certificates.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/{MESH_SEGMENT}/{}/{}/{}",
            self.trust_domain, self.network, self.role, self.node
        )
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Identity::parse(s)
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Identity::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Keeps attacker-supplied text in error messages short.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`; at most 255 characters.
fn check_trust_domain(td: &str) -> std::result::Result<(), String> {
    if td.is_empty() {
        return Err("trust domain is empty".into());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} characters"));
    }
    if let Some(c) =
        td.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(format!(
            "trust domain may hold only a-z, 0-9, '.', '-' and '_' (found {c:?}; no ports, user info or upper case)"
        ));
    }
    Ok(())
}

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
fn check_dns_label(s: &str, what: &str, max: usize) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    let ok_inner = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !s.chars().all(ok_inner) || !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Err(format!(
            "{what} {s:?} must be a DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn check_node(s: &str) -> std::result::Result<(), String> {
    if s.len() > MAX_NODE_LEN {
        return Err(format!("node is longer than {MAX_NODE_LEN} characters"));
    }
    if s.is_empty() {
        return Err("node is empty".into());
    }
    s.split('.').try_for_each(|label| check_dns_label(label, "node label", 63))
}

#[cfg(test)]
mod tests;
