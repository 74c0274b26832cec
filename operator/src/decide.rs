//! The controllers' decisions as pure functions: what to do given what the cluster holds and
//! the time, with no API calls and no clock of their own. The reconcilers gather the inputs,
//! call these, and apply the result (server-side apply, Events, status).
//!
//! Habits from cert-manager: renew at `renewalTime` (half the lifetime unless `renewBefore`
//! says otherwise), back off exponentially after a failed issuance, and never replace a valid
//! certificate by nothing.

pub mod network;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// First retry after a failed issuance; doubles per failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest pause between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The pause after `failures` consecutive failed issuances (0 means none).
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE.saturating_mul(2u32.saturating_pow(failures - 1)).min(BACKOFF_MAX)
}

pub use genesis_trust::renewal_time;

/// What a `delivery: secret` Certificate's Secret holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub serial: String,
    pub not_after: SystemTime,
    /// When to renew it ([`renewal_time`] from its issuance, as recorded in status).
    pub renewal_time: SystemTime,
    /// The certificate names the identity the spec asks for (a changed spec means reissue).
    pub identity_matches: bool,
}

/// Issuance failures so far (kept in status so they survive restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub last: Option<SystemTime>,
}

/// Why a certificate is (re)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    /// No Secret, or one without a readable certificate.
    Missing,
    /// The Secret's certificate names another identity.
    SpecChanged,
    /// Past its renewal time.
    Renewal,
    /// Expired (renewal failed for too long, or the operator was down).
    Expired,
}

impl IssueReason {
    /// The Event / condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::Missing => "Issuing",
            IssueReason::SpecChanged => "Reissuing",
            IssueReason::Renewal => "Renewing",
            IssueReason::Expired => "ReissuingExpired",
        }
    }
}

/// What the Certificate controller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateAction {
    /// Put these serials on the revocation list (the certificate is revoked, or its member
    /// pod is gone); nothing is issued any more.
    Revoke { serials: Vec<String>, reason: &'static str },
    /// Revoked and on the list already: nothing to do, ever.
    StayRevoked,
    /// Issue now.
    Issue(IssueReason),
    /// Issuance failed recently: wait, keeping whatever valid certificate is held.
    Backoff { retry_at: SystemTime },
    /// Valid; look again at the renewal time.
    UpToDate { renew_at: SystemTime },
}

/// The Certificate controller's decision.
///
/// `revoked`: `spec.revoked`; `member_gone`: its member pod no longer exists (csr members);
/// `listed`: serials of this certificate already on the revocation list; `issued`: every
/// serial ever issued to it (status history), so a revocation covers them all.
#[allow(clippy::too_many_arguments)]
pub fn certificate(
    now: SystemTime,
    revoked: bool,
    member_gone: bool,
    held: Option<&Held>,
    failures: Failures,
    issued: &[String],
    listed: &BTreeSet<String>,
) -> CertificateAction {
    if revoked || member_gone {
        let mut serials: Vec<String> =
            issued.iter().filter(|s| !listed.contains(*s)).cloned().collect();
        if let Some(h) =
            held.filter(|h| !listed.contains(&h.serial) && !serials.contains(&h.serial))
        {
            serials.push(h.serial.clone());
        }
        if serials.is_empty() {
            return CertificateAction::StayRevoked;
        }
        let reason = if revoked { "Revoked" } else { "MemberGone" };
        return CertificateAction::Revoke { serials, reason };
    }
    let wanted = match held {
        None => Some(IssueReason::Missing),
        Some(h) if !h.identity_matches => Some(IssueReason::SpecChanged),
        Some(h) if now >= h.not_after => Some(IssueReason::Expired),
        Some(h) if now >= h.renewal_time => Some(IssueReason::Renewal),
        Some(_) => None,
    };
    match (wanted, held) {
        (Some(reason), _) => {
            if let Some(last) = failures.last {
                let retry_at = last + backoff(failures.count);
                if now < retry_at {
                    return CertificateAction::Backoff { retry_at };
                }
            }
            CertificateAction::Issue(reason)
        }
        (None, Some(h)) => CertificateAction::UpToDate { renew_at: h.renewal_time },
        (None, None) => unreachable!("nothing held means Missing"),
    }
}

/// Whether the authority must re-sign its CRL: at half its validity (members refuse peers once
/// it lapses), or at once when the list changed.
pub fn crl_due(
    now: SystemTime,
    this_update: SystemTime,
    next_update: SystemTime,
    list_changed: bool,
) -> bool {
    let validity = next_update.duration_since(this_update).unwrap_or_default();
    list_changed || now >= this_update + validity / 2
}

/// What one member's sidecar said about its CRL (`None`: it did not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCrl {
    pub node: String,
    pub number: Option<u64>,
}

/// How far a CRL has spread through a network's members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spread {
    /// Every member holds the CRL (or a newer one).
    pub converged: bool,
    /// Members that answered with an older CRL, or none.
    pub behind: Vec<String>,
    /// Members that did not answer.
    pub unreachable: Vec<String>,
    /// The lowest CRL number a member reported (the network's `crlNumberSeen`).
    pub lowest: Option<u64>,
    /// Members holding the CRL.
    pub holding: usize,
}

/// How far CRL `current` has spread among `members`. A member that does not answer is not
/// counted as holding it: convergence means every member said so.
pub fn crl_spread(current: u64, members: &[MemberCrl]) -> Spread {
    let mut spread = Spread::default();
    for m in members {
        match m.number {
            None => spread.unreachable.push(m.node.clone()),
            Some(n) if n >= current => spread.holding += 1,
            Some(_) => spread.behind.push(m.node.clone()),
        }
        spread.lowest = match (spread.lowest, m.number) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    spread.converged = spread.holding == members.len();
    spread
}

/// Who the CRL publisher pushes CRL `current` to. Anchors that are behind get it first (gossip
/// carries it from them to every member in well under a second); a member still behind once
/// `grace` has passed since the anchors were pushed to gets it directly (an anchor down, a
/// partition). `pushed_at` is when the anchors were pushed this CRL, if they were.
pub fn crl_push_targets(
    spread: &Spread,
    anchors: &[String],
    pushed_at: Option<SystemTime>,
    now: SystemTime,
    grace: Duration,
) -> Vec<String> {
    match pushed_at {
        None => {
            let anchors: Vec<String> =
                anchors.iter().filter(|a| spread.behind.contains(a)).cloned().collect();
            // No anchor to carry it (none answers, or they hold it already): push directly.
            if anchors.is_empty() {
                spread.behind.clone()
            } else {
                anchors
            }
        }
        Some(t) if now >= t + grace => spread.behind.clone(),
        Some(_) => Vec::new(),
    }
}

/// Where an authority is in a CA rotation. A rotation has two phases, so no member ever meets
/// a certificate from a root it does not trust yet:
/// 1. **Distributing**: the new root is in the bundle, the old CA still signs; each member gets
///    the two-root bundle with its next certificate.
/// 2. **Retiring**: every member has renewed since, so every member trusts the new root; the
///    new CA signs; the old root stays in the bundle until every member holds a leaf of the new
///    one, then goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    Idle,
    Distributing { since: SystemTime },
    Retiring { new_root: String },
}

/// What one member Certificate holds, for a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLeaf {
    /// When it was issued (`status.notBefore`).
    pub issued: SystemTime,
    /// Fingerprint of the CA that signed it (`status.issuerFingerprint`).
    pub issuer: String,
}

/// The next step of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationStep {
    Stay,
    /// Generate the next CA and add its root to the bundle.
    Begin,
    /// Sign with the new CA from now on.
    Promote,
    /// Drop the old root and CA.
    Finish,
}

/// The automatic trigger: a CA is rotated once two thirds of its validity have passed (or when
/// an admin asks), so its successor is trusted everywhere long before it expires.
pub fn ca_rotation_due(now: SystemTime, not_before: SystemTime, not_after: SystemTime) -> bool {
    let validity = not_after.duration_since(not_before).unwrap_or_default();
    now >= not_before + validity * 2 / 3
}

/// The rotation step for `state`, given every member Certificate's leaf. `issued` is compared
/// with the start of distribution: a leaf issued since came with the two-root bundle.
pub fn rotation_step(state: &Rotation, requested: bool, members: &[MemberLeaf]) -> RotationStep {
    match state {
        Rotation::Idle if requested => RotationStep::Begin,
        Rotation::Idle => RotationStep::Stay,
        Rotation::Distributing { since } if members.iter().all(|m| m.issued >= *since) => {
            RotationStep::Promote
        }
        Rotation::Retiring { new_root } if members.iter().all(|m| m.issuer == *new_root) => {
            RotationStep::Finish
        }
        _ => RotationStep::Stay,
    }
}

/// One candidate for anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub ready: bool,
    /// The pod asked to be an anchor (role label).
    pub wants_anchor: bool,
}

/// Anchors for a network: keep current anchors that are still ready (stability: members were
/// told about them), then add ready members that asked to be anchors, then other ready
/// members, in name order, up to `want`. While no member is ready, running members stand in.
pub fn anchors(current: &[String], candidates: &[Candidate], want: usize) -> Vec<String> {
    // NB: a sidecar is ready only once it has a peer, so the first members of a network are
    // never ready before they have anchors to find each other by. With no ready member at
    // all, anchors come from the running ones (bootstrap), else no member ever became ready.
    let bootstrap = !candidates.iter().any(|c| c.ready);
    let usable = |c: &Candidate| c.ready || bootstrap;
    let ready = |n: &str| candidates.iter().any(|c| c.node == n && usable(c));
    let mut chosen: Vec<String> = current.iter().filter(|a| ready(a)).take(want).cloned().collect();
    let mut rest: Vec<&Candidate> =
        candidates.iter().filter(|c| usable(c) && !chosen.contains(&c.node)).collect();
    rest.sort_by(|a, b| (!a.wants_anchor, &a.node).cmp(&(!b.wants_anchor, &b.node)));
    for c in rest {
        if chosen.len() >= want {
            break;
        }
        chosen.push(c.node.clone());
    }
    chosen
}

/// A standard condition, keeping `lastTransitionTime` unless the status changed (the
/// Kubernetes API conventions).
pub fn condition(
    previous: Option<&Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: SystemTime,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_owned();
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(timestamp(now)),
    };
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn timestamp(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
