//! The registry of timelines: which exist, in which state, and the transitions between
//! states (load at start, creation, reload after a storage error, deletion).
//!
//! Each timeline's entry is `Creating` (being created or reloaded), `Active`, `Deleting`
//! or `Unavailable` (found on disk but not servable: a corrupt control file, say; the
//! source error is kept and reported). A transition marks the entry under the map lock,
//! then does its disk work on the WAL pool with the lock released, and settles the entry
//! under the lock again; callers that arrive meanwhile wait for it to settle. So no I/O
//! happens under the map lock, and a broken timeline is reloaded once however many
//! callers ask for it. Transitions run as tasks of the registry, so a caller that goes
//! away midway cannot leave an entry unsettled.
//!
//! Owns: the map and the transitions ([`layout`] owns the files). Must never: hold the map
//! lock across I/O or an `.await`, serve a timeline whose control file failed its checks,
//! or let two in-memory timelines use the same directory (a reload shuts the old one down
//! first).

pub mod layout;
mod open;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utils::{NodeId, TenantId, TenantTimelineId, TimelineId};

use crate::durability::SyncMode;
use crate::ingest::OpenError;
use crate::metrics::LoadReason;
use crate::state::{ServerInfo, TimelineState};
use crate::storage::StorageHook;
use crate::timeline::{Timeline, TimelineCtx};
use crate::wal_storage::OpenSegments;

/// Why a timeline cannot be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such timeline here.
    #[error("timeline {0} does not exist on this safekeeper")]
    NotFound(TenantTimelineId),
    /// Its control file is corrupt or unreadable, or its WAL could not be read: it is not
    /// served.
    #[error("timeline {ttid} is unavailable: {source}")]
    Unavailable {
        /// The timeline.
        ttid: TenantTimelineId,
        /// Why (names the file).
        source: Arc<OpenError>,
    },
    /// Creating it failed.
    #[error("could not create timeline {ttid}: {source}")]
    Io {
        /// The timeline.
        ttid: TenantTimelineId,
        /// The error.
        source: Arc<std::io::Error>,
    },
    /// Removing a tenant's (empty) directory failed.
    #[error("could not remove the directory of tenant {tenant}: {source}")]
    TenantIo {
        /// The tenant.
        tenant: TenantId,
        /// The error.
        source: Arc<std::io::Error>,
    },
    /// The server is shutting down.
    #[error("the safekeeper is shutting down")]
    ShuttingDown,
    /// A timeline of that id exists already (or is being created or deleted).
    #[error("timeline {0} already exists on this safekeeper")]
    Exists(TenantTimelineId),
}

/// How a transition ended, for those waiting on it.
type Settled = Option<Result<(), RegistryError>>;

enum Entry {
    /// Being created or reloaded.
    Creating(watch::Receiver<Settled>),
    /// Loaded and served.
    Active(Arc<Timeline>),
    /// Being deleted.
    Deleting(watch::Receiver<Settled>),
    /// Found on disk but not servable.
    Unavailable {
        /// Why.
        source: Arc<OpenError>,
    },
}

/// What the registry needs besides its map.
pub struct RegistryConfig {
    /// The data directory.
    pub datadir: PathBuf,
    /// This safekeeper's id.
    pub node_id: NodeId,
    /// Whether syncs are real.
    pub sync: SyncMode,
    /// The test hook of every timeline's storage (`None` in production).
    pub hook: Option<Arc<dyn StorageHook>>,
    /// The budget of open segment files all timelines share.
    pub open_segments: OpenSegments,
}

/// All timelines of this safekeeper.
pub struct Timelines {
    conf: RegistryConfig,
    ctx: TimelineCtx,
    /// The server's shutdown token (each timeline's is a child of it).
    shutdown: CancellationToken,
    map: Mutex<HashMap<TenantTimelineId, Entry>>,
    /// Transitions in progress.
    tasks: TaskTracker,
}

/// How a timeline being created gets its first state.
enum Make {
    /// From a proposer's greeting: no term, no WAL.
    Greeting(ServerInfo),
    /// From the API: a full initial state, WAL starting at its `local_start_lsn`.
    Initialized(Box<TimelineState>),
    /// Copied from a peer: the state and what writes its WAL into the new directory.
    Pulled(Box<TimelineState>, Fill),
}

/// Writes a timeline's files into its directory under construction (in `tmp/`), durably,
/// and checks them; an error leaves nothing behind. Runs on a WAL-pool thread.
pub type Fill = Box<dyn FnOnce(&Path) -> std::io::Result<()> + Send>;

/// What a caller does after looking at an entry.
enum Next {
    Done(Result<Arc<Timeline>, RegistryError>),
    Wait(watch::Receiver<Settled>),
}

impl Timelines {
    /// Loads every timeline under the data directory (in parallel on the WAL pool). A
    /// timeline that fails to load is recorded as unavailable (and logged); the others are
    /// served.
    pub async fn load(
        conf: RegistryConfig,
        ctx: TimelineCtx,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let datadir = conf.datadir.clone();
        let listed = ctx
            .wal_pool
            .run(move || {
                layout::clean_tmp(&datadir)?;
                layout::list(&datadir)
            })
            .await
            .map_err(std::io::Error::other)??;
        let me = Arc::new(Timelines {
            conf,
            ctx,
            shutdown,
            map: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        });
        let mut loads = tokio::task::JoinSet::new();
        for ttid in listed {
            let me2 = me.clone();
            loads.spawn(async move { (ttid, me2.open(ttid, LoadReason::Start).await) });
        }
        while let Some(r) = loads.join_next().await {
            let (ttid, entry) = r.map_err(std::io::Error::other)?;
            me.lock().insert(ttid, entry);
        }
        Ok(me)
    }

    /// The data directory.
    pub fn datadir(&self) -> &Path {
        &self.conf.datadir
    }

    /// Directory of a timeline.
    pub fn timeline_dir(&self, ttid: &TenantTimelineId) -> PathBuf {
        layout::timeline_dir(&self.conf.datadir, ttid)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantTimelineId, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The timeline, if it exists and is servable. A timeline broken by a storage error
    /// is reloaded from disk here (once, whoever else asks meanwhile).
    pub async fn get(
        self: &Arc<Self>,
        ttid: &TenantTimelineId,
    ) -> Result<Arc<Timeline>, RegistryError> {
        self.resolve(*ttid, None).await
    }

    /// The timeline, created from a proposer's greeting if it does not exist.
    pub async fn get_or_create(
        self: &Arc<Self>,
        ttid: TenantTimelineId,
        server: ServerInfo,
    ) -> Result<Arc<Timeline>, RegistryError> {
        self.resolve(ttid, Some(server)).await
    }

    async fn resolve(
        self: &Arc<Self>,
        ttid: TenantTimelineId,
        create: Option<ServerInfo>,
    ) -> Result<Arc<Timeline>, RegistryError> {
        loop {
            let next = {
                let mut map = self.lock();
                match map.get(&ttid) {
                    None => match create {
                        None => Next::Done(Err(RegistryError::NotFound(ttid))),
                        Some(server) => {
                            let rx = self.transition(&mut map, ttid, Entry::Creating, |me, tx| {
                                me.create(ttid, Make::Greeting(server), tx)
                            });
                            Next::Wait(rx)
                        }
                    },
                    Some(Entry::Active(tl)) if !tl.is_broken() => Next::Done(Ok(tl.clone())),
                    Some(Entry::Active(tl)) => {
                        let old = tl.clone();
                        let rx = self.transition(&mut map, ttid, Entry::Creating, |me, tx| {
                            me.reload(old, tx)
                        });
                        Next::Wait(rx)
                    }
                    Some(Entry::Creating(rx)) | Some(Entry::Deleting(rx)) => Next::Wait(rx.clone()),
                    Some(Entry::Unavailable { source }) => {
                        Next::Done(Err(RegistryError::Unavailable {
                            ttid,
                            source: source.clone(),
                        }))
                    }
                }
            };
            match next {
                Next::Done(r) => return r,
                Next::Wait(rx) => {
                    if let Some(Err(e)) = settled(rx).await {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Marks `ttid` with `mark(rx)` and starts `work` as a registry task that settles it.
    /// Called with the map locked.
    fn transition<F, Fut>(
        self: &Arc<Self>,
        map: &mut HashMap<TenantTimelineId, Entry>,
        ttid: TenantTimelineId,
        mark: fn(watch::Receiver<Settled>) -> Entry,
        work: F,
    ) -> watch::Receiver<Settled>
    where
        F: FnOnce(Arc<Self>, watch::Sender<Settled>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        map.insert(ttid, mark(rx.clone()));
        self.tasks.spawn(work(self.clone(), tx));
        rx
    }

    /// Reads a timeline from disk: an `Active` entry, or `Unavailable` with the reason.
    async fn open(self: &Arc<Self>, ttid: TenantTimelineId, reason: LoadReason) -> Entry {
        let me = self.clone();
        let opened = self.ctx.wal_pool.run(move || me.open_executor(ttid)).await;
        self.ctx.metrics.timeline_loaded(reason);
        match opened {
            Ok(Ok(exec)) => {
                tracing::info!(%ttid, ?reason, "loaded timeline");
                Entry::Active(Timeline::new(exec, self.ctx.clone(), &self.shutdown))
            }
            Ok(Err(e)) => {
                tracing::error!(%ttid, "timeline will not be served: {e}");
                Entry::Unavailable {
                    source: Arc::new(e),
                }
            }
            Err(e) => Entry::Unavailable {
                source: Arc::new(OpenError::Io(std::io::Error::other(e))),
            },
        }
    }

    /// The reload of a broken timeline: the old one is shut down first (no two in-memory
    /// timelines on one directory), then the files are read again.
    async fn reload(self: Arc<Self>, old: Arc<Timeline>, tx: watch::Sender<Settled>) {
        let ttid = old.ttid;
        tracing::warn!(%ttid, "reloading timeline after a storage error");
        old.shutdown().await;
        let entry = self.open(ttid, LoadReason::Reload).await;
        self.lock().insert(ttid, entry);
        let _ = tx.send(Some(Ok(())));
    }

    async fn create(
        self: Arc<Self>,
        ttid: TenantTimelineId,
        make: Make,
        tx: watch::Sender<Settled>,
    ) {
        let me = self.clone();
        let made = self
            .ctx
            .wal_pool
            .run(move || match make {
                Make::Greeting(server) => me.create_executor(ttid, server).map_err(OpenError::Io),
                Make::Initialized(state) => me.init_executor(*state),
                Make::Pulled(state, fill) => me.pulled_executor(*state, fill),
            })
            .await;
        let result = match made {
            Ok(Ok(exec)) => {
                self.ctx.metrics.timeline_loaded(LoadReason::Create);
                tracing::info!(%ttid, "created timeline");
                let tl = Timeline::new(exec, self.ctx.clone(), &self.shutdown);
                self.lock().insert(ttid, Entry::Active(tl));
                Ok(())
            }
            Ok(Err(source)) => {
                tracing::error!(%ttid, "could not create timeline: {source}");
                self.lock().remove(&ttid);
                let source = match source {
                    OpenError::Io(e) => e,
                    other => std::io::Error::other(other.to_string()),
                };
                Err(RegistryError::Io {
                    ttid,
                    source: Arc::new(source),
                })
            }
            Err(_) => {
                self.lock().remove(&ttid);
                Err(RegistryError::ShuttingDown)
            }
        };
        let _ = tx.send(Some(result));
    }

    /// Creates a timeline from a full initial state (the API's create: membership
    /// configuration, server, and WAL starting at `state.local_start_lsn`), durably, if no
    /// timeline of that id exists. Returns the timeline and whether this call created it
    /// (`false`: it existed already; the caller compares it with what it asked for).
    pub async fn create_with_state(
        self: &Arc<Self>,
        state: TimelineState,
    ) -> Result<(Arc<Timeline>, bool), RegistryError> {
        let ttid = state.ttid;
        loop {
            let rx = {
                let mut map = self.lock();
                if map.contains_key(&ttid) {
                    None
                } else {
                    let make = Make::Initialized(Box::new(state.clone()));
                    Some(
                        self.transition(&mut map, ttid, Entry::Creating, move |me, tx| {
                            me.create(ttid, make, tx)
                        }),
                    )
                }
            };
            let ours = rx.is_some();
            if let Some(rx) = rx
                && let Some(Err(e)) = settled(rx).await
            {
                return Err(e);
            }
            match self.get(&ttid).await {
                Ok(tl) => return Ok((tl, ours)),
                // Deleted meanwhile: try again.
                Err(RegistryError::NotFound(_)) if !ours => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates a timeline copied from a peer (`pull_timeline`): `fill` writes and checks
    /// its WAL in `tmp/`, the control file holding `state` is written beside it, and the
    /// directory is renamed into place and opened by the restart path (see
    /// [`layout::create`]). [`RegistryError::Exists`] if a timeline of that id exists or
    /// is being created or deleted; a failed `fill` leaves nothing behind.
    pub async fn create_pulled(
        self: &Arc<Self>,
        state: TimelineState,
        fill: Fill,
    ) -> Result<Arc<Timeline>, RegistryError> {
        let ttid = state.ttid;
        let rx = {
            let mut map = self.lock();
            if map.contains_key(&ttid) {
                return Err(RegistryError::Exists(ttid));
            }
            let make = Make::Pulled(Box::new(state), fill);
            self.transition(&mut map, ttid, Entry::Creating, move |me, tx| {
                me.create(ttid, make, tx)
            })
        };
        if let Some(Err(e)) = settled(rx).await {
            return Err(e);
        }
        self.get(&ttid).await
    }

    /// True if a timeline of that id is known here (in any state).
    pub fn contains(&self, ttid: &TenantTimelineId) -> bool {
        self.lock().contains_key(ttid)
    }

    /// Deletes every timeline of `tenant` (as [`Timelines::delete`]), then its directory
    /// if it is left empty. Returns each timeline and whether it existed.
    pub async fn delete_tenant(
        self: &Arc<Self>,
        tenant: &TenantId,
    ) -> Result<BTreeMap<TimelineId, bool>, RegistryError> {
        let mut out = BTreeMap::new();
        for ttid in self.list().into_iter().filter(|t| t.tenant_id == *tenant) {
            out.insert(ttid.timeline_id, self.delete(&ttid).await?);
        }
        let (datadir, sync, tenant) = (self.conf.datadir.clone(), self.conf.sync, *tenant);
        let removed = self
            .ctx
            .wal_pool
            .run(move || layout::remove_tenant_if_empty(&datadir, &tenant, sync))
            .await
            .map_err(|_| RegistryError::ShuttingDown)?;
        removed.map_err(|e| RegistryError::TenantIo {
            tenant,
            source: Arc::new(e),
        })?;
        Ok(out)
    }

    /// Deletes a timeline: its streams end, its files are removed durably. `false` if it
    /// did not exist.
    pub async fn delete(self: &Arc<Self>, ttid: &TenantTimelineId) -> Result<bool, RegistryError> {
        let ttid = *ttid;
        loop {
            let (rx, ours) = {
                let mut map = self.lock();
                match map.get(&ttid) {
                    None => return Ok(false),
                    Some(Entry::Creating(rx)) | Some(Entry::Deleting(rx)) => (rx.clone(), false),
                    Some(entry) => {
                        // Active (shut down first) or unavailable (files only).
                        let tl = match entry {
                            Entry::Active(tl) => Some(tl.clone()),
                            _ => None,
                        };
                        let rx = self.transition(&mut map, ttid, Entry::Deleting, move |me, tx| {
                            me.remove(ttid, tl, tx)
                        });
                        (rx, true)
                    }
                }
            };
            let outcome = settled(rx).await;
            if !ours {
                // Someone else's transition settled: look again.
                continue;
            }
            return match outcome {
                Some(Err(e)) => Err(e),
                _ => Ok(true),
            };
        }
    }

    async fn remove(
        self: Arc<Self>,
        ttid: TenantTimelineId,
        tl: Option<Arc<Timeline>>,
        tx: watch::Sender<Settled>,
    ) {
        if let Some(tl) = tl {
            tl.shutdown().await;
        }
        let (datadir, sync) = (self.conf.datadir.clone(), self.conf.sync);
        let removed = self
            .ctx
            .wal_pool
            .run(move || layout::remove(&datadir, &ttid, sync))
            .await;
        let result = match removed {
            Ok(Ok(())) => {
                tracing::info!(%ttid, "deleted timeline");
                self.lock().remove(&ttid);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(%ttid, "could not delete timeline: {e}");
                let source = Arc::new(OpenError::Io(e));
                self.lock().insert(
                    ttid,
                    Entry::Unavailable {
                        source: source.clone(),
                    },
                );
                Err(RegistryError::Unavailable { ttid, source })
            }
            Err(_) => Err(RegistryError::ShuttingDown),
        };
        let _ = tx.send(Some(result));
    }

    /// Every timeline id known (servable or not), sorted.
    pub fn list(&self) -> Vec<TenantTimelineId> {
        let mut v: Vec<_> = self.lock().keys().copied().collect();
        v.sort();
        v
    }

    /// Every active timeline.
    pub fn active(&self) -> Vec<Arc<Timeline>> {
        self.lock()
            .values()
            .filter_map(|e| match e {
                Entry::Active(tl) => Some(tl.clone()),
                _ => None,
            })
            .collect()
    }

    /// Shuts every timeline down (after the server's connections ended): waits for
    /// transitions in progress, then checkpoints each timeline.
    pub async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        let mut all = tokio::task::JoinSet::new();
        for tl in self.active() {
            all.spawn(async move { tl.shutdown().await });
        }
        while all.join_next().await.is_some() {}
    }
}

/// Waits until a transition settles; its outcome (`None` if its task went away).
async fn settled(mut rx: watch::Receiver<Settled>) -> Settled {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return Some(r);
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone();
        }
    }
}
