//! One timeline in memory: its ingest executor, the inbox that feeds it, the published
//! status, and its lifecycle (a cancellation token and the tasks it owns).
//!
//! Owns:
//! * the order "step → perform effects → publish", done by the ingest loop on a disk-pool
//!   thread ([`ingest`]): every input of the timeline (proposer messages of any
//!   connection, progress reports, checkpoints) goes through one inbox, so all see one
//!   sequence of states;
//! * the status snapshot ([`status`]), published after every step: readers and status
//!   queries never take the executor's lock;
//! * the lifecycle: [`Timeline::cancelled`] ends every stream of the timeline promptly,
//!   [`Timeline::shutdown`] waits for them and for the ingest loop, then checkpoints.
//!
//! Must never: be locked across an `.await` (the executor's lock is a std mutex, held only
//! on pool threads), or take input after its shutdown began.

mod ingest;
mod peers;
mod proposers;
mod reads;
mod recovery;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use utils::{NodeId, TenantTimelineId};

pub use ingest::{Input, ReplyTo};
pub use peers::{PEER_STATUS_APP, PeerBoard, PeerPosition};
pub use proposers::{ProposerInfo, ProposerPhase};
pub use recovery::{Donor, Local, RECOVERY_APP, RecoveryError, choose_donor};
pub use status::TimelineStatus;

use crate::disk_pool::DiskPool;
use crate::feedback::Feedback;
pub use crate::ingest::TimelineError;
use crate::ingest::{ConnId, Executor};
use crate::metrics::Metrics;
use crate::offload::{Offload, OffloadState};
use crate::storage::FileStorage;

/// How often an idle timeline persists lazily kept state that moved.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// What the ingest loop holds while it runs.
struct Core {
    exec: Executor<FileStorage>,
    /// Where each proposer connection's replies go.
    reply_to: HashMap<ConnId, Arc<dyn ReplyTo>>,
    /// AppendRequests stepped since the last flush began (for the metrics).
    appends: u64,
}

/// Inputs waiting for the ingest loop.
#[derive(Default)]
struct Inbox {
    queue: VecDeque<Input>,
    /// The loop is queued on the pool or running (at most one at a time).
    running: bool,
}

/// What a timeline needs from the server.
#[derive(Clone)]
pub struct TimelineCtx {
    /// This safekeeper's node id.
    pub node_id: NodeId,
    /// How often peers are asked for their positions (`None`: never).
    pub peer_status_interval: Option<Duration>,
    /// Where the ingest loop and the timeline's other disk work run.
    pub wal_pool: DiskPool,
    /// Where senders read WAL that is not in the page cache.
    pub read_pool: DiskPool,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// WAL offload to remote storage (`None`: not configured; WAL is then never removed).
    pub offload: Option<Arc<Offload>>,
    /// The password (a JWT) sent to peers asked for their positions (`None`: none).
    pub peer_token: Option<Arc<str>>,
    /// Fetch WAL this member lacks from a peer in the same term when no proposer
    /// streams to it (`recovery`); needs the peers' status (`peer_status_interval`).
    pub peer_recovery: bool,
}

/// One timeline in memory.
pub struct Timeline {
    /// Which timeline.
    pub ttid: TenantTimelineId,
    dir: PathBuf,
    seg_size: u32,
    ctx: TimelineCtx,
    core: Mutex<Core>,
    inbox: Mutex<Inbox>,
    status: watch::Sender<TimelineStatus>,
    /// Held for writing by the steps that may cut or replace WAL (ProposerElected), until
    /// their status is published; term-mode reads hold it for reading, so no truncation
    /// can change bytes while they read them.
    cut: RwLock<()>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Feedback of the timeline's readers (replicas, pageservers).
    pub feedback: Feedback,
    computes: AtomicUsize,
    /// The proposer connections, for the status API.
    proposers: proposers::Proposers,
    next_conn: AtomicU64,
    /// What the peers said in the last status round.
    peers: Mutex<PeerBoard>,
    /// What the offload task shows.
    offload_state: Mutex<OffloadState>,
    /// The running recovery from a peer (cancelled: none runs).
    recovery: Mutex<Option<CancellationToken>>,
    /// Whether a recovery from a peer runs (read on every proposer append).
    recovering: AtomicBool,
    /// When the timeline was made: the clock of `proposer_active_ms`.
    born: Instant,
    /// Milliseconds after `born` of the last proposer activity: a connection, or an
    /// AppendRequest carrying WAL. A proposer idle longer than a peer-status interval is
    /// not sending what we lack (see [`recovery`]).
    proposer_active_ms: AtomicU64,
}

impl Timeline {
    /// Wraps a loaded executor. `parent` is the server's shutdown token: cancelling it
    /// ends the timeline's streams too.
    pub fn new(
        exec: Executor<FileStorage>,
        ctx: TimelineCtx,
        parent: &CancellationToken,
    ) -> Arc<Self> {
        let acceptor = exec.acceptor();
        let ttid = acceptor.state().ttid;
        let seg_size = acceptor.state().server.wal_seg_size;
        let (status, _) = watch::channel(TimelineStatus::of(acceptor, false));
        let dir = exec.storage().dir().to_path_buf();
        let tl = Arc::new(Timeline {
            ttid,
            dir,
            seg_size,
            ctx,
            core: Mutex::new(Core {
                exec,
                reply_to: HashMap::new(),
                appends: 0,
            }),
            inbox: Mutex::new(Inbox::default()),
            status,
            cut: RwLock::new(()),
            cancel: parent.child_token(),
            tasks: TaskTracker::new(),
            feedback: Feedback::default(),
            computes: AtomicUsize::new(0),
            proposers: proposers::Proposers::default(),
            next_conn: AtomicU64::new(1),
            peers: Mutex::new(PeerBoard::default()),
            offload_state: Mutex::new(OffloadState::default()),
            recovery: Mutex::new(None),
            recovering: AtomicBool::new(false),
            born: Instant::now(),
            proposer_active_ms: AtomicU64::new(0),
        });
        tl.start_checkpoints();
        tl.start_peer_status(tl.ctx.peer_status_interval);
        if let Some(off) = tl.ctx.offload.clone() {
            crate::offload::task::start(&tl, off);
        }
        tl
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// The timeline's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The WAL segment size.
    pub fn seg_size(&self) -> u32 {
        self.seg_size
    }

    /// The status as of the last step.
    pub fn status(&self) -> TimelineStatus {
        self.status.borrow().clone()
    }

    /// A watch of the status, for senders waiting on new WAL.
    pub fn subscribe(&self) -> watch::Receiver<TimelineStatus> {
        self.status.subscribe()
    }

    /// True after a storage error: the registry reloads such a timeline from disk.
    pub fn is_broken(&self) -> bool {
        self.status.borrow().broken
    }

    /// Cancelled when the timeline shuts down: every stream of it ends.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Counts a stream of this timeline (a proposer connection, a WAL sender) until the
    /// token is dropped: [`Timeline::shutdown`] waits for it.
    pub fn stream_token(&self) -> TaskTrackerToken {
        self.tasks.token()
    }

    /// Runs `fut` as a task of this timeline on `rt` (the caller's runtime when `None`):
    /// [`Timeline::shutdown`] waits for it.
    pub fn spawn<F>(
        &self,
        rt: Option<&tokio::runtime::Handle>,
        fut: F,
    ) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match rt {
            Some(rt) => self.tasks.spawn_on(fut, rt),
            None => self.tasks.spawn(fut),
        }
    }

    /// Where senders read WAL that is not cached.
    pub fn read_pool(&self) -> &DiskPool {
        &self.ctx.read_pool
    }

    /// Where the timeline's disk work runs.
    pub fn wal_pool(&self) -> &DiskPool {
        &self.ctx.wal_pool
    }

    /// This safekeeper's node id.
    pub fn node_id(&self) -> NodeId {
        self.ctx.node_id
    }

    /// WAL offload, if configured.
    pub fn offload(&self) -> Option<&Arc<Offload>> {
        self.ctx.offload.as_ref()
    }

    /// What the offload task shows (the default when offload is off).
    pub fn offload_state(&self) -> OffloadState {
        self.offload_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes what the offload task shows.
    pub fn update_offload_state(&self, f: impl FnOnce(&mut OffloadState)) {
        f(&mut self.offload_state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A new id for a proposer connection.
    pub fn new_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of proposer connections streaming into this timeline.
    pub fn computes(&self) -> usize {
        self.computes.load(Ordering::Relaxed)
    }

    /// Counts (and lists, see [`Timeline::proposers`]) proposer connection `conn` for as
    /// long as the guard lives.
    pub fn compute_guard(self: &Arc<Self>, conn: ConnId, app_name: &str) -> ComputeGuard {
        self.computes.fetch_add(1, Ordering::Relaxed);
        // A recovery from a peer goes on until this proposer sends WAL (it may never be
        // elected, or not send what we lack); none starts for a peer-status interval.
        self.note_proposer_activity();
        self.proposers.add(conn, app_name);
        ComputeGuard {
            tl: self.clone(),
            conn,
            phase: ProposerPhase::Greeted,
        }
    }

    /// The live proposer connections.
    pub fn proposers(&self) -> Vec<ProposerInfo> {
        self.proposers.list()
    }

    /// Ends the timeline: cancels its streams, waits for them and for its ingest loop,
    /// then makes written WAL durable and persists lazily kept state. Idempotent.
    pub async fn shutdown(self: &Arc<Self>) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let tl = self.clone();
        let r = self
            .ctx
            .wal_pool
            .run(move || tl.lock_core().exec.checkpoint())
            .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(ttid = %self.ttid, "final checkpoint failed: {e}"),
            Err(e) => tracing::error!(ttid = %self.ttid, "final checkpoint not run: {e}"),
        }
        tracing::debug!(ttid = %self.ttid, "timeline shut down");
    }

    fn lock_core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock poisons it; the executor marks itself broken on
        // any storage error before returning, and a panic mid-step is a bug we do not
        // want to turn into a second one.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists lazily kept state every [`CHECKPOINT_INTERVAL`] while the timeline lives.
    fn start_checkpoints(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        // Owned by the timeline; it ends as soon as the timeline is cancelled, so shutdown
        // never waits for a tick. (A timeline made outside a runtime, in unit tests, has
        // no periodic checkpoint.)
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.spawn_on(
                async move {
                    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let Some(tl) = weak.upgrade() else { return };
                        let _ = tl.submit(Input::Checkpoint);
                    }
                },
                &rt,
            );
        }
    }
}

/// A proposer connection of a timeline: counted and listed until dropped.
pub struct ComputeGuard {
    tl: Arc<Timeline>,
    conn: ConnId,
    phase: ProposerPhase,
}

impl ComputeGuard {
    /// The connection's id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Notes the protocol phase `msg` puts the connection in (for the status API), and
    /// WAL it carries: the proposer streams, so a recovery from a peer stops.
    pub fn observe(&mut self, msg: &pq_proto::proposer::ProposerMessage) {
        self.tl.proposers.observe(self.conn, &mut self.phase, msg);
        if let pq_proto::proposer::ProposerMessage::AppendRequest(a) = msg
            && !a.wal_data.is_empty()
        {
            self.tl.note_proposer_activity();
            if self.tl.recovering.load(Ordering::Relaxed) {
                self.tl.stop_recovery();
            }
        }
    }
}

impl Drop for ComputeGuard {
    fn drop(&mut self) {
        self.tl.computes.fetch_sub(1, Ordering::Relaxed);
        self.tl.proposers.remove(self.conn);
    }
}
