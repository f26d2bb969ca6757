//! The two halves of a split [`super::Framed`]: the reader owns the read buffer, the writer
//! the write buffer, so a CopyBoth stream can read and write from two futures at once.
//!
//! Owns: nothing beyond [`super::Framed`]'s contract, which applies unchanged (the read
//! methods are cancel-safe, `flush` is not). Must never: share a buffer between the halves.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use super::{ConnectionError, Framed, ReadState, flush_buf};
use crate::backend::BeMessage;
use crate::frontend::{FeMessage, FeStartupPacket};

/// The reading half of a split [`super::Framed`].
#[derive(Debug)]
pub struct FramedReader<R> {
    stream: R,
    read: ReadState,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    pub(super) fn from_parts(stream: R, read: ReadState) -> Self {
        FramedReader { stream, read }
    }

    pub(super) fn into_parts(self) -> (R, ReadState) {
        (self.stream, self.read)
    }

    /// The message length limit in force.
    pub fn max_message_len(&self) -> usize {
        self.read.max_len
    }

    /// Reads a startup packet. `None` if the stream ended before any byte.
    pub async fn read_startup(&mut self) -> Result<Option<FeStartupPacket>, ConnectionError> {
        self.read.startup(&mut self.stream).await
    }

    /// Reads a frontend message. `None` at EOF between messages. Cancel-safe.
    pub async fn read_fe_message(&mut self) -> Result<Option<FeMessage>, ConnectionError> {
        self.read.fe_message(&mut self.stream).await
    }

    /// Reads a backend message. `None` at EOF between messages. Cancel-safe.
    pub async fn read_be_message(&mut self) -> Result<Option<BeMessage>, ConnectionError> {
        self.read.be_message(&mut self.stream).await
    }

    /// Reads the one-byte answer to an SSLRequest / GSSENCRequest. Cancel-safe.
    pub async fn read_encryption_response(&mut self) -> Result<Option<u8>, ConnectionError> {
        self.read.encryption_response(&mut self.stream).await
    }

    /// The stream half.
    pub fn get_ref(&self) -> &R {
        &self.stream
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedReader<ReadHalf<S>> {
    /// Joins this reader with its writer again (as [`Framed::unsplit`]).
    ///
    /// # Panics
    /// If the halves come from different streams.
    pub fn unsplit(self, writer: FramedWriter<WriteHalf<S>>) -> Framed<S> {
        Framed::unsplit(self, writer)
    }
}

/// The writing half of a split [`super::Framed`].
#[derive(Debug)]
pub struct FramedWriter<W> {
    stream: W,
    write: BytesMut,
}

impl<W: AsyncWrite + Unpin> FramedWriter<W> {
    pub(super) fn from_parts(stream: W, write: BytesMut) -> Self {
        FramedWriter { stream, write }
    }

    pub(super) fn into_parts(self) -> (W, BytesMut) {
        (self.stream, self.write)
    }

    /// Appends a frontend message to the write buffer.
    pub fn write_fe(&mut self, msg: &FeMessage) {
        msg.write(&mut self.write);
    }

    /// Appends a backend message to the write buffer.
    pub fn write_be(&mut self, msg: &BeMessage) {
        msg.write(&mut self.write);
    }

    /// The write buffer, to encode whole messages into directly.
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write
    }

    /// Writes out everything buffered and flushes the stream. Not cancel-safe: a cancelled
    /// flush may have written part of the buffer (the rest stays buffered).
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        flush_buf(&mut self.write, &mut self.stream).await
    }

    /// The stream half.
    pub fn get_ref(&self) -> &W {
        &self.stream
    }

    /// The stream half and the unflushed output.
    pub fn into_inner(self) -> (W, BytesMut) {
        (self.stream, self.write)
    }
}
