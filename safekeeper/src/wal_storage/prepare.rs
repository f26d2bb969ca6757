//! Creating the next segment file in the background while the current one fills.
//!
//! The creation (full size, file fsync, directory fsync) is queued on the disk pool. The
//! writer needs it done before the first byte goes into that segment; if no pool thread
//! has started it by then (every thread busy, possibly with this very timeline's ingest),
//! the writer claims the job and runs it itself instead of waiting for a thread that may
//! never come: a pool job must never wait for another job of the same pool.
//!
//! Owns: [`Preparing`], the hand-over between the job and the writer. Must never: run a
//! creation twice, or leave the writer waiting on a job nobody runs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use utils::SegNo;

use super::io_util::create_segment;
use crate::disk_pool::DiskPool;
use crate::durability::SyncMode;

enum State {
    /// Queued, not started: whoever comes first runs it.
    Queued,
    /// A pool thread is creating the file.
    Running,
    /// Done; the result not taken yet.
    Done(io::Result<()>),
    /// The result was taken.
    Taken,
}

struct Job {
    dir: PathBuf,
    path: PathBuf,
    seg_len: u64,
    sync: SyncMode,
    state: Mutex<State>,
    done: Condvar,
}

impl Job {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self) -> io::Result<()> {
        create_segment(&self.dir, &self.path, self.seg_len, self.sync)
    }

    /// The pool's side: run it unless the writer already claimed it.
    fn run_queued(&self) {
        {
            let mut st = self.lock();
            if !matches!(*st, State::Queued) {
                return;
            }
            *st = State::Running;
        }
        let result = self.create();
        *self.lock() = State::Done(result);
        self.done.notify_all();
    }
}

/// A segment file being created off the write path.
pub(super) struct Preparing {
    segno: SegNo,
    job: Arc<Job>,
}

impl std::fmt::Debug for Preparing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparing")
            .field("segno", &self.segno)
            .finish()
    }
}

impl Preparing {
    /// Queues the creation of segment `segno` at `path` on `pool` (without a pool, or when
    /// it refuses the job, the creation happens in [`Preparing::join`]).
    pub(super) fn start(
        segno: SegNo,
        dir: &Path,
        path: PathBuf,
        seg_len: u64,
        sync: SyncMode,
        pool: Option<&DiskPool>,
    ) -> Self {
        let job = Arc::new(Job {
            dir: dir.to_path_buf(),
            path,
            seg_len,
            sync,
            state: Mutex::new(State::Queued),
            done: Condvar::new(),
        });
        if let Some(pool) = pool {
            let j = job.clone();
            // A refused job stays Queued and runs in `join`.
            let _ = pool.spawn(move || j.run_queued());
        }
        Preparing { segno, job }
    }

    /// Waits for the creation (running it here if nobody started it) and returns its
    /// result. A segment someone else created first (only after a truncation) is fine:
    /// opening it checks its size.
    pub(super) fn join(self) -> io::Result<()> {
        let job = &self.job;
        let mut st = job.lock();
        let result = loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Queued => {
                    *st = State::Running;
                    drop(st);
                    let r = job.create();
                    *job.lock() = State::Taken;
                    break r;
                }
                State::Running => {
                    *st = State::Running;
                    st = job.done.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                State::Done(r) => break r,
                State::Taken => break Ok(()),
            }
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(|e| {
                io::Error::new(e.kind(), format!("preparing segment {}: {e}", self.segno))
            }),
        }
    }
}
