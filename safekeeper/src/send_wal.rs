//! `START_REPLICATION`: streaming WAL to replicas, pageservers, pg_receivewal and
//! proposers fetching WAL they no longer have.
//!
//! Two modes. Without a term (replicas, pageservers): up to commit_lsn, never a byte
//! above it. With `(term='N')`: up to flush_lsn for as long as the acceptor stays in
//! term N, every read done under the timeline lock after checking the term, so a
//! truncation can never change bytes while they are read; a term change ends the stream
//! with an error.
//!
//! The sender waits on the timeline's watch channel (never a polling sleep), sends
//! XLogData of at most MAX_SEND_SIZE that never cross a segment boundary, and a keepalive
//! asking for a reply after a second without WAL. A separate task reads the client's
//! `r`/`h`/`z` replies into the timeline's feedback table. A slow client only slows its
//! own stream: it holds one chunk and the socket buffers, and reads from disk at its pace.

use std::sync::Arc;
use std::time::Duration;

use pq_proto::backend::{BeMessage, CopyResponse};
use pq_proto::frontend::FeMessage;
use pq_proto::proposer::HotStandbyFeedback;
use pq_proto::replication::{
    MAX_SEND_SIZE, PrimaryKeepalive, ReplicationClientMessage, ReplicationServerMessage,
    pg_timestamp_now, write_xlog_data_frame,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utils::{Lsn, Term};

use crate::command::StartReplication;
use crate::errors::ClientError;
use crate::feedback::Feedback;
use crate::handler::{Conn, ConnReader, ConnWriter, ServerCtx, Session};
use crate::timeline::Timeline;
use crate::wal_reader::WalReader;

/// How long a stream may be idle before a keepalive asks for a reply.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How a stream ended without an error.
enum End {
    /// Cleanly: the stop LSN was reached or the client sent CopyDone; the connection
    /// goes on with the returned reader half.
    Done(ConnReader),
    /// The client went away.
    Closed,
}

/// What the reply reader task returns.
type ReplyTask = JoinHandle<Result<Option<ConnReader>, ClientError>>;

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
    let app = session.app_name.as_str();
    tracing::info!(%ttid, app, start = %args.start, term = ?args.term, "replication stream started");

    let (reader, mut writer) = conn.split();
    let guard = tl.feedback.register(app);
    let mut replies: ReplyTask = tokio::spawn(read_replies(reader, tl.clone(), guard.id));
    let result = stream(&mut writer, &tl, ctx, &args, guard.id, &mut replies).await;
    drop(guard);
    match result {
        Ok(End::Done(reader)) => {
            let mut conn = reader.unsplit(writer);
            conn.write_be(&BeMessage::CommandComplete("START_REPLICATION".into()));
            tracing::info!(%ttid, app, "replication stream ended");
            Ok(Some(conn))
        }
        Ok(End::Closed) => {
            replies.abort();
            tracing::info!(%ttid, app, "replication client disconnected");
            Ok(None)
        }
        Err(e) => {
            replies.abort();
            tracing::info!(%ttid, app, "replication stream ended: {e}");
            writer.write_be(&BeMessage::ErrorResponse(e.to_fields()));
            let _ = writer.flush().await;
            Ok(None)
        }
    }
}

/// Checks made before the stream starts (their errors leave the connection usable).
fn prepare(
    ctx: &ServerCtx,
    session: &Session,
    args: &StartReplication,
) -> Result<Arc<Timeline>, ClientError> {
    let tl = ctx.timelines.get(&session.timeline(ctx)?)?;
    if let Some(n) = args.timeline {
        if n != 1 {
            return Err(ClientError::WalUnavailable(format!(
                "requested starting point {} on timeline {n} is not in this server's history: only timeline 1 exists",
                args.start
            )));
        }
    }
    if let (Some(stop), true) = (args.stop, args.start.is_valid()) {
        if stop < args.start {
            return Err(ClientError::WalUnavailable(format!(
                "stop point {stop} is before the starting point {}",
                args.start
            )));
        }
    }
    check_start(&tl, args.start)?;
    Ok(tl)
}

/// A start below the timeline's first segment cannot be served.
fn check_start(tl: &Timeline, start: Lsn) -> Result<(), ClientError> {
    let state = tl.state();
    let first = state.timeline_start_lsn;
    if start.is_valid() && first.is_valid() {
        let seg_start = first.segment_lsn(state.server.wal_seg_size);
        if start < seg_start {
            return Err(ClientError::WalUnavailable(format!(
                "requested starting point {start} is before the start of this timeline's WAL: \
                 WAL is available from {seg_start} (the timeline starts at {first})"
            )));
        }
    }
    Ok(())
}

/// The end of WAL this stream may send, or the term-change error.
fn end_pos(tl: &Timeline, term: Option<Term>) -> Result<Lsn, ClientError> {
    match term {
        None => Ok(tl.commit_lsn()),
        Some(t) => {
            let fs = tl.flush_state();
            if fs.term != t {
                return Err(ClientError::TermChanged {
                    requested: t.0,
                    now: fs.term.0,
                });
            }
            Ok(fs.flush_lsn)
        }
    }
}

/// What woke the sender while it had nothing to send.
enum Wake {
    /// New WAL (or a term change) may be there.
    Changed,
    /// A second without WAL.
    Idle,
    /// The reply task ended: the client sent CopyDone or went away.
    ClientEnded(Option<ConnReader>),
}

async fn wait(
    tl: &Timeline,
    term: Option<Term>,
    commit_rx: &mut watch::Receiver<Lsn>,
    flush_rx: &mut watch::Receiver<crate::timeline::FlushState>,
    ctx: &ServerCtx,
    replies: &mut ReplyTask,
) -> Result<Wake, ClientError> {
    let _ = tl;
    let changed = async {
        let r = match term {
            None => commit_rx.changed().await,
            Some(_) => flush_rx.changed().await,
        };
        if r.is_err() {
            // The timeline was dropped (reloaded); nothing more will come on this one.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => Err(ClientError::Shutdown),
        r = replies => match r {
            Ok(Ok(reader)) => Ok(Wake::ClientEnded(reader)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Wake::ClientEnded(None)),
        },
        _ = changed => Ok(Wake::Changed),
        _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => Ok(Wake::Idle),
    }
}

async fn stream(
    w: &mut ConnWriter,
    tl: &Arc<Timeline>,
    ctx: &ServerCtx,
    args: &StartReplication,
    reader_id: u64,
    replies: &mut ReplyTask,
) -> Result<End, ClientError> {
    let term = args.term;
    let mut commit_rx = tl.subscribe_commit();
    let mut flush_rx = tl.subscribe_flush();
    let seg_size = tl.state().server.wal_seg_size;
    let mut reader = Some(WalReader::new(tl.dir().to_path_buf(), seg_size));
    let mut pos = args.start;
    let mut started = false;
    loop {
        commit_rx.borrow_and_update();
        flush_rx.borrow_and_update();
        let end = end_pos(tl, term)?;
        if !started && end.is_valid() {
            // WAL exists: resolve `0/0` to the current end and check the start again
            // (the timeline may have had no WAL when the stream was requested).
            if !pos.is_valid() {
                pos = end;
            }
            check_start(tl, pos)?;
            started = true;
        }
        if let Some(stop) = args.stop.filter(|&s| started && pos >= s) {
            tracing::debug!("stop point {stop} reached");
            return finish(w, replies).await;
        }
        let limit = args.stop.map_or(end, |s| s.min(end));
        if started && pos < limit {
            let n = chunk_len(pos, limit);
            let r = reader.take().expect("reader is put back after every read");
            let tl2 = tl.clone();
            let (r, res) = tokio::task::spawn_blocking(move || {
                let mut r = r;
                let res = read_chunk(&mut r, &tl2, term, pos, n);
                (r, res)
            })
            .await
            .map_err(|e| ClientError::Unexpected(format!("reader task failed: {e}")))?;
            reader = Some(r);
            let data = res?;
            write_xlog_data_frame(w.write_buf(), pos, end, pg_timestamp_now(), &data);
            w.flush().await?;
            pos = Lsn(pos.0 + data.len() as u64);
            tl.feedback.update(reader_id, |f| f.sent_lsn = pos);
            continue;
        }
        match wait(tl, term, &mut commit_rx, &mut flush_rx, ctx, replies).await? {
            Wake::Changed => {}
            Wake::Idle => {
                ReplicationServerMessage::Keepalive(PrimaryKeepalive {
                    wal_end: end,
                    send_time: pg_timestamp_now(),
                    reply_requested: true,
                })
                .encode_frame(w.write_buf());
                w.flush().await?;
            }
            Wake::ClientEnded(Some(reader)) => {
                // The client's CopyDone: answer with ours and end cleanly.
                w.write_be(&BeMessage::CopyDone);
                return Ok(End::Done(reader));
            }
            Wake::ClientEnded(None) => return Ok(End::Closed),
        }
    }
}

/// Bytes to send from `pos` towards `limit`: at most MAX_SEND_SIZE, ending on a page
/// boundary unless it reaches `limit` (fewer, larger reads for the client).
fn chunk_len(pos: Lsn, limit: Lsn) -> usize {
    let avail = limit.0 - pos.0;
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

/// Reads one chunk (not crossing a segment). In term mode under the timeline lock, after
/// checking the term, so that no truncation can change the bytes being read.
fn read_chunk(
    r: &mut WalReader,
    tl: &Timeline,
    term: Option<Term>,
    pos: Lsn,
    n: usize,
) -> Result<Vec<u8>, ClientError> {
    let read = |r: &mut WalReader| {
        r.read(pos, n)
            .map(|b| b.to_vec())
            .map_err(|source| ClientError::ReadWal {
                ttid: tl.ttid,
                source,
            })
    };
    match term {
        None => read(r),
        Some(t) => tl.with_term(t, || read(r)).unwrap_or_else(|| {
            Err(ClientError::TermChanged {
                requested: t.0,
                now: tl.flush_state().term.0,
            })
        }),
    }
}

/// Ends the stream at the stop point: CopyDone, then wait (bounded) for the client's.
async fn finish(w: &mut ConnWriter, replies: &mut ReplyTask) -> Result<End, ClientError> {
    w.write_be(&BeMessage::CopyDone);
    w.flush().await?;
    match tokio::time::timeout(Duration::from_secs(30), replies).await {
        Ok(Ok(Ok(Some(reader)))) => Ok(End::Done(reader)),
        Ok(Ok(Err(e))) => Err(e),
        _ => Ok(End::Closed),
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
