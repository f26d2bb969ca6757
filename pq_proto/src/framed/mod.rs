//! The tokio adapter: a byte stream plus a read buffer and a write buffer, reading and
//! writing the typed messages of [`crate::frontend`] and [`crate::backend`].
//!
//! Owns: [`Framed`] (one owner for the socket and both buffers), its halves
//! [`FramedReader`] / [`FramedWriter`] for CopyBoth streams, [`ConnectionError`], and
//! [`Stream`], the plain-or-TLS TCP stream real connections run over. Must
//! never: interpret messages, add timeouts, or reserve buffer space from a length field
//! before the codec has checked it against the maximum.
//!
//! # Cancel safety
//!
//! Every `read_*` method is cancel-safe, so it may sit in a `tokio::select!` branch: bytes
//! already read stay in the read buffer, and a message is consumed from it only when it is
//! returned. [`Framed::flush`] / [`FramedWriter::flush`] are **not**: a cancelled flush may
//! have written part of the buffer to the stream (that part is gone from the buffer, the
//! rest stays buffered), so after cancelling one the stream can only be flushed again or
//! dropped. Writing messages (`write_fe`, `write_be`, `write_buf`) only appends to the
//! write buffer and never touches the stream.
//!
//! # End of stream
//!
//! EOF at a message boundary is `Ok(None)`; EOF inside a message is
//! [`ConnectionError::Io`] with [`std::io::ErrorKind::UnexpectedEof`].

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::backend::{BeMessage, parse_encryption_response};
use crate::codec::tagged_missing;
use crate::frontend::{FeMessage, FeStartupPacket};
use crate::{DEFAULT_MAX_MESSAGE_LEN, ProtocolError};

mod halves;
mod stream;

pub use halves::{FramedReader, FramedWriter};
pub use stream::{Stream, StreamReadHalf, StreamWriteHalf, TlsTcp};

/// Why a framed read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The stream failed, or ended inside a message (`UnexpectedEof`).
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Smallest amount of free space offered to each read (fewer, larger reads).
const READ_CHUNK: usize = 8 * 1024;

/// Most free space offered to one read when the stream keeps filling what it is offered:
/// a connection streaming data (a proposer pipelining AppendRequests) reads several
/// messages per system call and per wake-up; a quiet one stays at [`READ_CHUNK`], so idle
/// connections do not pin large buffers.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// A buffer whose capacity grew past this (a large message went through it) is given back
/// once it holds little, so a connection that once sent or received one large message
/// does not pin that memory for the rest of its life.
const SHRINK_ABOVE: usize = 4 * MAX_READ_CHUNK;

/// Replaces `buf` by a small one holding the same bytes when it grew past
/// [`SHRINK_ABOVE`] and now holds at most [`READ_CHUNK`].
fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > SHRINK_ABOVE && buf.len() <= READ_CHUNK {
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// The read side's state: buffered bytes not yet returned as a message, and the limit.
#[derive(Debug)]
struct ReadState {
    buf: BytesMut,
    max_len: usize,
    /// Free space the next read is offered (between the two bounds above).
    chunk: usize,
}

impl ReadState {
    fn new() -> Self {
        ReadState {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_len: DEFAULT_MAX_MESSAGE_LEN,
            chunk: READ_CHUNK,
        }
    }

    /// Adapts the next read's size to the last one: a read that filled what it was offered
    /// means more was waiting (offer twice as much); a read of a quarter or less means the
    /// stream is quiet (back to the minimum).
    fn adapt(&mut self, read: usize, offered: usize) {
        if read >= offered {
            self.chunk = (self.chunk * 2).min(MAX_READ_CHUNK);
        } else if read <= self.chunk / 4 {
            self.chunk = READ_CHUNK;
        }
    }

    /// Parses a message from the buffer, reading more from `io` until one is complete.
    /// `missing` says how many more bytes the current message needs; it is only called
    /// after `parse` returned `Ok(None)`, i.e. after any length in the header was checked.
    async fn read<R, T>(
        &mut self,
        io: &mut R,
        mut parse: impl FnMut(&mut BytesMut, usize) -> Result<Option<T>, ProtocolError>,
        missing: impl Fn(&[u8]) -> usize,
    ) -> Result<Option<T>, ConnectionError>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            if let Some(msg) = parse(&mut self.buf, self.max_len)? {
                shrink(&mut self.buf);
                return Ok(Some(msg));
            }
            self.buf.reserve(missing(&self.buf).max(self.chunk));
            let offered = self.buf.capacity() - self.buf.len();
            // Cancel safety: `read_buf` either appends to the buffer or reads nothing.
            let n = io.read_buf(&mut self.buf).await?;
            self.adapt(n, offered);
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a message ({} bytes of it received)",
                        self.buf.len()
                    ),
                )
                .into());
            }
        }
    }

    async fn startup<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<FeStartupPacket>, ConnectionError> {
        self.read(io, |b, _| FeStartupPacket::parse(b), startup_missing)
            .await
    }

    async fn fe_message<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<FeMessage>, ConnectionError> {
        self.read(io, FeMessage::parse_with_limit, tagged_missing)
            .await
    }

    async fn be_message<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<BeMessage>, ConnectionError> {
        self.read(io, BeMessage::parse_with_limit, tagged_missing)
            .await
    }

    async fn encryption_response<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<u8>, ConnectionError> {
        self.read(io, |b, _| parse_encryption_response(b), |_| 1)
            .await
    }
}

/// Bytes the startup packet at the front of `buf` still needs (its length word, already
/// checked by the parser, counts itself).
fn startup_missing(buf: &[u8]) -> usize {
    match buf.get(..4) {
        Some(w) => {
            (u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize).saturating_sub(buf.len())
        }
        None => 4 - buf.len(),
    }
}

/// Writes the whole buffer to `io` and flushes it. Written bytes leave the buffer as they
/// go, so a cancelled call leaves exactly the unwritten rest.
async fn flush_buf<W: AsyncWrite + Unpin>(
    buf: &mut BytesMut,
    io: &mut W,
) -> Result<(), ConnectionError> {
    io.write_all_buf(buf).await?;
    io.flush().await?;
    shrink(buf);
    Ok(())
}

/// A stream with its read and write buffers. See the module doc for cancel safety.
#[derive(Debug)]
pub struct Framed<S> {
    stream: S,
    read: ReadState,
    write: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps `stream`, with [`DEFAULT_MAX_MESSAGE_LEN`] as the message length limit.
    pub fn new(stream: S) -> Self {
        Framed {
            stream,
            read: ReadState::new(),
            write: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Sets the largest length field accepted for a tagged message (startup packets have
    /// their own fixed limit, [`crate::MAX_STARTUP_PACKET_LEN`]).
    pub fn with_max_message_len(mut self, max_len: usize) -> Self {
        self.read.max_len = max_len;
        self
    }

    /// Changes the message length limit of an open connection (e.g. a small one while
    /// a server waits for a password, restored afterwards).
    pub fn set_max_message_len(&mut self, max_len: usize) {
        self.read.max_len = max_len;
    }

    /// The message length limit in force.
    pub fn max_message_len(&self) -> usize {
        self.read.max_len
    }

    /// Reads a startup packet (server side). `None` if the stream ended before any byte.
    pub async fn read_startup(&mut self) -> Result<Option<FeStartupPacket>, ConnectionError> {
        self.read.startup(&mut self.stream).await
    }

    /// Reads a frontend message (server side). `None` at EOF between messages.
    pub async fn read_fe_message(&mut self) -> Result<Option<FeMessage>, ConnectionError> {
        self.read.fe_message(&mut self.stream).await
    }

    /// Reads a backend message (client side). `None` at EOF between messages.
    pub async fn read_be_message(&mut self) -> Result<Option<BeMessage>, ConnectionError> {
        self.read.be_message(&mut self.stream).await
    }

    /// Reads the one-byte answer to an SSLRequest / GSSENCRequest (client side).
    pub async fn read_encryption_response(&mut self) -> Result<Option<u8>, ConnectionError> {
        self.read.encryption_response(&mut self.stream).await
    }

    /// Appends a startup packet to the write buffer.
    pub fn write_startup(&mut self, packet: &FeStartupPacket) {
        packet.write(&mut self.write);
    }

    /// Appends a frontend message to the write buffer.
    pub fn write_fe(&mut self, msg: &FeMessage) {
        msg.write(&mut self.write);
    }

    /// Appends a backend message to the write buffer.
    pub fn write_be(&mut self, msg: &BeMessage) {
        msg.write(&mut self.write);
    }

    /// The write buffer, to encode into directly (e.g. with
    /// [`crate::replication::write_xlog_data_frame`]). Only whole messages belong there.
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write
    }

    /// Writes out everything buffered and flushes the stream. Not cancel-safe (see the
    /// module doc).
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        flush_buf(&mut self.write, &mut self.stream).await
    }

    /// Bytes received but not yet returned as a message. Check that it is empty before
    /// handing the stream to TLS after an SSLRequest (data sent before the handshake must
    /// not be trusted).
    pub fn read_buffer(&self) -> &[u8] {
        &self.read.buf
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably (reading or writing it directly bypasses the buffers).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream; buffered input and unflushed output are dropped.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Splits into a reader and a writer that can be used concurrently (CopyBoth). The
    /// reader keeps the bytes already buffered, the writer the unflushed output.
    pub fn split(self) -> (FramedReader<ReadHalf<S>>, FramedWriter<WriteHalf<S>>) {
        self.split_with(tokio::io::split)
    }

    /// Splits into a reader and a writer with `f` (e.g. `TcpStream::into_split`, whose
    /// halves can be used from different tasks without a shared lock). The reader keeps
    /// the bytes already buffered, the writer the unflushed output.
    pub fn split_with<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        self,
        f: impl FnOnce(S) -> (R, W),
    ) -> (FramedReader<R>, FramedWriter<W>) {
        let (r, w) = f(self.stream);
        (
            FramedReader::from_parts(r, self.read),
            FramedWriter::from_parts(w, self.write),
        )
    }

    /// Joins the halves of [`Framed::split`] again, keeping both buffers.
    ///
    /// # Panics
    /// If the halves come from different streams (as [`ReadHalf::unsplit`]).
    pub fn unsplit(reader: FramedReader<ReadHalf<S>>, writer: FramedWriter<WriteHalf<S>>) -> Self {
        let (r, read) = reader.into_parts();
        let (w, write) = writer.into_parts();
        Framed {
            stream: r.unsplit(w),
            read,
            write,
        }
    }
}

#[cfg(test)]
mod tests;
