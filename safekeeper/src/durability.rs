//! How hard the server pushes bytes to disk, and what happens when the disk says no.
//!
//! Every fsync/fdatasync of the server goes through [`SyncMode`]. A failed sync is fatal:
//! the process logs and exits, because Linux may already have dropped the dirty pages
//! and marked them clean; a retried fsync could then "succeed" over lost data
//! (PostgreSQL's "fsyncgate"). The only way to trust the files again is a restart, which
//! fsyncs the whole data directory before reading anything.

use std::fs::File;
use std::io;
use std::path::Path;

/// Whether syncs are real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync/fdatasync for real: the only mode that keeps the durability promises.
    Sync,
    /// Skip every sync (`--no-sync`): for tests only; a crash of the machine loses data.
    NoSync,
}

/// Exit code of the process after a failed fsync.
pub const EXIT_SYNC_FAILED: i32 = 3;

impl SyncMode {
    /// fdatasync `file` (data and the metadata needed to read it back).
    pub fn fdatasync(self, file: &File, path: &Path) {
        if self == SyncMode::Sync
            && let Err(e) = file.sync_data()
        {
            sync_failed("fdatasync", path, &e);
        }
    }

    /// fsync `file` (data and all metadata).
    pub fn fsync(self, file: &File, path: &Path) {
        if self == SyncMode::Sync
            && let Err(e) = file.sync_all()
        {
            sync_failed("fsync", path, &e);
        }
    }

    /// fsync a directory so the names created, renamed or removed in it are durable.
    /// Failing to *open* it (out of file descriptors, say) is an ordinary error for the
    /// caller: nothing was lost, the operation just did not happen. Only a failed sync is
    /// fatal.
    pub fn fsync_dir(self, dir: &Path) -> io::Result<()> {
        if self == SyncMode::NoSync {
            return Ok(());
        }
        let d = File::open(dir)?;
        if let Err(e) = d.sync_all() {
            sync_failed("fsync of directory", dir, &e);
        }
        Ok(())
    }

    /// Fsyncs a whole tree (start-up: see [`utils::fs::fsync_tree`]).
    pub fn fsync_tree(self, root: &Path) {
        if self == SyncMode::Sync
            && let Err(e) = utils::fs::fsync_tree(root)
        {
            sync_failed("fsync of data directory tree", root, &e);
        }
    }
}

/// Logs the failed sync and ends the process. Never returns.
pub fn sync_failed(what: &str, path: &Path, err: &io::Error) -> ! {
    tracing::error!(
        path = %path.display(),
        error = %err,
        "{what} failed: data may be lost; exiting (a restart re-reads only what is durable)"
    );
    eprintln!("FATAL: {what} of {} failed: {err}; exiting", path.display());
    std::process::exit(EXIT_SYNC_FAILED)
}
