//! Reading WAL back from a timeline's segment files for senders.
//!
//! Positioned reads (`pread`) into a buffer reused across calls, never crossing a segment
//! boundary; the `.partial` file is tried first (see
//! [`crate::wal_storage::open_segment_for_read`]). Blocking: run on a blocking thread —
//! except [`WalReader::read_cached`], which only succeeds when the bytes are in the page
//! cache (`preadv2(RWF_NOWAIT)`) and so may run on the sender's own thread, saving the
//! hand-off to a blocking thread for the common case of a reader close behind the writer.
//! Must never: read above the end the caller was allowed to send (the caller passes it).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use utils::{Lsn, SegNo};

use crate::wal_storage::open_segment_for_read;

/// A reader of one timeline's WAL files.
pub struct WalReader {
    dir: PathBuf,
    seg_size: u32,
    open: Option<(SegNo, File)>,
    buf: Vec<u8>,
    /// `RWF_NOWAIT` was refused once (kernel or filesystem): do not try again.
    no_nowait: bool,
    /// A segment no longer on local disk, downloaded from the archive: read from there.
    archived: Option<(SegNo, PathBuf)>,
}

impl WalReader {
    /// A reader of the segments in `dir`.
    pub fn new(dir: PathBuf, seg_size: u32) -> Self {
        WalReader {
            dir,
            seg_size,
            open: None,
            buf: Vec::new(),
            no_nowait: false,
            archived: None,
        }
    }

    /// Reads segment `segno` from `path` (a copy from the archive) when it is not in the
    /// timeline's directory.
    pub fn use_archived(&mut self, segno: SegNo, path: PathBuf) {
        self.archived = Some((segno, path));
        if self.open.as_ref().is_some_and(|(s, _)| *s == segno) {
            self.open = None;
        }
    }

    /// Like [`WalReader::read`] (the same `n` bytes), but only if that cannot block: the
    /// segment is already open and every byte is in the page cache. `None` means "use
    /// `read` on a blocking thread"; errors are left to that call too.
    pub fn read_cached(&mut self, pos: Lsn, max: usize) -> Option<&[u8]> {
        let segno = pos.segment_number(self.seg_size);
        let n = (pos.remaining_in_segment(self.seg_size) as usize).min(max);
        if self.no_nowait {
            return None;
        }
        let (open_segno, file) = self.open.as_ref()?;
        if *open_segno != segno {
            return None;
        }
        self.buf.resize(n, 0);
        let offset = pos.segment_offset(self.seg_size) as u64;
        match preadv2_nowait(file, &mut self.buf[..n], offset) {
            Ok(k) if k == n => Some(&self.buf[..n]),
            Ok(_) => None, // partly cached, or the end of the file: the slow path decides
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) {
                    self.no_nowait = true;
                }
                None
            }
        }
    }

    /// Reads up to `max` bytes at `pos`, stopping at the segment boundary. The returned
    /// slice borrows the reader's buffer until the next call.
    pub fn read(&mut self, pos: Lsn, max: usize) -> io::Result<&[u8]> {
        let segno = pos.segment_number(self.seg_size);
        let n = (pos.remaining_in_segment(self.seg_size) as usize).min(max);
        if self.open.as_ref().map(|(s, _)| *s) != Some(segno) {
            let local = open_segment_for_read(&self.dir, segno, self.seg_size)?;
            let archived = match (&local, &self.archived) {
                (None, Some((s, path))) if *s == segno => Some(File::open(path)?),
                _ => None,
            };
            let file = local.or(archived).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "WAL segment {} is not on this safekeeper",
                        utils::xlog::xlog_file_name(1, segno, self.seg_size)
                    ),
                )
            })?;
            self.open = Some((segno, file));
        }
        let (_, file) = self.open.as_ref().expect("opened above");
        self.buf.resize(n, 0);
        let offset = pos.segment_offset(self.seg_size) as u64;
        let mut done = 0;
        while done < n {
            let k = file.read_at(&mut self.buf[done..n], offset + done as u64)?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("WAL segment ends before {}", Lsn(pos.0 + done as u64)),
                ));
            }
            done += k;
        }
        Ok(&self.buf[..n])
    }

    /// Forgets the open file (e.g. after it was renamed or truncated).
    pub fn reset(&mut self) {
        self.open = None;
    }
}

/// One `preadv2(..., RWF_NOWAIT)`: bytes read, or `WouldBlock` when not cached.
#[cfg(target_os = "linux")]
fn preadv2_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; the fd is open.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(not(target_os = "linux"))]
fn preadv2_nowait(_: &File, _: &mut [u8], _: u64) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use utils::xlog::xlog_file_name;

    const SEG: u32 = 1 << 20;

    fn segment(fill: u8) -> Vec<u8> {
        (0..SEG).map(|i| fill.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn reads_stop_at_the_segment_end_and_prefer_partial() {
        let dir = tempfile::tempdir().unwrap();
        let name = |segno| xlog_file_name(1, segno, SEG);
        std::fs::write(dir.path().join(name(1)), segment(1)).unwrap();
        // Segment 2 exists both ways (a rename in progress): `.partial` wins.
        std::fs::write(dir.path().join(name(2)), segment(0)).unwrap();
        std::fs::write(dir.path().join(format!("{}.partial", name(2))), segment(2)).unwrap();
        let mut r = WalReader::new(dir.path().to_path_buf(), SEG);

        let near_end = Lsn(2 * u64::from(SEG) - 10);
        let got = r.read(near_end, 100).unwrap().to_vec();
        assert_eq!(got, segment(1)[SEG as usize - 10..]);
        let got = r.read(Lsn(2 * u64::from(SEG) + 5), 3).unwrap().to_vec();
        assert_eq!(got, segment(2)[5..8]);

        let e = r.read(Lsn(3 * u64::from(SEG)), 8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&name(3)), "{e}");
    }

    #[test]
    fn cached_reads_match_blocking_reads_and_never_open_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(xlog_file_name(1, 1, SEG)), segment(1)).unwrap();
        let mut r = WalReader::new(dir.path().to_path_buf(), SEG);
        let at = Lsn(u64::from(SEG) + 1000);
        // Nothing open yet: the fast path declines.
        assert!(r.read_cached(at, 4096).is_none());
        let slow = r.read(at, 4096).unwrap().to_vec();
        // Just written, so cached (where RWF_NOWAIT is supported: else None, also fine).
        if let Some(fast) = r.read_cached(at, 4096) {
            assert_eq!(fast, &slow[..]);
        }
        // Another segment is not opened by the fast path.
        assert!(r.read_cached(Lsn(2 * u64::from(SEG)), 10).is_none());
    }

    #[test]
    fn a_short_file_is_an_error_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join(format!("{}.partial", xlog_file_name(1, 1, SEG)));
        std::fs::write(&path, [7u8; 100]).unwrap();
        let mut r = WalReader::new(dir.path().to_path_buf(), SEG);
        assert_eq!(r.read(Lsn(u64::from(SEG) + 90), 10).unwrap(), [7u8; 10]);
        let e = r.read(Lsn(u64::from(SEG) + 90), 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
