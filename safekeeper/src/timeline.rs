//! One timeline in memory: its acceptor and WAL storage behind one lock, and the watch
//! channels readers wait on.
//!
//! Owns: the order "step the acceptor → perform its effects → publish the new
//! positions", done under the timeline lock so that every connection of the timeline sees
//! one sequence of states. Must never: be locked across an `.await` (the lock is a std
//! mutex; every method here blocks on disk and is called from blocking threads).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use tokio::sync::watch;
use utils::{Lsn, NodeId, TenantTimelineId, Term};

use crate::acceptor::{Acceptor, AcceptorError, Effect, Reply};
use crate::control_file;
use crate::durability::SyncMode;
use crate::feedback::Feedback;
use crate::state::TimelineState;
use crate::wal_storage::{WalStorage, WriteOutcome};

/// What term-mode readers and status queries need to know, published after every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushState {
    /// The acceptor's term.
    pub term: Term,
    /// Term of the WAL at `flush_lsn`.
    pub last_log_term: Term,
    /// End of durable, record-complete WAL.
    pub flush_lsn: Lsn,
}

/// Why a timeline operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The acceptor refused the message.
    #[error(transparent)]
    Acceptor(#[from] AcceptorError),
    /// Storage failed; the timeline is unusable until reloaded from disk.
    #[error("WAL storage of timeline {ttid} failed: {source}")]
    Storage {
        /// The timeline.
        ttid: TenantTimelineId,
        /// The error.
        source: std::io::Error,
    },
    /// An earlier storage error left the in-memory state ahead of the disk.
    #[error("timeline {0} is being reloaded after a storage error; retry")]
    Broken(TenantTimelineId),
}

struct Core {
    acceptor: Acceptor,
    storage: WalStorage,
    /// Set after a storage error: the in-memory state may be ahead of the disk.
    broken: bool,
}

/// One timeline in memory.
pub struct Timeline {
    /// Which timeline.
    pub ttid: TenantTimelineId,
    dir: PathBuf,
    sync: SyncMode,
    core: Mutex<Core>,
    flush_tx: watch::Sender<FlushState>,
    commit_tx: watch::Sender<Lsn>,
    /// Feedback of the timeline's readers (replicas, pageservers).
    pub feedback: Feedback,
    computes: AtomicUsize,
}

/// The result of [`Timeline::process`].
pub enum Step {
    /// Send this now.
    Reply(AcceptorMessage),
    /// Nothing to send.
    Nothing,
    /// An AppendResponse is owed; `segment_completed` says a segment was just made
    /// durable, so the answer should not wait for the queue to drain.
    FlushDue {
        /// A segment filled (and was fdatasynced) during this step.
        segment_completed: bool,
    },
}

impl Timeline {
    /// Wraps a loaded acceptor and its storage.
    pub fn new(
        dir: &Path,
        sync: SyncMode,
        node_id: NodeId,
        state: TimelineState,
        flush_lsn: Lsn,
        storage: WalStorage,
    ) -> Self {
        let acceptor = Acceptor::new(node_id, state, flush_lsn);
        let (flush_tx, _) = watch::channel(flush_state(&acceptor));
        let (commit_tx, _) = watch::channel(acceptor.commit_lsn());
        Timeline {
            ttid: acceptor.state().ttid,
            dir: dir.to_path_buf(),
            sync,
            core: Mutex::new(Core {
                acceptor,
                storage,
                broken: false,
            }),
            flush_tx,
            commit_tx,
            feedback: Feedback::default(),
            computes: AtomicUsize::new(0),
        }
    }

    /// The timeline's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock poisons it; the state is still the last one
        // fully applied (effects run before publication), so keep going.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True after a storage error: the registry reloads such a timeline from disk.
    pub fn is_broken(&self) -> bool {
        self.lock().broken
    }

    /// A copy of the in-memory state.
    pub fn state(&self) -> TimelineState {
        self.lock().acceptor.state().clone()
    }

    /// Term, last log term and flush LSN, as last published.
    pub fn flush_state(&self) -> FlushState {
        *self.flush_tx.borrow()
    }

    /// The commit LSN, as last published.
    pub fn commit_lsn(&self) -> Lsn {
        *self.commit_tx.borrow()
    }

    /// Watch of [`FlushState`], for term-mode readers.
    pub fn subscribe_flush(&self) -> watch::Receiver<FlushState> {
        self.flush_tx.subscribe()
    }

    /// Watch of commit_lsn, for commit-mode readers.
    pub fn subscribe_commit(&self) -> watch::Receiver<Lsn> {
        self.commit_tx.subscribe()
    }

    /// Runs `f` with the lock held if the acceptor is still in `term`: lets term-mode
    /// readers read WAL that no truncation can change while they read it.
    pub fn with_term<R>(&self, term: Term, f: impl FnOnce() -> R) -> Option<R> {
        let core = self.lock();
        (core.acceptor.term() == term && !core.broken).then(f)
    }

    /// Number of proposer connections streaming into this timeline.
    pub fn computes(&self) -> usize {
        self.computes.load(Ordering::Relaxed)
    }

    /// Counts a proposer connection for as long as the guard lives.
    pub fn compute_guard(&self) -> ComputeGuard<'_> {
        self.computes.fetch_add(1, Ordering::Relaxed);
        ComputeGuard(self)
    }

    /// Handles one proposer message: steps the acceptor, performs its effects, publishes.
    pub fn process(&self, msg: ProposerMessage) -> Result<Step, TimelineError> {
        let mut core = self.lock();
        if core.broken {
            return Err(TimelineError::Broken(self.ttid));
        }
        let out = core.acceptor.process(msg)?;
        let segment_completed = self.perform(&mut core, out.effects)?;
        self.publish(&core.acceptor);
        Ok(match out.reply {
            Reply::Now(m) => Step::Reply(m),
            Reply::None => Step::Nothing,
            Reply::AfterFlush => Step::FlushDue { segment_completed },
        })
    }

    /// Flushes written WAL and returns the owed AppendResponse (hot-standby feedback
    /// filled in from the timeline's readers).
    pub fn flush(&self) -> Result<AcceptorMessage, TimelineError> {
        let mut core = self.lock();
        if core.broken {
            return Err(TimelineError::Broken(self.ttid));
        }
        let out = core.acceptor.flush();
        self.perform(&mut core, out.effects)?;
        self.publish(&core.acceptor);
        let Reply::Now(mut msg) = out.reply else {
            unreachable!("flush always answers");
        };
        if let AcceptorMessage::AppendResponse(r) = &mut msg {
            r.hs_feedback = self.feedback.hot_standby();
            r.pageserver_feedback = self.feedback.pageserver();
        }
        Ok(msg)
    }

    /// Makes written WAL durable and persists lazily kept state (disconnect, shutdown).
    pub fn checkpoint(&self) -> Result<(), TimelineError> {
        let mut core = self.lock();
        if core.broken {
            return Ok(());
        }
        let mut effects = vec![Effect::FlushWal];
        effects.extend(core.acceptor.checkpoint());
        self.perform(&mut core, effects)?;
        Ok(())
    }

    fn perform(&self, core: &mut Core, effects: Vec<Effect>) -> Result<bool, TimelineError> {
        let mut segment_completed = false;
        for effect in effects {
            let res = match effect {
                Effect::InitWal { start, image } => core.storage.init(start, &image),
                Effect::WriteWal { lsn, data } => match core.storage.write(lsn, data) {
                    Ok(WriteOutcome::SegmentCompleted) => {
                        segment_completed = true;
                        Ok(())
                    }
                    Ok(WriteOutcome::Written) => Ok(()),
                    Err(e) => Err(e),
                },
                Effect::FlushWal => core.storage.flush(),
                Effect::TruncateWal { end } => core.storage.truncate(end),
                Effect::PersistControl(state) => {
                    let r = control_file::persist(&self.dir, &state, self.sync);
                    if r.is_ok() {
                        core.acceptor.mark_persisted(&state);
                    }
                    r
                }
            };
            if let Err(source) = res {
                core.broken = true;
                tracing::error!(ttid = %self.ttid, "storage error, timeline will be reloaded: {source}");
                return Err(TimelineError::Storage {
                    ttid: self.ttid,
                    source,
                });
            }
        }
        Ok(segment_completed)
    }

    fn publish(&self, acceptor: &Acceptor) {
        let fs = flush_state(acceptor);
        self.flush_tx.send_if_modified(|cur| {
            let changed = *cur != fs;
            *cur = fs;
            changed
        });
        let commit = acceptor.commit_lsn();
        self.commit_tx.send_if_modified(|cur| {
            let changed = *cur != commit;
            *cur = commit;
            changed
        });
    }
}

fn flush_state(a: &Acceptor) -> FlushState {
    FlushState {
        term: a.term(),
        last_log_term: a.last_log_term(),
        flush_lsn: a.flush_lsn(),
    }
}

/// Decrements the compute count when dropped.
pub struct ComputeGuard<'a>(&'a Timeline);

impl Drop for ComputeGuard<'_> {
    fn drop(&mut self) {
        self.0.computes.fetch_sub(1, Ordering::Relaxed);
    }
}
