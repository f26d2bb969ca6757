//! [`Executor`]: the acceptor and a storage, stepped together.
//!
//! Group commit, as a contract with the caller: an AppendRequest in the current term is
//! written at once and its connection is *owed* an answer; the caller keeps stepping
//! while input is queued and, when the queue is empty, makes one flush answer every owed
//! connection, however many requests came before it. Two ways:
//! * [`Executor::flush_owed`]: the fdatasync right here (small flushes: a hand-off to
//!   another thread would cost more than it overlaps);
//! * [`Executor::start_flush`] → [`PendingFlush::run`] on another thread →
//!   [`Executor::finish_flush`]: AppendRequests are stepped (written) while the disk
//!   syncs, so writing and syncing overlap. Only AppendRequests may be stepped meanwhile:
//!   any other input (which may truncate, report or persist positions) first waits for
//!   the flush to finish, inside the executor, and its answers come first.
//!
//! A write that completes a segment (durable already) answers at once instead, so commits
//! waiting on it are released without waiting for the queue.
//!
//! The control file's durable-flush watermark is written through [`Watermark`]: clamped to
//! what completed flushes covered, and lowered (one extra control-file write) before a
//! truncation cuts below it. The restart path judges the end of WAL it finds against it
//! (see [`super::restart`]).

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use utils::{Lsn, NodeId, TenantTimelineId};

use super::error::{OpenError, TimelineError};
use super::restart;
use super::watermark::Watermark;
use crate::acceptor::{Acceptor, Effect, FlushTicket, Progress, Reply};
use crate::state::TimelineState;
use crate::storage::{ScanStop, Storage, WalEnd, WriteOutcome, find_end_of_wal};

/// A proposer connection of a timeline (unique per server run).
pub type ConnId = u64;

/// A reply for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The connection to send it on.
    pub conn: ConnId,
    /// The message.
    pub msg: AcceptorMessage,
}

/// The acceptor of one timeline over its storage.
#[derive(Debug)]
pub struct Executor<S> {
    acceptor: Acceptor,
    storage: S,
    /// Connections owed an AppendResponse, in the order they became owed.
    owed: Vec<ConnId>,
    /// A flush running elsewhere, and the connections it will answer.
    in_flight: Option<(FlushTicket, Vec<ConnId>)>,
    /// Set after a storage error: the in-memory state may be ahead of the disk.
    broken: bool,
    /// What the storage made durable, and the control file as last written.
    watermark: Watermark,
}

impl<S: Storage> Executor<S> {
    /// The restart path: reads the control file, finds the end of WAL by decoding forward
    /// from the persisted commit_lsn (WAL at or above it is never removed, so it is a
    /// record boundary that exists), and cuts whatever lies past that end — it was never
    /// acknowledged, and must never be mistaken for WAL later. Unless the end is below
    /// the control file's durable-flush watermark: acknowledged WAL is damaged, nothing is
    /// cut and the timeline is refused ([`OpenError::AckedWalDamaged`]).
    pub fn open(
        mut storage: S,
        ttid: TenantTimelineId,
        node_id: NodeId,
    ) -> Result<Self, OpenError> {
        let state = storage.load_control()?;
        Self::recover(storage, state, ttid, node_id)
    }

    /// The restart path of [`Executor::open`] from a control file the caller has already
    /// read (with `storage`'s [`Storage::load_control`] or the same checks), e.g. to learn
    /// the segment size the storage is built with.
    pub fn recover(
        mut storage: S,
        state: TimelineState,
        ttid: TenantTimelineId,
        node_id: NodeId,
    ) -> Result<Self, OpenError> {
        if state.ttid != ttid {
            return Err(OpenError::Corrupt(format!(
                "the control file of timeline {ttid} belongs to timeline {}",
                state.ttid
            )));
        }
        let s = state.server;
        let found = if state.commit_lsn.is_valid() {
            let cfg = utils::xlog::DecoderConfig::new(s.pg_version, s.wal_seg_size, s.system_id);
            find_end_of_wal(&mut storage, state.commit_lsn, cfg)?
        } else {
            WalEnd {
                end: Lsn::INVALID,
                stop: ScanStop::NoMoreWal,
            }
        };
        let flush_lsn = restart::judge(&ttid, found, state.durable_flush_lsn, s.wal_seg_size)?;
        // At or above the watermark: the control file stays consistent without a write.
        debug_assert!(flush_lsn >= state.durable_flush_lsn);
        storage.truncate_wal(flush_lsn)?;
        Ok(Self::new(storage, node_id, state, flush_lsn))
    }

    /// An executor over `storage`, whose persisted state is `state` and whose WAL ends at
    /// `flush_lsn` (a record boundary; 0 for none).
    ///
    /// `state` must be what the storage's control file holds, and the WAL up to
    /// `flush_lsn` durable.
    pub fn new(storage: S, node_id: NodeId, state: TimelineState, flush_lsn: Lsn) -> Self {
        Executor {
            watermark: Watermark::new(state.clone(), flush_lsn),
            acceptor: Acceptor::new(node_id, state, flush_lsn),
            storage,
            owed: Vec::new(),
            in_flight: None,
            broken: false,
        }
    }

    /// The acceptor (its in-memory state is what the last step left).
    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, mutably (tests and the simulation arm faults through it).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The storage, for a new executor after a restart (the simulation's crashed node
    /// keeps its disk this way).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// True after a storage error.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// True if some connection is owed an AppendResponse (the caller must flush once its
    /// queue is empty).
    pub fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// True while a flush begun with [`Executor::start_flush`] is not finished.
    pub fn flush_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Bytes written and not yet covered by a flush.
    pub fn unflushed(&self) -> u64 {
        self.acceptor.unflushed()
    }

    fn ttid(&self) -> TenantTimelineId {
        self.acceptor.state().ttid
    }

    fn usable(&self) -> Result<(), TimelineError> {
        if self.broken {
            return Err(TimelineError::Broken(self.ttid()));
        }
        Ok(())
    }

    /// Steps one message from `conn` and performs its effects. Returns what to send now:
    /// this message's answer, or, when the step completed a segment, the answers of every
    /// owed connection. An acceptor error refuses only this message (its connection should
    /// end); a storage error breaks the executor.
    pub fn propose(
        &mut self,
        conn: ConnId,
        msg: ProposerMessage,
    ) -> Result<Vec<Sent>, TimelineError> {
        self.usable()?;
        // Only appends may be stepped while a flush runs elsewhere.
        let mut sent = if matches!(msg, ProposerMessage::AppendRequest(_)) {
            Vec::new()
        } else {
            self.finish_flush()?
        };
        let out = match self.acceptor.process(msg) {
            Ok(out) => out,
            Err(e) => {
                // The message leaves no trace, but the flush it waited for did finish: its
                // connections are owed again (the next flush answers them at once).
                for s in sent.into_iter().rev() {
                    if !self.owed.contains(&s.conn) {
                        self.owed.insert(0, s.conn);
                    }
                }
                return Err(e.into());
            }
        };
        let segment_completed = self.perform(out.effects)?;
        match out.reply {
            Reply::Now(msg) => sent.push(Sent { conn, msg }),
            Reply::None => {}
            Reply::AfterFlush => {
                if !self.owed.contains(&conn) {
                    self.owed.push(conn);
                }
                if segment_completed {
                    sent.extend(self.flush_owed()?);
                }
            }
        }
        Ok(sent)
    }

    /// Group commit: one flush here, and the same AppendResponse for every owed
    /// connection (after the answers of a flush in flight, which finishes first).
    pub fn flush_owed(&mut self) -> Result<Vec<Sent>, TimelineError> {
        let mut sent = self.finish_flush()?;
        if self.owed.is_empty() {
            return Ok(sent);
        }
        self.usable()?;
        let out = self.acceptor.flush();
        self.perform(out.effects)?;
        let owed = std::mem::take(&mut self.owed);
        sent.extend(answers(out.reply, owed));
        Ok(sent)
    }

    /// Group commit that overlaps the next writes: begins a flush of everything written
    /// and returns it, to be run on another thread; the owed connections are answered by
    /// [`Executor::finish_flush`] once it has run. `None` if nothing is owed or a flush is
    /// already in flight.
    pub fn start_flush(&mut self) -> Result<Option<S::Flush>, TimelineError> {
        if self.owed.is_empty() || self.in_flight.is_some() {
            return Ok(None);
        }
        self.usable()?;
        let ticket = self.acceptor.begin_flush();
        match self.storage.begin_flush() {
            Ok(flush) => {
                self.watermark.flush_begun();
                self.in_flight = Some((ticket, std::mem::take(&mut self.owed)));
                Ok(Some(flush))
            }
            Err(source) => Err(self.storage_failed(source)),
        }
    }

    /// Finishes the flush in flight (waiting for it if it has not run yet): what it
    /// covered counts as durable, and the connections it was begun for are answered.
    /// Nothing in flight: nothing to do.
    pub fn finish_flush(&mut self) -> Result<Vec<Sent>, TimelineError> {
        let Some((ticket, conns)) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        self.usable()?;
        if let Err(source) = self.storage.await_flush() {
            return Err(self.storage_failed(source));
        }
        self.watermark.flush_awaited();
        let out = self.acceptor.complete_flush(ticket);
        self.perform(out.effects)?;
        Ok(answers(out.reply, conns))
    }

    /// `conn` is gone: nothing is owed to it any more, and (as at every disconnect)
    /// written WAL is made durable and lazily kept state persisted.
    pub fn disconnect(&mut self, conn: ConnId) -> Result<Vec<Sent>, TimelineError> {
        self.owed.retain(|&c| c != conn);
        let sent = self.checkpoint()?;
        Ok(sent.into_iter().filter(|s| s.conn != conn).collect())
    }

    /// Takes a position reported by someone other than the proposer. Returns the answers
    /// of a flush in flight, which finishes first.
    pub fn update(&mut self, p: Progress) -> Result<Vec<Sent>, TimelineError> {
        self.usable()?;
        let sent = self.finish_flush()?;
        let out = self.acceptor.update(p);
        self.perform(out.effects)?;
        Ok(sent)
    }

    /// Switches the membership configuration (see [`Acceptor::switch_membership`]); when
    /// it returns, a switch is durable. Returns the answers of a flush in flight, which
    /// finishes first, and what the switch did.
    pub fn switch_membership(
        &mut self,
        to: pq_proto::proposer::Configuration,
    ) -> Result<(Vec<Sent>, crate::acceptor::MembershipSwitch), TimelineError> {
        self.usable()?;
        let sent = self.finish_flush()?;
        let (switch, effects) = self.acceptor.switch_membership(to)?;
        self.perform(effects)?;
        Ok((sent, switch))
    }

    /// Raises the term (see [`Acceptor::bump_term`]); when it returns, a raise is durable.
    /// Returns the answers of a flush in flight, which finishes first, and what it did.
    pub fn bump_term(
        &mut self,
        to: Option<utils::Term>,
    ) -> Result<(Vec<Sent>, crate::acceptor::TermBump), TimelineError> {
        self.usable()?;
        let sent = self.finish_flush()?;
        let (bump, effects) = self.acceptor.bump_term(to);
        self.perform(effects)?;
        Ok((sent, bump))
    }

    /// Makes written WAL durable and persists lazily kept state that moved. A broken
    /// executor does nothing (its state may be ahead of the disk). Returns the answers of
    /// a flush in flight, which finishes first.
    pub fn checkpoint(&mut self) -> Result<Vec<Sent>, TimelineError> {
        if self.broken {
            return Ok(Vec::new());
        }
        let sent = self.finish_flush()?;
        let mut effects = vec![Effect::FlushWal];
        effects.extend(self.acceptor.checkpoint());
        self.perform(effects)?;
        Ok(sent)
    }

    fn storage_failed(&mut self, source: std::io::Error) -> TimelineError {
        self.broken = true;
        // Nothing will be answered any more: a caller waiting for "nothing owed" must not
        // wait for ever (nor spin).
        self.owed.clear();
        self.in_flight = None;
        self.watermark.flush_abandoned();
        let ttid = self.ttid();
        tracing::error!(%ttid, "storage error, the timeline will be reloaded: {source}");
        TimelineError::Storage { ttid, source }
    }

    /// Performs effects in order; true if a write completed a segment.
    fn perform(&mut self, effects: Vec<Effect>) -> Result<bool, TimelineError> {
        let mut segment_completed = false;
        for effect in effects {
            let res = match effect {
                Effect::InitWal { start, image } => self
                    .storage
                    .init_wal(start, &image)
                    .map(|()| self.watermark.initialized(start)),
                Effect::WriteWal { lsn, data } => {
                    let end = Lsn(lsn.0 + data.len() as u64);
                    self.storage.write_wal(lsn, data).map(|outcome| {
                        self.watermark.wrote(end);
                        segment_completed |= outcome == WriteOutcome::SegmentCompleted;
                    })
                }
                Effect::FlushWal => self.storage.flush_wal().map(|()| self.watermark.flushed()),
                Effect::TruncateWal { end } => self.truncate(end),
                Effect::PersistControl(state) => {
                    let state = self.watermark.to_persist(&state);
                    self.storage.persist_control(&state).map(|()| {
                        self.acceptor.mark_persisted(&state);
                        self.watermark.persisted(state);
                    })
                }
            };
            if let Err(source) = res {
                return Err(self.storage_failed(source));
            }
        }
        Ok(segment_completed)
    }
}

impl<S: Storage> Executor<S> {
    /// Cuts the WAL at `end`, lowering the control file's watermark first if it is above
    /// `end`: a crash between the two then finds a watermark the WAL still reaches.
    fn truncate(&mut self, end: Lsn) -> std::io::Result<()> {
        if let Some(lowered) = self.watermark.before_truncate(end) {
            self.storage.persist_control(&lowered)?;
            self.watermark.persisted(lowered);
        }
        self.storage.truncate_wal(end)?;
        self.watermark.truncated(end);
        Ok(())
    }
}

/// The same answer for every connection in `conns`.
fn answers(reply: Reply, conns: Vec<ConnId>) -> Vec<Sent> {
    let Reply::Now(msg) = reply else {
        unreachable!("a flush always answers");
    };
    conns
        .into_iter()
        .map(|conn| Sent {
            conn,
            msg: msg.clone(),
        })
        .collect()
}
