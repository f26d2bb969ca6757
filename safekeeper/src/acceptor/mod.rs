//! The acceptor: the safekeeper's side of the consensus, as a synchronous state machine.
//!
//! Owns: the rules of ref §2.6 (greeting checks, votes, election with highest-common-point
//! truncation, sequential appends, commit_lsn) and the in-memory positions of the WAL
//! (`write_lsn`, the end of the last complete record, `flush_lsn`). Must never: do I/O,
//! block, or look at the clock. Messages go in; a reply and a list of [`Effect`]s come out.
//! The caller performs the effects **in order, before sending the reply**: that ordering
//! is what makes a reply a promise about the disk (a vote is sent only after the term is
//! persisted, a flush_lsn only after the bytes are fdatasynced).
//!
//! Group commit lives here as a protocol: an AppendRequest in the current term writes but
//! does not answer ([`Reply::AfterFlush`]); the caller keeps reading while input is
//! queued and calls [`Acceptor::flush`] once the queue is empty (or a segment is full),
//! which yields one fdatasync and one AppendResponse covering everything written.

mod error;
#[cfg(test)]
mod tests;

pub use error::AcceptorError;

use bytes::Bytes;
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendResponse, Generation, ProposerElected,
    ProposerGreeting, ProposerMessage, VoteRequest, VoteResponse,
};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::xlog::{self, DecoderConfig, WalStreamDecoder};
use utils::{Lsn, NodeId, TenantTimelineId, Term};

use crate::state::{ServerInfo, TimelineState};

/// Something the caller must make happen, in order, before sending the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The timeline has no WAL yet: create the segment holding `start` and fill the bytes
    /// before `start` with `image` (the synthetic segment start of ref §3.4), so the file
    /// is well-formed for readers. Need not be durable by itself (a later flush is).
    InitWal {
        /// Where the timeline's WAL starts.
        start: Lsn,
        /// The bytes `[segment start, start)`.
        image: Bytes,
    },
    /// Write `data` at `lsn`, which is exactly the end of the WAL written so far.
    WriteWal {
        /// Where the bytes go.
        lsn: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// fdatasync everything written. A failure is fatal to the process.
    FlushWal,
    /// Durably cut the WAL at `end` (a record boundary at or below the flushed end):
    /// nothing at or above `end` may be found again, even after a crash midway.
    TruncateWal {
        /// The new end of WAL.
        end: Lsn,
    },
    /// Durably replace the control file with this state.
    PersistControl(Box<TimelineState>),
}

/// What to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing (ProposerElected; a stale ProposerElected).
    None,
    /// This message, after the effects.
    Now(AcceptorMessage),
    /// An AppendResponse is owed: call [`Acceptor::flush`] when no more input is queued.
    AfterFlush,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// To perform in order before the reply.
    pub effects: Vec<Effect>,
    /// The reply.
    pub reply: Reply,
}

impl Output {
    fn reply(effects: Vec<Effect>, msg: AcceptorMessage) -> Self {
        Output {
            effects,
            reply: Reply::Now(msg),
        }
    }
}

/// Where the WAL stands, in memory.
#[derive(Debug)]
struct WalPosition {
    /// End of bytes handed to storage (may be mid-record).
    write_lsn: Lsn,
    /// End of the last complete, CRC-checked record among them.
    write_record_lsn: Lsn,
    /// `write_lsn` at the last flush.
    flushed_write_lsn: Lsn,
    /// End of the last complete record that is fdatasynced: what replies report.
    flush_lsn: Lsn,
    /// Decodes incoming WAL to find record boundaries; `None` until WAL exists.
    decoder: Option<WalStreamDecoder>,
    /// End of a decoded record (an XLOG_SWITCH) whose padding has not all arrived yet.
    pending_record_end: Option<Lsn>,
    /// Set when incoming WAL failed to decode: appends are refused until an election
    /// truncates the written tail back to a record boundary.
    poisoned: bool,
}

/// The consensus state machine of one timeline on one safekeeper.
#[derive(Debug)]
pub struct Acceptor {
    node_id: NodeId,
    state: TimelineState,
    /// commit_lsn of the last persisted state.
    persisted_commit_lsn: Lsn,
    wal: WalPosition,
    /// The highest commit_lsn a proposer of the current term sent.
    candidate_commit_lsn: Lsn,
}

impl Acceptor {
    /// Restores the acceptor from its persisted state and the end of the WAL found on
    /// disk (`flush_lsn`, a record boundary; 0 if there is no WAL).
    pub fn new(node_id: NodeId, state: TimelineState, flush_lsn: Lsn) -> Self {
        let decoder = if flush_lsn.is_valid() {
            Some(new_decoder(flush_lsn, &state.server))
        } else {
            None
        };
        Acceptor {
            node_id,
            persisted_commit_lsn: state.commit_lsn,
            state,
            wal: WalPosition {
                write_lsn: flush_lsn,
                write_record_lsn: flush_lsn,
                flushed_write_lsn: flush_lsn,
                flush_lsn,
                decoder,
                pending_record_end: None,
                poisoned: false,
            },
            candidate_commit_lsn: Lsn::INVALID,
        }
    }

    /// The current in-memory state (ahead of the persisted one for lazily saved fields).
    pub fn state(&self) -> &TimelineState {
        &self.state
    }

    /// End of durable, record-complete WAL.
    pub fn flush_lsn(&self) -> Lsn {
        self.wal.flush_lsn
    }

    /// End of written WAL (possibly mid-record, possibly not durable).
    pub fn write_lsn(&self) -> Lsn {
        self.wal.write_lsn
    }

    /// The commit LSN known here (never above `flush_lsn`).
    pub fn commit_lsn(&self) -> Lsn {
        self.state.commit_lsn
    }

    /// The acceptor's term.
    pub fn term(&self) -> Term {
        self.state.term
    }

    /// Term of the WAL at `flush_lsn`.
    pub fn last_log_term(&self) -> Term {
        self.state.last_log_term(self.wal.flush_lsn)
    }

    /// Where the current term's WAL starts, if this acceptor has been elected into it.
    pub fn term_start_lsn(&self) -> Option<Lsn> {
        self.state
            .term_history
            .last()
            .filter(|e| e.term == self.state.term)
            .map(|e| e.lsn)
    }

    /// Marks `state` as persisted (the caller just wrote it).
    pub fn mark_persisted(&mut self, state: &TimelineState) {
        self.persisted_commit_lsn = state.commit_lsn;
    }

    /// A snapshot to persist now (shutdown, disconnect, periodic checkpoint).
    pub fn checkpoint(&self) -> Option<Effect> {
        (self.state.commit_lsn != self.persisted_commit_lsn)
            .then(|| Effect::PersistControl(Box::new(self.state.clone())))
    }

    /// Handles one message.
    pub fn process(&mut self, msg: ProposerMessage) -> Result<Output, AcceptorError> {
        match msg {
            ProposerMessage::Greeting(g) => self.handle_greeting(&g),
            ProposerMessage::VoteRequest(v) => self.handle_vote(v),
            ProposerMessage::Elected(e) => self.handle_elected(e),
            ProposerMessage::AppendRequest(a) => self.handle_append(a),
        }
    }

    /// Makes everything written durable and answers the owed AppendResponse: one
    /// fdatasync for however many AppendRequests came before it.
    pub fn flush(&mut self) -> Output {
        let mut effects = Vec::new();
        self.flush_into(&mut effects);
        let new_commit = self
            .state
            .commit_lsn
            .max(self.candidate_commit_lsn.min(self.wal.flush_lsn));
        self.state.commit_lsn = new_commit;
        if self.commit_needs_persist() {
            effects.push(self.persist());
        }
        let resp = AppendResponse {
            generation: self.state.mconf.generation,
            term: self.state.term,
            flush_lsn: self.wal.flush_lsn,
            commit_lsn: self.state.commit_lsn,
            ..Default::default()
        };
        Output::reply(effects, AcceptorMessage::AppendResponse(resp))
    }

    /// True if the control file must be written before commit_lsn is reported: when
    /// commit_lsn crossed the term start (sync-safekeepers relies on it being durable), or
    /// when it moved a whole segment past the persisted value (bounds the restart scan).
    fn commit_needs_persist(&self) -> bool {
        let commit = self.state.commit_lsn;
        let persisted = self.persisted_commit_lsn;
        if commit <= persisted {
            return false;
        }
        let crossed_term_start = self
            .term_start_lsn()
            .is_some_and(|start| commit >= start && persisted < start);
        let seg = u64::from(self.state.server.wal_seg_size.max(1));
        crossed_term_start || commit.0 - persisted.0 >= seg
    }

    fn persist(&mut self) -> Effect {
        self.persisted_commit_lsn = self.state.commit_lsn;
        Effect::PersistControl(Box::new(self.state.clone()))
    }

    fn flush_into(&mut self, effects: &mut Vec<Effect>) {
        if self.wal.write_lsn > self.wal.flushed_write_lsn {
            effects.push(Effect::FlushWal);
            self.wal.flushed_write_lsn = self.wal.write_lsn;
        }
        self.wal.flush_lsn = self.wal.write_record_lsn;
    }

    fn check_generation(&self, theirs: Generation) -> Result<(), AcceptorError> {
        let ours = self.state.mconf.generation;
        if ours != theirs {
            return Err(AcceptorError::GenerationMismatch { ours, theirs });
        }
        Ok(())
    }

    fn handle_greeting(&mut self, g: &ProposerGreeting) -> Result<Output, AcceptorError> {
        let got = TenantTimelineId::new(g.tenant_id, g.timeline_id);
        if got != self.state.ttid {
            return Err(AcceptorError::TimelineMismatch {
                expected: self.state.ttid,
                got,
            });
        }
        let stored = self.state.server;
        if g.pg_version != 0 && !xlog::is_supported_pg_version(g.pg_version) {
            return Err(AcceptorError::UnsupportedPgVersion(g.pg_version));
        }
        if stored.pg_version != 0
            && g.pg_version != 0
            && xlog::pg_major(stored.pg_version) != xlog::pg_major(g.pg_version)
        {
            return Err(AcceptorError::PgVersionMismatch {
                stored: stored.pg_version,
                got: g.pg_version,
            });
        }
        if stored.wal_seg_size != g.wal_seg_size {
            return Err(AcceptorError::SegSizeMismatch {
                stored: stored.wal_seg_size,
                got: g.wal_seg_size,
            });
        }
        if stored.system_id != 0 && g.system_id != 0 && stored.system_id != g.system_id {
            return Err(AcceptorError::SystemIdMismatch {
                stored: stored.system_id,
                got: g.system_id,
            });
        }
        let mut changed = false;
        if stored.system_id == 0 && g.system_id != 0 {
            self.state.server.system_id = g.system_id;
            changed = true;
        }
        if stored.pg_version == 0 && g.pg_version != 0 {
            self.state.server.pg_version = g.pg_version;
            changed = true;
        }
        if g.mconf.generation > self.state.mconf.generation {
            let member = g.mconf.members.iter().any(|m| m.id == self.node_id)
                || g.mconf
                    .new_members
                    .as_ref()
                    .is_some_and(|n| n.iter().any(|m| m.id == self.node_id));
            if !member {
                return Err(AcceptorError::NotAMember(g.mconf.generation));
            }
            self.state.mconf = g.mconf.clone();
            changed = true;
        }
        let effects = if changed {
            vec![self.persist()]
        } else {
            Vec::new()
        };
        Ok(Output::reply(
            effects,
            AcceptorMessage::Greeting(AcceptorGreeting {
                node_id: self.node_id,
                mconf: self.state.mconf.clone(),
                term: self.state.term,
            }),
        ))
    }

    fn handle_vote(&mut self, v: VoteRequest) -> Result<Output, AcceptorError> {
        self.check_generation(v.generation)?;
        let mut effects = Vec::new();
        // Flush first so the flush_lsn we report cannot move under the new proposer.
        self.flush_into(&mut effects);
        let vote_given = self.state.term < v.term;
        if vote_given {
            self.state.term = v.term;
            self.candidate_commit_lsn = Lsn::INVALID;
            effects.push(self.persist());
        }
        let resp = VoteResponse {
            generation: self.state.mconf.generation,
            term: self.state.term,
            vote_given,
            flush_lsn: self.wal.flush_lsn,
            truncate_lsn: self.state.peer_horizon_lsn,
            term_history: self.state.term_history.up_to(self.wal.flush_lsn),
        };
        Ok(Output::reply(effects, AcceptorMessage::VoteResponse(resp)))
    }

    fn handle_elected(&mut self, e: ProposerElected) -> Result<Output, AcceptorError> {
        self.check_generation(e.generation)?;
        if e.term < self.state.term {
            // A proposer that lost meanwhile; it will learn from the next reply.
            return Ok(Output {
                effects: Vec::new(),
                reply: Reply::None,
            });
        }
        // The flush_lsn the flush below makes durable. The flush itself comes after the
        // checks: a refusal discards the effects, so it must not have marked WAL flushed.
        let flush = self.wal.write_record_lsn;
        let hcp = self
            .state
            .term_history
            .highest_common_point(&e.term_history, flush)?;
        if hcp.lsn != e.start_streaming_at {
            return Err(AcceptorError::StartMismatch {
                proposed: e.start_streaming_at,
                computed: hcp.lsn,
            });
        }
        let start = e.start_streaming_at;
        if start < self.state.commit_lsn {
            return Err(AcceptorError::TruncateCommitted {
                start,
                commit: self.state.commit_lsn,
            });
        }
        if flush.is_valid() && start > flush {
            // Only possible when the histories have nothing in common: taking it would
            // leave a hole of zeros inside the WAL this acceptor reports.
            return Err(AcceptorError::StartBeyondWal { start, flush });
        }
        let mut effects = Vec::new();
        self.flush_into(&mut effects);
        if !flush.is_valid() {
            let image = xlog::first_segment_image(
                start,
                self.state.server.wal_seg_size,
                self.state.server.system_id,
                xlog::pg_major(self.state.server.pg_version),
            )
            .map_err(AcceptorError::InvalidWal)?;
            effects.push(Effect::InitWal {
                start,
                image: Bytes::from(image),
            });
        } else if start != self.wal.write_lsn {
            effects.push(Effect::TruncateWal { end: start });
        }
        self.wal = WalPosition {
            write_lsn: start,
            write_record_lsn: start,
            flushed_write_lsn: start,
            flush_lsn: start,
            decoder: Some(new_decoder(start, &self.state.server)),
            pending_record_end: None,
            poisoned: false,
        };
        let timeline_start = e.term_history.0[0].lsn;
        let s = &mut self.state;
        s.term = e.term;
        if !s.timeline_start_lsn.is_valid() {
            s.timeline_start_lsn = timeline_start;
        }
        if !s.peer_horizon_lsn.is_valid() {
            s.peer_horizon_lsn = s.timeline_start_lsn;
        }
        if !s.local_start_lsn.is_valid() {
            s.local_start_lsn = start;
        }
        s.commit_lsn = s.commit_lsn.max(s.timeline_start_lsn);
        s.backup_lsn = s.backup_lsn.max(s.timeline_start_lsn);
        s.remote_consistent_lsn = s.remote_consistent_lsn.max(s.timeline_start_lsn);
        s.term_history = e.term_history;
        self.candidate_commit_lsn = Lsn::INVALID;
        effects.push(self.persist());
        Ok(Output {
            effects,
            reply: Reply::None,
        })
    }

    fn handle_append(&mut self, a: AppendRequest) -> Result<Output, AcceptorError> {
        self.check_generation(a.h.generation)?;
        if a.h.term < self.state.term {
            // Term-only response: tells a deposed proposer to step down.
            let resp = AppendResponse {
                generation: self.state.mconf.generation,
                term: self.state.term,
                ..Default::default()
            };
            return Ok(Output::reply(
                Vec::new(),
                AcceptorMessage::AppendResponse(resp),
            ));
        }
        if a.h.term > self.state.term || self.term_start_lsn().is_none() {
            return Err(AcceptorError::AppendBeforeElected {
                term: self.state.term,
                msg_term: a.h.term,
            });
        }
        let (begin, end) = (a.h.begin_lsn, a.h.end_lsn);
        let len = end.distance_from(begin).unwrap_or(u64::MAX);
        if len != a.wal_data.len() as u64 || len > MAX_SEND_SIZE as u64 {
            return Err(AcceptorError::BadRange { begin, end });
        }
        let mut effects = Vec::new();
        if !a.wal_data.is_empty() {
            if self.wal.poisoned {
                return Err(AcceptorError::WalPoisoned);
            }
            let write_lsn = self.wal.write_lsn;
            if begin > write_lsn {
                return Err(AcceptorError::Gap { begin, write_lsn });
            }
            if begin < write_lsn {
                return Err(AcceptorError::Rewrite { begin, write_lsn });
            }
            self.decode(&a.wal_data, end)?;
            effects.push(Effect::WriteWal {
                lsn: begin,
                data: a.wal_data,
            });
        }
        self.candidate_commit_lsn = self.candidate_commit_lsn.max(a.h.commit_lsn);
        self.state.peer_horizon_lsn = self.state.peer_horizon_lsn.max(a.h.truncate_lsn);
        Ok(Output {
            effects,
            reply: Reply::AfterFlush,
        })
    }

    /// Feeds WAL ending at `end` to the decoder and advances the end of complete records.
    ///
    /// An XLOG_SWITCH record ends at the next segment boundary, before the padding that
    /// fills its segment has arrived; that end becomes the record end only once the
    /// written WAL reaches it (a flush_lsn inside the padding would let the next term
    /// write into it).
    fn decode(&mut self, data: &[u8], end: Lsn) -> Result<(), AcceptorError> {
        let Some(decoder) = self.wal.decoder.as_mut() else {
            return Err(AcceptorError::UnexpectedMessage(
                "AppendRequest on a timeline without WAL",
            ));
        };
        decoder.feed(data);
        // Positions move only once the whole request decoded: on an error none of its
        // bytes is written, so none of its records may count (a later flush would report
        // them as durable WAL).
        let mut record_end = self.wal.write_record_lsn;
        let mut pending = self.wal.pending_record_end;
        loop {
            match decoder.next_record() {
                // A complete record after a pending XLOG_SWITCH means its padding is
                // complete too: the later end supersedes it.
                Ok(Some(rec)) if rec.end_lsn <= end => {
                    record_end = rec.end_lsn;
                    pending = None;
                }
                Ok(Some(rec)) => pending = Some(rec.end_lsn),
                Ok(None) => break,
                Err(e) => {
                    self.wal.poisoned = true;
                    return Err(AcceptorError::InvalidWal(e));
                }
            }
        }
        if let Some(p) = pending.filter(|&p| p <= end) {
            record_end = record_end.max(p);
            pending = None;
        }
        self.wal.write_record_lsn = record_end;
        self.wal.pending_record_end = pending;
        self.wal.write_lsn = end;
        Ok(())
    }
}

fn new_decoder(start: Lsn, server: &ServerInfo) -> WalStreamDecoder {
    WalStreamDecoder::new(
        start,
        DecoderConfig::new(server.pg_version, server.wal_seg_size, server.system_id),
    )
}
