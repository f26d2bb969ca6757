//! The removal horizon: below which position local WAL segments may be deleted.
//!
//! A segment may go only when every holder of a claim on it agrees: it is backed up to
//! remote storage (`backup_lsn`), every peer holds it (`peer_horizon_lsn`, so none will
//! ask us for it), a pageserver that reports for the timeline has made it durable
//! remotely (`remote_consistent_lsn`), it is committed and flushed here, and it is older
//! than the configured retention. Pure arithmetic over the state, so it is tested without
//! a disk.
//!
//! Owns: that rule. Must never: return a position above what is committed and flushed, or
//! anything but a segment boundary.

use utils::Lsn;

/// The positions that hold claims on local WAL, as a timeline's status shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// WAL below it is in remote storage.
    pub backup_lsn: Lsn,
    /// Every peer holds WAL below it.
    pub peer_horizon_lsn: Lsn,
    /// The pageserver made WAL below it durable remotely.
    pub remote_consistent_lsn: Lsn,
    /// WAL below it is committed.
    pub commit_lsn: Lsn,
    /// The WAL segment size.
    pub seg_size: u32,
}

/// The circumstances of a timeline that the rule depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovalPolicy {
    /// WAL is offloaded to remote storage. Without it nothing is ever removed.
    pub offload: bool,
    /// A pageserver reports `remote_consistent_lsn` for this timeline.
    pub pageserver_reports: bool,
    /// Bytes of WAL kept below the end of WAL whatever the other positions say.
    pub retention: u64,
}

/// The start of the oldest segment that must stay: every segment wholly below the returned
/// LSN may be removed. `Lsn(0)` means nothing may be removed.
pub fn removal_horizon(state: &Claims, flush_lsn: Lsn, policy: &RemovalPolicy) -> Lsn {
    if !policy.offload {
        return Lsn::INVALID;
    }
    let mut h = state
        .backup_lsn
        .min(state.peer_horizon_lsn)
        .min(state.commit_lsn)
        .min(flush_lsn);
    if policy.pageserver_reports {
        h = h.min(state.remote_consistent_lsn);
    }
    h = h.min(Lsn(flush_lsn.0.saturating_sub(policy.retention)));
    let seg_size = state.seg_size;
    if seg_size == 0 {
        return Lsn::INVALID;
    }
    h.segment_lsn(seg_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn state(backup: u64, peers: u64, remote: u64, commit: u64) -> Claims {
        Claims {
            backup_lsn: Lsn(backup),
            peer_horizon_lsn: Lsn(peers),
            remote_consistent_lsn: Lsn(remote),
            commit_lsn: Lsn(commit),
            seg_size: SEG as u32,
        }
    }

    fn on(pageserver: bool) -> RemovalPolicy {
        RemovalPolicy {
            offload: true,
            pageserver_reports: pageserver,
            retention: 0,
        }
    }

    #[test]
    fn without_offload_nothing_is_removed() {
        let s = state(10 * SEG, 10 * SEG, 10 * SEG, 10 * SEG);
        let off = RemovalPolicy::default();
        assert_eq!(removal_horizon(&s, Lsn(10 * SEG), &off), Lsn::INVALID);
    }

    #[test]
    fn the_lowest_claim_wins_and_is_rounded_down_to_its_segment() {
        let flush = Lsn(20 * SEG);
        // Backup lags.
        let s = state(3 * SEG + 100, 9 * SEG, 9 * SEG, 19 * SEG);
        assert_eq!(removal_horizon(&s, flush, &on(true)), Lsn(3 * SEG));
        // A peer lags.
        let s = state(9 * SEG, 4 * SEG + 1, 9 * SEG, 19 * SEG);
        assert_eq!(removal_horizon(&s, flush, &on(true)), Lsn(4 * SEG));
        // The pageserver lags, and counts only when it reports.
        let s = state(9 * SEG, 9 * SEG, 2 * SEG + 7, 19 * SEG);
        assert_eq!(removal_horizon(&s, flush, &on(true)), Lsn(2 * SEG));
        assert_eq!(removal_horizon(&s, flush, &on(false)), Lsn(9 * SEG));
    }

    #[test]
    fn never_above_commit_or_flush() {
        // Others report positions this safekeeper has not reached (it lags).
        let s = state(30 * SEG, 30 * SEG, 30 * SEG, 5 * SEG + 3);
        assert_eq!(removal_horizon(&s, Lsn(8 * SEG), &on(true)), Lsn(5 * SEG));
        let s = state(30 * SEG, 30 * SEG, 30 * SEG, 30 * SEG);
        assert_eq!(
            removal_horizon(&s, Lsn(6 * SEG + 9), &on(true)),
            Lsn(6 * SEG)
        );
    }

    #[test]
    fn retention_keeps_wal_below_the_end() {
        let s = state(19 * SEG, 19 * SEG, 19 * SEG, 19 * SEG);
        let mut p = on(false);
        p.retention = 4 * SEG;
        assert_eq!(removal_horizon(&s, Lsn(20 * SEG), &p), Lsn(16 * SEG));
        p.retention = 100 * SEG;
        assert_eq!(removal_horizon(&s, Lsn(20 * SEG), &p), Lsn::INVALID);
    }

    #[test]
    fn unset_positions_remove_nothing() {
        let s = state(0, 9 * SEG, 9 * SEG, 9 * SEG);
        assert_eq!(removal_horizon(&s, Lsn(9 * SEG), &on(false)), Lsn::INVALID);
    }
}
