//! The acceptor: the safekeeper's side of the consensus, as a synchronous state machine.
//!
//! Owns: the rules of ref §2.6 (greeting checks, votes, election with highest-common-point
//! truncation, sequential appends, commit_lsn), the in-memory positions of the WAL
//! (`write_lsn`, the end of the last complete record, `flush_lsn`), the progress reported
//! by others (backup, pageserver, peers: [`Progress`]) and when the control file must be
//! written. Must never: do I/O, block, or look at the clock. Messages go in; a reply and a
//! list of [`Effect`]s come out. The caller performs the effects **in order, before sending
//! the reply**: that ordering is what makes a reply a promise about the disk (a vote is
//! sent only after the term is persisted, a flush_lsn only after the bytes are
//! fdatasynced).
//!
//! Group commit lives here as a protocol: an AppendRequest in the current term writes but
//! does not answer ([`Reply::AfterFlush`]); the caller keeps reading while input is
//! queued and calls [`Acceptor::flush`] once the queue is empty (or a segment is full),
//! which yields one fdatasync and one AppendResponse covering everything written.
//!
//! Files: [`election`] (greeting, vote, ProposerElected), [`append`] (AppendRequest and the
//! record boundaries of incoming WAL), [`progress`] (inputs from others and the
//! persistence thresholds), [`horizon`] (what WAL removal may delete), [`membership`]
//! (switches of the membership configuration from the API).

mod append;
mod election;
mod error;
pub mod horizon;
mod membership;
mod progress;
#[cfg(test)]
mod tests;

pub use error::AcceptorError;
pub use horizon::{Claims, RemovalPolicy, removal_horizon};
pub use membership::{MembershipSwitch, TermBump};
pub use progress::Progress;

use bytes::Bytes;
use pq_proto::proposer::{AcceptorMessage, AppendResponse, ProposerMessage};
use utils::xlog::{DecoderConfig, RecordEnds};
use utils::{Lsn, NodeId, Term};

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
    /// Nothing (ProposerElected; a stale ProposerElected; progress inputs).
    None,
    /// This message, after the effects.
    Now(AcceptorMessage),
    /// An AppendResponse is owed: call [`Acceptor::flush`] when no more input is queued.
    AfterFlush,
}

/// What a flush begun with [`Acceptor::begin_flush`] will have made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTicket {
    /// The end of the complete records written when it began.
    record_lsn: Lsn,
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

    fn silent(effects: Vec<Effect>) -> Self {
        Output {
            effects,
            reply: Reply::None,
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
    /// Record boundaries of incoming WAL; `None` until WAL exists.
    ends: Option<RecordEnds>,
    /// Set when incoming WAL failed to decode: appends are refused until an election
    /// truncates the written tail back to a record boundary.
    poisoned: bool,
}

impl WalPosition {
    /// Everything up to `lsn` (a record boundary) is durable, nothing is beyond it.
    fn at(lsn: Lsn, server: &ServerInfo) -> Self {
        WalPosition {
            write_lsn: lsn,
            write_record_lsn: lsn,
            flushed_write_lsn: lsn,
            flush_lsn: lsn,
            ends: lsn
                .is_valid()
                .then(|| RecordEnds::new(lsn, decoder_config(server))),
            poisoned: false,
        }
    }
}

/// The consensus state machine of one timeline on one safekeeper.
#[derive(Debug)]
pub struct Acceptor {
    node_id: NodeId,
    state: TimelineState,
    /// The lazily kept fields as last persisted (the persistence thresholds compare
    /// against it).
    persisted: progress::Persisted,
    wal: WalPosition,
    /// The highest commit_lsn a proposer of the current term sent.
    candidate_commit_lsn: Lsn,
}

impl Acceptor {
    /// Restores the acceptor from its persisted state and the end of the WAL found on
    /// disk (`flush_lsn`, a record boundary; 0 if there is no WAL).
    pub fn new(node_id: NodeId, mut state: TimelineState, flush_lsn: Lsn) -> Self {
        let persisted = progress::Persisted::of(&state);
        state.durable_flush_lsn = flush_lsn;
        Acceptor {
            node_id,
            persisted,
            wal: WalPosition::at(flush_lsn, &state.server),
            state,
            candidate_commit_lsn: Lsn::INVALID,
        }
    }

    /// The current in-memory state (ahead of the persisted one for lazily saved fields).
    pub fn state(&self) -> &TimelineState {
        &self.state
    }

    /// This safekeeper's node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
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
        self.persisted = progress::Persisted::of(state);
    }

    /// A snapshot to persist now (shutdown, disconnect, periodic checkpoint), if any
    /// lazily kept field moved since the last persist.
    pub fn checkpoint(&self) -> Option<Effect> {
        self.persisted
            .differs(&self.state)
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
        let mut out = self.answer_flush();
        effects.append(&mut out.effects);
        out.effects = effects;
        out
    }

    /// Bytes written and not yet covered by a flush (begun or done).
    pub fn unflushed(&self) -> u64 {
        self.wal
            .write_lsn
            .0
            .saturating_sub(self.wal.flushed_write_lsn.0)
    }

    /// Starts a flush that runs while further AppendRequests are written (the caller
    /// fdatasyncs everything written so far, off the ingest loop). Nothing counts as
    /// flushed until [`Acceptor::complete_flush`] with the ticket. Between the two the
    /// caller may only step AppendRequests of the current term: anything that may
    /// truncate, report or persist positions must wait for the completion first.
    pub fn begin_flush(&mut self) -> FlushTicket {
        self.wal.flushed_write_lsn = self.wal.write_lsn;
        FlushTicket {
            record_lsn: self.wal.write_record_lsn,
        }
    }

    /// The fdatasync started with `t` returned: the complete records it covered are
    /// durable. Answers like [`Acceptor::flush`] (the AppendResponse reports the durable
    /// end as it is now, which is at least the ticket's).
    pub fn complete_flush(&mut self, t: FlushTicket) -> Output {
        debug_assert!(
            t.record_lsn <= self.wal.write_record_lsn,
            "a flush ticket outlived a cut"
        );
        self.wal.flush_lsn = self
            .wal
            .flush_lsn
            .max(t.record_lsn.min(self.wal.write_record_lsn));
        self.state.durable_flush_lsn = self.wal.flush_lsn;
        self.answer_flush()
    }

    /// commit_lsn from the new flush_lsn, the persist that may need, the AppendResponse.
    fn answer_flush(&mut self) -> Output {
        let mut effects = Vec::new();
        let new_commit = self
            .state
            .commit_lsn
            .max(self.candidate_commit_lsn.min(self.wal.flush_lsn));
        self.state.commit_lsn = new_commit;
        if self.commit_needs_persist() || self.persisted.moved_enough(&self.state) {
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
    /// commit_lsn crossed the term start (sync-safekeepers relies on it being durable).
    /// (Moving a whole segment past the persisted value is the general threshold of
    /// [`progress`].)
    fn commit_needs_persist(&self) -> bool {
        let commit = self.state.commit_lsn;
        let persisted = self.persisted.commit_lsn;
        commit > persisted
            && self
                .term_start_lsn()
                .is_some_and(|start| commit >= start && persisted < start)
    }

    fn persist(&mut self) -> Effect {
        self.persisted = progress::Persisted::of(&self.state);
        Effect::PersistControl(Box::new(self.state.clone()))
    }

    fn flush_into(&mut self, effects: &mut Vec<Effect>) {
        if self.wal.write_lsn > self.wal.flushed_write_lsn {
            effects.push(Effect::FlushWal);
            self.wal.flushed_write_lsn = self.wal.write_lsn;
        }
        self.wal.flush_lsn = self.wal.write_record_lsn;
        self.state.durable_flush_lsn = self.wal.flush_lsn;
    }
}

fn decoder_config(server: &ServerInfo) -> DecoderConfig {
    DecoderConfig::new(server.pg_version, server.wal_seg_size, server.system_id)
}
