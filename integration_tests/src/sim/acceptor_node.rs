//! A simulated safekeeper: the real [`Acceptor`] over [`MemStorage`] and a durable copy
//! of the control file, with crash and restart as the server performs them.
//!
//! Owns: performing effects one by one (the caller may crash the node between two of
//! them), the restart procedure (end-of-WAL scan from the persisted commit_lsn, cleanup of
//! the tail, `Acceptor::new`), and the [`Mutation`]s that turn it into a broken acceptor.
//! Must never: change the acceptor crate's behaviour except through an explicit mutation.

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use safekeeper::acceptor::{Acceptor, AcceptorError, Effect, Output, Reply};
use safekeeper::state::{ServerInfo, TimelineState};
use utils::xlog::DecoderConfig;
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, TimelineId};

use super::config::{Mutation, PG_VERSION, SEG_SIZE, SYSTEM_ID};
use super::storage::{MemStorage, WriteOutcome, find_end_of_wal};

/// The simulated timeline.
pub fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId([0x5a; 16]), TimelineId([0xa5; 16]))
}

/// The server facts of the simulated timeline.
pub fn server_info() -> ServerInfo {
    ServerInfo {
        pg_version: PG_VERSION,
        system_id: SYSTEM_ID,
        wal_seg_size: SEG_SIZE,
    }
}

/// One safekeeper.
#[derive(Debug)]
pub struct AcceptorNode {
    /// Index (the proposer's `SkId`).
    pub id: usize,
    /// The state machine; `None` while the node is down.
    pub acceptor: Option<Acceptor>,
    /// The WAL on disk.
    pub storage: MemStorage,
    /// The control file on disk.
    pub control: TimelineState,
    /// When a down node may restart (virtual ms).
    pub restart_at: u64,
    mutation: Mutation,
}

impl AcceptorNode {
    /// A node whose timeline was just created (no term, no WAL), up.
    pub fn new(id: usize, mutation: Mutation) -> Self {
        let control = TimelineState::new(ttid(), server_info());
        let acceptor = Acceptor::new(node_id(id), control.clone(), Lsn::INVALID);
        AcceptorNode {
            id,
            acceptor: Some(acceptor),
            storage: MemStorage::new(SEG_SIZE),
            control,
            restart_at: 0,
            mutation,
        }
    }

    /// True if up.
    pub fn is_up(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Where the durable WAL ends, for what replies may claim: the durable bytes, or the
    /// local start of WAL if the bytes before it (the synthetic segment image, which
    /// need not be durable) are all that is missing.
    pub fn durable_wal_end(&self) -> Lsn {
        let local_start = self
            .acceptor
            .as_ref()
            .map_or(self.control.local_start_lsn, |a| a.state().local_start_lsn);
        self.storage.durable_end().max(local_start)
    }

    /// Steps the acceptor (the node must be up), applying the node's mutation to the
    /// output.
    pub fn process(&mut self, msg: ProposerMessage) -> Result<Output, AcceptorError> {
        let Some(a) = self.acceptor.as_mut() else {
            return Err(AcceptorError::UnexpectedMessage("safekeeper is down"));
        };
        let is_vote = matches!(msg, ProposerMessage::VoteRequest(_));
        let mut out = a.process(msg)?;
        match self.mutation {
            Mutation::DropVotePersist if is_vote && vote_granted(&out) => {
                out.effects
                    .retain(|e| !matches!(e, Effect::PersistControl(_)));
            }
            Mutation::GrantEveryVote => {
                if let Reply::Now(AcceptorMessage::VoteResponse(v)) = &mut out.reply {
                    v.vote_given = true;
                }
            }
            _ => {}
        }
        self.mutate_effects(&mut out);
        Ok(out)
    }

    /// The owed AppendResponse (the node must be up).
    pub fn flush(&mut self) -> Option<Output> {
        let mut out = self.acceptor.as_mut()?.flush();
        self.mutate_effects(&mut out);
        Some(out)
    }

    fn mutate_effects(&self, out: &mut Output) {
        if self.mutation == Mutation::DropFlush {
            out.effects.retain(|e| *e != Effect::FlushWal);
        }
    }

    /// Performs one effect on the disk. An effect that breaks its contract is an `Err`;
    /// with `strict` false, a truncation past the end is performed as the real storage
    /// does it (zero fill) and not reported.
    pub fn apply(&mut self, effect: Effect, strict: bool) -> Result<WriteOutcome, String> {
        match effect {
            Effect::InitWal { start, image } => self.storage.init(start, image)?,
            Effect::WriteWal { lsn, data } => return self.storage.write(lsn, data),
            Effect::FlushWal => self.storage.flush(),
            Effect::TruncateWal { end } => match self.storage.truncate(end) {
                Err(e) if strict => return Err(e),
                _ => {}
            },
            Effect::PersistControl(state) => {
                if let Some(a) = self.acceptor.as_mut() {
                    a.mark_persisted(&state);
                }
                self.control = *state;
            }
        }
        Ok(WriteOutcome::Written)
    }

    /// What the server does when a proposer connection ends: make written WAL durable
    /// and persist lazily kept state.
    pub fn checkpoint(&mut self) {
        if self.mutation != Mutation::DropFlush {
            self.storage.flush();
        }
        if let Some(e) = self.acceptor.as_ref().and_then(Acceptor::checkpoint) {
            // A PersistControl cannot fail here.
            let _ = self.apply(e, false);
        }
    }

    /// Kills the node: the in-memory acceptor and the unflushed bytes are gone, except
    /// `keep(volatile)` bytes the page cache had written back.
    pub fn crash(&mut self, restart_at: u64, keep: impl FnOnce(u64) -> u64) -> u64 {
        self.acceptor = None;
        self.restart_at = restart_at;
        self.storage.crash(keep)
    }

    /// Starts the node from disk, as the server does: the end of WAL is decoded from the
    /// persisted commit_lsn (no WAL if that is 0), the tail past it is cut, and the
    /// acceptor is built from the control file and that end. Returns the flush_lsn found.
    pub fn restart(&mut self) -> Lsn {
        let state = self.control.clone();
        let mut flush_lsn = Lsn::INVALID;
        if state.commit_lsn.is_valid() {
            let s = state.server;
            let cfg = DecoderConfig::new(s.pg_version, s.wal_seg_size, s.system_id);
            flush_lsn = find_end_of_wal(self.storage.wal(), state.commit_lsn, cfg);
            self.storage.reset(Some(flush_lsn));
        } else {
            self.storage.reset(None);
        }
        self.acceptor = Some(Acceptor::new(node_id(self.id), state, flush_lsn));
        flush_lsn
    }
}

/// The node id of safekeeper `id`.
pub fn node_id(id: usize) -> NodeId {
    NodeId(id as u64 + 1)
}

fn vote_granted(out: &Output) -> bool {
    matches!(&out.reply, Reply::Now(AcceptorMessage::VoteResponse(v)) if v.vote_given)
}
