//! The wire form of [`BeMessage`]: tags, parse and write.
//!
//! Owns: the byte layout of every backend message. Must never: allocate from a count
//! before checking it against the bytes present, or panic on a malformed body.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    Authentication, BeMessage, CopyResponse, ErrorFields, FieldDescription, TransactionStatus,
};
use crate::codec::{Reader, count_i16, len_i32, put_cstr, split_tagged, write_tagged};
use crate::{DEFAULT_MAX_MESSAGE_LEN, ProtocolError};

/// Tag bytes of the backend messages.
pub mod tags {
    /// Authentication.
    pub const AUTHENTICATION: u8 = b'R';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// NoData.
    pub const NO_DATA: u8 = b'n';

    /// Authentication code: success.
    pub const AUTH_OK: i32 = 0;
    /// Authentication code: clear-text password.
    pub const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
    /// Authentication code: MD5 password.
    pub const AUTH_MD5_PASSWORD: i32 = 5;
    /// Authentication code: SASL.
    pub const AUTH_SASL: i32 = 10;
    /// Authentication code: SASL continue.
    pub const AUTH_SASL_CONTINUE: i32 = 11;
    /// Authentication code: SASL final.
    pub const AUTH_SASL_FINAL: i32 = 12;
}

use tags::{
    AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL, AUTHENTICATION, BACKEND_KEY_DATA, COMMAND_COMPLETE, COPY_BOTH_RESPONSE,
    COPY_DATA, COPY_DONE, COPY_IN_RESPONSE, COPY_OUT_RESPONSE, DATA_ROW, EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE, NO_DATA, NOTICE_RESPONSE, PARAMETER_STATUS, READY_FOR_QUERY, ROW_DESCRIPTION,
};

fn is_be_tag(tag: u8) -> bool {
    matches!(
        tag,
        AUTHENTICATION
            | PARAMETER_STATUS
            | BACKEND_KEY_DATA
            | READY_FOR_QUERY
            | ROW_DESCRIPTION
            | DATA_ROW
            | COMMAND_COMPLETE
            | EMPTY_QUERY_RESPONSE
            | ERROR_RESPONSE
            | NOTICE_RESPONSE
            | COPY_BOTH_RESPONSE
            | COPY_OUT_RESPONSE
            | COPY_IN_RESPONSE
            | COPY_DATA
            | COPY_DONE
            | NO_DATA
    )
}

/// Smallest wire size of one RowDescription field: empty name + 18 bytes of numbers.
const MIN_FIELD_DESCRIPTION: usize = 1 + 4 + 2 + 4 + 2 + 4 + 2;

impl BeMessage {
    /// [`BeMessage::parse_with_limit`] with [`DEFAULT_MAX_MESSAGE_LEN`].
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        Self::parse_with_limit(buf, DEFAULT_MAX_MESSAGE_LEN)
    }

    /// Parses one message from the front of `buf`. `Ok(None)` (nothing consumed) until the
    /// frame is complete; then exactly the frame is consumed and byte bodies are zero-copy
    /// slices of it. An unknown tag or a length field above `max_len` fails as soon as the
    /// header arrives.
    pub fn parse_with_limit(
        buf: &mut BytesMut,
        max_len: usize,
    ) -> Result<Option<Self>, ProtocolError> {
        let Some((tag, body)) = split_tagged(buf, max_len, is_be_tag, "backend message")? else {
            return Ok(None);
        };
        let msg = match tag {
            AUTHENTICATION => BeMessage::Authentication(parse_auth(body)?),
            PARAMETER_STATUS => {
                let mut r = Reader::new(body, "ParameterStatus");
                let name = r.cstring("name")?;
                let value = r.cstring("value")?;
                r.finish()?;
                BeMessage::ParameterStatus { name, value }
            }
            BACKEND_KEY_DATA => {
                let mut r = Reader::new(body, "BackendKeyData");
                let process_id = r.i32("process id")?;
                let secret_key = r.i32("secret key")?;
                r.finish()?;
                BeMessage::BackendKeyData {
                    process_id,
                    secret_key,
                }
            }
            READY_FOR_QUERY => {
                let mut r = Reader::new(body, "ReadyForQuery");
                let b = r.u8("transaction status")?;
                r.finish()?;
                let status = TransactionStatus::from_byte(b).ok_or_else(|| {
                    ProtocolError::invalid(
                        "ReadyForQuery",
                        "transaction status",
                        format!("{b:#04x}"),
                    )
                })?;
                BeMessage::ReadyForQuery(status)
            }
            ROW_DESCRIPTION => BeMessage::RowDescription(parse_row_description(body)?),
            DATA_ROW => BeMessage::DataRow(parse_data_row(body)?),
            COMMAND_COMPLETE => {
                let mut r = Reader::new(body, "CommandComplete");
                let tag = r.cstring("command tag")?;
                r.finish()?;
                BeMessage::CommandComplete(tag)
            }
            EMPTY_QUERY_RESPONSE => {
                empty(body, "EmptyQueryResponse", BeMessage::EmptyQueryResponse)?
            }
            ERROR_RESPONSE => BeMessage::ErrorResponse(ErrorFields::parse(body, "ErrorResponse")?),
            NOTICE_RESPONSE => {
                BeMessage::NoticeResponse(ErrorFields::parse(body, "NoticeResponse")?)
            }
            COPY_BOTH_RESPONSE => {
                BeMessage::CopyBothResponse(parse_copy_response(body, "CopyBothResponse")?)
            }
            COPY_OUT_RESPONSE => {
                BeMessage::CopyOutResponse(parse_copy_response(body, "CopyOutResponse")?)
            }
            COPY_IN_RESPONSE => {
                BeMessage::CopyInResponse(parse_copy_response(body, "CopyInResponse")?)
            }
            COPY_DATA => BeMessage::CopyData(body),
            COPY_DONE => empty(body, "CopyDone", BeMessage::CopyDone)?,
            _ => empty(body, "NoData", BeMessage::NoData)?,
        };
        Ok(Some(msg))
    }

    /// Appends the message, framed, to `buf`.
    pub fn write(&self, buf: &mut BytesMut) {
        match self {
            BeMessage::Authentication(auth) => {
                write_tagged(buf, AUTHENTICATION, |b| write_auth(b, auth))
            }
            BeMessage::ParameterStatus { name, value } => {
                write_tagged(buf, PARAMETER_STATUS, |b| {
                    put_cstr(b, name.as_bytes());
                    put_cstr(b, value.as_bytes());
                })
            }
            BeMessage::BackendKeyData {
                process_id,
                secret_key,
            } => write_tagged(buf, BACKEND_KEY_DATA, |b| {
                b.put_i32(*process_id);
                b.put_i32(*secret_key);
            }),
            BeMessage::ReadyForQuery(status) => {
                write_tagged(buf, READY_FOR_QUERY, |b| b.put_u8(status.as_byte()))
            }
            BeMessage::RowDescription(fields) => write_tagged(buf, ROW_DESCRIPTION, |b| {
                b.put_i16(count_i16(fields.len(), "columns"));
                for f in fields {
                    put_cstr(b, f.name.as_bytes());
                    b.put_u32(f.table_oid);
                    b.put_i16(f.column_id);
                    b.put_u32(f.type_oid);
                    b.put_i16(f.type_len);
                    b.put_i32(f.type_modifier);
                    b.put_i16(f.format);
                }
            }),
            BeMessage::DataRow(values) => write_tagged(buf, DATA_ROW, |b| {
                b.put_i16(count_i16(values.len(), "columns"));
                for v in values {
                    match v {
                        None => b.put_i32(-1),
                        Some(v) => {
                            b.put_i32(len_i32(v.len()));
                            b.put_slice(v);
                        }
                    }
                }
            }),
            BeMessage::CommandComplete(tag) => {
                write_tagged(buf, COMMAND_COMPLETE, |b| put_cstr(b, tag.as_bytes()))
            }
            BeMessage::EmptyQueryResponse => write_tagged(buf, EMPTY_QUERY_RESPONSE, |_| {}),
            BeMessage::ErrorResponse(fields) => {
                write_tagged(buf, ERROR_RESPONSE, |b| fields.write(b))
            }
            BeMessage::NoticeResponse(fields) => {
                write_tagged(buf, NOTICE_RESPONSE, |b| fields.write(b))
            }
            BeMessage::CopyBothResponse(r) => {
                write_tagged(buf, COPY_BOTH_RESPONSE, |b| write_copy_response(b, r))
            }
            BeMessage::CopyOutResponse(r) => {
                write_tagged(buf, COPY_OUT_RESPONSE, |b| write_copy_response(b, r))
            }
            BeMessage::CopyInResponse(r) => {
                write_tagged(buf, COPY_IN_RESPONSE, |b| write_copy_response(b, r))
            }
            BeMessage::CopyData(data) => crate::frontend::write_copy_data(buf, data),
            BeMessage::CopyDone => write_tagged(buf, COPY_DONE, |_| {}),
            BeMessage::NoData => write_tagged(buf, NO_DATA, |_| {}),
        }
    }
}

/// `msg` if `body` is empty, else [`ProtocolError::TrailingBytes`].
fn empty(body: Bytes, name: &'static str, msg: BeMessage) -> Result<BeMessage, ProtocolError> {
    Reader::new(body, name).finish().map(|()| msg)
}

fn parse_auth(body: Bytes) -> Result<Authentication, ProtocolError> {
    let mut r = Reader::new(body, "Authentication");
    let auth = match r.i32("code")? {
        AUTH_OK => Authentication::Ok,
        AUTH_CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
        AUTH_MD5_PASSWORD => Authentication::Md5Password {
            salt: r.array("salt")?,
        },
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstring("SASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            Authentication::Sasl { mechanisms }
        }
        AUTH_SASL_CONTINUE => Authentication::SaslContinue(r.rest()),
        AUTH_SASL_FINAL => Authentication::SaslFinal(r.rest()),
        code => {
            return Err(ProtocolError::invalid(
                "Authentication",
                "code",
                format!("unsupported authentication method {code}"),
            ));
        }
    };
    r.finish()?;
    Ok(auth)
}

fn write_auth(b: &mut BytesMut, auth: &Authentication) {
    match auth {
        Authentication::Ok => b.put_i32(AUTH_OK),
        Authentication::CleartextPassword => b.put_i32(AUTH_CLEARTEXT_PASSWORD),
        Authentication::Md5Password { salt } => {
            b.put_i32(AUTH_MD5_PASSWORD);
            b.put_slice(salt);
        }
        Authentication::Sasl { mechanisms } => {
            b.put_i32(AUTH_SASL);
            for m in mechanisms {
                put_cstr(b, m.as_bytes());
            }
            b.put_u8(0);
        }
        Authentication::SaslContinue(data) => {
            b.put_i32(AUTH_SASL_CONTINUE);
            b.put_slice(data);
        }
        Authentication::SaslFinal(data) => {
            b.put_i32(AUTH_SASL_FINAL);
            b.put_slice(data);
        }
    }
}

/// Reads an i16 count that must not be negative.
fn count(r: &mut Reader, field: &'static str) -> Result<usize, ProtocolError> {
    let n = r.i16(field)?;
    usize::try_from(n).map_err(|_| ProtocolError::invalid(r.message(), field, format!("{n}")))
}

fn parse_row_description(body: Bytes) -> Result<Vec<FieldDescription>, ProtocolError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = count(&mut r, "column count")?;
    r.check_count(n, MIN_FIELD_DESCRIPTION, "column count")?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(FieldDescription {
            name: r.cstring("column name")?,
            table_oid: r.u32("table oid")?,
            column_id: r.i16("column id")?,
            type_oid: r.u32("type oid")?,
            type_len: r.i16("type length")?,
            type_modifier: r.i32("type modifier")?,
            format: r.i16("format code")?,
        });
    }
    r.finish()?;
    Ok(fields)
}

fn parse_data_row(body: Bytes) -> Result<Vec<Option<Bytes>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = count(&mut r, "column count")?;
    r.check_count(n, 4, "column count")?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32("value length")?;
        values.push(match len {
            -1 => None,
            len => {
                let len = usize::try_from(len).map_err(|_| {
                    ProtocolError::invalid("DataRow", "value length", format!("{len}"))
                })?;
                Some(r.bytes(len, "value")?)
            }
        });
    }
    r.finish()?;
    Ok(values)
}

fn parse_copy_response(body: Bytes, name: &'static str) -> Result<CopyResponse, ProtocolError> {
    let mut r = Reader::new(body, name);
    let format = r.u8("format")?;
    let n = count(&mut r, "column count")?;
    r.check_count(n, 2, "column count")?;
    let mut column_formats = Vec::with_capacity(n);
    for _ in 0..n {
        column_formats.push(r.i16("column format")?);
    }
    r.finish()?;
    Ok(CopyResponse {
        format,
        column_formats,
    })
}

fn write_copy_response(b: &mut BytesMut, r: &CopyResponse) {
    b.put_u8(r.format);
    b.put_i16(count_i16(r.column_formats.len(), "column formats"));
    for f in &r.column_formats {
        b.put_i16(*f);
    }
}
