//! `safekeeper archive get … WALFILE PATH`, for PostgreSQL's
//! `restore_command = 'safekeeper archive get … %f %p'`: puts segment `WALFILE` at `PATH`
//! and succeeds, or fails when the archive does not have it (how recovery learns it reached
//! the end of the archive). A call that has to download its segment also downloads the
//! next `--prefetch` segments in parallel into a spool directory; the calls that follow
//! find theirs there and return at once, refilling the spool (again in parallel) when it
//! runs below half. Recovery so waits for one batch now and then instead of one download
//! per segment.
//!
//! Owns: the spool (entries are whole, verified segments under their WAL file names;
//! consumed or older ones are deleted). Must never: put anything at `PATH` but a whole,
//! verified segment, or succeed for a segment the archive does not have.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use utils::xlog::{parse_xlog_file_name, xlog_file_name};
use utils::{Lsn, SegNo, TenantTimelineId};

use super::ArchiveError;
use super::verify::{Expect, check_segment};
use crate::remote::RemoteStorage;

/// How long a call waits for its prefetches after delivering its own segment.
const PREFETCH_WAIT: Duration = Duration::from_secs(120);

/// One `archive get`.
#[derive(Clone, Debug)]
pub struct GetJob {
    /// The store.
    pub remote: RemoteStorage,
    /// The timeline.
    pub ttid: TenantTimelineId,
    /// The segment size.
    pub seg_size: u32,
    /// `%f`: the WAL file PostgreSQL wants.
    pub wal_file: String,
    /// `%p`: where it goes.
    pub dest: PathBuf,
    /// Where prefetched segments wait.
    pub spool: PathBuf,
    /// Segments after this one to fetch ahead.
    pub prefetch: u64,
}

/// What a call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    /// The segment is at `PATH`, from the spool (`true`) or downloaded now.
    Delivered {
        /// It was prefetched by an earlier call.
        from_spool: bool,
    },
    /// The archive does not have it (or it is not a segment of timeline 1, e.g. a
    /// history file): recovery goes on without it.
    Absent,
}

/// The default spool: a `safekeeper_prefetch` directory beside `PATH`.
pub fn default_spool(dest: &Path) -> PathBuf {
    dest.parent()
        .unwrap_or(Path::new("."))
        .join("safekeeper_prefetch")
}

/// Runs one call.
pub async fn get(job: GetJob) -> Result<Got, ArchiveError> {
    let Some((1, segno, false)) = parse_xlog_file_name(&job.wal_file, job.seg_size) else {
        return Ok(Got::Absent);
    };
    let io = |p: &Path, source| ArchiveError::Io {
        path: p.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(&job.spool).map_err(|e| io(&job.spool, e))?;
    clean_spool(&job.spool, segno, job.seg_size);
    let spooled = job.spool.join(&job.wal_file);
    let from_spool = match std::fs::read(&spooled) {
        Ok(data) if verify(&data, segno, job.seg_size).is_ok() => {
            // Moved, not copied, when the spool is on the same filesystem (the default).
            if std::fs::rename(&spooled, &job.dest).is_err() {
                write_file(&job.dest, &data)?;
                let _ = std::fs::remove_file(&spooled);
            }
            true
        }
        _ => false,
    };
    // Prefetch what follows (not already spooled), at once with this segment's download;
    // a call served from the spool refills it only when it runs low (below half), so most
    // calls return at once and one in a while pays for a batch downloaded in parallel.
    let missing: Vec<SegNo> = (segno + 1..=segno + job.prefetch)
        .filter(|n| !job.spool.join(xlog_file_name(1, *n, job.seg_size)).exists())
        .collect();
    let low = (job.prefetch - missing.len() as u64) * 2 < job.prefetch;
    let mut ahead = JoinSet::new();
    if !from_spool || low {
        for next in missing {
            let job = job.clone();
            ahead.spawn(async move { prefetch(&job, next).await });
        }
    }
    if !from_spool {
        let got = job
            .remote
            .download(&job.ttid, &job.wal_file, false, job.seg_size)
            .await?;
        let Some((_, data)) = got else {
            // The end of the archive: what follows is not there either.
            ahead.abort_all();
            return Ok(Got::Absent);
        };
        verify(&data, segno, job.seg_size).map_err(|reason| ArchiveError::Invalid {
            name: job.wal_file.clone(),
            reason,
        })?;
        write_file(&job.dest, &data)?;
    }
    let _ = tokio::time::timeout(PREFETCH_WAIT, async {
        while let Some(r) = ahead.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("prefetch failed: {e}");
            }
        }
    })
    .await;
    Ok(Got::Delivered { from_spool })
}

/// Downloads segment `segno` into the spool if the archive has it.
async fn prefetch(job: &GetJob, segno: SegNo) -> Result<(), ArchiveError> {
    let name = xlog_file_name(1, segno, job.seg_size);
    let Some((_, data)) = job
        .remote
        .download(&job.ttid, &name, false, job.seg_size)
        .await?
    else {
        return Ok(());
    };
    verify(&data, segno, job.seg_size).map_err(|reason| ArchiveError::Invalid {
        name: name.clone(),
        reason,
    })?;
    let spool = job.spool.clone();
    tokio::task::spawn_blocking(move || write_file(&spool.join(&name), &data))
        .await
        .map_err(|e| ArchiveError::Usage(format!("spool write failed: {e}")))?
}

/// Page headers of a whole segment.
fn verify(data: &[u8], segno: SegNo, seg_size: u32) -> Result<(), String> {
    let start = Lsn(segno * u64::from(seg_size));
    let end = Lsn(start.0 + u64::from(seg_size));
    let e = Expect {
        segno,
        seg_size,
        system_id: None,
    };
    // A timeline's first segment may begin with bytes from before the timeline: its
    // header is checked from the first page that has one.
    match check_segment(data, start, end, e) {
        Ok(_) => Ok(()),
        Err(first) if data[..8].iter().all(|&b| b == 0) => {
            check_segment(data, Lsn(start.0 + 1), end, e)
                .map(|_| ())
                .map_err(|_| first)
        }
        Err(e) => Err(e),
    }
}

/// Writes `data` to `path` through a temporary name and a rename, so `path` is never a
/// partial segment. Not fsynced: PostgreSQL treats a restored file as transient (it uses
/// it at once, deletes it, and after a crash asks the archive again), and the spool is a
/// cache whose entries are verified when used.
fn write_file(path: &Path, data: &[u8]) -> Result<(), ArchiveError> {
    let io = |p: &Path, source| ArchiveError::Io {
        path: p.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    Ok(())
}

/// Deletes spooled segments before `segno` (recovery has passed them) and stray
/// temporary files.
fn clean_spool(spool: &Path, segno: SegNo, seg_size: u32) {
    let Ok(rd) = std::fs::read_dir(spool) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let old = match parse_xlog_file_name(name, seg_size) {
            Some((_, n, _)) => n < segno,
            None => name.starts_with('.') && name.ends_with(".tmp"),
        };
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
