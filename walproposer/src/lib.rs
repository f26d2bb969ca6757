//! The proposer side of the safekeeper protocol: elects a term on a quorum of
//! safekeepers and streams WAL into it.
//!
//! [`proposer`] is the sans-IO state machine; [`window`] the WAL it holds in memory.
//! [`members`] parses the `--safekeepers` list (optionally with ids, which makes a
//! membership configuration). [`pg_version`] asks the safekeepers for a timeline's
//! PostgreSQL version (for `sync`). The binary drives it against real safekeepers (`sync`,
//! `generate`, `bridge`); [`membership`] changes a timeline's safekeepers through their
//! HTTP API with joint configurations, which the proposer follows ([`proposer::Quorums`]).

pub mod bridge;
pub mod driver;
pub mod generate;
pub mod members;
pub mod membership;
pub mod pg_version;
pub mod proposer;
pub mod window;
