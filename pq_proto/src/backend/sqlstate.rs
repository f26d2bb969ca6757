//! SQLSTATE codes: the five-character error classes of ErrorResponse's `C` field.
//!
//! Owns: [`SqlState`] and the named codes the safekeeper answers with. Must never: decide
//! which error maps to which code (that is the server's one mapping function).

use std::fmt;
use std::str::FromStr;

/// A SQLSTATE: five ASCII digits or uppercase letters (validated on construction).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlState([u8; 5]);

/// Why a string is not a SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SQLSTATE {0:?}: expected 5 digits or uppercase letters")]
pub struct SqlStateParseError(pub String);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal;)*) => {
        impl SqlState {
            $($(#[$doc])* pub const $name: SqlState = SqlState(*$code);)*
        }
    };
}

codes! {
    /// 00000 successful_completion (also used for server-initiated normal stream ends).
    SUCCESSFUL_COMPLETION = b"00000";
    /// 08000 connection_exception.
    CONNECTION_EXCEPTION = b"08000";
    /// 08P01 protocol_violation.
    PROTOCOL_VIOLATION = b"08P01";
    /// 0A000 feature_not_supported.
    FEATURE_NOT_SUPPORTED = b"0A000";
    /// 22023 invalid_parameter_value.
    INVALID_PARAMETER_VALUE = b"22023";
    /// 22P02 invalid_text_representation.
    INVALID_TEXT_REPRESENTATION = b"22P02";
    /// 28000 invalid_authorization_specification.
    INVALID_AUTHORIZATION_SPECIFICATION = b"28000";
    /// 28P01 invalid_password.
    INVALID_PASSWORD = b"28P01";
    /// 42601 syntax_error.
    SYNTAX_ERROR = b"42601";
    /// 42704 undefined_object.
    UNDEFINED_OBJECT = b"42704";
    /// 42710 duplicate_object.
    DUPLICATE_OBJECT = b"42710";
    /// 42501 insufficient_privilege.
    INSUFFICIENT_PRIVILEGE = b"42501";
    /// 55000 object_not_in_prerequisite_state.
    OBJECT_NOT_IN_PREREQUISITE_STATE = b"55000";
    /// 53100 disk_full.
    DISK_FULL = b"53100";
    /// 53300 too_many_connections.
    TOO_MANY_CONNECTIONS = b"53300";
    /// 57014 query_canceled.
    QUERY_CANCELED = b"57014";
    /// 57P01 admin_shutdown.
    ADMIN_SHUTDOWN = b"57P01";
    /// 57P05 idle_session_timeout.
    IDLE_SESSION_TIMEOUT = b"57P05";
    /// 57P03 cannot_connect_now.
    CANNOT_CONNECT_NOW = b"57P03";
    /// 58030 io_error.
    IO_ERROR = b"58030";
    /// XX000 internal_error.
    INTERNAL_ERROR = b"XX000";
    /// XX001 data_corrupted.
    DATA_CORRUPTED = b"XX001";
}

impl SqlState {
    /// Parses a code such as `"08P01"`.
    pub fn new(code: &str) -> Result<Self, SqlStateParseError> {
        Self::from_bytes(code.as_bytes()).ok_or_else(|| SqlStateParseError(code.to_string()))
    }

    /// The code from its five bytes, if they are digits or uppercase letters.
    pub fn from_bytes(code: &[u8]) -> Option<Self> {
        let code: [u8; 5] = code.try_into().ok()?;
        code.iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(code))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Constructors admit only ASCII, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }

    /// The two-character class (e.g. `"08"` for connection exceptions).
    pub fn class(&self) -> &str {
        &self.as_str()[..2]
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

impl FromStr for SqlState {
    type Err = SqlStateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SqlState::new(s)
    }
}
