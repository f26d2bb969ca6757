//! A bounded pool of threads for blocking disk work: WAL writes and fsyncs, control-file
//! persists, timeline loads and creation, segment preparation, reads for senders.
//!
//! Why not tokio's blocking pool: it grows to 512 threads, one per blocked job, so a
//! thousand proposers streaming at once would hold a thousand threads. Disk work does not
//! get faster past the device's parallelism; this pool has a fixed ceiling sized for the
//! disk (`--wal-io-threads`), threads are started on demand up to it, and jobs beyond it
//! wait in a FIFO queue. A job is a plain closure; [`DiskPool::run`] awaits one from async
//! code.
//!
//! Owns: its threads (joined by [`DiskPool::shutdown`]) and the queue. Must never: run a
//! job that waits for another job of the same pool (with every thread waiting, nothing
//! would run the job waited for; see `wal_storage`'s segment preparation, which runs a job
//! it needs itself when no thread has started it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads started.
    threads: usize,
    /// Threads waiting for a job.
    idle: usize,
    shutdown: bool,
}

struct Inner {
    name: String,
    max_threads: usize,
    /// Scheduling niceness of the pool's threads (0: the process's).
    nice: i32,
    queue: Mutex<Queue>,
    ready: Condvar,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Jobs queued or running (for metrics and tests).
    in_flight: AtomicUsize,
}

/// A handle to the pool; clones share it.
#[derive(Clone)]
pub struct DiskPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskPool")
            .field("name", &self.inner.name)
            .field("max_threads", &self.inner.max_threads)
            .finish()
    }
}

/// The pool is shut down; the job was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the disk thread pool is shut down")]
pub struct PoolShutDown;

impl DiskPool {
    /// A pool of at most `max_threads` threads (at least one) named `name`.
    pub fn new(name: &str, max_threads: usize) -> Self {
        DiskPool::with_nice(name, max_threads, 0)
    }

    /// Like [`DiskPool::new`], its threads running at niceness `nice` (Linux; e.g. 10 for
    /// background work that must yield the CPU to ingest).
    pub fn with_nice(name: &str, max_threads: usize, nice: i32) -> Self {
        DiskPool {
            inner: Arc::new(Inner {
                name: name.to_string(),
                max_threads: max_threads.max(1),
                nice,
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    shutdown: false,
                }),
                ready: Condvar::new(),
                handles: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// The ceiling on threads.
    pub fn max_threads(&self) -> usize {
        self.inner.max_threads
    }

    /// Jobs waiting for a thread now.
    pub fn queued(&self) -> usize {
        lock(&self.inner.queue).jobs.len()
    }

    /// Jobs queued or running now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Queues `job`; it runs on a pool thread as soon as one is free. After
    /// [`DiskPool::shutdown`] the job is dropped unrun.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), PoolShutDown> {
        let inner = &self.inner;
        let mut q = lock(&inner.queue);
        if q.shutdown {
            return Err(PoolShutDown);
        }
        inner.in_flight.fetch_add(1, Ordering::Relaxed);
        q.jobs.push_back(Box::new(job));
        if q.idle > 0 {
            drop(q);
            inner.ready.notify_one();
            return Ok(());
        }
        if q.threads < inner.max_threads {
            q.threads += 1;
            let n = q.threads;
            drop(q);
            let me = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", inner.name))
                .spawn(move || worker(&me));
            match spawned {
                Ok(h) => lock(&inner.handles).push(h),
                Err(e) => {
                    // The job stays queued for the threads there are (there is at least
                    // one unless this was the first; then run it here rather than lose it).
                    tracing::error!(pool = %inner.name, "cannot start a disk thread: {e}");
                    let mut q = lock(&inner.queue);
                    q.threads -= 1;
                    if q.threads == 0
                        && let Some(job) = q.jobs.pop_front()
                    {
                        drop(q);
                        job();
                        inner.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the pool and awaits its result.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolShutDown> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(f());
        })?;
        // A dropped sender means the job was dropped unrun (shutdown) or panicked.
        rx.await.map_err(|_| PoolShutDown)
    }

    /// Stops taking jobs, lets the queued ones finish, and joins the threads. Call it from
    /// a thread that may block (not from a pool thread).
    pub fn shutdown(&self) {
        lock(&self.inner.queue).shutdown = true;
        self.inner.ready.notify_all();
        let handles = std::mem::take(&mut *lock(&self.inner.handles));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Jobs run outside the lock, so a poisoned lock only means a panic in this module's
    // few lines of bookkeeping; the queue is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn worker(inner: &Inner) {
    if inner.nice != 0 {
        set_thread_nice(inner.nice, &inner.name);
    }
    let mut q = lock(&inner.queue);
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            // A panicking job must not take the thread (and its queue slot) with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!(pool = %inner.name, "a disk job panicked");
            }
            inner.in_flight.fetch_sub(1, Ordering::Relaxed);
            q = lock(&inner.queue);
            continue;
        }
        if q.shutdown {
            return;
        }
        q.idle += 1;
        q = inner.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        q.idle -= 1;
    }
}

/// Sets the niceness of the calling thread (on Linux a thread is scheduled on its own, so
/// this leaves the process's other threads alone).
#[cfg(target_os = "linux")]
fn set_thread_nice(nice: i32, pool: &str) {
    // SAFETY: plain system calls on the calling thread's id.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r != 0 {
        tracing::warn!(
            pool,
            nice,
            "cannot lower the priority of a pool thread: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_: i32, _: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn never_more_threads_than_the_ceiling() {
        let pool = DiskPool::new("t", 3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            pool.spawn(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        pool.shutdown();
        assert_eq!(
            done.load(Ordering::SeqCst),
            20,
            "queued jobs finish at shutdown"
        );
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(pool.spawn(|| {}).is_err());
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_pool() {
        let pool = DiskPool::new("t", 1);
        pool.spawn(|| panic!("boom")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(pool.run(|| 7)), Ok(7));
        pool.shutdown();
    }
}
