//! The Kubernetes controllers: one concern each, coordinating through status. Each decides
//! with a pure function of [`crate::decide`] and applies the result with server-side apply.
//! Today: the Certificate controller; NetworkAuthority, MeshNetwork and the CRL publisher are
//! still to come.

pub mod certificate;
