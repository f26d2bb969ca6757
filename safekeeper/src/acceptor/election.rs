//! The election half of the acceptor: the greeting's checks, votes, and ProposerElected
//! with its highest-common-point truncation.
//!
//! Owns: what a vote promises (the term is persisted before it is granted) and how an
//! elected proposer's history replaces ours. Must never: grant a vote for a term it does
//! not persist first, or truncate committed WAL.

use bytes::Bytes;
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, Generation, ProposerElected, ProposerGreeting, VoteRequest,
    VoteResponse,
};
use utils::xlog;
use utils::{Lsn, TenantTimelineId};

use super::{Acceptor, AcceptorError, Effect, Output, WalPosition};

impl Acceptor {
    pub(super) fn check_generation(&self, theirs: Generation) -> Result<(), AcceptorError> {
        let ours = self.state.mconf.generation;
        if ours != theirs {
            return Err(AcceptorError::GenerationMismatch { ours, theirs });
        }
        self.check_member()
    }

    pub(super) fn handle_greeting(
        &mut self,
        g: &ProposerGreeting,
    ) -> Result<Output, AcceptorError> {
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

    pub(super) fn handle_vote(&mut self, v: VoteRequest) -> Result<Output, AcceptorError> {
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

    pub(super) fn handle_elected(&mut self, e: ProposerElected) -> Result<Output, AcceptorError> {
        self.check_generation(e.generation)?;
        if e.term < self.state.term {
            // A proposer that lost meanwhile; it will learn from the next reply.
            return Ok(Output::silent(Vec::new()));
        }
        // Before anything else: a malformed history must never be persisted (later votes
        // would hand it to the next proposer).
        e.term_history.validate_proposed(e.term)?;
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
        self.wal = WalPosition::at(start, &self.state.server);
        self.state.durable_flush_lsn = start;
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
        Ok(Output::silent(effects))
    }
}
