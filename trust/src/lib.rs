//! Genesis Mesh trust core: identities, the Network Authority (CA, issuance, CRLs), peer
//! verification for rustls, signed control envelopes and the hash-chained audit log.
//!
//! Nothing here knows about Kubernetes, sockets or clocks: every function that depends on time
//! takes `now`, so the operator, the sidecar and the simulator share one implementation.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authority;
pub mod broadcast;
pub mod cert;
pub mod control;
pub mod crl;
pub mod duration;
pub mod error;
pub mod genesis;
pub mod identity;
pub mod join;
pub mod names;
pub mod seqno;
pub mod tls;
pub mod verify;

#[cfg(test)]
mod fixtures;

pub use audit::{verify_audit, verify_audit_file, AuditBreak, AuditLog, AuditRecord, BreakKind};
pub use authority::{
    create_csr, renewal_time, CertificateAuthority, IssuedCertificate, KeyAlgorithm, LeafPolicy,
    PrivateKey,
};
pub use cert::{certs_from_pem, certs_to_pem, fingerprint, CertInfo, Serial};
pub use control::{
    Accepted, ControlEnvelope, ControlVerifier, EnvelopeSigner, RbacPolicy, RbacRule, Refused,
    ReplayCache, Scope, ScopeKind, SignedEnvelope, Verb,
};
pub use crl::{Crl, RevocationList, RevocationReason};
pub use error::{Error, Result};
pub use genesis::SignedDocument;
pub use identity::{Identity, Role};
pub use verify::{PeerIdentity, PeerRole, PeerVerifier, TrustBundle, TrustPolicy, TrustStore};
