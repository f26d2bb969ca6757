//! The one error type of every codec in this crate, and the size limits it enforces.
//!
//! Owns: [`ProtocolError`] (what is wrong with bytes a peer sent) and the maximum message
//! sizes. Must never: carry I/O errors (those belong to [`crate::framed::ConnectionError`])
//! or the peer's raw bytes (errors are logged and sent back; they name fields, not data).

/// Default cap on one message's length field (16 MiB). Generous for every message the
/// safekeeper exchanges (the largest is an AppendRequest of 128 KiB of WAL plus a header),
/// and small enough that a hostile length field cannot make us allocate much.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Cap on a startup packet after its length word, as in PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH`: the packet's length field may be at most this plus 4.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// What is wrong with the bytes a peer sent. Every variant names the message (and, where
/// it helps, the field) so a log line or an ErrorResponse says exactly what was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A length field announces more than the configured maximum. Detected from the header
    /// alone, before anything is allocated for the body.
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    MessageTooLong {
        /// The announced length (including the length field itself).
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// A length field smaller than the header it is part of.
    #[error("invalid message length {len} in {message}")]
    InvalidLength {
        /// The announced length.
        len: u32,
        /// The kind of message being framed.
        message: &'static str,
    },
    /// A tag byte that is not valid here (unknown, or a message of the wrong direction).
    #[error("unexpected message tag {tag:#04x} ({printable}) in {context}", printable = printable(*tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Where it was found (e.g. "frontend message", "CopyData payload").
        context: &'static str,
    },
    /// A complete frame whose body ends before a field it must contain.
    #[error("{message} is truncated: missing {field}")]
    Truncated {
        /// The message.
        message: &'static str,
        /// The first field that did not fit.
        field: &'static str,
    },
    /// Bytes left over after the last field of a message.
    #[error("{count} unexpected trailing bytes after {message}")]
    TrailingBytes {
        /// The message.
        message: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A string field without its terminating NUL.
    #[error("{message}: {field} is not NUL-terminated")]
    UnterminatedString {
        /// The message.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A string field that is not valid UTF-8.
    #[error("{message}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The message.
        message: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A startup packet with a protocol version other than 3.x.
    #[error("unsupported frontend protocol {major}.{minor}: server supports major version 3")]
    UnsupportedProtocolVersion {
        /// Major version requested (high 16 bits of the startup code).
        major: u16,
        /// Minor version requested (low 16 bits).
        minor: u16,
    },
    /// A field whose value is impossible (a negative count, a bad id, inconsistent LSNs...).
    #[error("{message}: invalid {field}: {reason}")]
    InvalidField {
        /// The message.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ProtocolError {
    /// Shorthand for [`ProtocolError::InvalidField`].
    pub(crate) fn invalid(
        message: &'static str,
        field: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        ProtocolError::InvalidField {
            message,
            field,
            reason: reason.into(),
        }
    }
}

/// The tag as a character for error messages, when it is one.
fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}
