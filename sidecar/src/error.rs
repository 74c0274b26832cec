//! The sidecar's errors, by kind. Callers decide by the kind (retry a join, the HTTP status of
//! an answer), never by matching message text; each message says what was wrong.

/// What went wrong, by the decision it calls for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A CRL whose number is not above the one held: nothing to apply, and not the sender's
    /// fault (it may simply be behind).
    #[error("CRL number {offered} is not newer than the current CRL number {current}")]
    CrlNotNewer { current: u64, offered: u64 },
    /// A CRL refused: unparseable, not signed by the network's authority, or out of date.
    #[error("{0}")]
    CrlRefused(String),
    /// The identity service could not be reached, or did not answer in time: worth retrying.
    #[error("{0}")]
    IdentityUnreachable(String),
    /// The identity service answered no (a bad or spent token, a revoked certificate, another
    /// member's name): asking again with the same credentials will not help.
    #[error("identity service refused ({status}): {reason}")]
    IdentityRefused { status: String, reason: String },
    /// Joining or renewing failed on our side (the trust bundle, the key) or on what the service
    /// sent back (another identity, an unusable chain or CRL).
    #[error("{0}")]
    Identity(String),
    /// A message was sent but no delivery receipt came back in time.
    #[error("{0}")]
    NoReceipt(String),
    /// A request that cannot be carried out as asked (what it asked for is out of bounds).
    #[error("{0}")]
    Invalid(String),
    /// An end-to-end stream could not be opened, or broke.
    #[error("{0}")]
    Stream(String),
}

impl Error {
    /// Whether the same request may succeed if tried again as it is: an unreachable identity
    /// service, a stream that broke, a receipt that did not come. Refusals and unusable
    /// answers are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::IdentityUnreachable(_) | Error::Stream(_) | Error::NoReceipt(_))
    }
}
