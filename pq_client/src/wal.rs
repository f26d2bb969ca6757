//! Reading WAL from a safekeeper in term mode: [`WalStream`] and [`fetch_wal`] on it.
//!
//! Term mode (`START_REPLICATION PHYSICAL … (term='N')`) streams WAL the safekeeper has
//! flushed, committed or not, for as long as its last log term is `N`: what a new proposer
//! (or a safekeeper recovering from a peer) needs from its donor.
//!
//! Owns: the query, decoding XLogData, and the contiguity check (each chunk starts where
//! the previous one ended). Must never: yield a chunk that leaves a gap or overlaps, or
//! treat a stream that ended early as complete ([`fetch_wal`] checks the length).

use bytes::{Bytes, BytesMut};
use pq_proto::backend::BeMessage;
use pq_proto::replication::{ReplicationServerMessage, XLogData};
use utils::{Lsn, Term};

use crate::connect::{PgConn, connect};
use crate::conninfo::Conninfo;
use crate::error::PgError;
use crate::query::{read, start_copy};

/// A term-mode WAL stream from one safekeeper, read chunk by chunk.
pub struct WalStream {
    conn: PgConn,
    /// Where the next chunk must start: the end of the WAL yielded so far.
    position: Lsn,
    /// CopyDone was received: the stream ended cleanly.
    done: bool,
}

impl WalStream {
    /// Connects with `ci` and sends `START_REPLICATION PHYSICAL {from} [{to}] (term='N')`;
    /// with `to`, the server ends the stream with CopyDone there.
    pub async fn start(
        ci: &Conninfo,
        from: Lsn,
        to: Option<Lsn>,
        term: Term,
    ) -> Result<WalStream, PgError> {
        let mut conn = connect(ci).await?;
        let stop = to.map(|to| format!(" {to}")).unwrap_or_default();
        start_copy(
            &mut conn,
            &format!("START_REPLICATION PHYSICAL {from}{stop} (term='{term}')"),
        )
        .await?;
        Ok(WalStream {
            conn,
            position: from,
            done: false,
        })
    }

    /// The end of the WAL yielded so far (`from` before the first chunk).
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The next chunk of WAL, starting at [`position`](Self::position); `None` once the
    /// server has ended the stream with CopyDone (and on every call after). Keepalives are
    /// skipped. A chunk that does not start at `position` is [`PgError::Unexpected`].
    ///
    /// Cancel-safe: a message is taken from the connection only when it has been handled.
    pub async fn next(&mut self) -> Result<Option<XLogData>, PgError> {
        while !self.done {
            match read(&mut self.conn).await? {
                BeMessage::CopyData(p) => match ReplicationServerMessage::decode(p) {
                    Ok(ReplicationServerMessage::XLogData(x)) => {
                        if x.wal_start != self.position {
                            return Err(PgError::Unexpected(format!(
                                "XLogData at {} where {} was expected",
                                x.wal_start, self.position
                            )));
                        }
                        self.position =
                            x.wal_start
                                .checked_add(x.data.len() as u64)
                                .ok_or_else(|| {
                                    PgError::Unexpected(format!(
                                        "XLogData at {} of {} bytes ends beyond the last LSN",
                                        x.wal_start,
                                        x.data.len()
                                    ))
                                })?;
                        return Ok(Some(x));
                    }
                    Ok(ReplicationServerMessage::Keepalive(_)) => {}
                    Err(e) => return Err(PgError::Unexpected(e.to_string())),
                },
                BeMessage::CopyDone => self.done = true,
                other => return Err(PgError::Unexpected(format!("{other:?} in a WAL stream"))),
            }
        }
        Ok(None)
    }
}

/// Reads WAL `[from, to)` from a safekeeper in term mode (`START_REPLICATION … (term=…)`).
///
/// Stops reading as soon as it has `to - from` bytes (a chunk reaching past `to` is cut);
/// a stream that ends before `to` is [`PgError::Unexpected`].
///
/// # Panics
///
/// If `to < from`: a caller's bug.
pub async fn fetch_wal(ci: &Conninfo, from: Lsn, to: Lsn, term: Term) -> Result<Bytes, PgError> {
    let want =
        to.distance_from(from)
            .unwrap_or_else(|| panic!("fetch_wal: to {to} is below from {from}")) as usize;
    let mut stream = WalStream::start(ci, from, Some(to), term).await?;
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let Some(x) = stream.next().await? else {
            break;
        };
        let take = x.data.len().min(want - buf.len());
        buf.extend_from_slice(&x.data[..take]);
    }
    if buf.len() < want {
        return Err(PgError::Unexpected(format!(
            "donor ended the stream at {} before {to}",
            Lsn(from.0 + buf.len() as u64)
        )));
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
