//! Every error a client can see, and the one place that maps it to a SQLSTATE.

use pq_proto::ProtocolError;
use pq_proto::backend::{ErrorFields, SqlState};
use pq_proto::framed::ConnectionError;
use tokio_util::sync::CancellationToken;
use utils::TenantTimelineId;

use crate::acceptor::AcceptorError;
use crate::auth::AuthError;
use crate::command::CommandError;
use crate::ingest::{OpenError, TimelineError};
use crate::timeline::Timeline;
use crate::timelines::RegistryError;

/// An error answered with an ErrorResponse.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The query is not a command we know, or its arguments are wrong.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The connection named no timeline and the server cannot pick one.
    #[error("no timeline selected: {0}")]
    NoTimeline(String),
    /// The startup `options` are malformed.
    #[error("invalid startup options: {0}")]
    BadOptions(String),
    /// The timeline does not exist or cannot be served.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The proposer's message was refused.
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    /// The bytes on the wire are not the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client sent something valid at the wrong time.
    #[error("protocol violation: {0}")]
    Unexpected(String),
    /// The connection broke (reset by the peer, as when a compute's walproposer restarts
    /// itself): nothing the client sent was wrong.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A feature we do not have.
    #[error("{0}")]
    NotSupported(String),
    /// A setting `SHOW` does not know.
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownSetting(String),
    /// A requested WAL position is not available.
    #[error("{0}")]
    WalUnavailable(String),
    /// A term-mode stream lost its term.
    #[error("term changed: requested {requested}, now {now}")]
    TermChanged {
        /// The term of the stream.
        requested: u64,
        /// The acceptor's term now.
        now: u64,
    },
    /// Reading WAL from disk failed.
    #[error("could not read WAL of timeline {ttid}: {source}")]
    ReadWal {
        /// The timeline.
        ttid: TenantTimelineId,
        /// The error.
        source: std::io::Error,
    },
    /// WAL read for sending failed its checks (a record's CRC, a page header): the disk
    /// changed it after it was written. Nothing from the damaged record on was sent.
    #[error(
        "WAL of timeline {ttid} is corrupt at {lsn} in segment {segment}: {reason}; \
         nothing from there on is sent"
    )]
    WalCorrupt {
        /// The timeline.
        ttid: TenantTimelineId,
        /// Where the damage starts.
        lsn: utils::Lsn,
        /// The segment file holding it.
        segment: String,
        /// What is wrong, as the decoder says it.
        reason: String,
    },
    /// The server is shutting down.
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// Too many connections.
    #[error("sorry, too many clients already")]
    TooManyConnections,
    /// Only reserved slots were left, and this connection is not one they are kept for.
    #[error(
        "remaining connection slots are reserved for proposers (START_WAL_PUSH) and safekeeperdata tokens"
    )]
    ReservedSlotsOnly,
    /// The connection sent no command for `--idle-timeout`.
    #[error("terminating connection due to idle-session timeout ({0} s without a command)")]
    IdleTimeout(u64),
    /// The client's token is missing or invalid (28P01), or does not grant what it asked
    /// for (42501).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// The longest message an ErrorResponse carries (bytes; longer ones are clipped).
pub const MAX_ERROR_MESSAGE: usize = 1024;

impl From<ConnectionError> for ClientError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Protocol(p) => ClientError::Protocol(p),
            ConnectionError::Io(io) => ClientError::ConnectionLost(io.to_string()),
        }
    }
}

impl ClientError {
    /// Why a stream of `tl` ends once the timeline is cancelled (its token is a child of
    /// the server's `shutdown`): the server stopping, the timeline broken by a storage
    /// error (it is reloaded), or the timeline shutting down (deleted).
    pub fn stream_end(shutdown: &CancellationToken, tl: &Timeline) -> ClientError {
        if shutdown.is_cancelled() {
            ClientError::Shutdown
        } else if tl.is_broken() {
            ClientError::Timeline(TimelineError::Broken(tl.ttid))
        } else {
            ClientError::Timeline(TimelineError::ShuttingDown(tl.ttid))
        }
    }

    /// The SQLSTATE this error is reported with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ClientError::Command(CommandError::Unsupported(_)) => SqlState::FEATURE_NOT_SUPPORTED,
            ClientError::Command(CommandError::Syntax { .. }) => SqlState::SYNTAX_ERROR,
            ClientError::NoTimeline(_) => SqlState::UNDEFINED_OBJECT,
            ClientError::BadOptions(_) => SqlState::INVALID_PARAMETER_VALUE,
            ClientError::Registry(RegistryError::NotFound(_)) => SqlState::UNDEFINED_OBJECT,
            ClientError::Registry(RegistryError::Unavailable { source, .. }) => match &**source {
                OpenError::Io(_) => SqlState::IO_ERROR,
                OpenError::ControlFile(_)
                | OpenError::Corrupt(_)
                | OpenError::AckedWalDamaged { .. } => SqlState::DATA_CORRUPTED,
            },
            ClientError::Registry(RegistryError::Io { .. } | RegistryError::TenantIo { .. }) => {
                SqlState::IO_ERROR
            }
            ClientError::Registry(RegistryError::ShuttingDown) => SqlState::ADMIN_SHUTDOWN,
            ClientError::Registry(RegistryError::Exists(_)) => SqlState::DUPLICATE_OBJECT,
            ClientError::Timeline(TimelineError::Storage { .. }) => SqlState::IO_ERROR,
            ClientError::Timeline(TimelineError::Broken(_)) => SqlState::CANNOT_CONNECT_NOW,
            ClientError::Timeline(TimelineError::ShuttingDown(_)) => SqlState::ADMIN_SHUTDOWN,
            ClientError::Timeline(TimelineError::Acceptor(a)) => acceptor_sqlstate(a),
            ClientError::Protocol(_) | ClientError::Unexpected(_) => SqlState::PROTOCOL_VIOLATION,
            ClientError::ConnectionLost(_) => SqlState::CONNECTION_EXCEPTION,
            ClientError::NotSupported(_) => SqlState::FEATURE_NOT_SUPPORTED,
            ClientError::UnknownSetting(_) => SqlState::UNDEFINED_OBJECT,
            ClientError::WalUnavailable(_) => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            ClientError::TermChanged { .. } => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            ClientError::ReadWal { .. } => SqlState::IO_ERROR,
            ClientError::WalCorrupt { .. } => SqlState::DATA_CORRUPTED,
            ClientError::Shutdown => SqlState::ADMIN_SHUTDOWN,
            ClientError::TooManyConnections | ClientError::ReservedSlotsOnly => {
                SqlState::TOO_MANY_CONNECTIONS
            }
            ClientError::IdleTimeout(_) => SqlState::IDLE_SESSION_TIMEOUT,
            ClientError::Auth(AuthError::Missing | AuthError::Invalid(_)) => {
                SqlState::INVALID_PASSWORD
            }
            ClientError::Auth(AuthError::Forbidden(_)) => SqlState::INSUFFICIENT_PRIVILEGE,
            ClientError::Auth(AuthError::Keys { .. }) => SqlState::INTERNAL_ERROR,
        }
    }

    /// The ErrorResponse fields. The message is clipped to [`MAX_ERROR_MESSAGE`] bytes:
    /// a message quoting what a client sent never sends all of it back.
    pub fn to_fields(&self) -> ErrorFields {
        let message = utils::text::clip(&self.to_string(), MAX_ERROR_MESSAGE);
        let fields = ErrorFields::error(self.sqlstate(), message);
        match self {
            ClientError::NoTimeline(_) => fields.with_hint(
                "name one in the connection options: options='-c tenant_id=<32 hex> timeline_id=<32 hex>'",
            ),
            ClientError::Command(CommandError::Unsupported(_)) => fields.with_hint(
                "supported: START_WAL_PUSH, START_REPLICATION, IDENTIFY_SYSTEM, TIMELINE_STATUS, \
                 READER_STATUS, SHOW, TIMELINE_HISTORY, READ_REPLICATION_SLOT, \
                 CREATE_REPLICATION_SLOT, DROP_REPLICATION_SLOT",
            ),
            _ => fields,
        }
    }
}

fn acceptor_sqlstate(e: &AcceptorError) -> SqlState {
    match e {
        AcceptorError::InvalidWal(_) | AcceptorError::WalPoisoned => SqlState::DATA_CORRUPTED,
        AcceptorError::UnsupportedPgVersion(_) | AcceptorError::InvalidSegSize(_) => {
            SqlState::FEATURE_NOT_SUPPORTED
        }
        AcceptorError::TimelineMismatch { .. }
        | AcceptorError::PgVersionMismatch { .. }
        | AcceptorError::SegSizeMismatch { .. }
        | AcceptorError::SystemIdMismatch { .. }
        | AcceptorError::NotAMember(_)
        | AcceptorError::ConfigurationConflict(_) => SqlState::INVALID_PARAMETER_VALUE,
        _ => SqlState::PROTOCOL_VIOLATION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_connection_is_not_a_protocol_violation() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = ClientError::from(ConnectionError::Io(io));
        assert!(e.to_string().starts_with("connection lost: "), "{e}");
        assert_eq!(e.sqlstate(), SqlState::CONNECTION_EXCEPTION);
    }
}
