//! The donor's side of `pull_timeline`: a consistent snapshot of one timeline, streamed
//! in the [`super::format`] layout (the body of `GET .../snapshot`).
//!
//! Consistency: the state sent is the published status at the start (what a restart
//! would find, positions included); the WAL sent is `[wal_start, flush_lsn)` of that
//! status, read chunk by chunk with truncations held off and the term checked
//! ([`Timeline::read_in_term`]). A new election meanwhile may cut or replace those bytes,
//! so the snapshot then fails (the body ends without its trailer) and the puller retries.
//! `wal_start` is the segment of the first WAL this safekeeper holds, or, when offload
//! removed segments, the first segment still on its disk (older WAL is in the archive,
//! for the puller as for the donor).
//!
//! Owns: the snapshot's production, a task of the timeline (its shutdown ends it).
//! Must never: send WAL above the status's flush_lsn, or a trailer after a failed read.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use utils::{Lsn, SegNo};

use super::format::{Header, trailer};
use crate::state::TimelineState;
use crate::timeline::{Timeline, TimelineStatus};
use crate::wal_reader::WalReader;
use crate::wal_storage::open_segment_for_read;

/// The largest chunk read and sent at once.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the reader and the socket.
const QUEUE: usize = 4;

/// The state a snapshot carries: the control file a restart would read, from the
/// published status (its lazily persisted positions as the timeline has them now).
pub fn state_of(tl: &Timeline, st: &TimelineStatus) -> TimelineState {
    TimelineState {
        ttid: tl.ttid,
        mconf: (*st.mconf).clone(),
        term: st.term,
        term_history: (*st.term_history).clone(),
        server: st.server,
        timeline_start_lsn: st.timeline_start_lsn,
        local_start_lsn: st.local_start_lsn,
        commit_lsn: st.commit_lsn,
        backup_lsn: st.backup_lsn,
        peer_horizon_lsn: st.peer_horizon_lsn,
        remote_consistent_lsn: st.remote_consistent_lsn,
        // The WAL the snapshot sends ends there; the puller writes its own watermark.
        durable_flush_lsn: st.flush_lsn,
    }
}

/// Starts streaming a snapshot of `tl` as a task of the timeline; the receiver yields
/// the body's chunks, and an error (after which nothing follows) if it fails.
pub fn start(tl: &Arc<Timeline>) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let tl2 = tl.clone();
    tl.spawn(None, async move {
        let cancel = tl2.cancelled().clone();
        let fail = tx.clone();
        tokio::select! {
            r = produce(&tl2, &tx) => if let Err(e) = r {
                tracing::warn!(ttid = %tl2.ttid, "snapshot failed: {e}");
                let _ = fail.send(Err(e)).await;
            },
            () = cancel.cancelled() => {
                let _ = fail.try_send(Err(io::Error::other("the timeline is shutting down")));
            }
        }
    });
    rx
}

async fn produce(tl: &Arc<Timeline>, tx: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let st = tl.status();
    if st.broken {
        return Err(io::Error::other("the timeline is being reloaded"));
    }
    let seg = st.server.wal_seg_size;
    let state = state_of(tl, &st);
    // The restart path finds WAL from the persisted commit_lsn; without one there is no
    // WAL a restart would keep, so none is sent.
    let (wal_start, flush) = match st.first_servable_lsn() {
        Some(first) if st.flush_lsn.is_valid() && st.commit_lsn.is_valid() => {
            let dir = tl.dir().to_path_buf();
            let (from, to) = (first.segment_number(seg), st.commit_lsn.segment_number(seg));
            let found = tl
                .read_pool()
                .run(move || first_local_segment(&dir, from, to, seg))
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
            (Lsn(found * u64::from(seg)), st.flush_lsn)
        }
        _ => (Lsn::INVALID, Lsn::INVALID),
    };
    let header = Header {
        state,
        wal_start,
        flush_lsn: flush,
    };
    header
        .check()
        .map_err(|e| io::Error::other(e.to_string()))?;
    send(tx, Bytes::from(header.encode())).await?;
    let mut crc = 0u32;
    let mut pos = wal_start;
    let mut reader = Some(WalReader::new(tl.dir().to_path_buf(), seg));
    while pos < flush {
        let max = CHUNK.min((flush.0 - pos.0) as usize);
        let (tl2, mut r) = (tl.clone(), reader.take().expect("put back below"));
        let term = st.term;
        let (r, read) = tl
            .read_pool()
            .run(move || {
                let got =
                    tl2.read_in_term(term, flush, || r.read(pos, max).map(Bytes::copy_from_slice));
                (r, got)
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        reader = Some(r);
        let chunk = read.ok_or_else(|| {
            io::Error::other(format!(
                "the term moved on from {term} or the WAL was cut below {flush} while it was sent"
            ))
        })??;
        crc = crc32c::crc32c_append(crc, &chunk);
        pos = Lsn(pos.0 + chunk.len() as u64);
        send(tx, chunk).await?;
    }
    send(tx, Bytes::copy_from_slice(&trailer(crc))).await
}

async fn send(tx: &mpsc::Sender<io::Result<Bytes>>, b: Bytes) -> io::Result<()> {
    tx.send(Ok(b))
        .await
        .map_err(|_| io::Error::other("the puller went away"))
}

/// The first segment in `[from, to]` present in `dir` (offload may have removed older
/// ones; `to`, holding commit_lsn, is never removed).
fn first_local_segment(
    dir: &std::path::Path,
    from: SegNo,
    to: SegNo,
    seg: u32,
) -> io::Result<SegNo> {
    let mut s = from;
    while s < to {
        if open_segment_for_read(dir, s, seg)?.is_some() {
            return Ok(s);
        }
        s += 1;
    }
    Ok(to)
}
