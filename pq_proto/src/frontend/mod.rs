//! Messages a client (frontend) sends: the startup packets ([`FeStartupPacket`]) and the
//! tagged messages of a session ([`FeMessage`]).
//!
//! Owns: their parse and write, sans-IO. Must never: interpret queries or passwords (the
//! bodies are handed over as zero-copy [`Bytes`]), or buffer anything between calls.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, put_cstr, split_tagged, write_tagged};
use crate::{DEFAULT_MAX_MESSAGE_LEN, ProtocolError};

mod startup;

pub use startup::{
    CANCEL_REQUEST_CODE, FeStartupPacket, GSSENC_REQUEST_CODE, PROTOCOL_V3_CODE, SSL_REQUEST_CODE,
};

/// Tag of a simple Query.
pub const QUERY_TAG: u8 = b'Q';
/// Tag of PasswordMessage and the SASL responses.
pub const PASSWORD_TAG: u8 = b'p';
/// Tag of Terminate.
pub const TERMINATE_TAG: u8 = b'X';
/// Tag of CopyData (the same in both directions).
pub const COPY_DATA_TAG: u8 = b'd';
/// Tag of CopyDone (the same in both directions).
pub const COPY_DONE_TAG: u8 = b'c';
/// Tag of CopyFail.
pub const COPY_FAIL_TAG: u8 = b'f';
/// Tag of Sync.
pub const SYNC_TAG: u8 = b'S';
/// Tag of Flush.
pub const FLUSH_TAG: u8 = b'H';
/// Tags of the extended-query and function-call messages: Parse, Bind, Describe, Execute,
/// Close, FunctionCall. Kept raw as [`FeMessage::Extended`].
pub const EXTENDED_TAGS: [u8; 6] = [b'P', b'B', b'D', b'E', b'C', b'F'];

/// A tagged message from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeMessage {
    /// `Q`: a simple query; the text without its terminating NUL (not checked for UTF-8).
    Query(Bytes),
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; the body as sent (which
    /// one it is depends on the authentication exchange, so only the caller can tell).
    Password(Bytes),
    /// `X`: the client is leaving.
    Terminate,
    /// `d`: a chunk of a COPY stream.
    CopyData(Bytes),
    /// `c`: the client ended its COPY stream.
    CopyDone,
    /// `f`: the client aborted its COPY stream, with a reason.
    CopyFail(String),
    /// `S`: end of an extended-query batch.
    Sync,
    /// `H`: asks the server to flush its output.
    Flush,
    /// Parse, Bind, Describe, Execute, Close or FunctionCall, kept raw so the server can
    /// answer "extended query protocol not supported".
    Extended {
        /// The tag byte (one of [`EXTENDED_TAGS`]).
        tag: u8,
        /// The body.
        body: Bytes,
    },
}

fn is_fe_tag(tag: u8) -> bool {
    matches!(
        tag,
        QUERY_TAG
            | PASSWORD_TAG
            | TERMINATE_TAG
            | COPY_DATA_TAG
            | COPY_DONE_TAG
            | COPY_FAIL_TAG
            | SYNC_TAG
            | FLUSH_TAG
    ) || EXTENDED_TAGS.contains(&tag)
}

impl FeMessage {
    /// [`FeMessage::parse_with_limit`] with [`DEFAULT_MAX_MESSAGE_LEN`].
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        Self::parse_with_limit(buf, DEFAULT_MAX_MESSAGE_LEN)
    }

    /// Parses one message from the front of `buf`. `Ok(None)` (nothing consumed) until the
    /// frame is complete; then exactly the frame is consumed and bodies are zero-copy
    /// slices of it. An unknown tag or a length field above `max_len` fails as soon as the
    /// header arrives.
    pub fn parse_with_limit(
        buf: &mut BytesMut,
        max_len: usize,
    ) -> Result<Option<Self>, ProtocolError> {
        let Some((tag, body)) = split_tagged(buf, max_len, is_fe_tag, "frontend message")? else {
            return Ok(None);
        };
        let msg = match tag {
            QUERY_TAG => {
                let mut r = Reader::new(body, "Query");
                let text = r.cstr_bytes("query string")?;
                r.finish()?;
                FeMessage::Query(text)
            }
            PASSWORD_TAG => FeMessage::Password(body),
            TERMINATE_TAG => empty(body, "Terminate", FeMessage::Terminate)?,
            COPY_DATA_TAG => FeMessage::CopyData(body),
            COPY_DONE_TAG => empty(body, "CopyDone", FeMessage::CopyDone)?,
            COPY_FAIL_TAG => {
                let mut r = Reader::new(body, "CopyFail");
                let reason = r.cstring("error message")?;
                r.finish()?;
                FeMessage::CopyFail(reason)
            }
            SYNC_TAG => empty(body, "Sync", FeMessage::Sync)?,
            FLUSH_TAG => empty(body, "Flush", FeMessage::Flush)?,
            tag => FeMessage::Extended { tag, body },
        };
        Ok(Some(msg))
    }

    /// Appends the message, framed, to `buf`.
    pub fn write(&self, buf: &mut BytesMut) {
        match self {
            FeMessage::Query(text) => write_tagged(buf, QUERY_TAG, |b| put_cstr(b, text)),
            FeMessage::Password(body) => write_tagged(buf, PASSWORD_TAG, |b| b.put_slice(body)),
            FeMessage::Terminate => write_tagged(buf, TERMINATE_TAG, |_| {}),
            FeMessage::CopyData(data) => write_copy_data(buf, data),
            FeMessage::CopyDone => write_tagged(buf, COPY_DONE_TAG, |_| {}),
            FeMessage::CopyFail(reason) => {
                write_tagged(buf, COPY_FAIL_TAG, |b| put_cstr(b, reason.as_bytes()))
            }
            FeMessage::Sync => write_tagged(buf, SYNC_TAG, |_| {}),
            FeMessage::Flush => write_tagged(buf, FLUSH_TAG, |_| {}),
            FeMessage::Extended { tag, body } => write_tagged(buf, *tag, |b| b.put_slice(body)),
        }
    }
}

/// `msg` if `body` is empty, else [`ProtocolError::TrailingBytes`].
fn empty(body: Bytes, name: &'static str, msg: FeMessage) -> Result<FeMessage, ProtocolError> {
    Reader::new(body, name).finish().map(|()| msg)
}

/// Appends a CopyData frame carrying `data` (the frame is the same in both directions).
pub fn write_copy_data(buf: &mut BytesMut, data: &[u8]) {
    write_tagged(buf, COPY_DATA_TAG, |b| b.put_slice(data));
}

#[cfg(test)]
mod tests;
