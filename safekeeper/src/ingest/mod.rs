//! The ingest executor of a timeline: the one place where the acceptor is stepped and its
//! effects are performed on a storage, with the group-commit rule and the restart path.
//!
//! Synchronous and generic over the [`crate::storage::Storage`] seam: the server runs it
//! on a disk-pool thread over the timeline's files (see [`crate::timeline`], which owns
//! the inbox feeding it and the replies it produces); the simulation runs the very same
//! code over an in-memory disk that crashes between operations. Proposer connections
//! and peer recovery (`timeline/recovery.rs`, as AppendRequests) feed it alike.
//!
//! Owns: [`Executor`] (step → effects → replies; one flush answering every connection
//! owed an AppendResponse; progress inputs; checkpoints), [`Executor::open`] (restart: the
//! control file, the end-of-WAL scan from the persisted commit_lsn, its verdict against the
//! durable-flush watermark in `restart.rs`, the cut of whatever lies past the end), the
//! watermark the control file gets (`watermark.rs`), and [`TimelineError`]. Must never: reply before the effects of a step
//! are performed, or keep going after a storage error (the in-memory state may then be
//! ahead of the disk: the executor refuses everything until the timeline is reloaded).

mod error;
mod executor;
mod restart;
#[cfg(test)]
mod tests;
mod watermark;

pub use error::{OpenError, TimelineError, WalDamage};
pub use executor::{ConnId, Executor, Sent};
