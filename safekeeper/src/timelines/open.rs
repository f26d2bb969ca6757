//! Building a timeline's executor over its files: from what is on disk (the restart path)
//! or for a new timeline. Blocking: the registry runs these on the WAL pool.
//!
//! Owns: the wiring of [`FileStorage`] (pool, hook, sync mode) for a directory. Must
//! never: decide what the state means (the executor's restart path does).

use std::io;

use utils::{Lsn, TenantTimelineId, xlog};

use super::{Fill, Timelines, layout};
use crate::ingest::{Executor, OpenError};
use crate::state::{ServerInfo, TimelineState};
use crate::storage::{FileStorage, Storage};
use crate::wal_storage::SegmentEnv;

impl Timelines {
    fn storage(&self, ttid: TenantTimelineId, seg_size: u32) -> FileStorage {
        FileStorage::new(
            ttid,
            &self.timeline_dir(&ttid),
            seg_size,
            SegmentEnv {
                sync: self.conf.sync,
                pool: Some(self.ctx.wal_pool.clone()),
                budget: Some(self.conf.open_segments.clone()),
                io: self.ctx.metrics.wal_io.clone(),
            },
            self.conf.hook.clone(),
        )
    }

    /// Reads a timeline from disk through the executor's restart path.
    pub(super) fn open_executor(
        &self,
        ttid: TenantTimelineId,
    ) -> Result<Executor<FileStorage>, OpenError> {
        let dir = self.timeline_dir(&ttid);
        // The segment size is needed before the storage can be made: the control file is
        // read once, here, and the restart path goes on from it.
        let state = FileStorage::read_control(&ttid, &dir, self.conf.hook.as_ref())?;
        let storage = self.storage(ttid, state.server.wal_seg_size);
        Executor::recover(storage, state, ttid, self.conf.node_id)
    }

    /// Creates a timeline's directory (atomically, see [`layout::create`]) and an executor
    /// with no WAL yet.
    pub(super) fn create_executor(
        &self,
        ttid: TenantTimelineId,
        server: ServerInfo,
    ) -> io::Result<Executor<FileStorage>> {
        let state = TimelineState::new(ttid, server);
        layout::create(&self.conf.datadir, &state, self.conf.sync, |_| Ok(()))?;
        let storage = self.storage(ttid, server.wal_seg_size);
        Ok(Executor::new(
            storage,
            self.conf.node_id,
            state,
            Lsn::INVALID,
        ))
    }

    /// Creates a timeline whose WAL starts at `state.local_start_lsn` (the API's create,
    /// Neon's way): the first segment's synthetic bytes before that LSN (the image an
    /// election writes for a timeline created by a proposer's greeting) are written and
    /// fdatasynced in `tmp/` beside the control file, the directory is renamed into place
    /// (see [`layout::create`]), and the executor comes from the restart path, so a
    /// created timeline is exactly what a restart finds: WAL ending at the start LSN.
    pub(super) fn init_executor(
        &self,
        state: TimelineState,
    ) -> Result<Executor<FileStorage>, OpenError> {
        let ttid = state.ttid;
        let start = state.local_start_lsn;
        let server = state.server;
        let image = xlog::first_segment_image(
            start,
            server.wal_seg_size,
            server.system_id,
            xlog::pg_major(server.pg_version),
        )
        .map_err(|e| OpenError::Io(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())))?;
        let sync = self.conf.sync;
        layout::create(&self.conf.datadir, &state, sync, |dir| {
            // No pool: nothing runs in the background on this directory once it is renamed.
            let env = SegmentEnv {
                sync,
                pool: None,
                budget: None,
                io: self.ctx.metrics.wal_io.clone(),
            };
            let mut storage = FileStorage::new(ttid, dir, server.wal_seg_size, env, None);
            storage.init_wal(start, &image)?;
            storage.flush_wal()
        })?;
        self.open_executor(ttid)
    }

    /// Creates a timeline copied from a peer: `fill` writes (and checks) its WAL in
    /// `tmp/`, then the control file with `state` is written and the directory renamed
    /// into place (see [`layout::create`]); the executor comes from the restart path.
    pub(super) fn pulled_executor(
        &self,
        state: TimelineState,
        fill: Fill,
    ) -> Result<Executor<FileStorage>, OpenError> {
        layout::create(&self.conf.datadir, &state, self.conf.sync, fill)?;
        self.open_executor(state.ttid)
    }

    /// A storage over a directory under construction: no pool, no budget, no hook
    /// (nothing runs in the background there once it is renamed).
    pub fn detached_storage(
        &self,
        ttid: TenantTimelineId,
        dir: &std::path::Path,
        seg_size: u32,
    ) -> FileStorage {
        let env = SegmentEnv {
            sync: self.conf.sync,
            pool: None,
            budget: None,
            io: self.ctx.metrics.wal_io.clone(),
        };
        FileStorage::new(ttid, dir, seg_size, env, None)
    }

    /// This safekeeper's node id.
    pub fn node_id(&self) -> utils::NodeId {
        self.conf.node_id
    }
}
