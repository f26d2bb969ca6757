//! The published status of a timeline: a snapshot of its positions taken after every step
//! of the ingest loop and sent on a watch channel.
//!
//! Status queries (`TIMELINE_STATUS`, `IDENTIFY_SYSTEM`, HTTP, metrics) and WAL senders
//! read the snapshot, never the executor: the executor's lock is held across fdatasync,
//! and a status call must answer while a flush is stalled on the disk.
//!
//! Owns: [`TimelineStatus`] and the rule that it only ever shows durable positions
//! (`flush_lsn` and `commit_lsn` as the acceptor reports them, i.e. after their flush).
//! Must never: be built from anything but an acceptor between two steps.

use std::sync::Arc;

use pq_proto::proposer::Configuration;
use utils::{Lsn, Term, TermHistory};

use crate::acceptor::Acceptor;
use crate::state::ServerInfo;

/// A timeline's positions as of the last step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineStatus {
    /// The acceptor's term.
    pub term: Term,
    /// Term of the WAL at `flush_lsn`.
    pub last_log_term: Term,
    /// End of durable, record-complete WAL.
    pub flush_lsn: Lsn,
    /// Committed WAL present here.
    pub commit_lsn: Lsn,
    /// Where the timeline's WAL starts (globally).
    pub timeline_start_lsn: Lsn,
    /// Where WAL starts on this safekeeper.
    pub local_start_lsn: Lsn,
    /// End of WAL offloaded to remote storage.
    pub backup_lsn: Lsn,
    /// Oldest LSN some peer may still need.
    pub peer_horizon_lsn: Lsn,
    /// What a pageserver has made durable remotely.
    pub remote_consistent_lsn: Lsn,
    /// The cluster writing the WAL.
    pub server: ServerInfo,
    /// The term switch points (shared: it changes only at elections).
    pub term_history: Arc<TermHistory>,
    /// The membership configuration (shared: it changes only with a greeting).
    pub mconf: Arc<Configuration>,
    /// True after a storage error, until the timeline is reloaded.
    pub broken: bool,
}

impl TimelineStatus {
    /// The status of `a` now.
    pub fn of(a: &Acceptor, broken: bool) -> Self {
        Self::build(a, broken, None)
    }

    /// Updates `self` to the status of `a`; true if anything changed. The history and
    /// configuration are copied only when they differ (they rarely do).
    pub fn refresh(&mut self, a: &Acceptor, broken: bool) -> bool {
        let next = Self::build(a, broken, Some(self));
        let changed = next != *self;
        *self = next;
        changed
    }

    /// The status of `a`, sharing `prev`'s history and configuration when they are equal.
    fn build(a: &Acceptor, broken: bool, prev: Option<&Self>) -> Self {
        let s = a.state();
        let term_history = match prev {
            Some(p) if *p.term_history == s.term_history => p.term_history.clone(),
            _ => Arc::new(s.term_history.clone()),
        };
        let mconf = match prev {
            Some(p) if *p.mconf == s.mconf => p.mconf.clone(),
            _ => Arc::new(s.mconf.clone()),
        };
        TimelineStatus {
            term: a.term(),
            last_log_term: a.last_log_term(),
            flush_lsn: a.flush_lsn(),
            commit_lsn: a.commit_lsn(),
            timeline_start_lsn: s.timeline_start_lsn,
            local_start_lsn: s.local_start_lsn,
            backup_lsn: s.backup_lsn,
            peer_horizon_lsn: s.peer_horizon_lsn,
            remote_consistent_lsn: s.remote_consistent_lsn,
            server: s.server,
            term_history,
            mconf,
            broken,
        }
    }

    /// The first LSN this safekeeper can serve: the start of the segment holding the first
    /// WAL it has (bytes of that segment before the timeline start are the synthetic image
    /// written when the timeline was created). `None` while the timeline has no WAL.
    pub fn first_servable_lsn(&self) -> Option<Lsn> {
        let first = self.timeline_start_lsn.max(self.local_start_lsn);
        first
            .is_valid()
            .then(|| first.segment_lsn(self.server.wal_seg_size))
    }
}
