//! WAL segment files of one timeline: writing, flushing, truncating, and reading back.
//!
//! Layout: one file per segment, named as PostgreSQL names them (timeline 1); the one
//! being written is `<name>.partial` and becomes `<name>` once full. Durability rules,
//! each applied at exactly one place below:
//! * a new segment is created at its full size and fsynced with its directory before any
//!   WAL in it can be acknowledged (so a later fdatasync never has to change its size);
//!   the next segment is created that way in the background (a disk-pool job, see
//!   [`prepare`]) as soon as the previous one is opened, and joined before the first byte
//!   is written into it, so the three
//!   syncs of a creation are off the write path (a prepared segment left behind by a crash
//!   is zeros: the end-of-WAL scan stops there and the restart truncation removes it);
//! * flush = write out what is batched, then fdatasync the segment being written; a full
//!   segment is fdatasynced before it is renamed (its name then only says "complete", the
//!   data was already durable);
//! * writes are batched: consecutive appends to one segment are kept (as the received
//!   `Bytes`, no copy) and written with one `pwritev` per [`WRITE_BATCH`] bytes, at a
//!   segment end, or before a flush. Nobody reads above flush_lsn, so nobody can see the
//!   difference; it saves a syscall (and the filesystem's per-write work) per small append;
//! * truncation first makes the bytes at the new end unreadable as WAL (zeroed, synced),
//!   and only then removes later segments, so a crash midway never resurrects a tail.
//!
//! Must never: decide what to write (the acceptor does), or be called from async code
//! directly (it blocks; callers run it on a disk-pool thread).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use utils::xlog;
use utils::{Lsn, SegNo};

use crate::durability::SyncMode;

mod budget;
mod io_util;
mod prepare;
#[cfg(test)]
mod tests;

pub(crate) use io_util::sync_segment;
use io_util::{create_segment, pwritev_all};
use prepare::Preparing;

pub use budget::OpenSegments;

use crate::disk_pool::DiskPool;
use crate::metrics::WalIoMetrics;

/// Appends are written out once this many bytes are batched (or earlier: a flush, a
/// segment end).
pub const WRITE_BATCH: usize = 1 << 20;

/// Most slices handed to one `pwritev` (below the kernel's IOV_MAX of 1024).
const MAX_IOV: usize = 512;

/// Appends not yet written: contiguous bytes of one segment from `offset` on.
#[derive(Debug, Default)]
struct Batch {
    segno: SegNo,
    offset: u64,
    len: usize,
    parts: Vec<Bytes>,
}

/// The segment currently open for writing.
#[derive(Debug)]
struct OpenSegment {
    segno: SegNo,
    /// Shared with a flush running on another thread.
    file: Arc<File>,
    path: PathBuf,
    /// Written since the last fdatasync.
    dirty: bool,
    /// Its place in the budget of open segment files.
    _slot: Option<budget::Slot>,
}

/// What the segment files of every timeline share.
#[derive(Clone, Debug)]
pub struct SegmentEnv {
    /// Whether syncs are real.
    pub sync: SyncMode,
    /// Where background segment creation runs (`None`: on the write path).
    pub pool: Option<DiskPool>,
    /// The budget of open segment files (`None`: unlimited).
    pub budget: Option<OpenSegments>,
    /// Where writes and fdatasyncs are measured.
    pub io: WalIoMetrics,
}

impl SegmentEnv {
    /// No pool, no budget (tests and tools).
    pub fn plain(sync: SyncMode) -> Self {
        SegmentEnv {
            sync,
            pool: None,
            budget: None,
            io: WalIoMetrics::detached(),
        }
    }
}

/// The WAL files of one timeline.
#[derive(Debug)]
pub struct WalStorage {
    dir: PathBuf,
    seg_size: u32,
    sync: SyncMode,
    /// End of the bytes handed to [`WalStorage::write`] (the last of them may still be
    /// batched, not yet in the file).
    write_lsn: Lsn,
    current: Option<OpenSegment>,
    /// The next segment being created in the background, if any.
    next: Option<Preparing>,
    /// Appends handed over but not yet written to the file.
    batch: Batch,
    /// Where background segment creation runs (`None`: on the write path).
    pool: Option<DiskPool>,
    /// The budget of open segment files.
    budget: Option<OpenSegments>,
    /// A segment written since its last fdatasync whose file was closed for the budget:
    /// the next flush (or the next write into it) syncs it.
    unsynced: Option<SegNo>,
    /// Where writes and fdatasyncs are measured.
    io: WalIoMetrics,
}

/// What a write did besides writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The bytes are written, not yet durable.
    Written,
    /// The write filled at least one segment, which is now durable and renamed; the
    /// caller should answer the proposer soon (its flush_lsn moved).
    SegmentCompleted,
}

impl WalStorage {
    /// Opens the WAL of a timeline whose valid WAL ends at `end` (0 = no WAL yet).
    /// Everything at or above `end` is treated as garbage and zeroed/removed by
    /// [`WalStorage::truncate`], which the caller runs once after opening.
    pub fn open(dir: &Path, seg_size: u32, end: Lsn, env: SegmentEnv) -> Self {
        WalStorage {
            dir: dir.to_path_buf(),
            seg_size,
            sync: env.sync,
            write_lsn: end,
            current: None,
            next: None,
            batch: Batch::default(),
            pool: env.pool,
            budget: env.budget,
            unsynced: None,
            io: env.io,
        }
    }

    /// Closes the segment file held open between writes if the server is over its budget
    /// of open segment files (see [`budget`]) and nothing is batched. The next write opens
    /// it again. Written bytes not yet fdatasynced stay in the page cache (closing a file
    /// does not drop them); the segment is remembered as unsynced, so the next flush opens
    /// it again to sync it (an fdatasync covers the file, whatever descriptor it is on).
    pub fn release_if_over_budget(&mut self) {
        let over = self.budget.as_ref().is_some_and(OpenSegments::over);
        if over
            && self.batch.len == 0
            && let Some(seg) = self.current.take()
            && seg.dirty
        {
            self.unsynced = Some(seg.segno);
        }
    }

    /// End of the bytes written.
    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }

    /// The segment size.
    pub fn seg_size(&self) -> u32 {
        self.seg_size
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of segment `segno` as a complete segment.
    pub fn segment_path(&self, segno: SegNo) -> PathBuf {
        self.dir.join(xlog::xlog_file_name(1, segno, self.seg_size))
    }

    /// Path of segment `segno` while it is being written.
    pub fn partial_path(&self, segno: SegNo) -> PathBuf {
        self.dir.join(format!(
            "{}.partial",
            xlog::xlog_file_name(1, segno, self.seg_size)
        ))
    }

    /// Starts the WAL of a new timeline at `start`: writes `image` (the synthetic bytes
    /// of the segment before `start`) at the segment's beginning.
    pub fn init(&mut self, start: Lsn, image: &[u8]) -> io::Result<()> {
        let seg_start = start.segment_lsn(self.seg_size);
        if image.len() as u64 != start.0 - seg_start.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "segment image of {} bytes does not end at {start}",
                    image.len()
                ),
            ));
        }
        self.write_lsn = seg_start;
        self.write(seg_start, Bytes::copy_from_slice(image))?;
        // Readers may read below the timeline start as soon as it is elected (it is the
        // first flush_lsn): the image must be in the file, not in a batch.
        self.write_batch()
    }

    /// Writes `data` at `lsn`, which must be the end of the WAL written so far. The bytes
    /// may only be batched when this returns (see the module documentation); a flush
    /// writes them out first.
    pub fn write(&mut self, lsn: Lsn, mut data: Bytes) -> io::Result<WriteOutcome> {
        if lsn != self.write_lsn {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("write at {lsn}, but WAL ends at {}", self.write_lsn),
            ));
        }
        let mut outcome = WriteOutcome::Written;
        let mut pos = lsn;
        while !data.is_empty() {
            let segno = pos.segment_number(self.seg_size);
            let offset = pos.segment_offset(self.seg_size) as u64;
            let room = pos.remaining_in_segment(self.seg_size) as usize;
            let n = room.min(data.len());
            let piece = data.split_to(n);
            if self.batch.len > 0
                && (self.batch.segno != segno
                    || self.batch.offset + self.batch.len as u64 != offset
                    || self.batch.parts.len() >= MAX_IOV)
            {
                self.write_batch()?;
            }
            if self.batch.len == 0 {
                self.batch.segno = segno;
                self.batch.offset = offset;
            }
            self.batch.len += n;
            self.batch.parts.push(piece);
            pos = Lsn(pos.0 + n as u64);
            self.write_lsn = pos;
            if n == room {
                self.write_batch()?;
                self.complete_segment()?;
                outcome = WriteOutcome::SegmentCompleted;
            } else if self.batch.len >= WRITE_BATCH {
                self.write_batch()?;
            }
        }
        Ok(outcome)
    }

    /// Writes out the batched appends (one `pwritev` per up to [`MAX_IOV`] slices).
    fn write_batch(&mut self) -> io::Result<()> {
        if self.batch.len == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let seg = self.segment_for_write(batch.segno)?;
        let started = Instant::now();
        pwritev_all(&seg.file, &batch.parts, batch.offset)?;
        seg.dirty = true;
        self.io.wrote(batch.len, started);
        // Keep the vector's allocation for the next batch.
        let mut parts = batch.parts;
        parts.clear();
        self.batch.parts = parts;
        Ok(())
    }

    /// Makes everything written durable.
    pub fn flush(&mut self) -> io::Result<()> {
        let (sync, io) = (self.sync, self.io.clone());
        if let Some(seg) = self.write_out()? {
            sync_segment(sync, &io, &seg.file, &seg.path);
        }
        Ok(())
    }

    /// Writes out what is batched and hands over what a flush running elsewhere must
    /// fdatasync to make everything written so far durable: the segment being written, if
    /// it has unsynced bytes (`None`: nothing to do). The segment counts as synced from
    /// here on; the caller must not report anything durable before that fdatasync returned
    /// (and must let it return before any other flush or a truncation).
    pub fn begin_flush(&mut self) -> io::Result<Option<(Arc<File>, PathBuf)>> {
        Ok(self
            .write_out()?
            .map(|seg| (seg.file.clone(), seg.path.clone())))
    }

    /// The first half of both flushes: writes out what is batched and returns the segment
    /// being written if it has bytes not yet fdatasynced, marking it synced (the caller
    /// fdatasyncs it before anything counts as durable).
    fn write_out(&mut self) -> io::Result<Option<&OpenSegment>> {
        self.write_batch()?;
        if let Some(segno) = self.unsynced {
            // Closed for the budget since it was written: open it again to sync it.
            self.segment_for_write(segno)?;
        }
        Ok(match self.current.as_mut() {
            Some(seg) if seg.dirty => {
                seg.dirty = false;
                Some(&*seg)
            }
            _ => None,
        })
    }

    /// Durably cuts the WAL at `end`. Safe to crash in the middle of: the bytes at `end`
    /// are zeroed and synced first, so the end-of-WAL scan stops there whatever else
    /// survived; then every later segment is removed.
    pub fn truncate(&mut self, end: Lsn) -> io::Result<()> {
        self.flush()?;
        self.current = None;
        // A segment being prepared must exist (or not) before the listing below.
        if let Some(p) = self.next.take() {
            p.join()?;
        }
        let end_segno = end.segment_number(self.seg_size);
        let offset = end.segment_offset(self.seg_size);
        if offset > 0 {
            let partial = self.partial_path(end_segno);
            let full = self.segment_path(end_segno);
            let path = if partial.exists() {
                Some(partial.clone())
            } else if full.exists() {
                Some(full)
            } else {
                None
            };
            if let Some(path) = path {
                let f = OpenOptions::new().write(true).open(&path)?;
                // Shrinking then re-growing leaves zeros (a hole) after `end`.
                f.set_len(offset as u64)?;
                f.set_len(u64::from(self.seg_size))?;
                self.sync.fsync(&f, &path);
                if path != partial {
                    fs::rename(&path, &partial)?;
                    self.sync.fsync_dir(&self.dir)?;
                }
            }
        }
        let first_removed = if offset > 0 { end_segno + 1 } else { end_segno };
        let mut removed = false;
        for (segno, path) in self.list_segments()? {
            if segno >= first_removed {
                fs::remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            self.sync.fsync_dir(&self.dir)?;
        }
        self.write_lsn = end;
        Ok(())
    }

    /// All segment files (complete and partial) with their numbers.
    pub fn list_segments(&self) -> io::Result<Vec<(SegNo, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some((_, segno, _)) = name
                .to_str()
                .and_then(|n| xlog::parse_xlog_file_name(n, self.seg_size))
            {
                out.push((segno, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The open segment `segno`, opening or creating it if needed.
    fn segment_for_write(&mut self, segno: SegNo) -> io::Result<&mut OpenSegment> {
        if self.current.as_ref().is_some_and(|s| s.segno != segno) {
            // Only its own batch can be pending here (write_batch took it).
            if let Some(seg) = self.current.as_mut()
                && seg.dirty
            {
                sync_segment(self.sync, &self.io, &seg.file, &seg.path);
            }
            self.current = None;
        }
        if self.current.is_none() {
            if let Some(p) = self.next.take() {
                // Created durably before any byte goes in (or, for another segment
                // after a truncation, at least finished before we go on).
                p.join()?;
            }
            let mut seg = self.open_segment(segno)?;
            if let Some(unsynced) = self.unsynced.take() {
                if unsynced == segno {
                    seg.dirty = true;
                } else {
                    // Another segment's unsynced bytes (cannot happen: a segment is
                    // synced when it completes); sync it before moving on, to be sure.
                    let other = self.open_segment(unsynced)?;
                    sync_segment(self.sync, &self.io, &other.file, &other.path);
                }
            }
            self.current = Some(seg);
            self.prepare(segno + 1);
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    /// Starts creating segment `segno` in the background, unless it exists.
    fn prepare(&mut self, segno: SegNo) {
        let path = self.partial_path(segno);
        if path.exists() || self.segment_path(segno).exists() {
            return;
        }
        let seg_len = u64::from(self.seg_size);
        self.next = Some(Preparing::start(
            segno,
            &self.dir,
            path,
            seg_len,
            self.sync,
            self.pool.as_ref(),
        ));
    }

    fn open_segment(&self, segno: SegNo) -> io::Result<OpenSegment> {
        let path = self.partial_path(segno);
        let seg_len = u64::from(self.seg_size);
        match OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                if file.metadata()?.len() != seg_len {
                    file.set_len(seg_len)?;
                    self.sync.fsync(&file, &path);
                }
                return Ok(OpenSegment {
                    segno,
                    file: Arc::new(file),
                    path,
                    dirty: false,
                    _slot: self.budget.as_ref().map(OpenSegments::take),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A complete segment being written again: only after a restart whose end of WAL
        // lies in it (a record spanning into the next, missing, segment).
        let full = self.segment_path(segno);
        if full.exists() {
            fs::rename(&full, &path)?;
            self.sync.fsync_dir(&self.dir)?;
            return self.open_segment(segno);
        }
        create_segment(&self.dir, &path, seg_len, self.sync)?;
        self.open_segment(segno)
    }

    /// fdatasync the full current segment and give it its final name.
    fn complete_segment(&mut self) -> io::Result<()> {
        if let Some(seg) = self.current.take() {
            sync_segment(self.sync, &self.io, &seg.file, &seg.path);
            let full = self.segment_path(seg.segno);
            fs::rename(&seg.path, &full)?;
            // The rename's durability is not needed for correctness (readers and the
            // restart scan accept either name); the next segment's creation fsyncs the
            // directory anyway.
        }
        Ok(())
    }
}

/// Opens segment `segno` for reading: the `.partial` name first (the one being written),
/// then the complete name. `Ok(None)` if neither exists.
pub fn open_segment_for_read(dir: &Path, segno: SegNo, seg_size: u32) -> io::Result<Option<File>> {
    let name = xlog::xlog_file_name(1, segno, seg_size);
    // Twice: a rename from `.partial` to the full name may happen between the two opens.
    for _ in 0..2 {
        for candidate in [dir.join(format!("{name}.partial")), dir.join(&name)] {
            match File::open(&candidate) {
                Ok(f) => return Ok(Some(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(None)
}
