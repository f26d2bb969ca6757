//! `safekeeper archive restore`: the segments covering an LSN range, downloaded by N
//! workers but written strictly in order through a reorder buffer of at most N segments
//! (memory stays bounded however long the range), each verified (checksum by the download,
//! page headers here) and made durable under its final name only when whole (written to a
//! temporary name, fsynced, renamed, directory fsynced). Verified files already there are
//! skipped, so an interrupted restore is simply run again.
//!
//! Owns: the order of writes and the retry of downloads. Must never: leave a file under a
//! final name that is not a verified segment, or hold more than N segments in memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use utils::xlog::xlog_file_name;
use utils::{Lsn, SegNo, TenantTimelineId};

use super::verify::{Expect, check_segment};
use super::{ArchiveError, Progress};
use crate::remote::{RemoteError, RemoteStorage, SegmentMeta};

/// How often a download failing for a transient reason is tried.
const ATTEMPTS: u32 = 4;
/// The first wait after a failed download (doubling).
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// What to restore.
#[derive(Clone, Debug)]
pub struct RestoreJob {
    /// The store.
    pub remote: RemoteStorage,
    /// The timeline.
    pub ttid: TenantTimelineId,
    /// The first LSN wanted.
    pub from: Lsn,
    /// The end of the range (exclusive).
    pub to: Lsn,
    /// Where the segments go.
    pub dir: PathBuf,
    /// Downloads at once (and segments held at most).
    pub parallel: usize,
    /// The segment size.
    pub seg_size: u32,
    /// The cluster's system id, when known (else taken from the first long header).
    pub system_id: Option<u64>,
}

/// What a restore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Segments downloaded and written.
    pub written: u64,
    /// Segments already there and verified.
    pub skipped: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// One downloaded segment, ready to be written.
struct Fetched {
    segno: SegNo,
    partial: bool,
    data: Vec<u8>,
    meta: SegmentMeta,
}

/// Runs the restore; `progress` hears about every segment.
pub async fn restore(
    job: RestoreJob,
    progress: &mut dyn Progress,
) -> Result<Restored, ArchiveError> {
    if job.to <= job.from {
        return Err(ArchiveError::Usage(format!(
            "--to {} is not after --from {}",
            job.to, job.from
        )));
    }
    let io = |path: &Path, source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(&job.dir).map_err(|e| io(&job.dir, e))?;
    let seg = u64::from(job.seg_size);
    let first = job.from.segment_number(job.seg_size);
    let last = Lsn(job.to.0 - 1).segment_number(job.seg_size);
    let total = last - first + 1;
    progress.start(total, total * seg);
    let parallel = job.parallel.max(1);
    let job = Arc::new(job);
    let mut system_id = job.system_id;
    let mut done = Restored::default();
    // Segments ready to be written (`None`: already there, verified).
    let mut pending: BTreeMap<SegNo, Option<Fetched>> = BTreeMap::new();
    let mut running = JoinSet::new();
    let mut next_spawn = first;
    let mut next_write = first;
    while next_write <= last {
        // Keep at most `parallel` segments downloading or waiting to be written.
        while next_spawn <= last && next_spawn - next_write < parallel as u64 {
            let segno = next_spawn;
            next_spawn += 1;
            if let Some(skip) = already_there(&job, segno, system_id) {
                system_id = system_id.or(skip?);
                pending.insert(segno, None);
                continue;
            }
            let job = job.clone();
            running.spawn(async move { fetch(&job, segno, last).await });
        }
        // Write whatever is next in order.
        while let Some(slot) = pending.remove(&next_write) {
            match slot {
                None => {
                    done.skipped += 1;
                    progress.segment(&xlog_file_name(1, next_write, job.seg_size), seg, true);
                }
                Some(f) => {
                    let sys = write_segment(&job, &f, system_id)?;
                    system_id = system_id.or(sys);
                    done.written += 1;
                    done.bytes += f.data.len() as u64;
                    progress.segment(&segment_name(&job, &f), f.data.len() as u64, false);
                }
            }
            next_write += 1;
        }
        if next_write > last {
            break;
        }
        match running.join_next().await {
            Some(Ok(Ok(f))) => {
                pending.insert(f.segno, Some(f));
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(ArchiveError::Usage(format!("download task failed: {e}"))),
            // Nothing downloading: the loop spawns the next ones (the window moved).
            None if next_spawn <= last || pending.contains_key(&next_write) => {}
            None => return Err(ArchiveError::Usage("restore stalled (a bug)".into())),
        }
    }
    progress.finish();
    Ok(done)
}

fn segment_name(job: &RestoreJob, f: &Fetched) -> String {
    let name = xlog_file_name(1, f.segno, job.seg_size);
    if f.partial {
        format!("{name}.partial")
    } else {
        name
    }
}

/// `Some(Ok(system id))` if segment `segno` is in the directory already, whole and
/// verified; `None` if it must be fetched.
fn already_there(
    job: &RestoreJob,
    segno: SegNo,
    system_id: Option<u64>,
) -> Option<Result<Option<u64>, ArchiveError>> {
    let path = job.dir.join(xlog_file_name(1, segno, job.seg_size));
    let data = std::fs::read(&path).ok()?;
    let seg = u64::from(job.seg_size);
    let start = Lsn(segno * seg).max(job.from);
    let end = Lsn((segno + 1) * seg);
    let e = Expect {
        segno,
        seg_size: job.seg_size,
        system_id,
    };
    // A file that does not verify is fetched again (and replaced).
    check_segment(&data, start, end, e).ok().map(Ok)
}

/// Downloads segment `segno` (the partial object for the last one when the complete one
/// is not there and the partial one covers the end), retrying transient failures.
async fn fetch(job: &RestoreJob, segno: SegNo, last: SegNo) -> Result<Fetched, ArchiveError> {
    let name = xlog_file_name(1, segno, job.seg_size);
    let mut wait = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        let got = async {
            if let Some((meta, data)) = job
                .remote
                .download(&job.ttid, &name, false, job.seg_size)
                .await?
            {
                return Ok(Some((meta, data, false)));
            }
            if segno == last
                && let Some((meta, data)) = job
                    .remote
                    .download(&job.ttid, &name, true, job.seg_size)
                    .await?
            {
                return Ok(Some((meta, data, true)));
            }
            Ok::<_, RemoteError>(None)
        }
        .await;
        match got {
            Ok(Some((meta, data, partial))) => {
                if partial && meta.end_lsn < job.to {
                    return Err(ArchiveError::Missing {
                        name,
                        detail: format!(
                            "the archive holds WAL of this segment only up to {} (its partial object), not up to {}",
                            meta.end_lsn, job.to
                        ),
                    });
                }
                return Ok(Fetched {
                    segno,
                    partial,
                    data,
                    meta,
                });
            }
            Ok(None) => {
                return Err(ArchiveError::Missing {
                    name,
                    detail: format!(
                        "a gap in the archive of timeline {} (the range {}..{} needs it)",
                        job.ttid, job.from, job.to
                    ),
                });
            }
            Err(e @ RemoteError::Corrupt { .. }) => return Err(e.into()),
            Err(e) if attempt >= ATTEMPTS => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    "downloading {name} failed (attempt {attempt} of {ATTEMPTS}), retrying in {wait:?}: {e}"
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

/// Verifies and writes one segment durably under its final name.
fn write_segment(
    job: &RestoreJob,
    f: &Fetched,
    system_id: Option<u64>,
) -> Result<Option<u64>, ArchiveError> {
    let name = segment_name(job, f);
    let e = Expect {
        segno: f.segno,
        seg_size: job.seg_size,
        system_id,
    };
    let sys = check_segment(&f.data, f.meta.start_lsn, f.meta.end_lsn, e).map_err(|reason| {
        ArchiveError::Invalid {
            name: name.clone(),
            reason,
        }
    })?;
    let path = job.dir.join(&name);
    let tmp = job.dir.join(format!(".{name}.restoring"));
    let io = |p: &Path, source| ArchiveError::Io {
        path: p.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(&f.data).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    std::fs::File::open(&job.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&job.dir, e))?;
    Ok(sys)
}
