//! The write side of a proposer connection: replies are encoded into a buffer and written
//! to the socket by whichever thread produced them (the ingest loop's pool thread), with a
//! non-blocking write; only what the socket does not take at once is left for the
//! connection's task, which waits until the socket is writable.
//!
//! This is what makes a commit cost one thread hand-off: the pool thread that flushed
//! writes the AppendResponse itself instead of waking a writer task.
//!
//! Owns: [`ReplySink`]. Must never: block (pool threads call it), or write anything after
//! the ErrorResponse that ends the stream.

use std::io;
use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use pq_proto::backend::BeMessage;
use pq_proto::proposer::{AcceptorMessage, ProtocolVersion, write_acceptor_frame};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::errors::ClientError;
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

/// Where a proposer connection's replies go.
pub struct ReplySink {
    version: ProtocolVersion,
    half: OwnedWriteHalf,
    state: Mutex<State>,
    /// Wakes the connection's task: something is left to write, or the stream ended.
    wake: Notify,
}

impl ReplySink {
    /// A sink writing to `half`, with `pending` (unflushed output) first.
    pub fn new(half: OwnedWriteHalf, pending: BytesMut, version: ProtocolVersion) -> Self {
        ReplySink {
            version,
            half,
            state: Mutex::new(State {
                buf: pending,
                ..State::default()
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what the socket takes now; wakes the connection's task for the rest.
    fn try_write(&self, st: &mut State) {
        while !st.buf.is_empty() && !st.failed {
            match self.half.try_write(&st.buf) {
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
        BeMessage::ErrorResponse(e.to_fields()).write(&mut st.buf);
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
        loop {
            {
                let mut st = self.lock();
                self.try_write(&mut st);
                if st.failed {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the proposer connection is gone",
                    ));
                }
                if st.buf.is_empty() {
                    return Ok(st.ended);
                }
            }
            self.half.writable().await?;
        }
    }
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
