//! A hook in front of every operation of the real storage, for tests: it can stall an
//! operation (a flush blocked on a slow disk) or fail it (an I/O error that breaks the
//! timeline), on a real filesystem and through the real server.
//!
//! Owns: [`StorageOp`] and the [`StorageHook`] trait. Must never: be set in production
//! (the server's flags cannot set it; only code that builds a `Config` can).

use std::io;

use utils::TenantTimelineId;

/// An operation of [`super::Storage`] about to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageOp {
    /// `load_control`.
    LoadControl,
    /// `persist_control`.
    PersistControl,
    /// `init_wal`.
    InitWal,
    /// `write_wal`.
    WriteWal,
    /// `flush_wal`.
    FlushWal,
    /// `truncate_wal`.
    TruncateWal,
    /// `read_wal`.
    ReadWal,
}

/// Called before each operation of a timeline's real storage.
pub trait StorageHook: Send + Sync + 'static {
    /// May block (the operation waits) or fail (the operation fails with this error
    /// without touching the disk).
    fn before(&self, ttid: &TenantTimelineId, op: StorageOp) -> io::Result<()>;
}
