//! The protocol of one member, sans IO: [`Node`] takes frames, link events, timers, CRLs and
//! control messages with the time as inputs, and hands back what it wants done. No tokio,
//! clock, randomness, file or socket in here: `now`, the wall clock and a seed come in. The
//! tokio driver (`crate::node`) and the simulator (`genesis-sim`) run this same code.
//!
//! The frame codec ([`crate::frame`]), the routing table ([`crate::routing`]) and the peer set
//! ([`crate::peers`]) are the node's parts, sans-IO themselves.

pub mod forward;
pub mod node;
pub mod seen;

pub use node::{
    verify_proof, CloseReason, ControlVerdict, Count, LinkUp, LogLevelHook, Node, NodeConfig,
    Output, ProofCheck,
};
