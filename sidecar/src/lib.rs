//! Genesis Mesh sidecar: the data plane.
//!
//! Protocol logic lives in sans-IO state machines ([`frame`], [`routing`], [`peers`]) that take
//! events and return actions; the tokio driver does the IO.
#![forbid(unsafe_code)]

pub mod frame;
pub mod peers;
pub mod routing;
