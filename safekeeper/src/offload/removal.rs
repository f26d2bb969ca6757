//! Removing local WAL segments that nobody needs here any more: below the removal
//! horizon ([`crate::acceptor::removal_horizon`]: offloaded, held by every peer, durable
//! at the pageserver if one reports, committed, flushed, and older than the retention).
//! Readers that ask for them later get them from the archive
//! ([`super::cache::ArchiveCache`]).
//!
//! Owns: the deletion of complete segment files of a timeline. Must never: delete a
//! `.partial` file, or a segment at or above the horizon.

use std::io;
use std::sync::Arc;

use utils::{SegNo, xlog};

use super::Offload;
use crate::acceptor::{Claims, RemovalPolicy, removal_horizon};
use crate::timeline::{Timeline, TimelineStatus};

/// Removes the complete segments of `tl` below the horizon `st` gives, unless everything
/// below it went already (`removed_below`, updated). Returns how many were removed.
pub async fn remove(
    tl: &Arc<Timeline>,
    off: &Offload,
    st: &TimelineStatus,
    removed_below: &mut SegNo,
) -> io::Result<u64> {
    let seg_size = st.server.wal_seg_size;
    let policy = RemovalPolicy {
        offload: true,
        // The position starts at the timeline's start; a pageserver has reported once
        // it moved (or one reports now).
        pageserver_reports: st.remote_consistent_lsn > st.timeline_start_lsn
            || tl.feedback.pageserver().is_some(),
        retention: off.conf.retention,
    };
    let claims = Claims {
        backup_lsn: st.backup_lsn,
        peer_horizon_lsn: st.peer_horizon_lsn,
        remote_consistent_lsn: st.remote_consistent_lsn,
        commit_lsn: st.commit_lsn,
        seg_size,
    };
    let horizon = removal_horizon(&claims, st.flush_lsn, &policy);
    let below = horizon.segment_number(seg_size);
    if below <= *removed_below {
        return Ok(0);
    }
    let dir = tl.dir().to_path_buf();
    let removed = tl
        .wal_pool()
        .run(move || remove_below(&dir, seg_size, below))
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
    *removed_below = below;
    if removed > 0 {
        off.metrics.removed_segments.inc_by(removed);
        tracing::info!(ttid = %tl.ttid, removed, below = %horizon, "removed offloaded WAL segments");
    }
    Ok(removed)
}

/// Deletes the complete segment files in `dir` numbered below `below`, then syncs the
/// directory. Blocking.
pub fn remove_below(dir: &std::path::Path, seg_size: u32, below: SegNo) -> io::Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match xlog::parse_xlog_file_name(name, seg_size) {
            Some((_, segno, false)) if segno < below => {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
            _ => {}
        }
    }
    if removed > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_segments_below_go() {
        const SEG: u32 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        for segno in 1..=5 {
            std::fs::write(dir.path().join(xlog::xlog_file_name(1, segno, SEG)), b"x").unwrap();
        }
        let partial = format!("{}.partial", xlog::xlog_file_name(1, 2, SEG));
        std::fs::write(dir.path().join(&partial), b"x").unwrap();
        std::fs::write(dir.path().join("safekeeper.control"), b"x").unwrap();
        assert_eq!(remove_below(dir.path(), SEG, 4).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            xlog::xlog_file_name(1, 4, SEG),
            xlog::xlog_file_name(1, 5, SEG),
            partial,
            "safekeeper.control".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
