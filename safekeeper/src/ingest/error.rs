//! Why the executor refused an input, and why a timeline could not be opened.

use std::io;

use utils::xlog::DecodeError;
use utils::{Lsn, TenantTimelineId};

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
    /// WAL below the durable-flush watermark of the control file is damaged or gone: it
    /// had been acknowledged, so the timeline is not served (cutting it could break the
    /// quorum's promise); the operator deletes it and pulls it from a peer.
    #[error(
        "corruption of acknowledged WAL: {damage}; WAL up to {watermark} had been fsynced \
         and acknowledged"
    )]
    AckedWalDamaged {
        /// What the restart scan found.
        damage: WalDamage,
        /// The watermark of the control file.
        watermark: Lsn,
    },
    /// Reading or cutting the WAL failed.
    #[error("reading WAL: {0}")]
    Io(#[from] io::Error),
}

/// Where and how the restart scan found WAL to end early.
#[derive(Debug, thiserror::Error)]
pub enum WalDamage {
    /// A record that does not decode (CRC mismatch, bad page header, garbage).
    #[error("record at LSN {at} in segment {segment} is damaged ({source})")]
    Record {
        /// Where the decoder failed.
        at: Lsn,
        /// The segment file holding `at`.
        segment: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// Zeroes where the next record should be.
    #[error("WAL ends at LSN {at} in segment {segment}, zeroed from there ({source})")]
    Zeroed {
        /// The end of the last valid record.
        at: Lsn,
        /// The segment file holding `at`.
        segment: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// No more WAL: the segment is missing or short.
    #[error("WAL ends at LSN {at}: segment {segment} is missing or short")]
    Missing {
        /// The end of the last valid record.
        at: Lsn,
        /// The segment file holding `at`.
        segment: String,
    },
}
