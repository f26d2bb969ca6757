//! `START_WAL_PUSH`: a proposer streams its messages into a timeline.
//!
//! Three parts linked by bounded channels:
//! * the network reader (this task) decodes CopyData into proposer messages and queues
//!   them (256 deep: backpressure to the socket when the disk is slower);
//! * the acceptor loop, on a blocking thread, steps the timeline for each message,
//!   performing writes as they come, and answers owed AppendResponses with one fdatasync
//!   once the queue is empty or a segment has filled (group commit, no timer);
//! * the writer task encodes replies and flushes the socket when it has no more queued.
//!
//! Must never: answer before the effects of a step are done (the timeline guarantees it),
//! or leave written WAL unflushed when the proposer goes away.

use std::sync::Arc;

use pq_proto::backend::{BeMessage, CopyResponse};
use pq_proto::framed::ConnectionError;
use pq_proto::frontend::FeMessage;
use pq_proto::proposer::{AcceptorMessage, ProposerMessage, ProtocolVersion};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utils::{TenantTimelineId, xlog};

use crate::acceptor::AcceptorError;
use crate::errors::ClientError;
use crate::handler::{Conn, ConnWriter, ServerCtx, Session, send_error};
use crate::state::ServerInfo;
use crate::timeline::{Step, Timeline};

/// Depth of the queue between the network reader and the acceptor.
const INPUT_QUEUE: usize = 256;
/// Depth of the queue between the acceptor and the socket writer.
const REPLY_QUEUE: usize = 16;

enum Outgoing {
    Msg(AcceptorMessage),
    Error(ClientError),
}

/// Runs the stream until the proposer leaves, an error, or shutdown. The connection is
/// closed afterwards.
pub async fn run(
    mut conn: Conn,
    ctx: &ServerCtx,
    session: &Session,
    version: ProtocolVersion,
    allow_timeline_creation: bool,
) -> Result<(), ClientError> {
    conn.write_be(&BeMessage::CopyBothResponse(CopyResponse {
        format: 0,
        column_formats: vec![],
    }));
    conn.flush().await?;

    // A proposer that never greets must not hold up a graceful shutdown.
    let first = tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            send_error(&mut conn, &ClientError::Shutdown).await;
            return Ok(());
        }
        m = read_proposer_message(&mut conn, version) => m,
    };
    let first = match first {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            send_error(&mut conn, &e).await;
            return Err(e);
        }
    };
    let timeline = match open_timeline(ctx, session, &first, allow_timeline_creation) {
        Ok(tl) => tl,
        Err(e) => {
            tracing::warn!("START_WAL_PUSH refused: {e}");
            send_error(&mut conn, &e).await;
            return Err(e);
        }
    };
    let ttid = timeline.ttid;
    tracing::info!(%ttid, ?version, app = %session.app_name, "proposer connected");

    let (mut reader, writer) = conn.split();
    let (in_tx, in_rx) = mpsc::channel::<ProposerMessage>(INPUT_QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(REPLY_QUEUE);
    // Cancelled by the writer once it has sent an ErrorResponse: the stream is over even
    // if the client does not close its end.
    let done = CancellationToken::new();
    let writer_task = tokio::spawn(write_replies(writer, out_rx, version, done.clone()));
    let acceptor_task = {
        let tl = timeline.clone();
        let out_tx = out_tx.clone();
        tokio::task::spawn_blocking(move || acceptor_loop(&tl, in_rx, out_tx))
    };

    let mut result = Ok(());
    if in_tx.send(first).await.is_ok() {
        loop {
            let msg = tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    let _ = out_tx.send(Outgoing::Error(ClientError::Shutdown)).await;
                    break;
                }
                _ = done.cancelled() => break,
                m = reader.read_fe_message() => m,
            };
            let payload = match msg {
                Ok(Some(FeMessage::CopyData(p))) => p,
                Ok(Some(FeMessage::CopyDone | FeMessage::CopyFail(_) | FeMessage::Terminate))
                | Ok(None) => break,
                Ok(Some(_)) => {
                    let e = ClientError::Unexpected(
                        "only CopyData is expected in a WAL push stream".into(),
                    );
                    let _ = out_tx.send(Outgoing::Error(e)).await;
                    break;
                }
                // Bytes that are not the protocol (a 2 GiB length, an unknown tag): the
                // stream ends with one ErrorResponse, like any other broken stream. An I/O
                // error leaves nobody to tell.
                Err(ConnectionError::Protocol(e)) => {
                    tracing::warn!(%ttid, "protocol violation in WAL push stream: {e}");
                    let _ = out_tx.send(Outgoing::Error(ClientError::Protocol(e))).await;
                    break;
                }
                Err(e) => {
                    result = Err(ClientError::from(e));
                    break;
                }
            };
            match ProposerMessage::decode(payload, version) {
                Ok(m) => {
                    if in_tx.send(m).await.is_err() {
                        break; // the acceptor loop ended (error already reported)
                    }
                }
                Err(e) => {
                    let _ = out_tx.send(Outgoing::Error(ClientError::Protocol(e))).await;
                    break;
                }
            }
        }
    }
    drop(in_tx);
    drop(out_tx);
    // The acceptor loop flushes what was written and persists lazily kept state.
    let _ = acceptor_task.await;
    let _ = writer_task.await;
    tracing::info!(%ttid, "proposer disconnected");
    result
}

async fn read_proposer_message(
    conn: &mut Conn,
    version: ProtocolVersion,
) -> Result<Option<ProposerMessage>, ClientError> {
    match conn.read_fe_message().await? {
        Some(FeMessage::CopyData(p)) => Ok(Some(ProposerMessage::decode(p, version)?)),
        Some(FeMessage::CopyDone | FeMessage::Terminate) | None => Ok(None),
        Some(_) => Err(ClientError::Unexpected(
            "only CopyData is expected in a WAL push stream".into(),
        )),
    }
}

fn open_timeline(
    ctx: &ServerCtx,
    session: &Session,
    first: &ProposerMessage,
    allow_creation: bool,
) -> Result<Arc<Timeline>, ClientError> {
    let ProposerMessage::Greeting(g) = first else {
        return Err(ClientError::Unexpected(
            "the first message of a WAL push stream must be the proposer greeting".into(),
        ));
    };
    let ttid = TenantTimelineId::new(g.tenant_id, g.timeline_id);
    if let Some(named) = session.ttid
        && named != ttid
    {
        return Err(AcceptorError::TimelineMismatch {
            expected: named,
            got: ttid,
        }
        .into_client());
    }
    if !allow_creation {
        return Ok(ctx.timelines.get(&ttid)?);
    }
    let seg = g.wal_seg_size;
    if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
        return Err(AcceptorError::InvalidSegSize(seg).into_client());
    }
    if g.pg_version != 0 && !xlog::is_supported_pg_version(g.pg_version) {
        return Err(AcceptorError::UnsupportedPgVersion(g.pg_version).into_client());
    }
    Ok(ctx.timelines.get_or_create(
        ttid,
        ServerInfo {
            pg_version: g.pg_version,
            system_id: g.system_id,
            wal_seg_size: seg,
        },
    )?)
}

impl AcceptorError {
    fn into_client(self) -> ClientError {
        ClientError::Timeline(self.into())
    }
}

/// The acceptor side, on a blocking thread: step, write, and flush when the queue is
/// empty or a segment completed.
fn acceptor_loop(
    tl: &Timeline,
    mut input: mpsc::Receiver<ProposerMessage>,
    out: mpsc::Sender<Outgoing>,
) {
    let _compute = tl.compute_guard();
    let mut owed = false;
    let send = |o: Outgoing| out.blocking_send(o).is_ok();
    loop {
        let msg = match input.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                if owed {
                    owed = false;
                    if !flush_and_answer(tl, &out) {
                        break;
                    }
                    continue;
                }
                match input.blocking_recv() {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match tl.process(msg) {
            Ok(Step::Reply(m)) => {
                if !send(Outgoing::Msg(m)) {
                    break;
                }
            }
            Ok(Step::Nothing) => {}
            Ok(Step::FlushDue { segment_completed }) => {
                owed = true;
                if segment_completed {
                    // The segment is durable already: answer now rather than after the
                    // queue drains, so commits waiting on it are released.
                    owed = false;
                    if !flush_and_answer(tl, &out) {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(ttid = %tl.ttid, "proposer message refused: {e}");
                send(Outgoing::Error(e.into()));
                break;
            }
        }
    }
    // Whatever was written must not stay in the page cache only: the next VoteResponse
    // reports flush_lsn, and it must not exceed what is durable.
    if let Err(e) = tl.checkpoint() {
        tracing::error!(ttid = %tl.ttid, "checkpoint at disconnect failed: {e}");
    }
}

/// Flushes and sends the owed AppendResponse; false if the stream must end.
fn flush_and_answer(tl: &Timeline, out: &mpsc::Sender<Outgoing>) -> bool {
    match tl.flush() {
        Ok(m) => out.blocking_send(Outgoing::Msg(m)).is_ok(),
        Err(e) => {
            let _ = out.blocking_send(Outgoing::Error(e.into()));
            false
        }
    }
}

async fn write_replies(
    mut w: ConnWriter,
    mut rx: mpsc::Receiver<Outgoing>,
    version: ProtocolVersion,
    done: CancellationToken,
) {
    let _stop_reader = done.drop_guard();
    while let Some(o) = rx.recv().await {
        match o {
            Outgoing::Msg(m) => {
                pq_proto::proposer::write_acceptor_frame(&m, version, w.write_buf());
                if rx.is_empty() && w.flush().await.is_err() {
                    return;
                }
            }
            Outgoing::Error(e) => {
                w.write_be(&BeMessage::ErrorResponse(e.to_fields()));
                let _ = w.flush().await;
                return;
            }
        }
    }
    let _ = w.flush().await;
}
