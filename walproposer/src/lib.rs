//! The proposer side of the safekeeper protocol: elects a term on a quorum of
//! safekeepers and streams WAL into it.
//!
//! [`proposer`] is the sans-IO state machine; [`window`] the WAL it holds in memory.
//! [`members`] parses the `--safekeepers` list (optionally with ids, which makes a
//! membership configuration). The binary drives it against real safekeepers (`sync`,
//! `generate`, `bridge`).

pub mod bridge;
pub mod driver;
pub mod generate;
pub mod members;
pub mod proposer;
pub mod window;
