//! The sending side of one replication stream: wait for WAL on the status watch, read a
//! chunk, send it as XLogData, keep the stream alive when idle, end it at a stop point.
//!
//! Owns: [`Sender`]. Must never: read above the end this stream may send (commit_lsn, or
//! flush_lsn in its term), or hold a lock across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pq_proto::backend::BeMessage;
use pq_proto::replication::{
    PrimaryKeepalive, ReplicationServerMessage, pg_timestamp_now, write_xlog_data_frame,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utils::{Lsn, Term};

use super::verify::{Verifier, WalCorruption};
use super::{End, ReplyTask, check_start, chunk_len};
use crate::command::StartReplication;
use crate::errors::ClientError;
use crate::session::{ConnReader, ConnWriter};
use crate::timeline::{Timeline, TimelineStatus};
use crate::wal_reader::WalReader;
use utils::xlog::DecoderConfig;

/// How long a stream may be idle before a keepalive asks for a reply.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait for the client's CopyDone after ours at a stop point.
const COPY_DONE_TIMEOUT: Duration = Duration::from_secs(30);

/// What woke the sender while it had nothing to send.
enum Wake {
    /// New WAL (or a term change) may be there.
    Changed,
    /// A keepalive is due.
    Idle,
    /// The reply task ended: the client sent CopyDone or went away.
    ClientEnded(Option<ConnReader>),
}

/// One stream's sending side.
pub(super) struct Sender<'a> {
    pub(super) w: &'a mut ConnWriter,
    pub(super) tl: &'a Arc<Timeline>,
    pub(super) shutdown: &'a CancellationToken,
    pub(super) term: Option<Term>,
    pub(super) reader_id: u64,
    /// Next LSN to send.
    pub(super) pos: Lsn,
    /// When the last frame went out (keepalives are due a second after it).
    pub(super) last_sent: Instant,
}

impl Sender<'_> {
    /// The end of WAL this stream may send, or the term-change error.
    fn end_pos(&self, st: &TimelineStatus) -> Result<Lsn, ClientError> {
        match self.term {
            None => Ok(st.commit_lsn),
            Some(t) if st.term != t => Err(term_changed(t, st.term)),
            Some(_) => Ok(st.flush_lsn),
        }
    }

    /// Why the stream must end now, if it must: the server or the timeline shutting down.
    fn cancelled(&self) -> Option<ClientError> {
        self.tl.cancelled().is_cancelled().then(|| self.ended())
    }

    /// Why the stream ends once its timeline is cancelled (the server's shutdown cancels
    /// it too: one token to wait on).
    fn ended(&self) -> ClientError {
        ClientError::stream_end(self.shutdown, self.tl)
    }

    pub(super) async fn stream(
        &mut self,
        args: &StartReplication,
        replies: &mut ReplyTask,
    ) -> Result<End, ClientError> {
        let mut status_rx = self.tl.subscribe();
        let seg_size = self.tl.seg_size();
        let mut reader = Some(WalReader::new(self.tl.dir().to_path_buf(), seg_size));
        // Created at the first chunk, once the start is known.
        let mut verifier: Option<Verifier> = None;
        let mut started = false;
        loop {
            // A client that sent CopyDone (pg_receivewal at --endpos) or left while we
            // were busy sending is noticed here, not only when idle.
            if replies.is_finished() {
                return self.client_ended(replies.await).await;
            }
            if let Some(e) = self.cancelled() {
                return Err(e);
            }
            // Mark the current value seen before reading it: a change after this point
            // wakes the wait below.
            let st = status_rx.borrow_and_update().clone();
            let end = self.end_pos(&st)?;
            if !started && end.is_valid() {
                // WAL exists: resolve `0/0` to the current end and check the start again
                // (the timeline may have had no WAL when the stream was requested).
                if !self.pos.is_valid() {
                    self.pos = end;
                }
                check_start(&st, self.tl.ttid, self.pos)?;
                started = true;
            }
            if let Some(stop) = args.stop.filter(|&s| started && self.pos >= s) {
                tracing::debug!("stop point {stop} reached");
                return self.finish(replies).await;
            }
            let limit = args.stop.map_or(end, |s| s.min(end));
            if started && self.pos < limit {
                let n = chunk_len(self.pos, limit, seg_size);
                let r = reader
                    .take()
                    .expect("the reader is put back after every read");
                let s = st.server;
                let v = verifier.take().unwrap_or_else(|| {
                    Verifier::new(
                        self.pos,
                        DecoderConfig::new(s.pg_version, seg_size, s.system_id),
                    )
                });
                self.send_chunk((r, v), (&mut reader, &mut verifier), n, end)
                    .await?;
                continue;
            }
            match self.wait(&mut status_rx, replies).await? {
                Wake::Changed => {}
                Wake::Idle => {
                    ReplicationServerMessage::Keepalive(PrimaryKeepalive {
                        wal_end: end,
                        send_time: pg_timestamp_now(),
                        reply_requested: true,
                    })
                    .encode_frame(self.w.write_buf());
                    self.flush().await?;
                    self.last_sent = Instant::now();
                }
                Wake::ClientEnded(r) => return self.client_ended(Ok(Ok(r))).await,
            }
        }
    }

    /// Reads `n` bytes at `pos` (from the page cache right here if they are there, else
    /// on the read pool), checks them ([`Verifier`]; at the stream's first chunk the bytes
    /// of its page before `pos` are read and checked too), and sends what passed as one
    /// XLogData, straight from the reader's reused buffer into the connection's write
    /// buffer. Damaged WAL ends the stream with `XX001` once the bytes before it are out.
    async fn send_chunk(
        &mut self,
        (mut r, mut v): (WalReader, Verifier),
        (slot, vslot): (&mut Option<WalReader>, &mut Option<Verifier>),
        n: usize,
        end: Lsn,
    ) -> Result<(), ClientError> {
        let from = v.next();
        let want = (self.pos.0 - from.0) as usize + n;
        // Commit mode, bytes in the page cache: read right here (committed WAL is never
        // cut, and the read cannot block).
        if self.term.is_none()
            && let Some(data) = r.read_cached(from, want)
        {
            let (sent, bad) = check_and_frame(&mut v, data, self.pos, end, self.w.write_buf());
            *slot = Some(r);
            *vslot = Some(v);
            return self.sent(sent, bad).await;
        }
        let mut fetched = false;
        loop {
            let mut out = std::mem::take(self.w.write_buf());
            let (tl, term, pos) = (self.tl.clone(), self.term, self.pos);
            let joined = self
                .tl
                .read_pool()
                .run(move || {
                    let res = read_frame(&mut r, &mut v, &tl, term, pos, n, end, &mut out);
                    (r, v, out, res)
                })
                .await;
            let (back, vback, out, res) = joined
                .map_err(|e| ClientError::Unexpected(format!("WAL reader task failed: {e}")))?;
            *self.w.write_buf() = out;
            (r, v) = (back, vback);
            // A segment removed here after offload: read it back from the archive, once.
            if let Err(ClientError::ReadWal { source, .. }) = &res
                && source.kind() == std::io::ErrorKind::NotFound
                && !fetched
                && let Some(path) = self.fetch_archived().await?
            {
                r.use_archived(self.pos.segment_number(self.tl.seg_size()), path);
                fetched = true;
                continue;
            }
            *slot = Some(r);
            *vslot = Some(v);
            let (sent, bad) = res?;
            return self.sent(sent, bad).await;
        }
    }

    /// After a chunk went into the write buffer: sends it, moves the stream on, and ends
    /// the stream if the chunk stopped at damaged WAL.
    async fn sent(&mut self, sent: usize, bad: Option<WalCorruption>) -> Result<(), ClientError> {
        if sent > 0 {
            self.flush().await?;
            self.last_sent = Instant::now();
            self.pos = Lsn(self.pos.0 + sent as u64);
            self.tl.metrics().wal_sent_bytes.inc_by(sent as u64);
            let pos = self.pos;
            self.tl
                .feedback
                .update(self.reader_id, |f| f.sent_lsn = pos);
        }
        match bad {
            None => Ok(()),
            Some(bad) => {
                self.tl.metrics().wal_corruption_detected.inc();
                Err(bad.into_client_error(self.tl.ttid))
            }
        }
    }

    /// The segment at the stream's position, downloaded from the archive (`None` without
    /// offload or when the store does not have it either).
    async fn fetch_archived(&self) -> Result<Option<std::path::PathBuf>, ClientError> {
        let Some(off) = self.tl.offload() else {
            return Ok(None);
        };
        let seg_size = self.tl.seg_size();
        let segno = self.pos.segment_number(seg_size);
        let fetch = off.fetch_archived(&self.tl.ttid, segno, seg_size);
        tokio::select! {
            r = fetch => r.map_err(|e| ClientError::ReadWal {
                ttid: self.tl.ttid,
                source: std::io::Error::other(format!("reading {} back from the archive: {e}", utils::xlog::xlog_file_name(1, segno, seg_size))),
            }),
            _ = self.shutdown.cancelled() => Err(ClientError::Shutdown),
        }
    }

    async fn wait(
        &self,
        status_rx: &mut watch::Receiver<TimelineStatus>,
        replies: &mut ReplyTask,
    ) -> Result<Wake, ClientError> {
        let changed = async {
            if status_rx.changed().await.is_err() {
                // The timeline is gone; its cancellation (below) ends the stream.
                std::future::pending::<()>().await;
            }
        };
        // All branches are cancel-safe: watch `changed`, a JoinHandle, a sleep and
        // cancellation tokens can be dropped and polled again without losing anything.
        tokio::select! {
            _ = self.tl.cancelled().cancelled() => Err(self.ended()),
            r = replies => match r {
                Ok(Ok(reader)) => Ok(Wake::ClientEnded(reader)),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(Wake::ClientEnded(None)),
            },
            _ = changed => Ok(Wake::Changed),
            _ = tokio::time::sleep_until(self.last_sent + KEEPALIVE_INTERVAL) => Ok(Wake::Idle),
        }
    }

    /// The reply task ended: a CopyDone is answered with ours (a clean end).
    async fn client_ended(
        &mut self,
        r: Result<Result<Option<ConnReader>, ClientError>, tokio::task::JoinError>,
    ) -> Result<End, ClientError> {
        match r {
            Ok(Ok(Some(reader))) => {
                self.w.write_be(&BeMessage::CopyDone);
                Ok(End::Done(reader))
            }
            Ok(Ok(None)) | Err(_) => Ok(End::Closed),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Ends the stream at the stop point: CopyDone, then wait (bounded) for the client's.
    async fn finish(&mut self, replies: &mut ReplyTask) -> Result<End, ClientError> {
        self.w.write_be(&BeMessage::CopyDone);
        self.flush().await?;
        let waited = tokio::select! {
            r = tokio::time::timeout(COPY_DONE_TIMEOUT, replies) => r,
            _ = self.tl.cancelled().cancelled() => return Err(self.ended()),
        };
        match waited {
            Ok(Ok(Ok(Some(reader)))) => Ok(End::Done(reader)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(None)) | Err(_)) => Ok(End::Closed),
            Err(_) => Err(ClientError::Unexpected(format!(
                "no CopyDone from the client within {COPY_DONE_TIMEOUT:?} after the stop point"
            ))),
        }
    }

    /// Sends what is buffered. Gives up when the stream is cancelled, so that a client
    /// that stopped reading cannot keep a shutdown waiting (a cancelled flush leaves the
    /// unsent rest buffered, so the stream stays well-formed; see `pq_proto::framed`).
    async fn flush(&mut self) -> Result<(), ClientError> {
        let (shutdown, tl) = (self.shutdown, self.tl);
        tokio::select! {
            r = self.w.flush() => Ok(r?),
            _ = tl.cancelled().cancelled() => Err(ClientError::stream_end(shutdown, tl)),
        }
    }
}

fn term_changed(requested: Term, now: Term) -> ClientError {
    ClientError::TermChanged {
        requested: requested.0,
        now: now.0,
    }
}

/// Reads one chunk (not crossing a segment) from where the verifier is (at most a page
/// before `pos`, at the stream's start) to `pos + n`, checks it and appends what passed
/// from `pos` on to `out` as an XLogData frame (see [`check_and_frame`]). In term mode
/// with truncations held off, after checking the term; the reader's cached file is
/// dropped first there, since an election in that term may have removed and recreated
/// the segment. Blocking: runs on the read pool.
#[allow(clippy::too_many_arguments)]
fn read_frame(
    r: &mut WalReader,
    v: &mut Verifier,
    tl: &Timeline,
    term: Option<Term>,
    pos: Lsn,
    n: usize,
    end: Lsn,
    out: &mut BytesMut,
) -> Result<(usize, Option<WalCorruption>), ClientError> {
    let from = v.next();
    let want = (pos.0 - from.0) as usize + n;
    let mut read = |r: &mut WalReader| {
        let data = r.read(from, want).map_err(|source| ClientError::ReadWal {
            ttid: tl.ttid,
            source,
        })?;
        Ok(check_and_frame(v, data, pos, end, out))
    };
    match term {
        None => read(r),
        Some(t) => {
            r.reset();
            let upto = Lsn(pos.0 + n as u64);
            tl.read_in_term(t, upto, || read(r))
                .unwrap_or_else(|| Err(term_changed(t, tl.status().term)))
        }
    }
}

/// Checks `data` (WAL at the verifier's position, ending at `pos + n`) and frames the part
/// from `pos` that passed: one copy, from the reused read buffer into the output buffer.
/// Returns the WAL bytes framed and the damage that stopped it, if any.
fn check_and_frame(
    v: &mut Verifier,
    data: &[u8],
    pos: Lsn,
    end: Lsn,
    out: &mut BytesMut,
) -> (usize, Option<WalCorruption>) {
    let skip = (pos.0 - v.next().0) as usize;
    let (good, bad) = v.check(data);
    let k = good.saturating_sub(skip);
    if k > 0 {
        write_xlog_data_frame(out, pos, end, pg_timestamp_now(), &data[skip..skip + k]);
    }
    (k, bad)
}
