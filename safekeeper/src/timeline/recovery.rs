//! Peer recovery: a member whose WAL is behind a peer's in the same term, with no proposer
//! sending it WAL, reads the missing WAL from that peer in term mode (`START_REPLICATION …
//! (term='N')` through `pq_client`) and feeds it through the timeline's inbox as
//! AppendRequests of that term: the acceptor validates them exactly as a proposer's (same
//! generation, the current term only, no gap, CRC-checked records) and group commit makes
//! them durable the same way.
//!
//! "No proposer sending it WAL" ([`Timeline::proposer_streaming`]): none is connected, or
//! those connected have sent no WAL for a whole peer-status interval — a proposer still
//! voting or never elected (no quorum), or one that does not send what we lack. Such a
//! proposer may later send WAL we took from the peer meanwhile: the acceptor skips bytes
//! it already holds (one proposer per term: they are the same bytes).
//!
//! When (see [`choose_donor`]): our term equals our last log term `T` (we hold WAL of the
//! proposer elected in `T` and promised no later one), and a peer's term and last log term
//! are `T` too, with its flush_lsn above ours. Only one proposer is ever elected in a term,
//! and it sends every acceptor the same history and the same WAL, so the peer's bytes of
//! term `T` above our flush_lsn are the ones that proposer would have sent us. A peer that
//! voted in a later term is not used: its WAL may be cut by that term's election.
//!
//! Stops as soon as a proposer sends WAL ([`super::ComputeGuard::observe`] cancels it), when
//! the donor's term changes (its stream ends), when our term moves on (a vote or an
//! election: the acceptor answers with a higher term), or when the timeline shuts down (it
//! is one of its tasks).
//!
//! Owns: the choice of donor, the recovery task and its pseudo-connection. Must never:
//! write WAL except through the inbox, take WAL of another term than ours, or start while a
//! proposer streams WAL to the timeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pq_client::{Conninfo, PgError, WalStream};
use pq_proto::proposer::{
    AcceptorMessage, AppendRequest, AppendRequestHeader, ProposerMessage, SafekeeperId,
};
use pq_proto::replication::MAX_SEND_SIZE;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use utils::{Lsn, NodeId, Term};

use super::{Input, PeerPosition, ReplyTo, Timeline, TimelineError, TimelineStatus};

/// The `application_name` of recovery streams.
pub const RECOVERY_APP: &str = "safekeeper_recovery";

/// How long connecting to the donor and each of its messages may take.
const DONOR_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL queued in the inbox by one recovery at most (KiB permits), as a proposer
/// connection's budget: the inbox never holds more than this of recovered WAL.
const BUDGET_KIB: usize = 8 << 10;

/// Where to recover from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Donor {
    /// The peer.
    pub id: NodeId,
    /// Its `host:port` (PostgreSQL protocol).
    pub addr: String,
    /// The term both hold WAL of (and vote in).
    pub term: Term,
    /// Our flush_lsn: where the missing WAL starts (or, when bytes of an incomplete
    /// record follow it, where they end: the recovery starts at our end of written WAL).
    pub from: Lsn,
    /// The donor's flush_lsn: where it ends.
    pub to: Lsn,
    /// The donor's commit_lsn (WAL below it is committed).
    pub commit_lsn: Lsn,
}

/// What [`choose_donor`] needs of our own status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    /// Our term.
    pub term: Term,
    /// The term of our last WAL.
    pub last_log_term: Term,
    /// Our end of WAL.
    pub flush_lsn: Lsn,
}

impl From<&TimelineStatus> for Local {
    fn from(st: &TimelineStatus) -> Self {
        Local {
            term: st.term,
            last_log_term: st.last_log_term,
            flush_lsn: st.flush_lsn,
        }
    }
}

/// The peer to recover from, if any: see the module documentation. Among several, the one
/// with the most WAL (then the lowest id). Pure: `st` is our status, `members` the
/// configuration's members, `answered` what the peers said.
pub fn choose_donor(
    st: Local,
    members: &[SafekeeperId],
    answered: &[PeerPosition],
) -> Option<Donor> {
    let t = st.term;
    if t == Term(0) || st.last_log_term != t || !st.flush_lsn.is_valid() {
        return None;
    }
    let best = answered
        .iter()
        .filter(|p| p.term == t && p.last_log_term == t && p.flush_lsn > st.flush_lsn)
        .min_by_key(|p| (std::cmp::Reverse(p.flush_lsn), p.id))?;
    let m = members.iter().find(|m| m.id == best.id)?;
    Some(Donor {
        id: best.id,
        addr: format!("{}:{}", m.host, m.pg_port),
        term: t,
        from: st.flush_lsn,
        to: best.flush_lsn,
        commit_lsn: best.commit_lsn,
    })
}

/// Why a recovery ended.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The donor could not be read.
    #[error("donor: {0}")]
    Donor(#[from] PgError),
    /// The donor took too long.
    #[error("donor sent nothing in {DONOR_TIMEOUT:?}")]
    Timeout,
    /// The timeline refused the input (shutting down, broken).
    #[error("{0}")]
    Timeline(#[from] TimelineError),
    /// The acceptor refused the recovered WAL.
    #[error("refused: {0}")]
    Refused(String),
}

/// How a recovery that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// All the donor's WAL up to its flush_lsn was taken.
    Done,
    /// A proposer connected, the term moved on, or the timeline shut down.
    Stopped,
}

/// The recovery's replies, as a proposer connection's: written by the ingest loop.
#[derive(Default)]
struct Sink {
    /// The acceptor's term in the last AppendResponse.
    term: AtomicU64,
    /// The flush_lsn of the last AppendResponse: recovered WAL below it is durable.
    flushed: AtomicU64,
    /// The end of the WAL submitted.
    submitted: AtomicU64,
    /// Woken by every AppendResponse.
    answered: Notify,
    /// Set when the acceptor refused our input.
    refused: Mutex<Option<String>>,
    /// Cancelled on a refusal or a higher term.
    stop: CancellationToken,
}

impl ReplyTo for Sink {
    fn reply(&self, msg: &AcceptorMessage) {
        if let AcceptorMessage::AppendResponse(r) = msg {
            self.term.fetch_max(r.term.0, Ordering::Relaxed);
            self.flushed.fetch_max(r.flush_lsn.0, Ordering::Relaxed);
            self.answered.notify_one();
        }
    }

    fn refuse(&self, e: TimelineError) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        self.stop.cancel();
        self.answered.notify_one();
    }
}

impl Timeline {
    /// Whether a proposer streams WAL to us: one is connected and some proposer was
    /// active (connected or sent WAL) within the last peer-status interval.
    pub fn proposer_streaming(&self) -> bool {
        if self.computes() == 0 {
            return false;
        }
        let Some(interval) = self.ctx.peer_status_interval else {
            return true;
        };
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.proposer_active_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) < interval.as_millis() as u64
    }

    /// Notes that a proposer connected or sent WAL just now.
    pub(super) fn note_proposer_activity(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.proposer_active_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Starts recovering from a peer if one has WAL we lack in our term and no proposer
    /// streams WAL to us (and no recovery runs). Called after each round of the peers'
    /// status.
    pub(super) fn maybe_recover(self: &Arc<Self>, answered: &[PeerPosition]) {
        if !self.ctx.peer_recovery || self.proposer_streaming() {
            return;
        }
        let st = self.status();
        if st.broken {
            return;
        }
        let members: Vec<SafekeeperId> = st
            .mconf
            .members
            .iter()
            .chain(st.mconf.new_members.iter().flatten())
            .cloned()
            .collect();
        let Some(donor) = choose_donor(Local::from(&st), &members, answered) else {
            return;
        };
        let stop = {
            let mut slot = self.recovery.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|s| !s.is_cancelled()) || self.cancel.is_cancelled() {
                return;
            }
            let stop = self.cancel.child_token();
            *slot = Some(stop.clone());
            stop
        };
        self.recovering.store(true, Ordering::Relaxed);
        // Checked again with the flag set: a proposer sending WAL from now on cancels it.
        if self.proposer_streaming() {
            self.recovering.store(false, Ordering::Relaxed);
            stop.cancel();
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tl = self.clone();
        self.tasks.spawn_on(
            async move {
                let t = Instant::now();
                tracing::info!(ttid = %tl.ttid, peer = %donor.id, term = %donor.term,
                    "peer recovery started: {}..{} (peer commit_lsn {})",
                    donor.from, donor.to, donor.commit_lsn);
                let m = &tl.ctx.metrics;
                m.peer_recoveries.inc();
                let r = tl.recover(&donor, &stop).await;
                let flush = tl.status().flush_lsn;
                let took = t.elapsed().as_secs_f64();
                match r {
                    Ok(End::Done) => tracing::info!(ttid = %tl.ttid, peer = %donor.id,
                        "peer recovery done: flush_lsn {flush} ({:.3} s)", took),
                    Ok(End::Stopped) => tracing::info!(ttid = %tl.ttid, peer = %donor.id,
                        "peer recovery stopped at flush_lsn {flush} ({:.3} s)", took),
                    Err(e) => {
                        m.peer_recovery_errors.inc();
                        tracing::warn!(ttid = %tl.ttid, peer = %donor.id,
                            "peer recovery failed at flush_lsn {flush}: {e}");
                    }
                }
                tl.recovering.store(false, Ordering::Relaxed);
                stop.cancel();
            },
            &rt,
        );
    }

    /// Stops a running recovery (a proposer sends WAL).
    pub(super) fn stop_recovery(&self) {
        if let Some(s) = self
            .recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            s.cancel();
        }
    }

    /// Reads `donor`'s WAL and submits it as AppendRequests of a connection of our own,
    /// then disconnects it (which makes the written WAL durable).
    async fn recover(
        self: &Arc<Self>,
        donor: &Donor,
        stop: &CancellationToken,
    ) -> Result<End, RecoveryError> {
        let conn = self.new_conn_id();
        let sink = Arc::new(Sink::default());
        self.submit(Input::Connect {
            conn,
            reply_to: sink.clone(),
        })?;
        let mut r = self.stream_from(donor, stop, conn, &sink).await;
        // Disconnect only once our last append is answered (durable and counted in
        // flush_lsn), however the stream ended: a connection that leaves before its
        // answer has its WAL made durable but not counted until the next flush, and the
        // next recovery, starting from flush_lsn, would be refused as a rewrite.
        let flushed = self.await_flushed(stop, &sink).await;
        if let (Ok(End::Done), Err(e)) = (&r, flushed) {
            r = Err(e);
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .submit(Input::Disconnect {
                conn,
                done: Some(done_tx),
            })
            .is_ok()
        {
            // The timeline's shutdown flushes too: do not hold it up.
            tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = done_rx => {}
            }
        }
        if let Some(e) = sink
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(RecoveryError::Refused(e));
        }
        r
    }

    /// Waits until an AppendResponse says the WAL submitted is flushed.
    async fn await_flushed(
        &self,
        stop: &CancellationToken,
        sink: &Sink,
    ) -> Result<End, RecoveryError> {
        let deadline = tokio::time::Instant::now() + DONOR_TIMEOUT;
        while sink.flushed.load(Ordering::Relaxed) < sink.submitted.load(Ordering::Relaxed) {
            tokio::select! {
                _ = stop.cancelled() => return Ok(End::Stopped),
                _ = sink.stop.cancelled() => return Ok(End::Stopped),
                // Cancel-safe: a notification sent meanwhile is kept as a permit.
                _ = sink.answered.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(RecoveryError::Timeout),
            }
        }
        Ok(End::Done)
    }

    async fn stream_from(
        self: &Arc<Self>,
        donor: &Donor,
        stop: &CancellationToken,
        conn: u64,
        sink: &Sink,
    ) -> Result<End, RecoveryError> {
        let mut ci = Conninfo::for_timeline(
            &donor.addr,
            self.ttid.tenant_id,
            self.ttid.timeline_id,
            RECOVERY_APP,
        );
        ci.set("replication", "true");
        if let Some(t) = self.ctx.peer_token.as_deref() {
            // Sent only if the peer asks for a password.
            ci.set("password", t);
        }
        let generation = self.status().mconf.generation;
        // Where our WAL ends (written, maybe a record not yet complete: a proposer that
        // left mid-record leaves its head above flush_lsn). Those bytes are of our term,
        // as the donor's are (one proposer per term), so the donor's continue them.
        // A proposer that sends WAL meanwhile stops us; bytes both send are skipped by
        // the acceptor the second time.
        let tl = self.clone();
        let from = match self
            .ctx
            .wal_pool
            .run(move || tl.lock_core().exec.acceptor().write_lsn())
            .await
        {
            Ok(w) => w.max(donor.from),
            Err(_) => return Ok(End::Stopped), // the server is stopping
        };
        if from >= donor.to {
            return Ok(End::Done);
        }
        let start = WalStream::start(&ci, from, Some(donor.to), donor.term);
        let mut stream = tokio::select! {
            _ = stop.cancelled() => return Ok(End::Stopped),
            _ = sink.stop.cancelled() => return Ok(End::Stopped),
            s = tokio::time::timeout(DONOR_TIMEOUT, start) => s.map_err(|_| RecoveryError::Timeout)??,
        };
        let budget = Arc::new(Semaphore::new(BUDGET_KIB));
        loop {
            // Cancel-safe: `WalStream::next` takes a message only once it is handled.
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(End::Stopped),
                _ = sink.stop.cancelled() => return Ok(End::Stopped),
                n = tokio::time::timeout(DONOR_TIMEOUT, stream.next()) => n.map_err(|_| RecoveryError::Timeout)??,
            };
            let Some(x) = next else {
                return Ok(End::Done);
            };
            let mut data = x.data;
            let mut begin = x.wal_start;
            while !data.is_empty() {
                let piece = data.split_to(data.len().min(MAX_SEND_SIZE));
                let end = Lsn(begin.0 + piece.len() as u64);
                let cost = (piece.len() >> 10).clamp(1, BUDGET_KIB) as u32;
                let permit = tokio::select! {
                    _ = stop.cancelled() => return Ok(End::Stopped),
                    p = budget.clone().acquire_many_owned(cost) => p.expect("the budget is never closed"),
                };
                // Checked right before the submit: once a proposer streams, its WAL wins.
                if stop.is_cancelled()
                    || sink.stop.is_cancelled()
                    || sink.term.load(Ordering::Relaxed) > donor.term.0
                {
                    return Ok(End::Stopped);
                }
                let a = AppendRequest {
                    h: AppendRequestHeader {
                        generation,
                        term: donor.term,
                        begin_lsn: begin,
                        end_lsn: end,
                        commit_lsn: donor.commit_lsn,
                        // Ours is kept: the donor's horizon is not a proposer's word.
                        truncate_lsn: Lsn::INVALID,
                    },
                    wal_data: piece,
                };
                self.ctx.metrics.peer_recovery_bytes.inc_by(end.0 - begin.0);
                self.submit(Input::Propose {
                    conn,
                    msg: ProposerMessage::AppendRequest(a),
                    permit: Some(permit),
                })?;
                sink.submitted.store(end.0, Ordering::Relaxed);
                begin = end;
            }
            if begin >= donor.to {
                return Ok(End::Done);
            }
        }
    }
}

#[cfg(test)]
mod tests;
