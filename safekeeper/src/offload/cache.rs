//! Segments downloaded from remote storage for readers whose WAL was removed locally:
//! plain, verified segment files under `<datadir>/archive_cache/`, least recently used
//! evicted past a size cap. It is only a cache: emptied at start, not fsynced (a file
//! lost in a crash is downloaded again), written under a temporary name and renamed so a
//! reader never sees half a segment.
//!
//! Concurrent readers of one segment share one download (a lock per segment name).
//!
//! Owns: that directory. Must never: hand out a file that did not pass its checksum, or
//! grow past the cap by more than the segments being read right now.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use utils::xlog::xlog_file_name;
use utils::{SegNo, TenantTimelineId};

use crate::remote::{RemoteError, RemoteStorage};

/// The cache's directory under the data directory (not a tenant id, so never taken for
/// one).
pub const CACHE_DIR: &str = "archive_cache";

#[derive(Default)]
struct Inner {
    /// File name → (size, last use).
    files: HashMap<String, (u64, u64)>,
    total: u64,
    clock: u64,
    /// Per-file download locks.
    loading: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The download cache.
pub struct ArchiveCache {
    dir: PathBuf,
    cap: u64,
    inner: Mutex<Inner>,
}

impl ArchiveCache {
    /// Opens (and empties) the cache in `dir`.
    pub fn open(dir: &Path, cap: u64) -> Result<Self, RemoteError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        Ok(ArchiveCache {
            dir: dir.to_path_buf(),
            cap,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache file of a segment (it may not exist).
    pub fn path(&self, ttid: &TenantTimelineId, segno: SegNo, seg_size: u32) -> PathBuf {
        self.dir.join(file_name(ttid, segno, seg_size))
    }

    /// Makes segment `segno` of `ttid` present in the cache, downloading it if needed;
    /// returns its path. `Ok(None)` if the store does not have it.
    pub async fn fetch(
        &self,
        remote: &RemoteStorage,
        ttid: &TenantTimelineId,
        segno: SegNo,
        seg_size: u32,
    ) -> Result<Option<PathBuf>, RemoteError> {
        let name = file_name(ttid, segno, seg_size);
        let path = self.dir.join(&name);
        let load = {
            let mut g = self.lock();
            g.clock += 1;
            let now = g.clock;
            if let Some(f) = g.files.get_mut(&name) {
                f.1 = now;
                if path.exists() {
                    return Ok(Some(path));
                }
            }
            g.loading.entry(name.clone()).or_default().clone()
        };
        let _one_download = load.lock().await;
        if self.lock().files.contains_key(&name) && path.exists() {
            return Ok(Some(path));
        }
        let wal_name = xlog_file_name(1, segno, seg_size);
        let got = remote.download(ttid, &wal_name, false, seg_size).await?;
        let Some((_, data)) = got else {
            self.lock().loading.remove(&name);
            return Ok(None);
        };
        if data.len() != seg_size as usize {
            return Err(RemoteError::Corrupt {
                object: wal_name,
                reason: format!("{} bytes, a segment has {seg_size}", data.len()),
            });
        }
        let tmp = self.dir.join(format!("{name}.tmp"));
        let size = data.len() as u64;
        let (t, p) = (tmp.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::write(&t, &data)?;
            std::fs::rename(&t, &p)
        })
        .await
        .map_err(|e| RemoteError::Codec(format!("cache write task failed: {e}")))??;
        let evict = {
            let mut g = self.lock();
            g.clock += 1;
            let now = g.clock;
            if let Some((old, _)) = g.files.insert(name.clone(), (size, now)) {
                g.total -= old;
            }
            g.total += size;
            g.loading.remove(&name);
            let mut evict = vec![];
            while g.total > self.cap {
                let Some(victim) = g
                    .files
                    .iter()
                    .filter(|(n, _)| **n != name)
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(n, _)| n.clone())
                else {
                    break;
                };
                let (sz, _) = g.files.remove(&victim).expect("just found");
                g.total -= sz;
                evict.push(self.dir.join(victim));
            }
            evict
        };
        // Open readers keep their file (it is only unlinked).
        for p in evict {
            let _ = std::fs::remove_file(p);
        }
        Ok(Some(path))
    }

    /// Bytes in the cache.
    pub fn size(&self) -> u64 {
        self.lock().total
    }
}

fn file_name(ttid: &TenantTimelineId, segno: SegNo, seg_size: u32) -> String {
    format!(
        "{}_{}_{}",
        ttid.tenant_id,
        ttid.timeline_id,
        xlog_file_name(1, segno, seg_size)
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use utils::{Lsn, TenantId, TimelineId};

    use super::*;
    use crate::remote::Compression;

    const SEG: u32 = 1 << 16;

    #[test]
    fn downloads_once_evicts_the_oldest_and_says_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let remote = RemoteStorage::open(
                &format!("file://{}/store", dir.path().display()),
                Compression::Zstd(1),
            )
            .unwrap();
            let ttid = TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]));
            for segno in 1..=3u64 {
                let data = Bytes::from(vec![segno as u8; SEG as usize]);
                let name = xlog_file_name(1, segno, SEG);
                remote
                    .upload(&ttid, &name, false, data, Lsn(0), Lsn(0))
                    .await
                    .unwrap();
            }
            let cache = ArchiveCache::open(&dir.path().join("cache"), 2 * SEG as u64).unwrap();
            for segno in 1..=3u64 {
                let p = cache
                    .fetch(&remote, &ttid, segno, SEG)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(std::fs::read(&p).unwrap(), vec![segno as u8; SEG as usize]);
                assert!(cache.size() <= 2 * SEG as u64);
            }
            // Segment 1 was the least recently used: evicted; 3 is still there.
            assert!(!cache.path(&ttid, 1, SEG).exists());
            assert!(cache.path(&ttid, 3, SEG).exists());
            assert!(cache.fetch(&remote, &ttid, 9, SEG).await.unwrap().is_none());
        });
    }
}
