//! The server: data directory lock, start-up checks, the pools and runtimes it owns,
//! listeners, connection limit, and graceful shutdown.
//!
//! Start-up order: take the data-directory lock (a second process on the same directory
//! exits with a clear error), fsync the whole tree (what the page cache holds after a
//! crash of this process may never have reached disk), load the timelines, then accept.
//! Shutdown (the token is cancelled): stop accepting; every timeline's token is a child
//! of the server's, so every stream ends; wait for the connections; shut every timeline
//! down (its tasks end, its WAL is flushed and its state persisted); stop the sender
//! runtime and the disk pools; return.
//!
//! Owns: [`Server`] and what it started (the WAL and read pools, the sender runtime, the
//! HTTP task). Must never: serve before the tree is fsynced, or return while a task of
//! its own still runs.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pq_proto::framed::{Framed, Stream};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::ctx::{Config, ServerCtx};
use crate::disk_pool::DiskPool;
use crate::errors::ClientError;
use crate::handler;
use crate::metrics::Metrics;
use crate::offload::Offload;
use crate::session::error_response;
use crate::timeline::TimelineCtx;
use crate::timelines::{RegistryConfig, Timelines};
use crate::wal_storage::OpenSegments;

/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = "safekeeper.lock";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process holds the data directory.
    #[error(
        "data directory \"{0}\" is in use by another safekeeper process (lock file {LOCK_FILE_NAME} is held)"
    )]
    Locked(PathBuf),
    /// The data directory could not be prepared.
    #[error("could not open data directory \"{path}\": {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Remote storage (`--remote-storage`) cannot be used.
    #[error("{0}")]
    Remote(#[from] crate::remote::RemoteError),
}

/// A started server (the data directory is locked and its timelines loaded).
pub struct Server {
    ctx: Arc<ServerCtx>,
    wal_pool: DiskPool,
    read_pool: DiskPool,
    /// `None` once shut down.
    senders: Option<tokio::runtime::Runtime>,
    _lock: File,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A runtime may not be dropped (blocking) inside another: let it go in the
        // background. After `run` it is gone already; this covers a server dropped
        // without running (a failed test, say).
        if let Some(rt) = self.senders.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    /// Locks the data directory, makes it durable and loads the timelines. Call it on a
    /// multi-threaded tokio runtime (the one connections will run on).
    pub async fn start(conf: Config, shutdown: CancellationToken) -> Result<Server, StartError> {
        let io = |source| StartError::Io {
            path: conf.datadir.clone(),
            source,
        };
        std::fs::create_dir_all(&conf.datadir).map_err(io)?;
        let lock = lock_datadir(&conf.datadir)?;
        let wal_pool = DiskPool::new("wal-io", conf.wal_io_threads);
        let read_pool = DiskPool::new("wal-read", conf.read_io_threads);
        let (sync, dir) = (conf.sync, conf.datadir.clone());
        wal_pool
            .run(move || sync.fsync_tree(&dir))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?;
        // Senders run on a runtime of their own: on one shared runtime, a proposer's
        // network task queues behind every sender woken by the same commit (50 readers ×
        // a 128 KiB write each, per AppendRequest round trip); on their own threads the
        // OS shares the CPU between ingest and senders instead.
        let senders = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(conf.sender_threads.max(1))
            .thread_name("wal-sender")
            .enable_all()
            .build()
            .map_err(io)?;
        let metrics = Arc::new(Metrics::new());
        let registry = RegistryConfig {
            datadir: conf.datadir.clone(),
            node_id: conf.id,
            sync: conf.sync,
            hook: conf.storage_hook.clone(),
            open_segments: OpenSegments::new(conf.max_open_segments),
        };
        let offload = match &conf.offload {
            Some(oc) => Some(Offload::open(oc.clone(), &conf.datadir, metrics.clone())?),
            None => None,
        };
        let tl_ctx = TimelineCtx {
            node_id: conf.id,
            peer_status_interval: conf.peer_status_interval,
            wal_pool: wal_pool.clone(),
            read_pool: read_pool.clone(),
            metrics: metrics.clone(),
            offload,
            peer_token: conf.peer_token.clone(),
            peer_recovery: conf.peer_recovery,
        };
        let timelines = Timelines::load(registry, tl_ctx, shutdown.clone())
            .await
            .map_err(io)?;
        let source: std::sync::Weak<dyn crate::metrics::TimelineSource> =
            Arc::downgrade(&timelines) as _;
        metrics.watch_timelines(source);
        Ok(Server {
            ctx: Arc::new(ServerCtx {
                conf,
                timelines,
                metrics,
                shutdown,
                senders: senders.handle().clone(),
            }),
            wal_pool,
            read_pool,
            senders: Some(senders),
            _lock: lock,
        })
    }

    /// What connections share.
    pub fn ctx(&self) -> &Arc<ServerCtx> {
        &self.ctx
    }

    /// Serves the listeners (PostgreSQL protocol, HTTP API and, optionally, the API over
    /// TLS: that one needs `conf.tls`) until the shutdown token is cancelled and
    /// everything the server started has stopped.
    pub async fn run(
        mut self,
        pg: TcpListener,
        http: TcpListener,
        https: Option<TcpListener>,
    ) -> std::io::Result<()> {
        let ctx = self.ctx.clone();
        if https.is_some() && ctx.conf.tls.is_none() {
            return Err(std::io::Error::other(crate::http::server::HTTPS_NEEDS_CERT));
        }
        let http_task = tokio::spawn(crate::http::serve(http, https, ctx.clone()));
        let tracker = TaskTracker::new();
        let reserved = ctx
            .conf
            .reserved_connections
            .min(ctx.conf.max_connections.saturating_sub(1));
        let slots = Arc::new(Semaphore::new(ctx.conf.max_connections - reserved));
        let reserved_slots = Arc::new(Semaphore::new(reserved));
        loop {
            let (socket, peer) = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = pg.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: keep serving the connections we have.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            // A general slot, else a reserved one (the connection may then only become a
            // proposer, or hold a safekeeperdata token), else none.
            let (permit, in_reserve) = match slots.clone().try_acquire_owned() {
                Ok(p) => (Ok(p), false),
                Err(_) => (reserved_slots.clone().try_acquire_owned(), true),
            };
            let ctx = ctx.clone();
            tracker.spawn(async move {
                let Ok(_permit) = permit else {
                    // Plain text, before any SSLRequest: libpq reports an ErrorResponse
                    // received in answer to one.
                    let mut conn = Framed::new(Stream::Plain(socket));
                    conn.write_be(&error_response(
                        &ctx.metrics,
                        &ClientError::TooManyConnections,
                    ));
                    let _ = conn.flush().await;
                    return;
                };
                if let Err(e) = handler::handle(socket, ctx, in_reserve).await {
                    tracing::info!(%peer, "connection ended: {e}");
                }
            });
        }
        drop(pg);
        tracing::info!("shutting down: waiting for connections to end");
        tracker.close();
        tracker.wait().await;
        ctx.timelines.shutdown().await;
        let _ = http_task.await;
        // Every task on it has ended (they are the timelines' tasks).
        if let Some(rt) = self.senders.take() {
            rt.shutdown_background();
        }
        let (wal_pool, read_pool) = (self.wal_pool.clone(), self.read_pool.clone());
        tokio::task::spawn_blocking(move || {
            wal_pool.shutdown();
            read_pool.shutdown();
        })
        .await
        .map_err(std::io::Error::other)?;
        tracing::info!("shut down");
        Ok(())
    }
}

fn lock_datadir(dir: &Path) -> Result<File, StartError> {
    let path = dir.join(LOCK_FILE_NAME);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::Io {
            path: path.clone(),
            source,
        })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::Io { path, source }),
    }
}
