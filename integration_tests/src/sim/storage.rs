//! The in-memory WAL of a simulated safekeeper: bytes with a durable prefix and a volatile
//! tail (the restart's end-of-WAL scan is the server's own, over [`super::disk`]).
//!
//! Owns: what survives a crash. Written bytes are volatile until a flush (or until the
//! write completes a segment, which the real storage fdatasyncs); truncation is durable;
//! a crash drops the volatile tail, except a random prefix of it when the page cache had
//! already written some back (a torn write). Must never: let a crash change a durable
//! byte, or copy WAL (chunks are shared `Bytes`, so snapshots are cheap).

use bytes::Bytes;
use utils::Lsn;

/// A contiguous range of WAL `[start, end)` held as the chunks it was written in.
#[derive(Clone, Debug, Default)]
pub struct Rope {
    start: Lsn,
    end: Lsn,
    /// `(lsn, bytes)`, contiguous and ascending.
    chunks: Vec<(Lsn, Bytes)>,
}

impl Rope {
    /// An empty rope positioned at `lsn`.
    pub fn new(lsn: Lsn) -> Self {
        Rope {
            start: lsn,
            end: lsn,
            chunks: Vec::new(),
        }
    }

    /// First byte held.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// End of the bytes held.
    pub fn end(&self) -> Lsn {
        self.end
    }

    /// Appends `data` at `lsn`, which must be the end (an empty rope moves to `lsn`).
    pub fn append(&mut self, lsn: Lsn, data: Bytes) -> Result<(), String> {
        if self.chunks.is_empty() && self.start == self.end {
            self.start = lsn;
            self.end = lsn;
        }
        if lsn != self.end {
            return Err(format!("write at {lsn}, but the WAL ends at {}", self.end));
        }
        if !data.is_empty() {
            self.end = Lsn(lsn.0 + data.len() as u64);
            self.chunks.push((lsn, data));
        }
        Ok(())
    }

    /// Keeps `[start, end)` only (no-op if `end` is past the end).
    pub fn truncate(&mut self, end: Lsn) {
        let end = end.max(self.start);
        if end >= self.end {
            return;
        }
        let i = self.chunks.partition_point(|(lsn, _)| *lsn < end);
        self.chunks.truncate(i);
        if let Some((lsn, data)) = self.chunks.last_mut() {
            let keep = (end.0 - lsn.0) as usize;
            if keep < data.len() {
                *data = data.slice(..keep);
            }
        }
        self.end = end;
    }

    /// Calls `f` with consecutive slices covering `[from, to)`; false if the rope does
    /// not hold all of it (then `f` is not called).
    pub fn visit(&self, from: Lsn, to: Lsn, mut f: impl FnMut(Lsn, &[u8])) -> bool {
        if from < self.start || to > self.end || from > to {
            return false;
        }
        if from == to {
            return true;
        }
        // The last chunk starting at or before `from`.
        let mut i = self.chunks.partition_point(|(lsn, _)| *lsn <= from) - 1;
        let mut pos = from;
        while pos < to {
            let (lsn, data) = &self.chunks[i];
            let off = (pos.0 - lsn.0) as usize;
            let n = (data.len() - off).min((to.0 - pos.0) as usize);
            f(pos, &data[off..off + n]);
            pos = Lsn(pos.0 + n as u64);
            i += 1;
        }
        true
    }

    /// A copy of `[from, to)`, if held.
    pub fn read(&self, from: Lsn, to: Lsn) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(to.0.saturating_sub(from.0) as usize);
        self.visit(from, to, |_, s| out.extend_from_slice(s))
            .then_some(out)
    }
}

/// What a write did to durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Bytes written (volatile).
    Written,
    /// The write filled a segment, which the real storage fdatasyncs at once.
    SegmentCompleted,
}

/// The WAL of one safekeeper.
#[derive(Clone, Debug)]
pub struct MemStorage {
    wal: Rope,
    durable_end: Lsn,
    seg_size: u32,
    /// The lowest LSN at which bytes were removed or replaced since the checker last
    /// looked (so it re-examines what may have changed).
    changed_from: Option<Lsn>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new(seg_size: u32) -> Self {
        MemStorage {
            wal: Rope::new(Lsn::INVALID),
            durable_end: Lsn::INVALID,
            seg_size,
            changed_from: None,
        }
    }

    /// Durable and volatile bytes.
    pub fn wal(&self) -> &Rope {
        &self.wal
    }

    /// End of the durable bytes.
    pub fn durable_end(&self) -> Lsn {
        self.durable_end
    }

    /// End of all written bytes.
    pub fn end(&self) -> Lsn {
        self.wal.end()
    }

    /// Takes the lowest LSN changed (cut or replaced) since the last call.
    pub fn take_changed_from(&mut self) -> Option<Lsn> {
        self.changed_from.take()
    }

    fn mark_changed(&mut self, lsn: Lsn) {
        self.changed_from = Some(self.changed_from.map_or(lsn, |c| c.min(lsn)));
    }

    /// `InitWal`: the timeline's first segment, with `image` before `start`.
    pub fn init(&mut self, start: Lsn, image: Bytes) -> Result<(), String> {
        let seg_start = start.segment_lsn(self.seg_size);
        if image.len() as u64 != start.0 - seg_start.0 {
            return Err(format!(
                "segment image of {} bytes does not end at {start}",
                image.len()
            ));
        }
        self.mark_changed(seg_start.min(self.wal.start()));
        self.wal = Rope::new(seg_start);
        self.durable_end = seg_start;
        self.wal.append(seg_start, image)
    }

    /// `WriteWal`: `data` at `lsn`, the end of written WAL.
    pub fn write(&mut self, lsn: Lsn, data: Bytes) -> Result<WriteOutcome, String> {
        let was = self.wal.end();
        if self.wal.start() == self.wal.end() && self.durable_end < lsn {
            // Empty storage (a lost first segment): the write starts it.
            self.durable_end = lsn;
        }
        self.wal.append(lsn, data)?;
        let end = self.wal.end();
        let seg = u64::from(self.seg_size);
        let last_boundary = Lsn(end.0 / seg * seg);
        if last_boundary > was && last_boundary > self.durable_end {
            // The real storage fdatasyncs a segment when a write completes it.
            self.durable_end = last_boundary;
            return Ok(WriteOutcome::SegmentCompleted);
        }
        Ok(WriteOutcome::Written)
    }

    /// `FlushWal`: everything written becomes durable.
    pub fn flush(&mut self) {
        self.durable_end = self.wal.end();
    }

    /// A flush begun when the WAL ended at `end` completed: what it covered is durable.
    pub fn flush_to(&mut self, end: Lsn) {
        self.durable_end = self.durable_end.max(end.min(self.wal.end()));
    }

    /// `TruncateWal`: flushes, then durably cuts the WAL at `end`. An `end` past the
    /// written end is what the real storage does with it: the segment is re-grown with
    /// zeros (a hole) up to `end`; that case is reported as `Err` after doing it.
    pub fn truncate(&mut self, end: Lsn) -> Result<(), String> {
        let written = self.wal.end();
        if end > written {
            let hole = vec![0u8; (end.0 - written.0) as usize];
            self.wal.append(written, Bytes::from(hole))?;
            self.durable_end = self.wal.end();
            return Err(format!(
                "truncation at {end}, past the end of written WAL {written} (a hole of zeros)"
            ));
        }
        self.mark_changed(end);
        self.wal.truncate(end);
        self.durable_end = self.wal.end();
        Ok(())
    }

    /// Cuts everything at and above `end` (the restart's cleanup) or everything (`None`).
    pub fn reset(&mut self, end: Option<Lsn>) {
        match end {
            Some(end) if end >= self.wal.start() && end <= self.wal.end() => {
                self.mark_changed(end);
                self.wal.truncate(end);
            }
            Some(end) => {
                self.mark_changed(end.min(self.wal.start()));
                self.wal = Rope::new(end);
            }
            None => {
                self.mark_changed(self.wal.start());
                self.wal = Rope::new(Lsn::INVALID);
            }
        }
        self.durable_end = self.wal.end();
    }

    /// A crash: the volatile tail is lost, except `keep` bytes of it that the page cache
    /// wrote back. Returns the number of volatile bytes.
    pub fn crash(&mut self, keep: impl FnOnce(u64) -> u64) -> u64 {
        let volatile = self.wal.end().0 - self.durable_end.0;
        let kept = keep(volatile).min(volatile);
        let end = Lsn(self.durable_end.0 + kept);
        if end < self.wal.end() {
            self.mark_changed(end);
            self.wal.truncate(end);
        }
        self.durable_end = self.wal.end();
        volatile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_append_truncate_read() {
        let mut r = Rope::new(Lsn(100));
        r.append(Lsn(100), Bytes::from_static(b"abcd")).unwrap();
        r.append(Lsn(104), Bytes::from_static(b"efgh")).unwrap();
        assert!(r.append(Lsn(100), Bytes::from_static(b"x")).is_err());
        assert_eq!(r.read(Lsn(102), Lsn(106)).unwrap(), b"cdef");
        r.truncate(Lsn(105));
        assert_eq!(r.end(), Lsn(105));
        assert_eq!(r.read(Lsn(100), Lsn(105)).unwrap(), b"abcde");
        assert!(r.read(Lsn(100), Lsn(106)).is_none());
        r.truncate(Lsn(104));
        assert_eq!(r.read(Lsn(100), Lsn(104)).unwrap(), b"abcd");
        r.append(Lsn(104), Bytes::from_static(b"XY")).unwrap();
        assert_eq!(r.read(Lsn(103), Lsn(106)).unwrap(), b"dXY");
    }

    #[test]
    fn crash_keeps_durable_and_maybe_a_prefix() {
        let mut s = MemStorage::new(1 << 20);
        s.write(Lsn(1000), Bytes::from_static(b"0123")).unwrap();
        s.flush();
        s.write(Lsn(1004), Bytes::from_static(b"4567")).unwrap();
        assert_eq!(s.crash(|v| v / 2), 4);
        assert_eq!(s.end(), Lsn(1006));
        assert_eq!(s.durable_end(), Lsn(1006));
        s.write(Lsn(1006), Bytes::from_static(b"xx")).unwrap();
        s.crash(|_| 0);
        assert_eq!(s.wal().read(Lsn(1000), Lsn(1006)).unwrap(), b"012345");
    }

    #[test]
    fn completing_a_segment_makes_it_durable() {
        let seg = 1u64 << 20;
        let mut s = MemStorage::new(1 << 20);
        s.write(Lsn(seg - 4), Bytes::from_static(b"ab")).unwrap();
        let out = s.write(Lsn(seg - 2), Bytes::from_static(b"cdef")).unwrap();
        assert_eq!(out, WriteOutcome::SegmentCompleted);
        assert_eq!(s.durable_end(), Lsn(seg));
    }
}
