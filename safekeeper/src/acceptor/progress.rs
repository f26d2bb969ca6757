//! Inputs that do not come from the proposer, and when lazily kept state is persisted.
//!
//! Besides the proposer's messages, the acceptor learns positions from others: how far
//! WAL is backed up to remote storage, what a pageserver has made durable remotely
//! (`remote_consistent_lsn`), and what every peer holds (the peers' horizon). Each moves
//! only forward. These fields and `commit_lsn` are kept in memory and persisted lazily:
//! when any of them moved [`PERSIST_THRESHOLD_SEGMENTS`] segments past its persisted
//! value, with the next step's effects; and at every checkpoint (disconnect, shutdown, the
//! timeline's periodic checkpoint) when any moved at all. A crash loses at most that
//! much progress, which only makes removal and the restart scan more conservative.
//!
//! Owns: [`Progress`], the record of what was persisted ([`Persisted`]) and the thresholds.
//! Must never: move a position backwards.

use utils::Lsn;

use super::{Acceptor, Output};
use crate::state::TimelineState;

/// How far (in segments) a lazily kept position may run ahead of the control file before
/// a step persists it.
pub const PERSIST_THRESHOLD_SEGMENTS: u64 = 1;

/// A position reported by someone other than the proposer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// WAL below this LSN is in remote storage (the offloader's position).
    Backup(Lsn),
    /// A pageserver has made WAL below this LSN durable in its remote storage.
    RemoteConsistent(Lsn),
    /// Every peer of the timeline holds WAL up to this LSN: none needs older WAL from here.
    PeerHorizon(Lsn),
}

/// The lazily kept fields as they are in the control file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Persisted {
    pub(super) commit_lsn: Lsn,
    backup_lsn: Lsn,
    remote_consistent_lsn: Lsn,
    peer_horizon_lsn: Lsn,
    /// Written by every persist and at checkpoints, never a reason to persist by itself.
    durable_flush_lsn: Lsn,
}

impl Persisted {
    pub(super) fn of(s: &TimelineState) -> Self {
        Persisted {
            commit_lsn: s.commit_lsn,
            backup_lsn: s.backup_lsn,
            remote_consistent_lsn: s.remote_consistent_lsn,
            peer_horizon_lsn: s.peer_horizon_lsn,
            durable_flush_lsn: s.durable_flush_lsn,
        }
    }

    fn pairs(&self, s: &TimelineState) -> [(Lsn, Lsn); 4] {
        [
            (self.commit_lsn, s.commit_lsn),
            (self.backup_lsn, s.backup_lsn),
            (self.remote_consistent_lsn, s.remote_consistent_lsn),
            (self.peer_horizon_lsn, s.peer_horizon_lsn),
        ]
    }

    /// True if any lazily kept field (or the durable-flush watermark) differs from its
    /// persisted value.
    pub(super) fn differs(&self, s: &TimelineState) -> bool {
        self.pairs(s).iter().any(|(old, new)| old != new)
            || self.durable_flush_lsn != s.durable_flush_lsn
    }

    /// True if any lazily kept field moved at least the threshold past its persisted value.
    pub(super) fn moved_enough(&self, s: &TimelineState) -> bool {
        let threshold = u64::from(s.server.wal_seg_size.max(1)) * PERSIST_THRESHOLD_SEGMENTS;
        self.pairs(s)
            .iter()
            .any(|(old, new)| new.0.saturating_sub(old.0) >= threshold)
    }
}

impl Acceptor {
    /// Takes a position reported by someone other than the proposer. Positions only move
    /// forward (an older report is ignored); the control file is written when the move
    /// crosses the persistence threshold.
    pub fn update(&mut self, p: Progress) -> Output {
        let s = &mut self.state;
        let (field, lsn) = match p {
            Progress::Backup(l) => (&mut s.backup_lsn, l),
            Progress::RemoteConsistent(l) => (&mut s.remote_consistent_lsn, l),
            Progress::PeerHorizon(l) => (&mut s.peer_horizon_lsn, l),
        };
        *field = (*field).max(lsn);
        let effects = if self.persisted.moved_enough(&self.state) {
            vec![self.persist()]
        } else {
            Vec::new()
        };
        Output::silent(effects)
    }
}

#[cfg(test)]
mod tests {
    use utils::{NodeId, TenantId, TenantTimelineId, TimelineId};

    use super::*;
    use crate::acceptor::{Effect, Reply};
    use crate::state::ServerInfo;

    const SEG: u32 = 1 << 20;

    fn acceptor() -> Acceptor {
        let mut s = TimelineState::new(
            TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16])),
            ServerInfo {
                pg_version: 150004,
                system_id: 1,
                wal_seg_size: SEG,
            },
        );
        s.commit_lsn = Lsn(10 * u64::from(SEG));
        Acceptor::new(NodeId(1), s, Lsn::INVALID)
    }

    #[test]
    fn small_moves_stay_in_memory_until_a_checkpoint() {
        let mut a = acceptor();
        for p in [
            Progress::Backup(Lsn(100)),
            Progress::RemoteConsistent(Lsn(200)),
            Progress::PeerHorizon(Lsn(300)),
        ] {
            let out = a.update(p);
            assert_eq!(out.effects, vec![]);
            assert_eq!(out.reply, Reply::None);
        }
        assert_eq!(a.state().backup_lsn, Lsn(100));
        assert_eq!(a.state().remote_consistent_lsn, Lsn(200));
        assert_eq!(a.state().peer_horizon_lsn, Lsn(300));
        let Some(Effect::PersistControl(s)) = a.checkpoint() else {
            panic!("a checkpoint persists what moved");
        };
        a.mark_persisted(&s);
        assert_eq!(a.checkpoint(), None);
    }

    #[test]
    fn a_move_past_the_threshold_is_persisted_with_the_step() {
        for p in [
            Progress::Backup(Lsn(u64::from(SEG))),
            Progress::RemoteConsistent(Lsn(u64::from(SEG) + 5)),
            Progress::PeerHorizon(Lsn(3 * u64::from(SEG))),
        ] {
            let mut a = acceptor();
            let out = a.update(p);
            assert_eq!(
                out.effects,
                vec![Effect::PersistControl(Box::new(a.state().clone()))],
                "{p:?}"
            );
            assert_eq!(a.checkpoint(), None, "{p:?}: persisted means nothing left");
        }
    }

    #[test]
    fn positions_never_go_back() {
        let mut a = acceptor();
        a.update(Progress::Backup(Lsn(500)));
        a.update(Progress::Backup(Lsn(100)));
        a.update(Progress::PeerHorizon(Lsn(700)));
        a.update(Progress::PeerHorizon(Lsn(0)));
        assert_eq!(a.state().backup_lsn, Lsn(500));
        assert_eq!(a.state().peer_horizon_lsn, Lsn(700));
    }
}
