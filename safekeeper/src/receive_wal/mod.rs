//! `START_WAL_PUSH`: a proposer streams its messages into a timeline.
//!
//! The connection's task reads and decodes CopyData into proposer messages and hands each
//! to the timeline's ingest loop ([`crate::timeline`]), which steps, writes, group-commits
//! and answers through this connection's [`ReplySink`] from its own pool thread. No thread
//! is held per connection: a thousand proposers cost a thousand small tasks. Backpressure:
//! a connection may have [`INPUT_BUDGET`] bytes of messages queued in the ingest loop; past
//! that it stops reading its socket until the loop catches up.
//!
//! Must never: answer before the effects of a step are done (the ingest loop guarantees
//! it), or close the connection before what it wrote is flushed (the disconnect is
//! processed by the ingest loop before the task returns).

mod sink;

use std::sync::Arc;
use std::time::Duration;

use pq_proto::backend::{BeMessage, CopyResponse};
use pq_proto::framed::{ConnectionError, FramedReader, Stream, StreamReadHalf};
use pq_proto::frontend::FeMessage;
use pq_proto::proposer::{ProposerMessage, ProtocolVersion};
use tokio::sync::{Semaphore, oneshot};
use utils::{TenantTimelineId, xlog};

pub use sink::ReplySink;

use crate::acceptor::AcceptorError;
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::session::{Conn, Session, send_error};
use crate::state::ServerInfo;
use crate::timeline::{ComputeGuard, Input, Timeline};

/// Bytes of a connection's messages that may wait in the ingest loop's inbox.
pub const INPUT_BUDGET: usize = 8 << 20;

/// How long the last words of a stream (its ErrorResponse) may take to go out.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
    // CopyData of a WAL push (AppendRequests of up to 128 KiB of WAL, and ProposerElected,
    // whose term history grows with every election) may be larger than a command.
    conn.set_max_message_len(pq_proto::DEFAULT_MAX_MESSAGE_LEN);

    // A proposer that never greets must not hold up a graceful shutdown.
    let first = tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            send_error(&mut conn, &ctx.metrics, &ClientError::Shutdown).await;
            return Ok(());
        }
        m = read_proposer_message(&mut conn, version) => m,
    };
    let first = match first {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            send_error(&mut conn, &ctx.metrics, &e).await;
            return Err(e);
        }
    };
    let tl = match open_timeline(ctx, session, &first, allow_timeline_creation).await {
        Ok(tl) => tl,
        Err(e) => {
            tracing::warn!("START_WAL_PUSH refused: {e}");
            send_error(&mut conn, &ctx.metrics, &e).await;
            return Err(e);
        }
    };
    let ttid = tl.ttid;
    tracing::info!(%ttid, ?version, app = %session.app_name, "proposer connected");
    // Counted by the timeline until the stream is over: its shutdown waits for us.
    let _stream = tl.stream_token();
    let id = tl.new_conn_id();
    let mut compute = tl.compute_guard(id, &session.app_name);
    ctx.metrics.proposer_connections.inc();
    let (reader, writer) = conn.split_with(Stream::into_split);
    let (half, pending) = writer.into_inner();
    let sink = Arc::new(ReplySink::new(half, pending, version, ctx.metrics.clone()));
    let result = match tl.submit(Input::Connect {
        conn: id,
        reply_to: sink.clone(),
    }) {
        Ok(()) => stream(ctx, &tl, &mut compute, reader, &sink, version, first).await,
        Err(e) => {
            sink.end_with(&e.into());
            Ok(())
        }
    };
    // The ingest loop makes what this connection wrote durable before we close.
    let (tx, rx) = oneshot::channel();
    if tl
        .submit(Input::Disconnect {
            conn: id,
            done: Some(tx),
        })
        .is_ok()
    {
        let _ = rx.await;
    }
    let _ = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, sink.drain()).await;
    ctx.metrics.proposer_connections.dec();
    tracing::info!(%ttid, "proposer disconnected");
    result
}

/// The reading side: messages into the ingest loop until the stream ends.
async fn stream(
    ctx: &ServerCtx,
    tl: &Arc<Timeline>,
    compute: &mut ComputeGuard,
    mut reader: FramedReader<StreamReadHalf>,
    sink: &ReplySink,
    version: ProtocolVersion,
    first: ProposerMessage,
) -> Result<(), ClientError> {
    let id = compute.conn();
    let budget = Arc::new(Semaphore::new(INPUT_BUDGET >> 10));
    let mut next = Some(first);
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => {
                // All branches are cancel-safe: a cancellation token, a stored Notify
                // permit, and a framed read (bytes stay buffered).
                let read = tokio::select! {
                    _ = tl.cancelled().cancelled() => {
                        sink.end_with(&ClientError::stream_end(&ctx.shutdown, tl));
                        return Ok(());
                    }
                    _ = sink.woken() => {
                        // A client that does not read must not keep its timeline from
                        // shutting down.
                        let drained = tokio::select! {
                            r = sink.drain() => r,
                            _ = tl.cancelled().cancelled() => return Ok(()),
                        };
                        match drained {
                            Ok(false) => continue,
                            // Ended (refused, or its timeline failed) or gone.
                            Ok(true) | Err(_) => return Ok(()),
                        }
                    }
                    m = reader.read_fe_message() => m,
                };
                match read {
                    Ok(Some(FeMessage::CopyData(p))) => match ProposerMessage::decode(p, version) {
                        Ok(m) => m,
                        Err(e) => {
                            sink.end_with(&ClientError::Protocol(e));
                            return Ok(());
                        }
                    },
                    Ok(Some(
                        FeMessage::CopyDone | FeMessage::CopyFail(_) | FeMessage::Terminate,
                    ))
                    | Ok(None) => return Ok(()),
                    Ok(Some(_)) => {
                        sink.end_with(&ClientError::Unexpected(
                            "only CopyData is expected in a WAL push stream".into(),
                        ));
                        return Ok(());
                    }
                    // Bytes that are not the protocol (a 2 GiB length, an unknown tag):
                    // the stream ends with one ErrorResponse, like any other broken
                    // stream. An I/O error leaves nobody to tell.
                    Err(ConnectionError::Protocol(e)) => {
                        tracing::warn!(ttid = %tl.ttid, "protocol violation in WAL push stream: {e}");
                        sink.end_with(&ClientError::Protocol(e));
                        return Ok(());
                    }
                    Err(e) => return Err(ClientError::from(e)),
                }
            }
        };
        compute.observe(&msg);
        let len = message_len(&msg);
        ctx.metrics.wal_received_bytes.inc_by(len as u64);
        let cost = (len >> 10).clamp(1, INPUT_BUDGET >> 10) as u32;
        let permit = tokio::select! {
            _ = tl.cancelled().cancelled() => {
                sink.end_with(&ClientError::stream_end(&ctx.shutdown, tl));
                return Ok(());
            }
            p = budget.clone().acquire_many_owned(cost) => p.expect("the budget is never closed"),
        };
        if let Err(e) = tl.submit(Input::Propose {
            conn: id,
            msg,
            permit: Some(permit),
        }) {
            sink.end_with(&e.into());
            return Ok(());
        }
    }
}

/// Bytes a message holds in memory while it waits (its WAL).
fn message_len(m: &ProposerMessage) -> usize {
    match m {
        ProposerMessage::AppendRequest(a) => a.wal_data.len(),
        _ => 0,
    }
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

async fn open_timeline(
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
    // Before anything touches the timeline (a vote for a huge term would wedge it).
    session.check_access(&ttid)?;
    tracing::info!(
        %ttid,
        pg_version = g.pg_version,
        system_id = g.system_id,
        generation = g.mconf.generation.0,
        app = %session.app_name,
        "proposer greeting"
    );
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
        return Ok(ctx.timelines.get(&ttid).await?);
    }
    let seg = g.wal_seg_size;
    if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
        return Err(AcceptorError::InvalidSegSize(seg).into_client());
    }
    if g.pg_version != 0 && !xlog::is_supported_pg_version(g.pg_version) {
        return Err(AcceptorError::UnsupportedPgVersion(g.pg_version).into_client());
    }
    Ok(ctx
        .timelines
        .get_or_create(
            ttid,
            ServerInfo {
                pg_version: g.pg_version,
                system_id: g.system_id,
                wal_seg_size: seg,
            },
        )
        .await?)
}

impl AcceptorError {
    fn into_client(self) -> ClientError {
        ClientError::Timeline(self.into())
    }
}
