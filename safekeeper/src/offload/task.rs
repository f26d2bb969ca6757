//! The offload task of one timeline: every tick it decides who offloads the timeline
//! ([`super::election`] over this safekeeper and the peers that answered the last status
//! round), then either uploads the complete segments below the commit position in order
//! (each upload holding one of the server's worker permits) and, after a quiet period, the
//! partial one; or, on a member that does not offload, adopts the offloader's position
//! from the peers' status. Then it removes what the removal horizon lets go
//! ([`super::removal`]).
//!
//! Owns: the order of uploads of a timeline and its retry delays. Must never: move
//! `backup_lsn` past a segment before that segment is stored, or upload WAL above the
//! commit position.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use utils::{Lsn, NodeId, SegNo, xlog};

use super::backoff::Backoff;
use super::election::{self, Candidate};
use super::{Offload, removal};
use crate::acceptor::Progress;
use crate::metrics::BackupOutcome;
use crate::remote::{Encoded, RemoteError, Uploaded};
use crate::timeline::{Input, PeerBoard, Timeline, TimelineStatus};
use crate::wal_storage::open_segment_for_read;

/// By default a disk with less than this share free (1/20) is reported while WAL cannot
/// be removed.
const LOW_DISK_DIVISOR: u64 = 20;

/// Starts the offload task of `tl` (a task of the timeline: it ends with it).
pub fn start(tl: &Arc<Timeline>, off: Arc<Offload>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(tl);
    let cancel = tl.cancelled().clone();
    tl.spawn(Some(&rt), run(weak, off, cancel));
}

/// What the task remembers between ticks.
#[derive(Default)]
struct Worker {
    backoff: Backoff,
    /// No upload before this (after a failure).
    retry_at: Option<Instant>,
    /// The backlog last added to the server's gauge.
    backlog: u64,
    /// The commit position seen last and since when it stands still.
    quiet: Option<(Lsn, Instant)>,
    /// The end of the partial segment stored last.
    partial: Option<Lsn>,
    /// Segments below this were removed (or found absent) already.
    removed_below: SegNo,
    disk_low: bool,
}

async fn run(weak: Weak<Timeline>, off: Arc<Offload>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(off.conf.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut w = Worker::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(tl) = weak.upgrade() else { break };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = w.round(&tl, &off) => {}
        }
    }
    off.metrics.backup_backlog_segments.dec_by(w.backlog as i64);
}

impl Worker {
    async fn round(&mut self, tl: &Arc<Timeline>, off: &Offload) {
        let st = tl.status();
        let seg_size = st.server.wal_seg_size;
        if seg_size == 0 || !st.commit_lsn.is_valid() || st.broken {
            return;
        }
        let me = tl.node_id();
        let board = tl.peer_board();
        let offloader = offloader(me, &st, &board, off.conf.max_offloader_lag, tl);
        let done = match offloader {
            Some(id) if id == me => self.offload(tl, off, &st).await,
            _ => {
                // Another member offloads (or it is not known yet who does): its
                // position, as the peers report it, is where the store stands.
                let theirs = board
                    .answered
                    .iter()
                    .map(|p| p.backup_lsn)
                    .max()
                    .unwrap_or(Lsn::INVALID);
                if theirs > st.backup_lsn {
                    let _ = tl.submit(Input::Progress(Progress::Backup(theirs)));
                }
                self.set_backlog(tl, off, 0);
                theirs.max(st.backup_lsn)
            }
        };
        tl.update_offload_state(|s| s.offloader = offloader.map(|n| n.0));
        let mut st = tl.status();
        st.backup_lsn = st.backup_lsn.max(done);
        match removal::remove(tl, off, &st, &mut self.removed_below).await {
            Ok(_) => {}
            Err(e) => tracing::error!(ttid = %tl.ttid, "removing offloaded WAL failed: {e}"),
        }
        self.check_disk(tl, off, &st);
    }

    /// Uploads what is due; returns the backup position reached.
    async fn offload(&mut self, tl: &Arc<Timeline>, off: &Offload, st: &TimelineStatus) -> Lsn {
        let seg_size = st.server.wal_seg_size;
        let seg = u64::from(seg_size);
        let first = st.backup_lsn.max(st.timeline_start_lsn);
        let mut segno = first.segment_number(seg_size);
        // Segments below `end` are complete and committed.
        let end = st.commit_lsn.min(st.flush_lsn).segment_number(seg_size);
        self.set_backlog(tl, off, end.saturating_sub(segno));
        let mut reached = st.backup_lsn;
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return reached;
        }
        while segno < end {
            let Ok(_permit) = off.workers.acquire().await else {
                return reached;
            };
            let started = Instant::now();
            match upload_complete(tl, off, st, segno).await {
                Ok(outcome) => {
                    off.metrics
                        .backup_seconds
                        .observe(started.elapsed().as_secs_f64());
                    match outcome {
                        Done::Stored(bytes) => {
                            off.metrics.backup(BackupOutcome::Uploaded);
                            off.metrics.backup_bytes.inc_by(bytes);
                            tracing::info!(ttid = %tl.ttid, segment = %xlog::xlog_file_name(1, segno, seg_size), bytes, "segment offloaded");
                        }
                        Done::Existed => off.metrics.backup(BackupOutcome::Exists),
                        Done::Gap => {}
                    }
                    if off.conf.partial_timeout.is_some()
                        || self
                            .partial
                            .is_some_and(|p| p.segment_number(seg_size) == segno)
                    {
                        let name = xlog::xlog_file_name(1, segno, seg_size);
                        if let Err(e) = off.remote.delete_partial(&tl.ttid, &name).await {
                            tracing::warn!(ttid = %tl.ttid, "could not delete the partial object of {name}: {e}");
                        }
                    }
                    segno += 1;
                    reached = Lsn(segno * seg);
                    let _ = tl.submit(Input::Progress(Progress::Backup(reached)));
                    self.set_backlog(tl, off, end - segno);
                    self.succeeded(tl);
                }
                Err(e) => {
                    off.metrics.backup(BackupOutcome::Error);
                    self.failed(
                        tl,
                        &format!(
                            "offloading segment {}: {e}",
                            xlog::xlog_file_name(1, segno, seg_size)
                        ),
                    );
                    return reached;
                }
            }
        }
        if let Some(timeout) = off.conf.partial_timeout {
            self.maybe_partial(tl, off, st, timeout).await;
        }
        reached
    }

    /// Uploads the segment holding the commit position once it stood still `timeout`.
    async fn maybe_partial(
        &mut self,
        tl: &Arc<Timeline>,
        off: &Offload,
        st: &TimelineStatus,
        timeout: Duration,
    ) {
        let commit = st.commit_lsn.min(st.flush_lsn);
        let now = Instant::now();
        match self.quiet {
            Some((lsn, since)) if lsn == commit => {
                if now.duration_since(since) < timeout {
                    return;
                }
            }
            _ => {
                self.quiet = Some((commit, now));
                return;
            }
        }
        if commit.segment_offset(st.server.wal_seg_size) == 0 || self.partial == Some(commit) {
            return;
        }
        let Ok(_permit) = off.workers.acquire().await else {
            return;
        };
        match upload_partial(tl, off, st, commit).await {
            Ok(()) => {
                off.metrics.backup_partial_uploads.inc();
                self.partial = Some(commit);
                tl.update_offload_state(|s| s.partial_uploaded_lsn = Some(commit.to_string()));
                tracing::info!(ttid = %tl.ttid, end = %commit, "partial segment offloaded");
                self.succeeded(tl);
            }
            Err(e) => self.failed(
                tl,
                &format!("offloading the partial segment up to {commit}: {e}"),
            ),
        }
    }

    fn succeeded(&mut self, tl: &Timeline) {
        self.backoff.succeeded();
        self.retry_at = None;
        tl.update_offload_state(|s| {
            s.last_error = None;
            s.retry_in_seconds = 0;
        });
    }

    fn failed(&mut self, tl: &Timeline, what: &str) {
        self.backoff.failed();
        let delay = self.backoff.delay();
        self.retry_at = Some(Instant::now() + delay);
        tracing::error!(ttid = %tl.ttid, retry_in = ?delay, "{what}");
        tl.update_offload_state(|s| {
            s.last_error = Some(what.to_string());
            s.retry_in_seconds = delay.as_secs();
        });
    }

    /// The complete segments waiting for upload: in the server's gauge and the
    /// timeline's status.
    fn set_backlog(&mut self, tl: &Timeline, off: &Offload, n: u64) {
        let delta = n as i64 - self.backlog as i64;
        if delta != 0 {
            off.metrics.backup_backlog_segments.inc_by(delta);
            tl.update_offload_state(|s| s.backlog_segments = n);
        }
        self.backlog = n;
    }

    /// Reports a disk short of space while WAL waits for offload (it cannot be removed).
    fn check_disk(&mut self, tl: &Timeline, off: &Offload, st: &TimelineStatus) {
        // Only WAL waiting for offload makes a low disk worth reporting: no statvfs per
        // timeline per tick otherwise.
        if self.backlog == 0 && !self.disk_low {
            return;
        }
        let Some((free, total)) = disk_space(tl.dir()) else {
            return;
        };
        let threshold = off.conf.low_disk_bytes.unwrap_or(total / LOW_DISK_DIVISOR);
        let low = free < threshold && self.backlog > 0;
        if low == self.disk_low {
            return;
        }
        self.disk_low = low;
        let warning = low.then(|| {
            format!(
                "{} MiB free of {} MiB on the disk of the timeline; WAL from {} is kept until it is offloaded ({} segments wait)",
                free >> 20,
                total >> 20,
                st.backup_lsn,
                self.backlog
            )
        });
        if let Some(w) = &warning {
            tracing::error!(ttid = %tl.ttid, "{w}");
        }
        tl.update_offload_state(|s| s.disk_warning = warning);
    }
}

/// Who offloads the timeline, as far as this safekeeper can tell: itself when it is not
/// in a membership configuration (a proposer without generations, or a single
/// safekeeper); otherwise the choice over itself and the peers that answered the last
/// round, once there was one.
fn offloader(
    me: NodeId,
    st: &TimelineStatus,
    board: &PeerBoard,
    max_lag: u64,
    tl: &Timeline,
) -> Option<NodeId> {
    let members: Vec<NodeId> = st
        .mconf
        .members
        .iter()
        .chain(st.mconf.new_members.iter().flatten())
        .map(|m| m.id)
        .collect();
    if !members.contains(&me) {
        return Some(me);
    }
    if members.len() == 1 {
        return Some(me);
    }
    // A board older than three rounds says nothing about who is alive.
    let interval = tl.peer_status_interval()?;
    let fresh = board
        .at
        .is_some_and(|at| at.elapsed() < interval * 3 + Duration::from_secs(5));
    if !fresh {
        return None;
    }
    let mut candidates = vec![Candidate {
        id: me,
        commit_lsn: st.commit_lsn,
    }];
    candidates.extend(
        board
            .answered
            .iter()
            .filter(|p| members.contains(&p.id))
            .map(|p| Candidate {
                id: p.id,
                commit_lsn: p.commit_lsn,
            }),
    );
    Some(election::choose(&tl.ttid.timeline_id, &candidates, max_lag))
}

/// What became of one complete segment.
enum Done {
    Stored(u64),
    Existed,
    /// Neither here nor in the store (reported loudly, skipped).
    Gap,
}

/// Uploads complete segment `segno` from local disk.
async fn upload_complete(
    tl: &Arc<Timeline>,
    off: &Offload,
    st: &TimelineStatus,
    segno: SegNo,
) -> Result<Done, RemoteError> {
    let seg_size = st.server.wal_seg_size;
    let name = xlog::xlog_file_name(1, segno, seg_size);
    let seg_start = Lsn(segno * u64::from(seg_size));
    if off.remote.exists(&tl.ttid, &name, false).await? {
        return Ok(Done::Existed);
    }
    let start = seg_start.max(st.timeline_start_lsn);
    let end = Lsn(seg_start.0 + u64::from(seg_size));
    let Some(encoded) = read_encoded(tl, off, segno, seg_size as usize, start, end, false).await?
    else {
        // Below where this safekeeper's WAL starts: it never held the segment.
        if st.first_servable_lsn().is_some_and(|f| seg_start < f) {
            off.metrics.backup_gaps.inc();
            tracing::error!(
                ttid = %tl.ttid,
                segment = %name,
                "segment {name} is neither on this safekeeper (its WAL starts at {}) nor in remote storage: the archive has a gap",
                st.local_start_lsn
            );
            return Ok(Done::Gap);
        }
        return Err(RemoteError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("committed segment {name} is missing on local disk"),
        )));
    };
    match off
        .remote
        .put_encoded(&tl.ttid, &name, false, encoded)
        .await?
    {
        Uploaded::Stored(n) => Ok(Done::Stored(n)),
        Uploaded::Existed => Ok(Done::Existed),
    }
}

/// Uploads the segment holding `commit`, its bytes above `commit` zeroed.
async fn upload_partial(
    tl: &Arc<Timeline>,
    off: &Offload,
    st: &TimelineStatus,
    commit: Lsn,
) -> Result<(), RemoteError> {
    let seg_size = st.server.wal_seg_size;
    let segno = commit.segment_number(seg_size);
    let name = xlog::xlog_file_name(1, segno, seg_size);
    if off.remote.exists(&tl.ttid, &name, false).await? {
        return Ok(());
    }
    let upto = commit.segment_offset(seg_size);
    let seg_start = Lsn(segno * u64::from(seg_size));
    let start = seg_start.max(st.timeline_start_lsn);
    let Some(encoded) = read_encoded(tl, off, segno, upto, start, commit, true).await? else {
        return Ok(());
    };
    off.remote
        .put_encoded(&tl.ttid, &name, true, encoded)
        .await?;
    Ok(())
}

/// Local segment `segno` encoded for upload (`None` if it is not here): its first `len`
/// bytes, zero-filled to a whole segment when `pad` (a partial segment), read, checksummed
/// and compressed on the offload pool.
async fn read_encoded(
    tl: &Arc<Timeline>,
    off: &Offload,
    segno: SegNo,
    len: usize,
    start: Lsn,
    end: Lsn,
    pad: bool,
) -> Result<Option<Encoded>, RemoteError> {
    let dir = tl.dir().to_path_buf();
    let seg_size = tl.seg_size();
    let remote = off.remote.clone();
    off.pool
        .run(move || -> Result<Option<Encoded>, RemoteError> {
            use std::os::unix::fs::FileExt;
            let Some(f) = open_segment_for_read(&dir, segno, seg_size)? else {
                return Ok(None);
            };
            let mut buf = vec![0u8; if pad { seg_size as usize } else { len }];
            f.read_exact_at(&mut buf[..len], 0)?;
            remote.encode(Bytes::from(buf), start, end).map(Some)
        })
        .await
        .map_err(|e| RemoteError::Io(std::io::Error::other(format!("offload task failed: {e}"))))?
}

/// Free and total bytes of the filesystem holding `dir`.
pub(crate) fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed struct the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}
