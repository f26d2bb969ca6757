//! The field list shared by ErrorResponse and NoticeResponse.
//!
//! Owns: [`ErrorFields`], its constructors and its wire form (one-byte field codes, each
//! followed by a cstring, ended by a zero byte). Must never: choose SQLSTATEs or wording
//! for the server's errors.

use bytes::{BufMut, Bytes, BytesMut};

use super::SqlState;
use crate::ProtocolError;
use crate::codec::{Reader, put_cstr};

/// Field code: localized severity.
pub const FIELD_SEVERITY: u8 = b'S';
/// Field code: non-localized severity (PostgreSQL 9.6+).
pub const FIELD_SEVERITY_NONLOCALIZED: u8 = b'V';
/// Field code: SQLSTATE.
pub const FIELD_CODE: u8 = b'C';
/// Field code: primary message.
pub const FIELD_MESSAGE: u8 = b'M';
/// Field code: detail.
pub const FIELD_DETAIL: u8 = b'D';
/// Field code: hint.
pub const FIELD_HINT: u8 = b'H';

/// The fields of an ErrorResponse or NoticeResponse that this project reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFields {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, ... (written as both `S` and `V`).
    pub severity: String,
    /// The SQLSTATE.
    pub code: SqlState,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl ErrorFields {
    fn new(severity: &str, code: SqlState, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: severity.to_string(),
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An `ERROR`: the current command failed; the session goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self::new("ERROR", code, message)
    }

    /// A `FATAL` error: the session ends.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self::new("FATAL", code, message)
    }

    /// A `NOTICE` (for NoticeResponse), with SQLSTATE 00000.
    pub fn notice(message: impl Into<String>) -> Self {
        Self::new("NOTICE", SqlState::SUCCESSFUL_COMPLETION, message)
    }

    /// Adds a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Parses the body of an ErrorResponse or NoticeResponse (named `message` in errors).
    /// Fields other than S, V, C, M, D, H are skipped; S (or V), C and M are required.
    /// V, the non-localized severity, wins over S when both are present.
    pub(crate) fn parse(body: Bytes, message: &'static str) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, message);
        let (mut severity, mut nonlocalized, mut code, mut text) = (None, None, None, None);
        let (mut detail, mut hint) = (None, None);
        loop {
            let field = r.u8("field terminator")?;
            let slot = match field {
                0 => break,
                FIELD_SEVERITY => &mut severity,
                FIELD_SEVERITY_NONLOCALIZED => &mut nonlocalized,
                FIELD_CODE => &mut code,
                FIELD_MESSAGE => &mut text,
                FIELD_DETAIL => &mut detail,
                FIELD_HINT => &mut hint,
                _ => {
                    r.cstr_bytes("unknown field")?;
                    continue;
                }
            };
            *slot = Some(r.cstring(field_name(field))?);
        }
        r.finish()?;
        let missing = |field| ProtocolError::invalid(message, field, "missing");
        let code = code.ok_or_else(|| missing("SQLSTATE (C)"))?;
        let code = SqlState::from_bytes(code.as_bytes())
            .ok_or_else(|| ProtocolError::invalid(message, "SQLSTATE (C)", format!("{code:?}")))?;
        Ok(ErrorFields {
            severity: nonlocalized
                .or(severity)
                .ok_or_else(|| missing("severity (S)"))?,
            code,
            message: text.ok_or_else(|| missing("message (M)"))?,
            detail,
            hint,
        })
    }

    /// Appends the field list (without tag and length) to `buf`.
    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let mut field = |code: u8, value: &str| {
            buf.put_u8(code);
            put_cstr(buf, value.as_bytes());
        };
        field(FIELD_SEVERITY, &self.severity);
        field(FIELD_SEVERITY_NONLOCALIZED, &self.severity);
        field(FIELD_CODE, self.code.as_str());
        field(FIELD_MESSAGE, &self.message);
        if let Some(detail) = &self.detail {
            field(FIELD_DETAIL, detail);
        }
        if let Some(hint) = &self.hint {
            field(FIELD_HINT, hint);
        }
        buf.put_u8(0);
    }
}

fn field_name(code: u8) -> &'static str {
    match code {
        FIELD_SEVERITY => "severity (S)",
        FIELD_SEVERITY_NONLOCALIZED => "severity (V)",
        FIELD_CODE => "SQLSTATE (C)",
        FIELD_MESSAGE => "message (M)",
        FIELD_DETAIL => "detail (D)",
        _ => "hint (H)",
    }
}
