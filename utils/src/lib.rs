//! Domain types shared by every crate of the workspace, and the PostgreSQL WAL format.
//!
//! Owns: [`Lsn`] and its `X/X` text form, [`Term`], [`NodeId`], [`TenantId`] / [`TimelineId`],
//! the on-disk and on-wire WAL format ([`xlog`]), the small durability helpers of [`fs`],
//! and raising the open-files limit ([`limits`]). Must never: open sockets, spawn tasks,
//! or hold state beyond one call; the only I/O here is the fsync/rename helpers that every
//! writer of durable files shares, and the process's limit on open files.

pub mod fs;
pub mod id;
pub mod limits;
pub mod lsn;
pub mod term_history;
pub mod text;
pub mod token;
pub mod xlog;

pub use id::{IdParseError, NodeId, TenantId, TenantTimelineId, Term, TimelineId};
pub use lsn::{Lsn, LsnParseError, SegNo};
pub use term_history::{TermHistory, TermLsn};
