//! Genesis Mesh operator. Today: the identity service and its file-backed local mode
//! (`genesis-operator local --dir D`), used by `genesisctl demo` and the tests. The
//! Kubernetes controllers, the TokenReview authenticator and the webhook come next.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster_identity;
pub mod controller;
pub mod decide;
#[cfg(any(test, feature = "fake-api"))]
pub mod fake_api;
pub mod http;
pub mod identity_service;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod run;
pub mod token_review;
pub mod webhook;

use std::path::{Path, PathBuf};

/// What failed in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Trust(#[from] genesis_trust::Error),
    /// The caller could not be authenticated (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The identity was revoked and may not be issued again until it is un-revoked (403).
    #[error("{0}")]
    Revoked(String),
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io { action, path: path.to_owned(), source }
    }
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
