//! `START_REPLICATION`: streaming WAL to replicas, pageservers, pg_receivewal and
//! proposers fetching WAL they no longer have.
//!
//! Two modes. Without a term (replicas, pageservers): up to commit_lsn, never a byte
//! above it. With `(term='N')`: up to flush_lsn for as long as the acceptor stays in
//! term N, every read done under the timeline lock after checking the term, so a
//! truncation can never change bytes while they are read; a term change ends the stream
//! with an error. `0/0` starts at the current end (tail); a second LSN is a stop point
//! where the stream ends cleanly (CopyDone, CommandComplete), as PostgreSQL ends a
//! historic timeline.
//!
//! The sender waits on the timeline's watch channel (never a polling sleep), sends
//! XLogData of at most MAX_SEND_SIZE that never cross a segment boundary, and a keepalive
//! asking for a reply after a second without sending anything. A separate task reads the
//! client's `r`/`h`/`z` replies into the timeline's feedback table. Streams run on a
//! runtime of their own (see `sender_runtime` for why).
//!
//! Must never: send a byte above commit_lsn without a term, or buffer more than one chunk
//! per stream. A slow client only slows its own stream: the sender flushes every frame
//! before reading the next chunk, so it holds one chunk (≤ 128 KiB + header) and the
//! socket buffers, and reads from disk at the client's pace; ingest never waits for it
//! (the watch channels are written without waiting for receivers).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use pq_proto::backend::{BeMessage, CopyResponse};
use pq_proto::frontend::FeMessage;
use pq_proto::proposer::HotStandbyFeedback;
use pq_proto::replication::{
    MAX_SEND_SIZE, PrimaryKeepalive, ReplicationClientMessage, ReplicationServerMessage,
    pg_timestamp_now, write_xlog_data_frame,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use utils::{Lsn, Term};

use crate::command::StartReplication;
use crate::errors::ClientError;
use crate::feedback::Feedback;
use crate::handler::{Conn, ConnReader, ConnWriter, ServerCtx, Session};
use crate::timeline::{FlushState, Timeline, TimelineError};
use crate::wal_reader::WalReader;

/// How long a stream may be idle before a keepalive asks for a reply.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the final ErrorResponse of a stream may take to go out.
const ERROR_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait for the client's CopyDone after ours at a stop point.
const COPY_DONE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a stream ended without an error.
enum End {
    /// Cleanly: the stop LSN was reached or the client sent CopyDone, and both sides
    /// have sent CopyDone; the connection goes on with the returned reader half.
    Done(ConnReader),
    /// The client went away (EOF, Terminate, CopyFail).
    Closed,
}

/// The reply reader task: returns the reader half after the client's CopyDone, `None`
/// when the client went away. Aborted when dropped, so it never outlives its stream.
type ReplyTask = AbortOnDropHandle<Result<Option<ConnReader>, ClientError>>;

/// Runs one stream. Returns the connection when it can go on (errors before the stream
/// started, or a clean end), `None` when it must be closed.
pub async fn run(
    mut conn: Conn,
    ctx: &ServerCtx,
    session: &Session,
    args: StartReplication,
) -> Result<Option<Conn>, ClientError> {
    let tl = match prepare(ctx, session, &args) {
        Ok(tl) => tl,
        Err(e) => {
            tracing::info!(app = %session.app_name, "START_REPLICATION refused: {e}");
            conn.write_be(&BeMessage::ErrorResponse(e.to_fields()));
            return Ok(Some(conn));
        }
    };
    conn.write_be(&BeMessage::CopyBothResponse(CopyResponse {
        format: 0,
        column_formats: vec![],
    }));
    conn.flush().await?;
    let ttid = tl.ttid;
    let app = session.app_name.clone();
    let mode = if args.term.is_some() {
        "term"
    } else {
        "commit"
    };
    tracing::info!(%ttid, app, start = %args.start, stop = ?args.stop.map(|l| l.to_string()),
        mode, term = ?args.term, "replication stream started");

    let (reader, writer) = conn.split();
    let job = serve(reader, writer, tl, args, app.clone(), ctx.shutdown.clone());
    // Owned: dropping this connection's task (shutdown) aborts the stream too.
    let handle = AbortOnDropHandle::new(match sender_runtime() {
        Some(rt) => rt.spawn(job),
        None => tokio::spawn(job),
    });
    let (mut writer, result, pos) = handle
        .await
        .map_err(|e| ClientError::Unexpected(format!("WAL sender task failed: {e}")))?;
    match result {
        Ok(End::Done(reader)) => {
            let mut conn = reader.unsplit(writer);
            // As a walsender: the stream's own CommandComplete, then the command's.
            conn.write_be(&BeMessage::CommandComplete("START_STREAMING".into()));
            conn.write_be(&BeMessage::CommandComplete("START_REPLICATION".into()));
            tracing::info!(%ttid, app, end = %pos, "replication stream ended cleanly");
            Ok(Some(conn))
        }
        Ok(End::Closed) => {
            tracing::info!(%ttid, app, end = %pos, "replication stream ended: client disconnected");
            Ok(None)
        }
        Err(e) => {
            tracing::info!(%ttid, app, end = %pos, "replication stream ended: {e}");
            // Bounded: a client that does not read must not hold the connection open.
            writer.write_be(&BeMessage::ErrorResponse(e.to_fields()));
            let _ = tokio::time::timeout(ERROR_FLUSH_TIMEOUT, writer.flush()).await;
            Ok(None)
        }
    }
}

/// Senders run on a runtime of their own. On one shared runtime, the proposer's network
/// tasks queue behind every sender woken by the same commit (50 readers × a 128 KiB write
/// each, per AppendRequest round trip: ingest dropped to a few percent of its rate in
/// the 50-reader test). On their own threads, the OS scheduler shares the CPU between
/// ingest and senders instead, and a proposer that wakes up runs at once. `None` if the
/// runtime could not be built (then senders share the caller's runtime).
fn sender_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("wal-sender")
                .enable_all()
                .build()
                .map_err(|e| tracing::error!("cannot build the WAL sender runtime: {e}"))
                .ok()
        })
        .as_ref()
}

/// The stream itself, with everything it needs owned (it runs on the sender runtime):
/// registers the reader, runs the reply task and the sender, and hands back the write
/// half, how the stream ended and where it was.
async fn serve(
    reader: ConnReader,
    mut writer: ConnWriter,
    tl: Arc<Timeline>,
    args: StartReplication,
    app: String,
    shutdown: CancellationToken,
) -> (ConnWriter, Result<End, ClientError>, Lsn) {
    let guard = tl.feedback.register(&app);
    let mut replies: ReplyTask =
        AbortOnDropHandle::new(tokio::spawn(read_replies(reader, tl.clone(), guard.id)));
    let mut sender = Sender {
        w: &mut writer,
        tl: &tl,
        shutdown: &shutdown,
        term: args.term,
        reader_id: guard.id,
        pos: args.start,
        last_sent: Instant::now(),
    };
    let result = sender.stream(&args, &mut replies).await;
    let pos = sender.pos;
    drop(guard);
    (writer, result, pos)
}

/// Checks made before the stream starts (their errors leave the connection usable).
fn prepare(
    ctx: &ServerCtx,
    session: &Session,
    args: &StartReplication,
) -> Result<Arc<Timeline>, ClientError> {
    let tl = ctx.timelines.get(&session.timeline(ctx)?)?;
    if let Some(n) = args.timeline.filter(|&n| n != 1) {
        return Err(ClientError::WalUnavailable(format!(
            "requested starting point {} on timeline {n} is not in this server's history: \
             only PostgreSQL timeline 1 exists here",
            args.start
        )));
    }
    if let Some(stop) = args
        .stop
        .filter(|&s| args.start.is_valid() && s < args.start)
    {
        return Err(ClientError::WalUnavailable(format!(
            "stop point {stop} is before the starting point {}",
            args.start
        )));
    }
    check_start(&tl, args.start)?;
    Ok(tl)
}

/// The first LSN this safekeeper can serve: the start of the segment holding the first
/// WAL it has (bytes of that segment before the timeline start are the synthetic image
/// written when the timeline was created). `None` while the timeline has no WAL.
pub fn first_servable_lsn(tl: &Timeline) -> Option<Lsn> {
    let state = tl.state();
    let first = state.timeline_start_lsn.max(state.local_start_lsn);
    first
        .is_valid()
        .then(|| first.segment_lsn(state.server.wal_seg_size))
}

/// A start below the timeline's first segment cannot be served.
fn check_start(tl: &Timeline, start: Lsn) -> Result<(), ClientError> {
    match first_servable_lsn(tl) {
        Some(first) if start.is_valid() && start < first => {
            Err(ClientError::WalUnavailable(format!(
                "requested starting point {start} is before the WAL this safekeeper holds for \
                 timeline {}: WAL is available from {first}",
                tl.ttid
            )))
        }
        _ => Ok(()),
    }
}

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
struct Sender<'a> {
    w: &'a mut ConnWriter,
    tl: &'a Arc<Timeline>,
    shutdown: &'a CancellationToken,
    term: Option<Term>,
    reader_id: u64,
    /// Next LSN to send.
    pos: Lsn,
    /// When the last frame went out (keepalives are due a second after it).
    last_sent: Instant,
}

impl Sender<'_> {
    /// The end of WAL this stream may send, or the term-change error.
    fn end_pos(&self) -> Result<Lsn, ClientError> {
        match self.term {
            None => Ok(self.tl.commit_lsn()),
            Some(t) => {
                let fs = self.tl.flush_state();
                if fs.term != t {
                    return Err(term_changed(t, fs));
                }
                Ok(fs.flush_lsn)
            }
        }
    }

    async fn stream(
        &mut self,
        args: &StartReplication,
        replies: &mut ReplyTask,
    ) -> Result<End, ClientError> {
        let mut commit_rx = self.tl.subscribe_commit();
        let mut flush_rx = self.tl.subscribe_flush();
        let seg_size = self.tl.state().server.wal_seg_size;
        let mut reader = Some(WalReader::new(self.tl.dir().to_path_buf(), seg_size));
        let mut started = false;
        loop {
            // A client that sent CopyDone (pg_receivewal at --endpos) or left while we
            // were busy sending is noticed here, not only when idle.
            if replies.is_finished() {
                return self.client_ended(replies.await).await;
            }
            if self.shutdown.is_cancelled() {
                return Err(ClientError::Shutdown);
            }
            // Mark the current values seen before reading them: a change after this
            // point wakes the wait below.
            commit_rx.borrow_and_update();
            flush_rx.borrow_and_update();
            let end = self.end_pos()?;
            if !started && end.is_valid() {
                // WAL exists: resolve `0/0` to the current end and check the start again
                // (the timeline may have had no WAL when the stream was requested).
                if !self.pos.is_valid() {
                    self.pos = end;
                }
                check_start(self.tl, self.pos)?;
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
                let sent = self.send_chunk(r, &mut reader, n, end).await?;
                self.pos = Lsn(self.pos.0 + sent as u64);
                let pos = self.pos;
                self.tl
                    .feedback
                    .update(self.reader_id, |f| f.sent_lsn = pos);
                continue;
            }
            match self.wait(&mut commit_rx, &mut flush_rx, replies).await? {
                Wake::Changed => {}
                Wake::Idle => {
                    // A timeline broken by a storage error is replaced by a reloaded copy
                    // whose watches this stream does not see: end it, so that the client
                    // reconnects to the new one instead of waiting here for ever.
                    if self.tl.is_broken() {
                        return Err(TimelineError::Broken(self.tl.ttid).into());
                    }
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
    /// on a blocking thread), straight from the reader's reused buffer into the
    /// connection's write buffer, and sends them as one XLogData. Returns the number of WAL
    /// bytes sent.
    async fn send_chunk(
        &mut self,
        mut r: WalReader,
        slot: &mut Option<WalReader>,
        n: usize,
        end: Lsn,
    ) -> Result<usize, ClientError> {
        // Commit mode, bytes in the page cache: read right here (no lock is needed
        // without a term, and the read cannot block).
        if self.term.is_none()
            && let Some(data) = r.read_cached(self.pos, n)
        {
            let sent = data.len();
            write_xlog_data_frame(self.w.write_buf(), self.pos, end, pg_timestamp_now(), data);
            *slot = Some(r);
            self.flush().await?;
            self.last_sent = Instant::now();
            return Ok(sent);
        }
        let mut out = std::mem::take(self.w.write_buf());
        let (tl, term, pos) = (self.tl.clone(), self.term, self.pos);
        let joined = tokio::task::spawn_blocking(move || {
            let res = read_frame(&mut r, &tl, term, pos, n, end, &mut out);
            (r, out, res)
        })
        .await;
        let (r, out, res) =
            joined.map_err(|e| ClientError::Unexpected(format!("WAL reader task failed: {e}")))?;
        *slot = Some(r);
        *self.w.write_buf() = out;
        let sent = res?;
        self.flush().await?;
        self.last_sent = Instant::now();
        Ok(sent)
    }

    async fn wait(
        &self,
        commit_rx: &mut watch::Receiver<Lsn>,
        flush_rx: &mut watch::Receiver<FlushState>,
        replies: &mut ReplyTask,
    ) -> Result<Wake, ClientError> {
        let term = self.term;
        let changed = async {
            let r = match term {
                None => commit_rx.changed().await,
                Some(_) => flush_rx.changed().await,
            };
            if r.is_err() {
                // The timeline was dropped (reloaded); nothing more will come on this
                // one. Keepalives go on until the client or shutdown ends the stream.
                std::future::pending::<()>().await;
            }
        };
        // All branches are cancel-safe: watch `changed`, a JoinHandle, a sleep and a
        // cancellation token can be dropped and polled again without losing anything.
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(ClientError::Shutdown),
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
            _ = self.shutdown.cancelled() => return Err(ClientError::Shutdown),
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

    /// Sends what is buffered. Gives up at shutdown, so that a client that stopped reading
    /// cannot keep the server from exiting (a cancelled flush leaves the unsent rest
    /// buffered, so the stream stays well-formed; see `pq_proto::framed`).
    async fn flush(&mut self) -> Result<(), ClientError> {
        let shutdown = self.shutdown;
        tokio::select! {
            r = self.w.flush() => Ok(r?),
            _ = shutdown.cancelled() => Err(ClientError::Shutdown),
        }
    }
}

fn term_changed(requested: Term, now: FlushState) -> ClientError {
    ClientError::TermChanged {
        requested: requested.0,
        now: now.term.0,
    }
}

/// Bytes to send from `pos` towards `limit`: at most MAX_SEND_SIZE, never crossing a
/// segment boundary, and ending on a page boundary unless it reaches `limit` or the end
/// of the segment (fewer, page-aligned reads for the client).
fn chunk_len(pos: Lsn, limit: Lsn, seg_size: u32) -> usize {
    let avail = (limit.0 - pos.0).min(pos.remaining_in_segment(seg_size));
    if avail <= MAX_SEND_SIZE as u64 {
        return avail as usize;
    }
    let end = Lsn(pos.0 + MAX_SEND_SIZE as u64).page_lsn();
    if end > pos {
        (end.0 - pos.0) as usize
    } else {
        MAX_SEND_SIZE
    }
}

/// Reads one chunk (not crossing a segment) and appends it to `out` as an XLogData frame.
/// In term mode under the timeline lock, after checking the term, so that no truncation
/// can change the bytes being read; the reader's cached file is dropped first there,
/// since an election in that term may have removed and recreated the segment.
fn read_frame(
    r: &mut WalReader,
    tl: &Timeline,
    term: Option<Term>,
    pos: Lsn,
    n: usize,
    end: Lsn,
    out: &mut BytesMut,
) -> Result<usize, ClientError> {
    let mut read = |r: &mut WalReader| {
        let data = r.read(pos, n).map_err(|source| ClientError::ReadWal {
            ttid: tl.ttid,
            source,
        })?;
        // One copy, from the reused read buffer into the output buffer. (Reading straight
        // into `out` would need the CopyData/XLogData header written outside pq_proto.)
        write_xlog_data_frame(out, pos, end, pg_timestamp_now(), data);
        Ok(data.len())
    };
    match term {
        None => read(r),
        Some(t) => {
            r.reset();
            tl.with_term(t, || read(r))
                .unwrap_or_else(|| Err(term_changed(t, tl.flush_state())))
        }
    }
}

/// Reads the client's replies until its CopyDone (returns the reader half) or EOF.
async fn read_replies(
    mut reader: ConnReader,
    tl: Arc<Timeline>,
    reader_id: u64,
) -> Result<Option<ConnReader>, ClientError> {
    loop {
        match reader.read_fe_message().await {
            Ok(Some(FeMessage::CopyData(payload))) => {
                match ReplicationClientMessage::decode(payload) {
                    Ok(m) => apply_reply(&tl.feedback, reader_id, m),
                    Err(e) => tracing::debug!("ignoring undecodable reply: {e}"),
                }
            }
            Ok(Some(FeMessage::CopyDone)) => return Ok(Some(reader)),
            Ok(Some(FeMessage::CopyFail(_) | FeMessage::Terminate)) | Ok(None) => return Ok(None),
            Ok(Some(_)) => {
                return Err(ClientError::Unexpected(
                    "only CopyData and CopyDone are expected from a replication client".into(),
                ));
            }
            Err(e) => {
                tracing::debug!("replication client read error: {e}");
                return Ok(None);
            }
        }
    }
}

fn apply_reply(fb: &Feedback, id: u64, m: ReplicationClientMessage) {
    match m {
        ReplicationClientMessage::StandbyStatusUpdate(s) => fb.update(id, |r| {
            r.write_lsn = s.write_lsn;
            r.flush_lsn = s.flush_lsn;
            r.apply_lsn = s.apply_lsn;
            r.reply_time = s.client_time;
        }),
        ReplicationClientMessage::HotStandbyFeedback(h) => fb.update(id, |r| {
            r.hs = HotStandbyFeedback {
                ts: h.ts,
                xmin: h.full_xmin(),
                catalog_xmin: h.full_catalog_xmin(),
            }
        }),
        ReplicationClientMessage::PageserverFeedback(p) => fb.set_pageserver(p),
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_len;
    use utils::Lsn;

    const SEG: u32 = 16 << 20;

    #[test]
    fn chunks_are_bounded_page_aligned_and_stay_in_their_segment() {
        // Everything available fits: send it all.
        assert_eq!(chunk_len(Lsn(0x100_0028), Lsn(0x100_1000), SEG), 0xfd8);
        // More than MAX_SEND_SIZE: end on a page boundary.
        assert_eq!(
            chunk_len(Lsn(0x100_0028), Lsn(0x200_0000), SEG),
            128 * 1024 - 0x28
        );
        // Never across a segment boundary, even when more is available.
        assert_eq!(chunk_len(Lsn(0x1ff_f000), Lsn(0x300_0000), SEG), 0x1000);
        assert_eq!(chunk_len(Lsn(0x1ff_fff8), Lsn(0x200_0008), SEG), 8);
    }
}
