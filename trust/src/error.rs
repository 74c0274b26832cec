//! The one error type of the trust crate: every refusal names what was wrong.

use std::time::SystemTime;

use crate::audit::AuditBreak;
use crate::identity::Role;

/// Why the trust core refused or failed something.
///
/// Each kind of bad input has its own variant, so callers (metrics, audit records, the
/// sidecar's link refusals) can tell a revoked peer from an expired one without parsing text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An identity URI did not follow `spiffe://<trust-domain>/mesh/<network>/<role>/<node>`.
    #[error("invalid identity {uri:?}: {reason}")]
    InvalidIdentity { uri: String, reason: String },

    /// PEM text held no block of the expected kind, or the block did not decode.
    #[error("invalid PEM for {what}: {reason}")]
    InvalidPem { what: &'static str, reason: String },

    /// DER bytes did not parse as an X.509 certificate.
    #[error("invalid certificate: {reason}")]
    InvalidCertificate { reason: String },

    /// A private key could not be parsed or does not fit the algorithm.
    #[error("invalid private key: {reason}")]
    InvalidKey { reason: String },

    /// A CSR did not parse or its self-signature did not verify.
    #[error("invalid certificate signing request: {reason}")]
    InvalidCsr { reason: String },

    /// A CSR asked for more than the identity the requester is entitled to.
    #[error("certificate signing request asks for {asked}, but the requester is entitled only to {entitled}")]
    CsrNotEntitled { asked: String, entitled: String },

    /// rcgen failed to build or sign something (a bug or a bad CA key, not bad input).
    #[error("failed to {action}")]
    Signing {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// The certificate's notAfter is in the past.
    #[error("certificate expired at {not_after}")]
    Expired { not_after: String },

    /// The certificate's notBefore is in the future.
    #[error("certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },

    /// The chain does not lead to any root of the trust bundle (a foreign CA).
    #[error("certificate was not issued by this network's authority (unknown issuer)")]
    UnknownIssuer,

    /// The certificate's serial is on the current CRL.
    #[error("certificate serial {serial} is revoked (CRL number {crl_number})")]
    Revoked { serial: String, crl_number: u64 },

    /// The certificate carries no (or more than one) identity URI SAN.
    #[error("certificate carries no single Genesis Mesh identity: {reason}")]
    MissingIdentity { reason: String },

    /// The identity belongs to another trust domain.
    #[error("identity is in trust domain {found:?}, expected {expected:?}")]
    WrongTrustDomain { expected: String, found: String },

    /// The identity belongs to another network of the same trust domain.
    #[error("identity is a member of network {found:?}, expected {expected:?}")]
    WrongNetwork { expected: String, found: String },

    /// Chain verification failed for a reason not listed above.
    #[error("certificate chain rejected: {reason}")]
    ChainRejected { reason: String },

    /// No CRL is held, or the one held is past its nextUpdate: fail closed on unknown revocation status.
    #[error("revocation status unknown: {reason}")]
    CrlStale { reason: String },

    /// A CRL did not parse.
    #[error("malformed CRL: {reason}")]
    CrlMalformed { reason: String },

    /// A CRL is not signed by any root of the trust bundle.
    #[error("CRL is not signed by this network's authority: {reason}")]
    CrlSignature { reason: String },

    /// A CRL is not newer than the one held; it is ignored, never applied.
    #[error("CRL number {offered} is not newer than the current CRL number {current}")]
    CrlNotNewer { current: u64, offered: u64 },

    /// A CRL's nextUpdate has already passed.
    #[error("CRL number {number} expired at {next_update}")]
    CrlExpired { number: u64, next_update: String },

    /// The trust bundle is empty or holds something that is not a CA certificate.
    #[error("invalid trust bundle: {reason}")]
    InvalidBundle { reason: String },

    /// The wire form of a control envelope did not decode.
    #[error("malformed control envelope: {reason}")]
    EnvelopeMalformed { reason: String },

    /// The envelope's signature does not verify with the signer certificate's key.
    #[error("control envelope signature does not verify with the key of {signer}")]
    EnvelopeForged { signer: String },

    /// A member-signed message (a route seqno, a broadcast) that its named member did not
    /// sign: the signature does not verify, or the certificate names someone else.
    #[error("forged {what}: {reason}")]
    Forged { what: &'static str, reason: String },

    /// The signer's certificate was refused (expired, revoked, foreign...).
    #[error("control envelope signer refused: {source}")]
    EnvelopeSigner {
        #[source]
        source: Box<Error>,
    },

    /// The RBAC policy does not allow this verb and scope for the signer's role.
    #[error("{role} {signer} may not send {verb} to {scope}: {rule}")]
    EnvelopeDenied { signer: String, role: Role, verb: String, scope: String, rule: String },

    /// The envelope is older (or further in the future) than the freshness window allows.
    #[error("control envelope issued {age_secs}s {direction} is outside the {window_secs}s freshness window")]
    EnvelopeStale { age_secs: u64, direction: &'static str, window_secs: u64 },

    /// The envelope's id was already accepted (or is older than the replay cache remembers).
    #[error("control envelope {id} is a replay")]
    EnvelopeReplayed { id: String },

    /// The envelope was issued before this member started: it may have been accepted by the
    /// member's previous run, whose replay cache is gone.
    #[error(
        "control envelope {id} was issued {early_ms} ms before this member started and may be a \
         replay from its previous run; send a new one"
    )]
    EnvelopeBeforeStart { id: String, early_ms: u64 },

    /// An audit record could not be written.
    #[error("failed to {action} audit log {path}")]
    AuditIo {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A genesis document (signed sidecar configuration) that must not be used.
    #[error("genesis document refused: {reason}")]
    GenesisRefused { reason: String },

    /// The audit log's hash chain is broken.
    #[error("audit log is broken: {0}")]
    AuditBroken(AuditBreak),
}

/// `Result` with the trust crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats a time as RFC 3339 UTC for error messages and records.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}
