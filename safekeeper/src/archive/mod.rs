//! The archive tools behind `safekeeper archive …`: getting WAL back out of the store the
//! offloader fills ([`crate::remote`]): [`restore`] a range into a directory, [`get`] one
//! segment for PostgreSQL's `restore_command` (with prefetch), [`list`] what the store
//! holds. [`verify`] checks segments beyond their checksum.
//!
//! Owns: those commands' logic (the binary only parses flags). Must never: put a file
//! under a final name that is not a whole, verified segment.

pub mod get;
pub mod list;
pub mod progress;
pub mod restore;
pub mod verify;

use std::path::PathBuf;

pub use progress::{Progress, progress_for_stderr};

use crate::remote::RemoteError;

/// What can go wrong getting WAL out of the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store failed, or an object is corrupt (the message names it).
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A segment the command needs is not in the archive.
    #[error("segment {name} is not in the archive: {detail}")]
    Missing {
        /// The WAL file name.
        name: String,
        /// Which range needed it, or what is there instead.
        detail: String,
    },
    /// A downloaded segment is not the WAL it should be.
    #[error("segment {name} from the archive is not valid WAL of this timeline: {reason}")]
    Invalid {
        /// The WAL file name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The command was asked for something it cannot do.
    #[error("{0}")]
    Usage(String),
}
