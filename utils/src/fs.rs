//! Durability helpers shared by every writer of files that must survive a crash.
//!
//! The rules, applied the same way everywhere:
//! * a file's contents are durable only after `fsync`/`fdatasync` of that file;
//! * a file's *name* (creation, rename, unlink) is durable only after `fsync` of its
//!   directory; without it a power cut can bring back the old name or lose the new one;
//! * an `fsync` that fails is not retried: the kernel may already have dropped the dirty
//!   pages and a second call can "succeed" over lost data. Callers treat it as fatal.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs the directory that holds `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Renames `from` to `to` so that after a crash exactly one of them exists with its full
/// contents: fsync the file's data (a rename may reach disk before the data does), rename,
/// then fsync the directory (so the rename itself is durable). Both paths must be in the
/// same directory or the caller must also fsync `from`'s directory.
pub fn durable_rename(from: &Path, to: &Path) -> io::Result<()> {
    File::open(from)?.sync_all()?;
    fs::rename(from, to)?;
    fsync_parent(to)
}

/// Fsyncs every file and directory under `root` (and `root` itself), deepest first.
///
/// Run on start before trusting any file: after a crash of this process (not of the
/// machine) the page cache may hold writes that were never made durable; reading them
/// back and acknowledging them as "on disk" would be a lie.
pub fn fsync_tree(root: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(root)?;
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            fsync_tree(&entry?.path())?;
        }
        fsync_dir(root)
    } else if meta.is_file() {
        File::open(root)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn durable_rename_replaces_target() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        File::create(&a).unwrap().write_all(b"new").unwrap();
        fs::write(&b, b"old").unwrap();
        durable_rename(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(fs::read(&b).unwrap(), b"new");
    }

    #[test]
    fn fsync_tree_walks_everything() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("x/y")).unwrap();
        fs::write(dir.path().join("x/y/f"), b"1").unwrap();
        fsync_tree(dir.path()).unwrap();
        assert!(fsync_tree(&dir.path().join("missing")).is_err());
    }
}
