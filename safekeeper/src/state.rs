//! The persistent state of one timeline on one safekeeper: what the control file holds.
//!
//! Plain data, no I/O. The acceptor changes it and asks for it to be persisted; the
//! control file module encodes it; status commands read it.

use pq_proto::proposer::Configuration;
use utils::{Lsn, NodeId, TenantTimelineId, Term, TermHistory};

/// What the timeline's WAL is: facts about the PostgreSQL cluster that writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// PG_VERSION_NUM of the compute (e.g. 150004); 0 = unknown yet.
    pub pg_version: u32,
    /// The cluster's system identifier; 0 = unknown yet.
    pub system_id: u64,
    /// WAL segment size in bytes.
    pub wal_seg_size: u32,
}

/// Everything about a timeline that must survive a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineState {
    /// Which timeline this is.
    pub ttid: TenantTimelineId,
    /// Current membership configuration (generation 0 = none).
    pub mconf: Configuration,
    /// The highest term this acceptor voted for or accepted. Persisted before a vote is
    /// granted, so it never goes back.
    pub term: Term,
    /// The term switch points of the WAL held here (adopted from the elected proposer).
    pub term_history: TermHistory,
    /// The cluster writing the WAL.
    pub server: ServerInfo,
    /// Where the timeline's WAL starts (globally).
    pub timeline_start_lsn: Lsn,
    /// Where WAL starts on this safekeeper.
    pub local_start_lsn: Lsn,
    /// WAL committed by a quorum and present here. Persisted lazily; WAL at or above the
    /// persisted value is never removed (the end-of-WAL scan starts there).
    pub commit_lsn: Lsn,
    /// End of the last segment offloaded to remote storage.
    pub backup_lsn: Lsn,
    /// Oldest LSN some safekeeper may still need (the proposer's truncate_lsn).
    pub peer_horizon_lsn: Lsn,
    /// What the pageserver has made durable remotely.
    pub remote_consistent_lsn: Lsn,
    /// The durable-flush watermark: WAL up to here was fsynced when this control file was
    /// written, and nothing below it has been truncated since (a truncation lowers it in
    /// the control file first). The restart path refuses a timeline whose WAL ends below
    /// it: that WAL had been acknowledged. A record boundary; 0 = unknown (no check).
    /// In memory the acceptor keeps its flush_lsn here; the executor writes at most what
    /// a completed flush covered.
    pub durable_flush_lsn: Lsn,
}

impl TimelineState {
    /// A brand-new timeline, as created from a proposer's greeting: no term, no WAL.
    pub fn new(ttid: TenantTimelineId, server: ServerInfo) -> Self {
        Self {
            ttid,
            mconf: Configuration::empty(),
            term: Term(0),
            term_history: TermHistory::empty(),
            server,
            timeline_start_lsn: Lsn::INVALID,
            local_start_lsn: Lsn::INVALID,
            commit_lsn: Lsn::INVALID,
            backup_lsn: Lsn::INVALID,
            peer_horizon_lsn: Lsn::INVALID,
            remote_consistent_lsn: Lsn::INVALID,
            durable_flush_lsn: Lsn::INVALID,
        }
    }

    /// Term of the WAL at `flush_lsn`: the `last_log_term` the donor choice ranks by.
    pub fn last_log_term(&self, flush_lsn: Lsn) -> Term {
        self.term_history.last_log_term(flush_lsn)
    }

    /// True if this node is a member of the current configuration, or there is none.
    pub fn is_member(&self, node: NodeId) -> bool {
        let conf = &self.mconf;
        conf.generation.0 == 0
            || conf.members.iter().any(|m| m.id == node)
            || conf
                .new_members
                .as_ref()
                .is_some_and(|n| n.iter().any(|m| m.id == node))
    }
}
