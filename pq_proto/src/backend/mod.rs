//! Messages a server (backend) sends: [`BeMessage`] and its parts, plus the one-byte
//! answer to SSLRequest / GSSENCRequest.
//!
//! Owns: their types, parse and write (both directions are needed: the server writes them,
//! the proposer and the tests read them), and the helpers for building query results.
//! Must never: hold session state or decide what to answer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

mod error_fields;
mod sqlstate;
mod wire;

pub use error_fields::{
    ErrorFields, FIELD_CODE, FIELD_DETAIL, FIELD_HINT, FIELD_MESSAGE, FIELD_SEVERITY,
    FIELD_SEVERITY_NONLOCALIZED,
};
pub use sqlstate::{SqlState, SqlStateParseError};
pub use wire::tags;

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeMessage {
    /// `R`: a step of the authentication exchange.
    Authentication(Authentication),
    /// `S`: the current value of a run-time parameter.
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `K`: what a CancelRequest must quote to cancel this session's queries.
    BackendKeyData {
        /// Process id of the session.
        process_id: i32,
        /// Its secret key.
        secret_key: i32,
    },
    /// `Z`: ready for the next query.
    ReadyForQuery(TransactionStatus),
    /// `T`: the columns of the rows that follow.
    RowDescription(Vec<FieldDescription>),
    /// `D`: one row; `None` is SQL NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`: a command finished; the tag (e.g. `SELECT 1`, `IDENTIFY_SYSTEM`).
    CommandComplete(String),
    /// `I`: the query string was empty.
    EmptyQueryResponse,
    /// `E`: an error.
    ErrorResponse(ErrorFields),
    /// `N`: a notice.
    NoticeResponse(ErrorFields),
    /// `W`: the connection switches to COPY in both directions (replication streams).
    CopyBothResponse(CopyResponse),
    /// `H`: a COPY from the server starts.
    CopyOutResponse(CopyResponse),
    /// `G`: a COPY to the server starts.
    CopyInResponse(CopyResponse),
    /// `d`: a chunk of a COPY stream.
    CopyData(Bytes),
    /// `c`: the server ended its COPY stream.
    CopyDone,
    /// `n`: the statement returns no rows.
    NoData,
}

/// The steps of the authentication exchange (`R` messages), by their code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// 0: authenticated.
    Ok,
    /// 3: send the password in clear text.
    CleartextPassword,
    /// 5: send the MD5-hashed password, salted with these bytes.
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// 10: start SASL with one of these mechanisms.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// 11: a SASL challenge.
    SaslContinue(Bytes),
    /// 12: the SASL outcome.
    SaslFinal(Bytes),
}

/// The transaction status in ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InBlock => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    /// The status for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InBlock),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// One column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name.
    pub name: String,
    /// OID of the table it comes from; 0 if none.
    pub table_oid: u32,
    /// Attribute number in that table; 0 if none.
    pub column_id: i16,
    /// OID of its data type.
    pub type_oid: u32,
    /// Size of the type (`pg_type.typlen`); negative for variable-width types.
    pub type_len: i16,
    /// Type modifier (`pg_attribute.atttypmod`); -1 if none.
    pub type_modifier: i32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

/// OID of `text`.
pub const TEXT_OID: u32 = 25;
/// OID of `int4`.
pub const INT4_OID: u32 = 23;
/// OID of `int8`.
pub const INT8_OID: u32 = 20;

impl FieldDescription {
    fn new(name: &str, type_oid: u32, type_len: i16) -> Self {
        FieldDescription {
            name: name.to_string(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_len,
            type_modifier: -1,
            format: 0,
        }
    }

    /// A `text` column (OID 25, variable length), text format.
    pub fn text(name: &str) -> Self {
        Self::new(name, TEXT_OID, -1)
    }

    /// An `int4` column (OID 23, 4 bytes), text format.
    pub fn int4(name: &str) -> Self {
        Self::new(name, INT4_OID, 4)
    }

    /// An `int8` column (OID 20, 8 bytes), text format.
    pub fn int8(name: &str) -> Self {
        Self::new(name, INT8_OID, 8)
    }
}

/// The body of CopyBothResponse, CopyOutResponse and CopyInResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyResponse {
    /// Overall format: 0 = text, 1 = binary.
    pub format: u8,
    /// Per-column formats (empty for replication streams).
    pub column_formats: Vec<i16>,
}

/// Answer to SSLRequest: go on with TLS.
pub const SSL_ACCEPTED: u8 = b'S';
/// Answer to GSSENCRequest: go on with GSSAPI encryption.
pub const GSSENC_ACCEPTED: u8 = b'G';
/// Answer to either request: go on unencrypted.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Appends the one unframed byte that answers an SSLRequest (`S` or `N`) or a
/// GSSENCRequest (`G` or `N`).
pub fn write_encryption_response(buf: &mut BytesMut, response: u8) {
    buf.put_u8(response);
}

/// Reads the one-byte answer to an SSLRequest or GSSENCRequest (`S`, `G` or `N`);
/// `Ok(None)` if it has not arrived. Anything else (e.g. an `E` from a server that does not
/// know the request) is [`ProtocolError::UnknownTag`].
pub fn parse_encryption_response(buf: &mut BytesMut) -> Result<Option<u8>, ProtocolError> {
    let Some(&b) = buf.first() else {
        return Ok(None);
    };
    match b {
        SSL_ACCEPTED | GSSENC_ACCEPTED | ENCRYPTION_REFUSED => {
            buf.advance(1);
            Ok(Some(b))
        }
        tag => Err(ProtocolError::UnknownTag {
            tag,
            context: "encryption response",
        }),
    }
}

#[cfg(test)]
mod tests;
