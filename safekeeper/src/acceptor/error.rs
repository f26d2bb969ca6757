//! Why the acceptor refuses a message. Every variant ends the proposer's connection; none
//! changes the acceptor's state (the checks run before anything is modified).

use pq_proto::proposer::Generation;
use utils::term_history::HistoryError;
use utils::xlog::DecodeError;
use utils::{Lsn, TenantTimelineId, Term};

/// A message the acceptor will not act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptorError {
    /// A message other than a greeting came first, or a greeting came twice.
    #[error("{0}")]
    UnexpectedMessage(&'static str),
    /// The greeting names a different timeline than this connection's.
    #[error("greeting is for timeline {got}, but this connection serves {expected}")]
    TimelineMismatch {
        /// The timeline of the connection.
        expected: TenantTimelineId,
        /// The timeline in the greeting.
        got: TenantTimelineId,
    },
    /// The compute's major version differs from the timeline's.
    #[error("PostgreSQL major version mismatch: timeline has {stored}, proposer sent {got}")]
    PgVersionMismatch {
        /// Stored PG_VERSION_NUM.
        stored: u32,
        /// Greeting's PG_VERSION_NUM.
        got: u32,
    },
    /// A PostgreSQL version we cannot decode WAL of.
    #[error("unsupported PostgreSQL version {0}: supported are 14 to 17")]
    UnsupportedPgVersion(u32),
    /// The WAL segment size differs from the timeline's.
    #[error("WAL segment size mismatch: timeline has {stored}, proposer sent {got}")]
    SegSizeMismatch {
        /// Stored size.
        stored: u32,
        /// Greeting's size.
        got: u32,
    },
    /// The WAL segment size is one Postgres cannot have.
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSegSize(u32),
    /// The cluster's system id differs from the timeline's.
    #[error("database system identifier differs: timeline has {stored}, proposer sent {got}")]
    SystemIdMismatch {
        /// Stored system id.
        stored: u64,
        /// Greeting's system id.
        got: u64,
    },
    /// A v3 message of another membership generation.
    #[error("generation mismatch: acceptor is in generation {ours}, message has {theirs}")]
    GenerationMismatch {
        /// The acceptor's generation.
        ours: Generation,
        /// The message's generation.
        theirs: Generation,
    },
    /// A greeting with a higher generation that does not include this node, or a vote or
    /// append while the current configuration does not.
    #[error("configuration of generation {0} does not include this safekeeper")]
    NotAMember(Generation),
    /// A membership switch to a configuration that differs from the current one of the
    /// same generation.
    #[error(
        "another configuration of generation {0} is in place; a change needs a higher generation"
    )]
    ConfigurationConflict(Generation),
    /// AppendRequest for a term this acceptor has not been elected into.
    #[error("got AppendRequest of term {msg_term} before ProposerElected (acceptor term {term})")]
    AppendBeforeElected {
        /// The acceptor's term.
        term: Term,
        /// The request's term.
        msg_term: Term,
    },
    /// AppendRequest that starts above the end of written WAL.
    #[error("AppendRequest at {begin} creates a gap: WAL here ends at {write_lsn}")]
    Gap {
        /// Where the request starts.
        begin: Lsn,
        /// End of written WAL.
        write_lsn: Lsn,
    },
    /// end_lsn below begin_lsn, or a range that does not match the WAL bytes sent.
    #[error("invalid AppendRequest range {begin}..{end}: it carries {bytes} bytes of WAL")]
    BadRange {
        /// begin_lsn.
        begin: Lsn,
        /// end_lsn.
        end: Lsn,
        /// The WAL bytes the request carries.
        bytes: u64,
    },
    /// More WAL in one AppendRequest than the protocol allows.
    #[error(
        "AppendRequest carries {bytes} bytes of WAL; at most {max} (128 KiB) are allowed in one"
    )]
    AppendTooLarge {
        /// The WAL bytes the request carries.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The elected proposer's start point disagrees with the histories.
    #[error(
        "ProposerElected asks to start streaming at {proposed}, but the highest common point is {computed}"
    )]
    StartMismatch {
        /// What the proposer sent.
        proposed: Lsn,
        /// What this acceptor computed.
        computed: Lsn,
    },
    /// The elected proposer's start point lies beyond the end of this acceptor's WAL (the
    /// histories have nothing in common); streaming from there would leave a hole.
    #[error(
        "ProposerElected asks to start streaming at {start}, beyond the end of WAL here ({flush}): the term histories have nothing in common"
    )]
    StartBeyondWal {
        /// What the proposer sent.
        start: Lsn,
        /// End of this acceptor's WAL.
        flush: Lsn,
    },
    /// Truncation below committed WAL was requested.
    #[error(
        "ProposerElected would truncate committed WAL: start {start} is below commit_lsn {commit}"
    )]
    TruncateCommitted {
        /// Requested start.
        start: Lsn,
        /// Committed position.
        commit: Lsn,
    },
    /// The two term histories are inconsistent.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Incoming WAL does not decode.
    #[error("invalid WAL received: {0}")]
    InvalidWal(#[from] DecodeError),
    /// An earlier message carried invalid WAL; the written tail is unusable until a new
    /// election truncates it.
    #[error("the WAL tail is invalid since an earlier error; a new election must truncate it")]
    WalPoisoned,
}
