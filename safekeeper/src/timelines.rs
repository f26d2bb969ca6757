//! The registry of timelines: the data-directory layout, loading at start, atomic
//! creation, and the errors that keep one bad timeline from affecting the others.
//!
//! Layout: `<datadir>/<tenant_id>/<timeline_id>/` holds `safekeeper.control` and the WAL
//! segments; `<datadir>/tmp/` holds timelines under construction. A timeline is created
//! whole in `tmp/` (control file written and synced) and renamed into place, so after a
//! crash it exists entirely or not at all.
//!
//! Must never: hold the registry lock while loading or creating on disk for longer than
//! that one timeline needs, or serve a timeline whose control file failed its checks.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use utils::xlog::DecoderConfig;
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, TimelineId};

use crate::control_file::{self, ControlFileError};
use crate::durability::SyncMode;
use crate::state::{ServerInfo, TimelineState};
use crate::timeline::Timeline;
use crate::wal_storage::{self, WalStorage};

/// Why a timeline cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such timeline here.
    #[error("timeline {0} does not exist on this safekeeper")]
    NotFound(TenantTimelineId),
    /// Its control file is corrupt or unreadable; it is not served.
    #[error("timeline {ttid} is unavailable: {error}")]
    Unavailable {
        /// The timeline.
        ttid: TenantTimelineId,
        /// Why (names the file).
        error: String,
    },
    /// Creating or loading it failed.
    #[error("could not set up timeline {ttid}: {source}")]
    Io {
        /// The timeline.
        ttid: TenantTimelineId,
        /// The error.
        source: io::Error,
    },
}

enum Entry {
    Loaded(Arc<Timeline>),
    /// Found on disk but not servable (the message names the file and the problem).
    Unavailable(String),
}

/// All timelines of this safekeeper.
pub struct Timelines {
    datadir: PathBuf,
    node_id: NodeId,
    sync: SyncMode,
    map: Mutex<HashMap<TenantTimelineId, Entry>>,
}

impl Timelines {
    /// Loads every timeline under `datadir`. A timeline that fails to load is recorded as
    /// unavailable (and logged); the others are served.
    pub fn load(datadir: &Path, node_id: NodeId, sync: SyncMode) -> io::Result<Self> {
        fs::create_dir_all(datadir.join("tmp"))?;
        // Leftovers of creations interrupted by a crash.
        for entry in fs::read_dir(datadir.join("tmp"))? {
            let p = entry?.path();
            if p.is_dir() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
        let me = Timelines {
            datadir: datadir.to_path_buf(),
            node_id,
            sync,
            map: Mutex::new(HashMap::new()),
        };
        for tenant in fs::read_dir(datadir)? {
            let tenant = tenant?;
            let Some(tenant_id) = tenant
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TenantId>().ok())
            else {
                continue;
            };
            for tl in fs::read_dir(tenant.path())? {
                let tl = tl?;
                let Some(timeline_id) = tl
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<TimelineId>().ok())
                else {
                    continue;
                };
                let ttid = TenantTimelineId::new(tenant_id, timeline_id);
                let entry = me.load_one(ttid);
                me.map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ttid, entry);
            }
        }
        Ok(me)
    }

    /// Directory of a timeline.
    pub fn timeline_dir(&self, ttid: &TenantTimelineId) -> PathBuf {
        self.datadir
            .join(ttid.tenant_id.to_string())
            .join(ttid.timeline_id.to_string())
    }

    fn load_one(&self, ttid: TenantTimelineId) -> Entry {
        match self.open_timeline(ttid) {
            Ok(tl) => {
                tracing::info!(%ttid, "loaded timeline");
                Entry::Loaded(Arc::new(tl))
            }
            Err(e) => {
                tracing::error!(%ttid, "timeline will not be served: {e}");
                Entry::Unavailable(e.to_string())
            }
        }
    }

    /// Reads a timeline from disk: control file, end-of-WAL scan, tail cleanup.
    fn open_timeline(&self, ttid: TenantTimelineId) -> Result<Timeline, OpenError> {
        let dir = self.timeline_dir(&ttid);
        let state = control_file::load(&dir)?;
        if state.ttid != ttid {
            return Err(OpenError::Corrupt(format!(
                "control file in {} belongs to timeline {}",
                dir.display(),
                state.ttid
            )));
        }
        let seg_size = state.server.wal_seg_size;
        let mut flush_lsn = Lsn::INVALID;
        if state.commit_lsn.is_valid() {
            let cfg = DecoderConfig::new(state.server.pg_version, seg_size, state.server.system_id);
            flush_lsn = wal_storage::find_end_of_wal(&dir, state.commit_lsn, cfg, seg_size)?;
        }
        let mut storage = WalStorage::open(&dir, seg_size, self.sync, flush_lsn);
        if flush_lsn.is_valid() {
            // Whatever lies past the last valid record was never acknowledged; zero it so
            // that it can never be mistaken for WAL later.
            storage.truncate(flush_lsn)?;
        }
        Ok(Timeline::new(
            &dir,
            self.sync,
            self.node_id,
            state,
            flush_lsn,
            storage,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantTimelineId, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The timeline, if it exists and is servable. A timeline broken by a storage error
    /// is reloaded from disk here.
    pub fn get(&self, ttid: &TenantTimelineId) -> Result<Arc<Timeline>, RegistryError> {
        match self.lock().get(ttid) {
            None => return Err(RegistryError::NotFound(*ttid)),
            Some(Entry::Unavailable(error)) => {
                return Err(RegistryError::Unavailable {
                    ttid: *ttid,
                    error: error.clone(),
                });
            }
            Some(Entry::Loaded(tl)) if !tl.is_broken() => return Ok(tl.clone()),
            Some(Entry::Loaded(_)) => {}
        }
        let entry = self.load_one(*ttid);
        let result = match &entry {
            Entry::Loaded(tl) => Ok(tl.clone()),
            Entry::Unavailable(error) => Err(RegistryError::Unavailable {
                ttid: *ttid,
                error: error.clone(),
            }),
        };
        self.lock().insert(*ttid, entry);
        result
    }

    /// The timeline, created from a proposer's greeting if it does not exist.
    pub fn get_or_create(
        &self,
        ttid: TenantTimelineId,
        server: ServerInfo,
    ) -> Result<Arc<Timeline>, RegistryError> {
        match self.get(&ttid) {
            Err(RegistryError::NotFound(_)) => {}
            other => return other,
        }
        let mut map = self.lock();
        if let Some(Entry::Loaded(tl)) = map.get(&ttid) {
            return Ok(tl.clone());
        }
        let io_err = |source| RegistryError::Io { ttid, source };
        let state = TimelineState::new(ttid, server);
        self.create_on_disk(&state).map_err(io_err)?;
        let dir = self.timeline_dir(&ttid);
        let storage = WalStorage::open(&dir, server.wal_seg_size, self.sync, Lsn::INVALID);
        let tl = Arc::new(Timeline::new(
            &dir,
            self.sync,
            self.node_id,
            state,
            Lsn::INVALID,
            storage,
        ));
        map.insert(ttid, Entry::Loaded(tl.clone()));
        tracing::info!(%ttid, "created timeline");
        Ok(tl)
    }

    /// Builds the timeline directory in `tmp/` and renames it into place durably.
    fn create_on_disk(&self, state: &TimelineState) -> io::Result<()> {
        let ttid = state.ttid;
        let tmp = self
            .datadir
            .join("tmp")
            .join(format!("{}_{}", ttid.tenant_id, ttid.timeline_id));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        control_file::persist(&tmp, state, self.sync)?;
        let tenant_dir = self.datadir.join(ttid.tenant_id.to_string());
        if !tenant_dir.exists() {
            fs::create_dir_all(&tenant_dir)?;
            self.sync.fsync_dir(&self.datadir);
        }
        fs::rename(&tmp, self.timeline_dir(&ttid))?;
        // Both directories changed: the target gained an entry, tmp lost one.
        self.sync.fsync_dir(&tenant_dir);
        self.sync.fsync_dir(&self.datadir.join("tmp"));
        Ok(())
    }

    /// Every timeline id known (servable or not).
    pub fn list(&self) -> Vec<TenantTimelineId> {
        let mut v: Vec<_> = self.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// Every loaded timeline.
    pub fn loaded(&self) -> Vec<Arc<Timeline>> {
        self.lock()
            .values()
            .filter_map(|e| match e {
                Entry::Loaded(tl) => Some(tl.clone()),
                Entry::Unavailable(_) => None,
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    ControlFile(#[from] ControlFileError),
    #[error("{0}")]
    Corrupt(String),
    #[error("reading WAL: {0}")]
    Io(#[from] io::Error),
}
