//! The real storage of a timeline: its directory's segment files ([`WalStorage`]) and
//! control file ([`control_file`]), behind the [`Storage`] seam.
//!
//! Owns: the mapping of the seam's operations onto those two modules, the read handle of
//! the end-of-WAL scan, and the call of the test hook before every operation. Must never:
//! add a durability rule of its own (each lives in the module that applies it).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use utils::{Lsn, SegNo, TenantTimelineId};

use super::{PendingFlush, Storage, StorageHook, StorageOp};
use crate::control_file::{self, ControlFileError};
use crate::durability::SyncMode;
use crate::metrics::WalIoMetrics;
use crate::state::TimelineState;
use crate::wal_storage::{
    SegmentEnv, WalStorage, WriteOutcome, open_segment_for_read, sync_segment,
};

/// The files of one timeline.
pub struct FileStorage {
    ttid: TenantTimelineId,
    dir: PathBuf,
    sync: SyncMode,
    io: WalIoMetrics,
    wal: WalStorage,
    hook: Option<Arc<dyn StorageHook>>,
    /// The segment the end-of-WAL scan reads.
    scan: Option<(SegNo, File)>,
    /// The flush begun and not yet awaited.
    pending: Option<Arc<FlushSlot>>,
}

/// Where a flush running on another thread leaves its outcome.
#[derive(Default)]
struct FlushSlot {
    done: Mutex<Option<io::Result<()>>>,
    cv: Condvar,
}

impl FlushSlot {
    fn finish(&self, r: io::Result<()>) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.cv.notify_all();
    }

    fn wait(&self) -> io::Result<()> {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = done.take() {
                return r;
            }
            done = self.cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The fdatasync of a flush begun by [`FileStorage`], run on another thread.
pub struct FileFlush {
    file: Option<(Arc<File>, PathBuf)>,
    sync: SyncMode,
    io: WalIoMetrics,
    hook: Option<(Arc<dyn StorageHook>, TenantTimelineId)>,
    slot: Arc<FlushSlot>,
}

impl PendingFlush for FileFlush {
    fn run(self) {
        let r = match &self.hook {
            Some((h, ttid)) => h.before(ttid, StorageOp::FlushWal),
            None => Ok(()),
        };
        if r.is_ok()
            && let Some((file, path)) = &self.file
        {
            // A failure ends the process (see `durability`): nothing to report.
            sync_segment(self.sync, &self.io, file, path);
        }
        self.slot.finish(r);
    }
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("ttid", &self.ttid)
            .field("dir", &self.dir)
            .field("wal", &self.wal)
            .finish()
    }
}

impl FileStorage {
    /// The storage of the timeline in `dir`, whose WAL segments are `seg_size` bytes.
    /// Background work (preparing the next segment) goes to the environment's pool.
    pub fn new(
        ttid: TenantTimelineId,
        dir: &Path,
        seg_size: u32,
        env: SegmentEnv,
        hook: Option<Arc<dyn StorageHook>>,
    ) -> Self {
        FileStorage {
            ttid,
            dir: dir.to_path_buf(),
            sync: env.sync,
            io: env.io.clone(),
            wal: WalStorage::open(dir, seg_size, Lsn::INVALID, env),
            hook,
            scan: None,
            pending: None,
        }
    }

    /// The ingest loop went idle: give the segment file back if the server is over its
    /// budget of open segment files (see [`crate::wal_storage::OpenSegments`]).
    pub fn release_if_over_budget(&mut self) {
        self.wal.release_if_over_budget();
    }

    /// Reads the control file of the timeline in `dir` (before the segment size is
    /// known, so before a [`FileStorage`] can be made).
    pub fn read_control(
        ttid: &TenantTimelineId,
        dir: &Path,
        hook: Option<&Arc<dyn StorageHook>>,
    ) -> Result<TimelineState, ControlFileError> {
        if let Some(h) = hook {
            h.before(ttid, StorageOp::LoadControl)
                .map_err(|source| ControlFileError::Io {
                    path: dir.join(control_file::CONTROL_FILE_NAME),
                    source,
                })?;
        }
        control_file::load(dir)
    }

    /// The timeline's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment files.
    pub fn wal(&self) -> &WalStorage {
        &self.wal
    }

    fn before(&self, op: StorageOp) -> io::Result<()> {
        match &self.hook {
            Some(h) => h.before(&self.ttid, op),
            None => Ok(()),
        }
    }
}

impl Storage for FileStorage {
    fn load_control(&mut self) -> Result<TimelineState, ControlFileError> {
        Self::read_control(&self.ttid, &self.dir, self.hook.as_ref())
    }

    fn persist_control(&mut self, state: &TimelineState) -> io::Result<()> {
        self.before(StorageOp::PersistControl)?;
        control_file::persist(&self.dir, state, self.sync)
    }

    fn init_wal(&mut self, start: Lsn, image: &[u8]) -> io::Result<()> {
        self.before(StorageOp::InitWal)?;
        self.wal.init(start, image)
    }

    fn write_wal(&mut self, lsn: Lsn, data: Bytes) -> io::Result<WriteOutcome> {
        self.before(StorageOp::WriteWal)?;
        self.wal.write(lsn, data)
    }

    fn flush_wal(&mut self) -> io::Result<()> {
        self.before(StorageOp::FlushWal)?;
        self.wal.flush()
    }

    type Flush = FileFlush;

    fn begin_flush(&mut self) -> io::Result<FileFlush> {
        debug_assert!(self.pending.is_none(), "one flush at a time");
        let file = self.wal.begin_flush()?;
        let slot = Arc::new(FlushSlot::default());
        self.pending = Some(slot.clone());
        Ok(FileFlush {
            file,
            sync: self.sync,
            io: self.io.clone(),
            hook: self.hook.clone().map(|h| (h, self.ttid)),
            slot,
        })
    }

    fn await_flush(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some(slot) => slot.wait(),
            None => Ok(()),
        }
    }

    fn truncate_wal(&mut self, end: Lsn) -> io::Result<()> {
        self.before(StorageOp::TruncateWal)?;
        self.scan = None;
        self.wal.truncate(end)
    }

    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        self.before(StorageOp::ReadWal)?;
        let seg_size = self.wal.seg_size();
        let segno = lsn.segment_number(seg_size);
        if self.scan.as_ref().map(|(s, _)| *s) != Some(segno) {
            self.scan = match open_segment_for_read(&self.dir, segno, seg_size)? {
                Some(f) => Some((segno, f)),
                None => return Ok(0),
            };
        }
        let (_, file) = self.scan.as_ref().expect("opened above");
        let file_len = file.metadata()?.len().min(u64::from(seg_size));
        let offset = lsn.segment_offset(seg_size) as u64;
        if offset >= file_len {
            return Ok(0);
        }
        let n = buf.len().min((file_len - offset) as usize);
        file.read_at(&mut buf[..n], offset)
    }
}
