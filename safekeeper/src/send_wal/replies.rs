//! The client's side of a replication stream: its replies (`r` positions, `h` hot-standby
//! feedback, `z` pageserver feedback) read into the timeline's feedback table until it
//! sends CopyDone or goes away. A pageserver's `remote_consistent_lsn` also goes to the
//! timeline's ingest loop as progress (it bounds WAL removal).
//!
//! Owns: [`read`]. Must never: let a malformed reply end the stream (it is ignored), or
//! block on the ingest loop.

use std::sync::Arc;

use pq_proto::frontend::FeMessage;
use pq_proto::proposer::HotStandbyFeedback;
use pq_proto::replication::ReplicationClientMessage;

use crate::acceptor::Progress;
use crate::errors::ClientError;
use crate::session::ConnReader;
use crate::timeline::{Input, Timeline};

/// Reads the client's replies until its CopyDone (returns the reader half) or EOF.
pub(super) async fn read(
    mut reader: ConnReader,
    tl: Arc<Timeline>,
    reader_id: u64,
) -> Result<Option<ConnReader>, ClientError> {
    loop {
        match reader.read_fe_message().await {
            Ok(Some(FeMessage::CopyData(payload))) => {
                match ReplicationClientMessage::decode(payload) {
                    Ok(m) => apply(&tl, reader_id, m),
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

fn apply(tl: &Arc<Timeline>, id: u64, m: ReplicationClientMessage) {
    let fb = &tl.feedback;
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
        ReplicationClientMessage::PageserverFeedback(p) => {
            let remote = p.remote_consistent_lsn;
            if fb.set_pageserver(p) {
                // Refused only while the timeline shuts down, when it no longer matters.
                let _ = tl.submit(Input::Progress(Progress::RemoteConsistent(remote)));
            }
        }
    }
}
