//! The byte stream under a PostgreSQL connection: plain TCP, or TLS over TCP once an
//! SSLRequest was answered `S` (either side of the connection).
//!
//! Owns: [`Stream`] and its owned halves ([`StreamReadHalf`], [`StreamWriteHalf`]). Must
//! never: negotiate anything (the SSLRequest exchange and the handshake belong to the
//! server's handler and the client's `connect`), or slow the plain path beyond one match:
//! a plain stream splits into tokio's lock-free owned TCP halves, exactly as before TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsStream;

/// A TLS session over TCP, client or server side. Boxed: the session state is large and
/// the plain variant should not pay for it.
pub type TlsTcp = Box<TlsStream<TcpStream>>;

/// A connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// Plain text.
    Plain(TcpStream),
    /// Encrypted (negotiated with an SSLRequest).
    Tls(TlsTcp),
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Splits into halves that can live in different tasks: a plain stream into tokio's
    /// owned TCP halves (no lock, and the write half can be written without a task with
    /// [`StreamWriteHalf::try_write_plain`]); a TLS stream with [`tokio::io::split`] (one
    /// session state, shared under a lock).
    pub fn into_split(self) -> (StreamReadHalf, StreamWriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (StreamReadHalf::Plain(r), StreamWriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (StreamReadHalf::Tls(r), StreamWriteHalf::Tls(w))
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

/// Forwards a poll method to whichever variant `$self` is.
macro_rules! forward {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_shutdown(cx))
    }
}

/// The read half of [`Stream::into_split`].
#[derive(Debug)]
pub enum StreamReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS (shares the session with the write half).
    Tls(ReadHalf<TlsTcp>),
}

impl AsyncRead for StreamReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// The write half of [`Stream::into_split`].
#[derive(Debug)]
pub enum StreamWriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS (shares the session with the read half).
    Tls(WriteHalf<TlsTcp>),
}

impl StreamWriteHalf {
    /// The plain TCP half, which can be written without a task (`try_write`); `None` for
    /// TLS, whose records only an async writer can produce.
    pub fn plain(&self) -> Option<&OwnedWriteHalf> {
        match self {
            StreamWriteHalf::Plain(w) => Some(w),
            StreamWriteHalf::Tls(_) => None,
        }
    }

    /// `try_write` on a plain half; `WouldBlock` on a TLS one (the caller then leaves the
    /// bytes to its async writer).
    pub fn try_write_plain(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamWriteHalf::Plain(w) => w.try_write(buf),
            StreamWriteHalf::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncWrite for StreamWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamWriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamWriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamWriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
