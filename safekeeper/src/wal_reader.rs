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
