//! The two system calls of segment files that std does not wrap: `pwritev` of batched
//! appends, and the creation of a segment (full size, fsynced with its directory); and the
//! timed fdatasync of a segment.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use crate::durability::SyncMode;
use crate::metrics::WalIoMetrics;

/// fdatasync of a WAL segment, its duration recorded when the sync is real (a skipped one,
/// under `--no-sync`, is not observed).
pub(crate) fn sync_segment(sync: SyncMode, io: &WalIoMetrics, file: &File, path: &Path) {
    if sync == SyncMode::NoSync {
        return;
    }
    let started = Instant::now();
    sync.fdatasync(file, path);
    io.synced(started);
}

/// Writes every byte of `parts` at `offset` (pwritev, continuing after short writes).
pub(super) fn pwritev_all(file: &File, parts: &[Bytes], mut offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut parts: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
    let mut first = 0;
    while first < parts.len() {
        let iov: Vec<libc::iovec> = parts[first..]
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a slice that outlives the call; the fd is open.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += n as u64;
        let mut n = n as usize;
        while n > 0 {
            let len = parts[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                parts[first] = &parts[first][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

/// Creates a segment file at `path`: full size, fsynced, its directory fsynced.
pub(super) fn create_segment(
    dir: &Path,
    path: &Path,
    seg_len: u64,
    sync: SyncMode,
) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    // Full size up front: later fdatasyncs then never change the file's size, and a
    // crash before this point leaves a short file that the end-of-WAL scan stops at.
    file.set_len(seg_len)?;
    sync.fsync(&file, path);
    sync.fsync_dir(dir)?;
    Ok(())
}
