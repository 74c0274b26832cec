//! Signed control messages: the envelope, its wire form, RBAC policy, replay cache and verifier.
//!
//! A control message (policy update, revoke, drain, shutdown, route reset, log level) is a JSON
//! [`ControlEnvelope`] signed with the sender's certificate key and carried with the sender's
//! chain in a bounded binary [`SignedEnvelope`]. [`ControlVerifier::verify`] runs the checks in
//! a fixed order — wire format, signer certificate, signature, network, freshness, RBAC, replay —
//! and every outcome names the rule that decided it (LESSONS.md: "which policy denied?").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use webpki::EndEntityCert;

use crate::authority::PrivateKey;
use crate::cert::CertInfo;
use crate::error::{Error, Result};
use crate::identity::{Identity, Role};
use crate::verify::{PeerRole, TrustStore};

/// Envelope format version; a verifier refuses versions it does not know.
pub const ENVELOPE_VERSION: u8 = 1;
/// Magic bytes that open every encoded envelope.
const MAGIC: &[u8; 4] = b"GMCE";
/// Whole encoded envelope: body + signature + a short chain fit easily; anything bigger is abuse.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;
/// The JSON body (a policy update is the largest verb).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Leaf and CA, with room for one intermediate.
pub const MAX_CHAIN_CERTS: usize = 3;
/// Arguments per envelope.
pub const MAX_ARGS: usize = 32;
/// Domain separation: an envelope signature can never be mistaken for any other signature
/// made with the same key (TLS handshakes, CSRs).
const SIGNING_CONTEXT: &[u8] = b"genesis-mesh control envelope v1\0";

/// What a control message asks members to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    /// Replace the network's RBAC/routing policy (args carry the new policy revision).
    PolicyUpdate,
    /// Revoke a member (args: serial); the CRL remains the authority, this speeds it up.
    Revoke,
    /// Stop accepting new streams and hand traffic off before shutdown.
    Drain,
    /// Exit after draining.
    Shutdown,
    /// Drop learned routes and relearn them.
    RouteReset,
    /// Change the log level.
    LogLevel,
}

impl Verb {
    /// All verbs.
    pub const ALL: [Verb; 6] = [
        Verb::PolicyUpdate,
        Verb::Revoke,
        Verb::Drain,
        Verb::Shutdown,
        Verb::RouteReset,
        Verb::LogLevel,
    ];

    /// The kebab-case name used on the wire and in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::PolicyUpdate => "policy-update",
            Verb::Revoke => "revoke",
            Verb::Drain => "drain",
            Verb::Shutdown => "shutdown",
            Verb::RouteReset => "route-reset",
            Verb::LogLevel => "log-level",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
            format!("unknown verb {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// Which members a control message is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every member of the network.
    Network,
    /// One member, by node name.
    Node(String),
    /// Every member with a role.
    Role(Role),
}

impl Scope {
    /// Whether a member with `identity` is addressed.
    pub fn targets(&self, identity: &Identity) -> bool {
        match self {
            Scope::Network => true,
            Scope::Node(n) => identity.node() == n,
            Scope::Role(r) => identity.role() == *r,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Network => f.write_str("network"),
            Scope::Node(n) => write!(f, "node/{n}"),
            Scope::Role(r) => write!(f, "role/{r}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('/') {
            None if s == "network" => Ok(Scope::Network),
            Some(("node", n)) if !n.is_empty() && n.len() <= 253 => Ok(Scope::Node(n.to_owned())),
            Some(("role", r)) => Ok(Scope::Role(r.parse()?)),
            _ => Err(format!("invalid scope {s:?} (expected network, node/<name> or role/<role>)")),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The signed content of a control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlEnvelope {
    pub version: u8,
    /// 128 random bits, hex: the replay-cache key and the flood's duplicate-suppression key.
    pub id: String,
    /// The network this message is for; members of other networks refuse it.
    pub network: String,
    pub verb: Verb,
    pub scope: Scope,
    pub args: BTreeMap<String, String>,
    /// Unix milliseconds at signing.
    pub issued_at_ms: u64,
}

impl ControlEnvelope {
    /// A new envelope with a random id, issued at `now`.
    pub fn new(
        network: &str,
        verb: Verb,
        scope: Scope,
        args: BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<Self> {
        let mut id = [0u8; 16];
        SystemRandom::new().fill(&mut id).map_err(|_| Error::EnvelopeMalformed {
            reason: "system random number generator failed".into(),
        })?;
        Ok(ControlEnvelope {
            version: ENVELOPE_VERSION,
            id: hex::encode(id),
            network: network.to_owned(),
            verb,
            scope,
            args,
            issued_at_ms: unix_ms(now),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// An envelope body with its signature and the signer's chain, as carried on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    /// Signer's leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for SignedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedEnvelope")
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("signature_len", &self.signature.len())
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

impl SignedEnvelope {
    /// Wire form: `"GMCE" version:u8 body_len:u32 body sig_len:u16 sig n:u8 (len:u16 der)*n`,
    /// big-endian, no trailing bytes (docs/PROTOCOL.md).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.body.len()
                + self.signature.len()
                + self.chain.iter().map(|c| c.len() + 2).sum::<usize>(),
        );
        out.extend_from_slice(MAGIC);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out.push(self.chain.len() as u8);
        for cert in &self.chain {
            out.extend_from_slice(&(cert.len() as u16).to_be_bytes());
            out.extend_from_slice(cert);
        }
        out
    }

    /// Decodes the wire form, enforcing every bound before allocating.
    pub fn decode(wire: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::EnvelopeMalformed { reason };
        if wire.len() > MAX_ENVELOPE_BYTES {
            return Err(bad(format!(
                "{} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit",
                wire.len()
            )));
        }
        let mut r = Reader { buf: wire };
        if r.take(4, "magic")? != MAGIC {
            return Err(bad("does not start with the GMCE magic".into()));
        }
        let version = r.u8("version")?;
        if version != ENVELOPE_VERSION {
            return Err(bad(format!("unsupported envelope version {version}")));
        }
        let body_len = r.u32("body length")? as usize;
        if body_len > MAX_BODY_BYTES {
            return Err(bad(format!("body of {body_len} bytes exceeds {MAX_BODY_BYTES}")));
        }
        let body = r.take(body_len, "body")?.to_vec();
        let sig_len = r.u16("signature length")? as usize;
        if sig_len == 0 {
            return Err(bad("empty signature".into()));
        }
        let signature = r.take(sig_len, "signature")?.to_vec();
        let count = r.u8("chain length")? as usize;
        if count == 0 || count > MAX_CHAIN_CERTS {
            return Err(bad(format!("chain of {count} certificates (1 to {MAX_CHAIN_CERTS})")));
        }
        let mut chain = Vec::with_capacity(count);
        for i in 0..count {
            let len = r.u16("certificate length")? as usize;
            let der = r.take(len, "certificate")?;
            CertInfo::parse(der).map_err(|e| bad(format!("certificate {i}: {e}")))?;
            chain.push(CertificateDer::from(der.to_vec()));
        }
        if !r.buf.is_empty() {
            return Err(bad(format!("{} trailing bytes", r.buf.len())));
        }
        Ok(SignedEnvelope { body, signature, chain })
    }

    /// Parses the body strictly (unknown fields, wrong version, too many args are refused).
    /// Call only after the signature verified.
    pub fn envelope(&self) -> Result<ControlEnvelope> {
        let env: ControlEnvelope = serde_json::from_slice(&self.body)
            .map_err(|e| Error::EnvelopeMalformed { reason: format!("body: {e}") })?;
        if env.version != ENVELOPE_VERSION {
            return Err(Error::EnvelopeMalformed {
                reason: format!("body version {} (expected {ENVELOPE_VERSION})", env.version),
            });
        }
        if env.args.len() > MAX_ARGS {
            return Err(Error::EnvelopeMalformed {
                reason: format!("{} arguments (at most {MAX_ARGS})", env.args.len()),
            });
        }
        if env.id.len() != 32 || !env.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::EnvelopeMalformed { reason: "id must be 32 hex digits".into() });
        }
        Ok(env)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::EnvelopeMalformed {
                reason: format!("truncated {what}: need {n} bytes, {} left", self.buf.len()),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A principal's key and chain, used to sign control messages.
pub struct EnvelopeSigner {
    key: PrivateKey,
    chain: Vec<CertificateDer<'static>>,
    identity: Identity,
}

impl fmt::Debug for EnvelopeSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeSigner").field("identity", &self.identity.uri()).finish()
    }
}

impl EnvelopeSigner {
    /// A signer from a key and the chain (leaf first) issued for it.
    pub fn new(key: PrivateKey, chain: Vec<CertificateDer<'static>>) -> Result<Self> {
        let leaf = chain.first().ok_or_else(|| Error::ChainRejected {
            reason: "a signer needs a certificate chain".into(),
        })?;
        let identity = CertInfo::require_identity(leaf)?;
        if chain.len() > MAX_CHAIN_CERTS {
            return Err(Error::ChainRejected {
                reason: format!(
                    "chain of {} certificates (at most {MAX_CHAIN_CERTS})",
                    chain.len()
                ),
            });
        }
        Ok(EnvelopeSigner { key, chain, identity })
    }

    /// Who signs.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Signs `envelope`.
    pub fn sign(&self, envelope: &ControlEnvelope) -> Result<SignedEnvelope> {
        let body = serde_json::to_vec(envelope)
            .map_err(|e| Error::EnvelopeMalformed { reason: e.to_string() })?;
        let signature = self.key.sign(&signed_message(&body))?;
        Ok(SignedEnvelope { body, signature, chain: self.chain.clone() })
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, body].concat()
}

/// The kinds of scope a rule may grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeKind {
    /// The whole network.
    Network,
    /// Any single node.
    Node,
    /// Only the signer's own node.
    #[serde(rename = "self")]
    OwnNode,
    /// Every member of a role.
    Role,
}

impl ScopeKind {
    fn covers(self, scope: &Scope, signer: &Identity) -> bool {
        match (self, scope) {
            (ScopeKind::Network, Scope::Network) => true,
            (ScopeKind::Node, Scope::Node(_)) => true,
            (ScopeKind::OwnNode, Scope::Node(n)) => n == signer.node(),
            (ScopeKind::Role, Scope::Role(_)) => true,
            _ => false,
        }
    }
}

/// One RBAC rule: these roles may send these verbs to these scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacRule {
    /// Named in every decision it makes.
    pub name: String,
    pub roles: Vec<Role>,
    pub verbs: Vec<Verb>,
    pub scopes: Vec<ScopeKind>,
}

/// An allow-list of rules; what no rule allows is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacPolicy {
    pub rules: Vec<RbacRule>,
}

/// The name reported when no rule allows a message.
pub const DEFAULT_DENY_RULE: &str = "default-deny";

impl Default for RbacPolicy {
    /// Admins and the operator may send every verb anywhere; members may only drain themselves.
    fn default() -> Self {
        let every = [ScopeKind::Network, ScopeKind::Node, ScopeKind::Role].to_vec();
        RbacPolicy {
            rules: vec![
                RbacRule {
                    name: "admins-manage-the-network".into(),
                    roles: vec![Role::Admin],
                    verbs: Verb::ALL.to_vec(),
                    scopes: every.clone(),
                },
                RbacRule {
                    name: "operator-manages-the-network".into(),
                    roles: vec![Role::Operator],
                    verbs: Verb::ALL.to_vec(),
                    scopes: every,
                },
                RbacRule {
                    name: "members-drain-themselves".into(),
                    roles: vec![Role::Anchor, Role::Client],
                    verbs: vec![Verb::Drain],
                    scopes: vec![ScopeKind::OwnNode],
                },
            ],
        }
    }
}

impl RbacPolicy {
    /// The first rule that allows `verb` to `scope` for the signer, or the default deny.
    /// Returns `(allowed, rule name)`.
    pub fn decide(&self, signer: &Identity, verb: Verb, scope: &Scope) -> (bool, String) {
        self.rules
            .iter()
            .find(|r| {
                r.roles.contains(&signer.role())
                    && r.verbs.contains(&verb)
                    && r.scopes.iter().any(|k| k.covers(scope, signer))
            })
            .map(|r| (true, r.name.clone()))
            .unwrap_or_else(|| {
                (
                    false,
                    format!(
                        "{DEFAULT_DENY_RULE}: no rule allows role {} to send {verb} to {scope}",
                        signer.role()
                    ),
                )
            })
    }
}

/// Bounded memory of accepted envelope ids.
///
/// When full, the oldest-inserted id is forgotten and its issue time becomes a floor: anything
/// issued at or before the floor is refused as a possible replay. Together with the freshness
/// window this keeps replay protection exact while memory stays bounded.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    floor_ms: u64,
}

/// Default replay-cache size: far above the control traffic a mesh sees in a freshness window.
pub const DEFAULT_REPLAY_CAPACITY: usize = 4096;

impl ReplayCache {
    /// A cache remembering at most `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            floor_ms: 0,
        }
    }

    /// Whether `id` issued at `issued_ms` would be a replay.
    pub fn is_replay(&self, id: &str, issued_ms: u64) -> bool {
        issued_ms <= self.floor_ms || self.seen.contains_key(id)
    }

    /// Remembers an accepted id, forgetting entries older than `horizon_ms` (which the
    /// freshness window refuses anyway) and, if still full, the oldest one.
    pub fn record(&mut self, id: &str, issued_ms: u64, horizon_ms: u64) {
        while let Some((t, _)) = self.order.front() {
            if *t >= horizon_ms {
                break;
            }
            let (_, old) = self.order.pop_front().expect("front exists");
            self.seen.remove(&old);
        }
        while self.seen.len() >= self.capacity {
            let (t, old) = self.order.pop_front().expect("cache is full, so not empty");
            self.seen.remove(&old);
            self.floor_ms = self.floor_ms.max(t);
        }
        self.seen.insert(id.to_owned(), issued_ms);
        self.order.push_back((issued_ms, id.to_owned()));
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// An accepted control message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub envelope: ControlEnvelope,
    pub signer: Identity,
    /// The RBAC rule that allowed it.
    pub rule: String,
}

/// A refused control message: the error and the check (or RBAC rule) that refused it.
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    /// `wire-format`, `signer-certificate`, `signature`, `network`, `freshness-window`,
    /// `issued-before-start`, `replay-cache`, or the RBAC rule (`default-deny: ...`).
    pub rule: String,
    /// The signer, when the signature verified.
    pub signer: Option<Identity>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by {}: {}", self.rule, self.error)
    }
}

/// Freshness window: how old a control message may be. Long enough to cross a large mesh
/// over several hops, short enough that the replay cache covers it.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(60);
/// How far in the future a message may claim to be issued (signer clock ahead of ours).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5);

/// Verifies control messages for one member.
#[derive(Debug)]
pub struct ControlVerifier {
    trust: Arc<TrustStore>,
    network: String,
    policy: RbacPolicy,
    freshness: Duration,
    replay: ReplayCache,
    /// When this member started (ms since the epoch): older envelopes are refused.
    started_ms: u64,
}

impl ControlVerifier {
    /// A verifier for `network` with the given trust store and policy.
    pub fn new(trust: Arc<TrustStore>, network: &str, policy: RbacPolicy) -> Self {
        ControlVerifier {
            trust,
            network: network.to_owned(),
            policy,
            freshness: DEFAULT_FRESHNESS,
            replay: ReplayCache::new(DEFAULT_REPLAY_CAPACITY),
            started_ms: 0,
        }
    }

    /// Refuses envelopes issued before `start`, this member's start. The replay cache lives in
    /// memory only, so without this a message captured before a restart could be replayed
    /// after it (within the freshness window).
    pub fn started_at(mut self, start: SystemTime) -> Self {
        self.started_ms = unix_ms(start);
        self
    }

    /// Overrides the freshness window and replay capacity.
    pub fn with_limits(mut self, freshness: Duration, replay_capacity: usize) -> Self {
        self.freshness = freshness;
        self.replay = ReplayCache::new(replay_capacity);
        self
    }

    /// Replaces the RBAC policy (a verified policy update).
    pub fn set_policy(&mut self, policy: RbacPolicy) {
        self.policy = policy;
    }

    /// Checks one encoded envelope at `now`. Accepted ids are remembered.
    pub fn verify(
        &mut self,
        wire: &[u8],
        now: SystemTime,
    ) -> std::result::Result<Accepted, Box<Refused>> {
        let refuse = |rule: &str, error: Error, signer: Option<&Identity>| {
            Box::new(Refused { error, rule: rule.to_owned(), signer: signer.cloned() })
        };
        let signed = SignedEnvelope::decode(wire).map_err(|e| refuse("wire-format", e, None))?;
        let peer = self.trust.verify(&signed.chain, now, PeerRole::Client).map_err(|e| {
            refuse("signer-certificate", Error::EnvelopeSigner { source: Box::new(e) }, None)
        })?;
        let signer = peer.identity;
        verify_signature(&signed.chain[0], &signed.body, &signed.signature).map_err(|_| {
            refuse("signature", Error::EnvelopeForged { signer: signer.uri() }, None)
        })?;
        let env = signed.envelope().map_err(|e| refuse("wire-format", e, Some(&signer)))?;
        if env.network != self.network {
            let e =
                Error::WrongNetwork { expected: self.network.clone(), found: env.network.clone() };
            return Err(refuse("network", e, Some(&signer)));
        }
        let now_ms = unix_ms(now);
        let window_ms = u64::try_from(self.freshness.as_millis()).unwrap_or(u64::MAX);
        let skew_ms = u64::try_from(MAX_FUTURE_SKEW.as_millis()).unwrap_or(u64::MAX);
        if env.issued_at_ms > now_ms.saturating_add(skew_ms) {
            let e = Error::EnvelopeStale {
                age_secs: (env.issued_at_ms - now_ms) / 1000,
                direction: "in the future",
                window_secs: MAX_FUTURE_SKEW.as_secs(),
            };
            return Err(refuse("freshness-window", e, Some(&signer)));
        }
        if now_ms.saturating_sub(env.issued_at_ms) > window_ms {
            let e = Error::EnvelopeStale {
                age_secs: (now_ms - env.issued_at_ms) / 1000,
                direction: "ago",
                window_secs: self.freshness.as_secs(),
            };
            return Err(refuse("freshness-window", e, Some(&signer)));
        }
        let (allowed, rule) = self.policy.decide(&signer, env.verb, &env.scope);
        if !allowed {
            let e = Error::EnvelopeDenied {
                signer: signer.uri(),
                role: signer.role(),
                verb: env.verb.to_string(),
                scope: env.scope.to_string(),
                rule: rule.clone(),
            };
            return Err(refuse(&rule, e, Some(&signer)));
        }
        if env.issued_at_ms < self.started_ms {
            let e = Error::EnvelopeBeforeStart {
                id: env.id.clone(),
                early_ms: self.started_ms - env.issued_at_ms,
            };
            return Err(refuse("issued-before-start", e, Some(&signer)));
        }
        if self.replay.is_replay(&env.id, env.issued_at_ms) {
            let e = Error::EnvelopeReplayed { id: env.id.clone() };
            return Err(refuse("replay-cache", e, Some(&signer)));
        }
        self.replay.record(&env.id, env.issued_at_ms, now_ms.saturating_sub(window_ms));
        Ok(Accepted { envelope: env, signer, rule })
    }
}

/// Verifies `signature` over the envelope body with the leaf certificate's public key.
fn verify_signature(leaf: &CertificateDer<'_>, body: &[u8], signature: &[u8]) -> Result<()> {
    let ee = EndEntityCert::try_from(leaf)
        .map_err(|e| Error::InvalidCertificate { reason: format!("{e:?}") })?;
    let msg = signed_message(body);
    let algs: [&dyn rustls_pki_types::SignatureVerificationAlgorithm; 2] =
        [webpki::ring::ECDSA_P256_SHA256, webpki::ring::ED25519];
    if algs.iter().any(|alg| ee.verify_signature(*alg, &msg, signature).is_ok()) {
        Ok(())
    } else {
        Err(Error::EnvelopeForged { signer: String::new() })
    }
}

#[cfg(test)]
mod tests;
