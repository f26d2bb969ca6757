//! The server: data directory lock, start-up checks, listeners, connection limit, and
//! graceful shutdown.
//!
//! Start-up order: take the data-directory lock (a second process on the same directory
//! exits with a clear error), fsync the whole tree (what the page cache holds after a
//! crash of this process may never have reached disk), load the timelines, then accept.
//! Shutdown (the token is cancelled): stop accepting, let every connection end its stream
//! (receivers flush their WAL), checkpoint every timeline, return.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pq_proto::backend::BeMessage;
use pq_proto::framed::Framed;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utils::NodeId;

use crate::durability::SyncMode;
use crate::errors::ClientError;
use crate::handler::{self, ServerCtx};
use crate::timelines::Timelines;

/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = "safekeeper.lock";

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This safekeeper's node id.
    pub id: NodeId,
    /// The data directory.
    pub datadir: PathBuf,
    /// Whether syncs are real.
    pub sync: SyncMode,
    /// Connections served at once; more get "too many clients".
    pub max_connections: usize,
}

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
}

/// A started server (the data directory is locked and its timelines loaded).
pub struct Server {
    ctx: Arc<ServerCtx>,
    max_connections: usize,
    _lock: File,
}

impl Server {
    /// Locks the data directory, makes it durable and loads the timelines.
    pub fn start(conf: &Config, shutdown: CancellationToken) -> Result<Server, StartError> {
        let io = |source| StartError::Io {
            path: conf.datadir.clone(),
            source,
        };
        std::fs::create_dir_all(&conf.datadir).map_err(io)?;
        let lock = lock_datadir(&conf.datadir)?;
        conf.sync.fsync_tree(&conf.datadir);
        let timelines = Timelines::load(&conf.datadir, conf.id, conf.sync).map_err(io)?;
        Ok(Server {
            ctx: Arc::new(ServerCtx {
                node_id: conf.id,
                timelines: Arc::new(timelines),
                shutdown,
            }),
            max_connections: conf.max_connections,
            _lock: lock,
        })
    }

    /// What connections share.
    pub fn ctx(&self) -> &Arc<ServerCtx> {
        &self.ctx
    }

    /// Serves both listeners until the shutdown token is cancelled and every connection
    /// has ended.
    pub async fn run(self, pg: TcpListener, http: TcpListener) -> std::io::Result<()> {
        let ctx = self.ctx.clone();
        let http_task = tokio::spawn(crate::http::serve(http, ctx.clone()));
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.max_connections));
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
            let permit = slots.clone().try_acquire_owned();
            let ctx = ctx.clone();
            tracker.spawn(async move {
                let Ok(_permit) = permit else {
                    let mut conn = Framed::new(socket);
                    conn.write_be(&BeMessage::ErrorResponse(
                        ClientError::TooManyConnections.to_fields(),
                    ));
                    let _ = conn.flush().await;
                    return;
                };
                if let Err(e) = handler::handle(socket, ctx).await {
                    tracing::info!(%peer, "connection ended: {e}");
                }
            });
        }
        drop(pg);
        tracing::info!("shutting down: waiting for connections to end");
        tracker.close();
        tracker.wait().await;
        let timelines = ctx.timelines.clone();
        tokio::task::spawn_blocking(move || {
            for tl in timelines.loaded() {
                if let Err(e) = tl.checkpoint() {
                    tracing::error!(ttid = %tl.ttid, "final checkpoint failed: {e}");
                }
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        let _ = http_task.await;
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
