//! Building a timeline's executor over its files: from what is on disk (the restart path)
//! or for a new timeline. Blocking: the registry runs these on the WAL pool.
//!
//! Owns: the wiring of [`FileStorage`] (pool, hook, sync mode) for a directory. Must
//! never: decide what the state means (the executor's restart path does).

use std::io;

use utils::{Lsn, TenantTimelineId};

use super::{Timelines, layout};
use crate::ingest::{Executor, OpenError};
use crate::state::{ServerInfo, TimelineState};
use crate::storage::FileStorage;
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
        layout::create(&self.conf.datadir, &state, self.conf.sync)?;
        let storage = self.storage(ttid, server.wal_seg_size);
        Ok(Executor::new(
            storage,
            self.conf.node_id,
            state,
            Lsn::INVALID,
        ))
    }
}
