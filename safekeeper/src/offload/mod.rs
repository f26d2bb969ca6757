//! WAL offload: complete segments of every timeline are uploaded to remote storage by one
//! member of its quorum, local segments below what every holder agrees on are removed, and
//! segments removed locally are read back from the archive for readers.
//!
//! * [`task`]: the per-timeline offloader (in order within a timeline, a bounded number of
//!   uploads at once across timelines, backoff on failure, partial segments after a quiet
//!   period), or, on members that do not offload the timeline, adopting the offloader's
//!   position from the peers' status;
//! * [`election`]: which member offloads;
//! * [`removal`]: deleting local segments below the removal horizon;
//! * [`cache`]: segments downloaded for readers, on local disk with a size cap.
//!
//! The design is written down in `docs/offload.md`.
//!
//! Owns: [`Offload`] (what the server shares for it) and [`OffloadState`] (what a
//! timeline shows about it). Must never: acknowledge a backup position before the objects
//! below it are stored, or remove a segment above it.

pub mod backoff;
pub mod cache;
pub mod election;
pub mod removal;
pub mod task;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::remote::{Compression, RemoteError, RemoteStorage};

/// Niceness of the threads that read and compress segments for upload.
pub const OFFLOAD_NICE: i32 = 10;

/// Offload settings.
#[derive(Clone, Debug)]
pub struct OffloadConf {
    /// The `--remote-storage` URL.
    pub url: String,
    /// How segments are stored.
    pub compression: Compression,
    /// Upload the partial segment after the commit position stood still this long
    /// (`None`: never).
    pub partial_timeout: Option<Duration>,
    /// Bytes of WAL kept locally below the end of WAL whatever has been offloaded.
    pub retention: u64,
    /// Uploads running at once over all timelines.
    pub workers: usize,
    /// Disk space for segments downloaded for readers.
    pub cache_bytes: u64,
    /// A member whose commit position lags the best by more than this is not chosen to
    /// offload.
    pub max_offloader_lag: u64,
    /// How often the offloader and the removal look at a timeline.
    pub tick: Duration,
    /// A disk with less free space than this is reported while WAL waits for offload
    /// (`None`: 5% of the disk).
    pub low_disk_bytes: Option<u64>,
}

impl OffloadConf {
    /// The defaults for a URL.
    pub fn new(url: &str) -> Self {
        OffloadConf {
            url: url.to_string(),
            compression: Compression::Zstd(3),
            partial_timeout: None,
            retention: 0,
            workers: 4,
            cache_bytes: 1 << 30,
            max_offloader_lag: 128 << 20,
            tick: Duration::from_secs(1),
            low_disk_bytes: None,
        }
    }
}

/// What the server shares for offload.
pub struct Offload {
    /// The settings.
    pub conf: OffloadConf,
    /// The store.
    pub remote: RemoteStorage,
    /// Segments downloaded for readers.
    pub cache: cache::ArchiveCache,
    /// Permits for uploads in flight.
    workers: Semaphore,
    /// Threads that read and compress segments for upload, at a lower priority than
    /// ingest (offload is background work: it must not take the CPU from commits).
    pool: crate::disk_pool::DiskPool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").field("conf", &self.conf).finish()
    }
}

impl Offload {
    /// Opens the store and the download cache under `datadir` (emptied: it is only a
    /// cache).
    pub fn open(
        conf: OffloadConf,
        datadir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RemoteError> {
        let remote = RemoteStorage::open(&conf.url, conf.compression)?;
        let cache = cache::ArchiveCache::open(&datadir.join(cache::CACHE_DIR), conf.cache_bytes)?;
        Ok(Arc::new(Offload {
            workers: Semaphore::new(conf.workers.max(1)),
            pool: crate::disk_pool::DiskPool::with_nice(
                "offload",
                conf.workers.max(1),
                OFFLOAD_NICE,
            ),
            conf,
            remote,
            cache,
            metrics,
        }))
    }
}

impl Offload {
    /// A local copy of segment `segno` of `ttid` from the archive, for a reader (`None`
    /// if the store does not have it).
    pub async fn fetch_archived(
        &self,
        ttid: &utils::TenantTimelineId,
        segno: utils::SegNo,
        seg_size: u32,
    ) -> Result<Option<std::path::PathBuf>, RemoteError> {
        let cached = self.cache.path(ttid, segno, seg_size).exists();
        let got = self
            .cache
            .fetch(&self.remote, ttid, segno, seg_size)
            .await?;
        if got.is_some() && !cached {
            self.metrics.archive_downloads.inc();
            tracing::info!(%ttid, segment = %utils::xlog::xlog_file_name(1, segno, seg_size), "segment read back from the archive for a reader");
        }
        Ok(got)
    }
}

/// What a timeline shows about its offload (HTTP status).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OffloadState {
    /// The member that offloads the timeline, as this safekeeper sees it.
    pub offloader: Option<u64>,
    /// Complete segments waiting for upload.
    pub backlog_segments: u64,
    /// The last failure, until an upload succeeds.
    pub last_error: Option<String>,
    /// Seconds until the next attempt after a failure.
    pub retry_in_seconds: u64,
    /// The end of the last partial segment uploaded.
    pub partial_uploaded_lsn: Option<String>,
    /// Set while the local disk is short of space and WAL cannot be removed.
    pub disk_warning: Option<String>,
}
