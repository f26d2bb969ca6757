//! Stream-level helpers for the proposer protocol: one CopyData frame from / to a raw byte
//! stream, with the message inside decoded / encoded.
//!
//! Owns: the pairing of the `d` frame with a proposer or acceptor payload. Must never:
//! accept any other frame (a peer that sends ErrorResponse or CopyDone instead is for the
//! caller to handle at the [`crate::backend`] / [`crate::frontend`] level).

use bytes::{Bytes, BytesMut};

use super::{AcceptorMessage, ProposerMessage, ProtocolVersion};
use crate::ProtocolError;
use crate::codec::{split_tagged, write_tagged};
use crate::frontend::COPY_DATA_TAG;

/// Splits one CopyData frame off `buf`: `Ok(None)` (nothing consumed) until it is
/// complete; any other tag fails at once.
fn split_copy_data(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, ProtocolError> {
    let frame = split_tagged(buf, max_len, |t| t == COPY_DATA_TAG, "CopyData frame")?;
    Ok(frame.map(|(_, payload)| payload))
}

/// Parses one CopyData frame carrying a proposer message from the front of `buf`.
/// `Ok(None)` (nothing consumed) until the frame is complete. Once it is, the frame is
/// consumed whether or not its payload decodes.
pub fn parse_proposer_frame(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_len: usize,
) -> Result<Option<ProposerMessage>, ProtocolError> {
    match split_copy_data(buf, max_len)? {
        Some(payload) => ProposerMessage::decode(payload, version).map(Some),
        None => Ok(None),
    }
}

/// Parses one CopyData frame carrying an acceptor message; as [`parse_proposer_frame`].
pub fn parse_acceptor_frame(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_len: usize,
) -> Result<Option<AcceptorMessage>, ProtocolError> {
    match split_copy_data(buf, max_len)? {
        Some(payload) => AcceptorMessage::decode(payload, version).map(Some),
        None => Ok(None),
    }
}

/// Appends `msg` as a complete CopyData frame.
pub fn write_proposer_frame(msg: &ProposerMessage, version: ProtocolVersion, buf: &mut BytesMut) {
    write_tagged(buf, COPY_DATA_TAG, |b| msg.encode(version, b));
}

/// Appends `msg` as a complete CopyData frame.
pub fn write_acceptor_frame(msg: &AcceptorMessage, version: ProtocolVersion, buf: &mut BytesMut) {
    write_tagged(buf, COPY_DATA_TAG, |b| msg.encode(version, b));
}
