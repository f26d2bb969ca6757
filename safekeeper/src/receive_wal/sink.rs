//! The write side of a proposer connection: replies are encoded into a buffer and written
//! to the socket by whichever thread produced them (the ingest loop's pool thread), with a
//! non-blocking write; only what the socket does not take at once is left for the
//! connection's task, which waits until the socket is writable.
//!
//! This is what makes a commit cost one thread hand-off: the pool thread that flushed
//! writes the AppendResponse itself instead of waking a writer task. Over TLS that is not
//! possible (a record is produced by the session's async writer), so there the pool
//! thread only queues and wakes the connection's task, which writes everything.
//!
//! Owns: [`ReplySink`]. Must never: block (pool threads call it), or write anything after
//! the ErrorResponse that ends the stream.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use pq_proto::framed::StreamWriteHalf;
use pq_proto::proposer::{AcceptorMessage, ProtocolVersion, write_acceptor_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::errors::ClientError;
use crate::metrics::Metrics;
use crate::session::error_response;
use crate::timeline::{ReplyTo, TimelineError};

#[derive(Default)]
struct State {
    /// Encoded, not yet written.
    buf: BytesMut,
    /// An ErrorResponse ended the stream: nothing more is queued.
    ended: bool,
    /// Writing failed: the connection is gone.
    failed: bool,
}

/// The socket side of a sink.
enum Out {
    /// Plain TCP: written by whichever thread has bytes, without blocking.
    Plain(OwnedWriteHalf),
    /// TLS: written by the connection's task only ([`ReplySink::drain`]).
    Tls(tokio::sync::Mutex<TlsOut>),
}

/// The TLS writer and the bytes taken from the queue that it has not accepted yet (kept
/// here so that a cancelled drain loses nothing).
struct TlsOut {
    half: StreamWriteHalf,
    inflight: BytesMut,
}

/// Where a proposer connection's replies go.
pub struct ReplySink {
    version: ProtocolVersion,
    out: Out,
    state: Mutex<State>,
    /// Wakes the connection's task: something is left to write, or the stream ended.
    wake: Notify,
    /// Where the ErrorResponse that ends the stream is counted.
    metrics: Arc<Metrics>,
}

impl ReplySink {
    /// A sink writing to `half`, with `pending` (unflushed output) first.
    pub fn new(
        half: StreamWriteHalf,
        pending: BytesMut,
        version: ProtocolVersion,
        metrics: Arc<Metrics>,
    ) -> Self {
        let out = match half {
            StreamWriteHalf::Plain(h) => Out::Plain(h),
            tls => Out::Tls(tokio::sync::Mutex::new(TlsOut {
                half: tls,
                inflight: BytesMut::new(),
            })),
        };
        ReplySink {
            version,
            out,
            state: Mutex::new(State {
                buf: pending,
                ..State::default()
            }),
            wake: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what the socket takes now; wakes the connection's task for the rest (for
    /// all of it over TLS).
    fn try_write(&self, st: &mut State) {
        let Out::Plain(half) = &self.out else {
            if !st.buf.is_empty() || st.failed {
                self.wake.notify_one();
            }
            return;
        };
        while !st.buf.is_empty() && !st.failed {
            match half.try_write(&st.buf) {
                Ok(0) => st.failed = true,
                Ok(n) => st.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wake.notify_one();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => st.failed = true,
            }
        }
        if st.failed {
            st.buf.clear();
            self.wake.notify_one();
        }
    }

    /// Queues an error that ends the stream (nothing is sent after it).
    pub fn end_with(&self, e: &ClientError) {
        let mut st = self.lock();
        if st.ended {
            return;
        }
        st.ended = true;
        error_response(&self.metrics, e).write(&mut st.buf);
        self.try_write(&mut st);
        self.wake.notify_one();
    }

    /// Resolves when there may be something for the connection's task to do
    /// ([`ReplySink::drain`]). Cancel-safe (a wake-up is never lost: it is stored).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Writes everything queued, waiting for the socket as needed. `Ok(true)` once the
    /// stream has ended (its ErrorResponse is written). Cancel-safe: what is not written
    /// stays queued.
    pub async fn drain(&self) -> io::Result<bool> {
        let half = match &self.out {
            Out::Plain(half) => half,
            Out::Tls(out) => return self.drain_tls(out).await,
        };
        loop {
            {
                let mut st = self.lock();
                self.try_write(&mut st);
                if st.failed {
                    return Err(gone());
                }
                if st.buf.is_empty() {
                    return Ok(st.ended);
                }
            }
            half.writable().await?;
        }
    }

    /// [`ReplySink::drain`] over TLS: moves the queue into the writer's buffer and writes
    /// it with the session's async writer. Cancel-safe: bytes the writer has not accepted
    /// stay in `inflight`, and a cancelled flush leaves its records in the session.
    async fn drain_tls(&self, out: &tokio::sync::Mutex<TlsOut>) -> io::Result<bool> {
        let mut out = out.lock().await;
        let out = &mut *out;
        loop {
            let ended = {
                let mut st = self.lock();
                if st.failed {
                    return Err(gone());
                }
                out.inflight.unsplit(st.buf.split());
                st.ended
            };
            if out.inflight.is_empty() {
                return Ok(ended);
            }
            let written = async {
                out.half.write_all_buf(&mut out.inflight).await?;
                out.half.flush().await
            }
            .await;
            if let Err(e) = written {
                let mut st = self.lock();
                st.failed = true;
                st.buf.clear();
                return Err(e);
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the proposer connection is gone")
}

impl ReplyTo for ReplySink {
    fn reply(&self, msg: &AcceptorMessage) {
        let mut st = self.lock();
        if st.ended || st.failed {
            return;
        }
        write_acceptor_frame(msg, self.version, &mut st.buf);
        self.try_write(&mut st);
    }

    fn refuse(&self, e: TimelineError) {
        self.end_with(&ClientError::Timeline(e));
    }
}
