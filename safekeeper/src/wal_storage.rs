//! WAL segment files of one timeline: writing, flushing, truncating, and finding the end
//! of WAL after a restart.
//!
//! Layout: one file per segment, named as PostgreSQL names them (timeline 1); the one
//! being written is `<name>.partial` and becomes `<name>` once full. Durability rules,
//! each applied at exactly one place below:
//! * a new segment is created at its full size and fsynced with its directory before any
//!   WAL in it can be acknowledged (so a later fdatasync never has to change its size);
//! * flush = fdatasync of the segment being written; a full segment is fdatasynced before
//!   it is renamed (its name then only says "complete", the data was already durable);
//! * truncation first makes the bytes at the new end unreadable as WAL (zeroed, synced),
//!   and only then removes later segments, so a crash midway never resurrects a tail.
//!
//! Must never: decide what to write (the acceptor does), or be called from async code
//! directly (it blocks; callers run it on a blocking thread).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use utils::xlog::{self, DecoderConfig, WalStreamDecoder};
use utils::{Lsn, SegNo};

use crate::durability::SyncMode;

/// The segment currently open for writing.
#[derive(Debug)]
struct OpenSegment {
    segno: SegNo,
    file: File,
    path: PathBuf,
    /// Written since the last fdatasync.
    dirty: bool,
}

/// The WAL files of one timeline.
#[derive(Debug)]
pub struct WalStorage {
    dir: PathBuf,
    seg_size: u32,
    sync: SyncMode,
    /// End of the bytes written.
    write_lsn: Lsn,
    current: Option<OpenSegment>,
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
    pub fn open(dir: &Path, seg_size: u32, sync: SyncMode, end: Lsn) -> Self {
        WalStorage {
            dir: dir.to_path_buf(),
            seg_size,
            sync,
            write_lsn: end,
            current: None,
        }
    }

    /// End of the bytes written.
    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
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
        self.write(seg_start, image)?;
        Ok(())
    }

    /// Writes `data` at `lsn`, which must be the end of the WAL written so far.
    pub fn write(&mut self, lsn: Lsn, data: &[u8]) -> io::Result<WriteOutcome> {
        if lsn != self.write_lsn {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("write at {lsn}, but WAL ends at {}", self.write_lsn),
            ));
        }
        let mut outcome = WriteOutcome::Written;
        let mut pos = lsn;
        let mut rest = data;
        while !rest.is_empty() {
            let segno = pos.segment_number(self.seg_size);
            let offset = pos.segment_offset(self.seg_size);
            let room = pos.remaining_in_segment(self.seg_size) as usize;
            let n = room.min(rest.len());
            let seg = self.segment_for_write(segno)?;
            seg.file.write_all_at(&rest[..n], offset as u64)?;
            seg.dirty = true;
            rest = &rest[n..];
            pos = Lsn(pos.0 + n as u64);
            if n == room {
                self.complete_segment()?;
                outcome = WriteOutcome::SegmentCompleted;
            }
        }
        self.write_lsn = pos;
        Ok(outcome)
    }

    /// Makes everything written durable.
    pub fn flush(&mut self) {
        if let Some(seg) = self.current.as_mut()
            && seg.dirty
        {
            self.sync.fdatasync(&seg.file, &seg.path);
            seg.dirty = false;
        }
    }

    /// Durably cuts the WAL at `end`. Safe to crash in the middle of: the bytes at `end`
    /// are zeroed and synced first, so the end-of-WAL scan stops there whatever else
    /// survived; then every later segment is removed.
    pub fn truncate(&mut self, end: Lsn) -> io::Result<()> {
        self.flush();
        self.current = None;
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
                    self.sync.fsync_dir(&self.dir);
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
            self.sync.fsync_dir(&self.dir);
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
            self.flush();
            self.current = None;
        }
        if self.current.is_none() {
            self.current = Some(self.open_segment(segno)?);
        }
        Ok(self.current.as_mut().expect("just opened"))
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
                    file,
                    path,
                    dirty: false,
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
            self.sync.fsync_dir(&self.dir);
            return self.open_segment(segno);
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Full size up front: later fdatasyncs then never change the file's size, and a
        // crash before this point leaves a short file that the end-of-WAL scan stops at.
        file.set_len(seg_len)?;
        self.sync.fsync(&file, &path);
        self.sync.fsync_dir(&self.dir);
        Ok(OpenSegment {
            segno,
            file,
            path,
            dirty: false,
        })
    }

    /// fdatasync the full current segment and give it its final name.
    fn complete_segment(&mut self) -> io::Result<()> {
        if let Some(seg) = self.current.take() {
            self.sync.fdatasync(&seg.file, &seg.path);
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

/// Finds the end of valid WAL by decoding forward from `start` (a record boundary at or
/// below the end, normally the persisted commit_lsn): the end of the last complete record
/// whose CRC matches. Stops at a missing segment, the end of a file, or the first record
/// that does not decode (zeroed space fails with "invalid record length").
pub fn find_end_of_wal(
    dir: &Path,
    start: Lsn,
    cfg: DecoderConfig,
    seg_size: u32,
) -> io::Result<Lsn> {
    let mut decoder = WalStreamDecoder::new(start, cfg);
    let mut end = start;
    let mut pending: Option<Lsn> = None;
    let mut pos = start;
    let mut buf = vec![0u8; 256 * 1024];
    let seg_len = u64::from(seg_size);
    loop {
        let segno = pos.segment_number(seg_size);
        let Some(file) = open_segment_for_read(dir, segno, seg_size)? else {
            return Ok(end);
        };
        let file_len = file.metadata()?.len().min(seg_len);
        let mut offset = pos.segment_offset(seg_size) as u64;
        while offset < file_len {
            let want = buf.len().min((file_len - offset) as usize);
            let n = file.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            decoder.feed(&buf[..n]);
            let fed_end = Lsn(segno * seg_len + offset);
            loop {
                match decoder.next_record() {
                    Ok(Some(rec)) if rec.end_lsn <= fed_end => end = rec.end_lsn,
                    // An XLOG_SWITCH ends at the segment end, past the bytes fed so far.
                    Ok(Some(rec)) => pending = Some(rec.end_lsn),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(dir = %dir.display(), "end of WAL at {end}: {e}");
                        return Ok(end);
                    }
                }
            }
            if let Some(p) = pending.filter(|&p| p <= fed_end) {
                end = p;
                pending = None;
            }
        }
        if offset < seg_len {
            return Ok(end);
        }
        pos = Lsn((segno + 1) * seg_len);
    }
}
