//! Reading WAL back from a timeline's segment files for senders.
//!
//! Positioned reads (`pread`) into a buffer reused across calls, never crossing a segment
//! boundary; the `.partial` file is tried first (see
//! [`crate::wal_storage::open_segment_for_read`]). Blocking: run on a blocking thread.
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
}

impl WalReader {
    /// A reader of the segments in `dir`.
    pub fn new(dir: PathBuf, seg_size: u32) -> Self {
        WalReader {
            dir,
            seg_size,
            open: None,
            buf: Vec::new(),
        }
    }

    /// Reads up to `max` bytes at `pos`, stopping at the segment boundary. The returned
    /// slice borrows the reader's buffer until the next call.
    pub fn read(&mut self, pos: Lsn, max: usize) -> io::Result<&[u8]> {
        let segno = pos.segment_number(self.seg_size);
        let n = (pos.remaining_in_segment(self.seg_size) as usize).min(max);
        if self.open.as_ref().map(|(s, _)| *s) != Some(segno) {
            let file =
                open_segment_for_read(&self.dir, segno, self.seg_size)?.ok_or_else(|| {
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
