//! Why the executor refused an input, and why a timeline could not be opened.

use std::io;

use utils::TenantTimelineId;

use crate::acceptor::AcceptorError;
use crate::control_file::ControlFileError;

/// Why a timeline operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The acceptor refused the message (only the connection that sent it ends).
    #[error(transparent)]
    Acceptor(#[from] AcceptorError),
    /// Storage failed; the timeline is unusable until reloaded from disk.
    #[error("WAL storage of timeline {ttid} failed: {source}")]
    Storage {
        /// The timeline.
        ttid: TenantTimelineId,
        /// The error.
        source: io::Error,
    },
    /// An earlier storage error left the in-memory state ahead of the disk.
    #[error("timeline {0} is being reloaded after a storage error; retry")]
    Broken(TenantTimelineId),
    /// The timeline is shutting down (deleted, reloaded, or the server stops).
    #[error("timeline {0} is shutting down")]
    ShuttingDown(TenantTimelineId),
}

/// Why a timeline could not be read from its storage.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The control file is missing, unreadable or corrupt.
    #[error(transparent)]
    ControlFile(#[from] ControlFileError),
    /// The control file is valid but does not fit where it was found.
    #[error("{0}")]
    Corrupt(String),
    /// Reading or cutting the WAL failed.
    #[error("reading WAL: {0}")]
    Io(#[from] io::Error),
}
