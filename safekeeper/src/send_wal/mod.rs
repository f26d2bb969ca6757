//! `START_REPLICATION`: streaming WAL to replicas, pageservers, pg_receivewal and
//! proposers fetching WAL they no longer have.
//!
//! Two modes. Without a term (replicas, pageservers): up to commit_lsn, never a byte
//! above it. With `(term='N')`: up to flush_lsn for as long as the acceptor stays in
//! term N, every read done with truncations held off after checking the term
//! ([`Timeline::read_in_term`]), so a truncation can never change bytes while they are
//! read; a term change ends the stream with an error. `0/0` starts at the current end
//! (tail); a second LSN is a stop point where the stream ends cleanly (CopyDone,
//! CommandComplete), as PostgreSQL ends a historic timeline.
//!
//! The stream is a task of its timeline on the server's sender runtime: the timeline's
//! shutdown (deletion, a reload after a storage error, the server stopping) ends it at
//! once. It waits on the timeline's status watch (never a polling sleep), sends XLogData
//! of at most MAX_SEND_SIZE that never cross a segment boundary, and a keepalive asking
//! for a reply after a second without sending anything ([`sender`]). A second task reads
//! the client's `r`/`h`/`z` replies into the timeline's feedback table ([`replies`]).
//!
//! Every chunk is checked before it goes out ([`verify`]): a record whose CRC (or page
//! header) is damaged on disk is never sent; the stream ends with `XX001` instead.
//!
//! Must never: send a byte above commit_lsn without a term, send a damaged record, or
//! buffer more than one chunk per stream. A slow client only slows its own stream: the sender flushes every frame
//! before reading the next chunk, so it holds one chunk (≤ 128 KiB + header) and the
//! socket buffers, and reads from disk at the client's pace; ingest never waits for it
//! (the status watch is written without waiting for receivers).

mod replies;
mod sender;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use pq_proto::backend::{BeMessage, CopyResponse};
use pq_proto::replication::MAX_SEND_SIZE;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use utils::Lsn;

use crate::command::StartReplication;
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::session::{Conn, ConnReader, ConnWriter, Session, error_response};
use crate::timeline::{Timeline, TimelineStatus};
use sender::Sender;

/// How long the final ErrorResponse of a stream may take to go out.
const ERROR_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
    let tl = match prepare(ctx, session, &args).await {
        Ok(tl) => tl,
        Err(e) => {
            tracing::info!(app = %session.app_name, "START_REPLICATION refused: {e}");
            conn.write_be(&error_response(&ctx.metrics, &e));
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
    ctx.metrics.sender_streams.inc();
    let job = serve(
        reader,
        writer,
        tl.clone(),
        args,
        app.clone(),
        ctx.shutdown.clone(),
    );
    // A task of the timeline, on the sender runtime; dropping this connection's task
    // (shutdown) aborts the stream too.
    let handle = AbortOnDropHandle::new(tl.spawn(Some(&ctx.senders), job));
    let joined = handle.await;
    ctx.metrics.sender_streams.dec();
    let (mut writer, result, pos) =
        joined.map_err(|e| ClientError::Unexpected(format!("WAL sender task failed: {e}")))?;
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
            if matches!(e, ClientError::WalCorrupt { .. }) {
                tracing::error!(%ttid, app, end = %pos, "replication stream ended: {e}");
            } else {
                tracing::info!(%ttid, app, end = %pos, "replication stream ended: {e}");
            }
            // Bounded: a client that does not read must not hold the connection open.
            writer.write_be(&error_response(&ctx.metrics, &e));
            let _ = tokio::time::timeout(ERROR_FLUSH_TIMEOUT, writer.flush()).await;
            Ok(None)
        }
    }
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
        AbortOnDropHandle::new(tokio::spawn(replies::read(reader, tl.clone(), guard.id)));
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
async fn prepare(
    ctx: &ServerCtx,
    session: &Session,
    args: &StartReplication,
) -> Result<Arc<Timeline>, ClientError> {
    let tl = ctx.timelines.get(&session.timeline(ctx)?).await?;
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
    check_start(&tl.status(), tl.ttid, args.start)?;
    Ok(tl)
}

/// A start below the timeline's first segment cannot be served.
fn check_start(
    st: &TimelineStatus,
    ttid: utils::TenantTimelineId,
    start: Lsn,
) -> Result<(), ClientError> {
    match st.first_servable_lsn() {
        Some(first) if start.is_valid() && start < first => {
            Err(ClientError::WalUnavailable(format!(
                "requested starting point {start} is before the WAL this safekeeper holds for \
                 timeline {ttid}: WAL is available from {first}"
            )))
        }
        _ => Ok(()),
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
