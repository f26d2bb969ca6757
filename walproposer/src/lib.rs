//! The proposer side of the safekeeper protocol: elects a term on a quorum of
//! safekeepers and streams WAL into it.
//!
//! [`proposer`] is the sans-IO state machine; [`window`] the WAL it holds in memory.
//! The binary drives it against real safekeepers (`sync`, `generate`, `bridge`).

pub mod bridge;
pub mod driver;
pub mod generate;
pub mod proposer;
pub mod window;
