//! A safekeeper server inside the test process, on loopback ports, with a storage hook
//! that stalls or fails disk operations on the real filesystem: for tests that need to
//! hold the server in a state a process from outside cannot force (a flush blocked on the
//! disk, a write error that breaks a timeline) or to call the registry directly.
//!
//! Owns: [`InProcessSafekeeper`] and [`FaultHook`]. Must never: be used where a process
//! would do (crash and restart tests use [`crate::sk::Safekeeper`]).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use safekeeper::durability::SyncMode;
use safekeeper::server::{Config, Server, ServerCtx};
use safekeeper::storage::{StorageHook, StorageOp};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utils::{NodeId, TenantTimelineId};

#[derive(Default)]
struct Faults {
    /// Every flush waits while this is set.
    block_flushes: bool,
    /// Flushes waiting now.
    blocked: usize,
    /// Writes to fail, from the next one on.
    fail_writes: usize,
    /// How long every control-file load takes.
    slow_loads: Option<Duration>,
}

/// Stalls or fails operations of every timeline's real storage on command.
#[derive(Default)]
pub struct FaultHook {
    faults: Mutex<Faults>,
    changed: Condvar,
}

impl FaultHook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on every flush blocks (its disk-pool thread waits) until released.
    pub fn block_flushes(&self) {
        self.lock().block_flushes = true;
    }

    /// Lets blocked flushes (and later ones) through.
    pub fn release_flushes(&self) {
        self.lock().block_flushes = false;
        self.changed.notify_all();
    }

    /// Waits until a flush is blocked; false after `timeout`.
    pub fn wait_for_blocked_flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut f = self.lock();
        while f.blocked == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            f = self
                .changed
                .wait_timeout(f, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// The next `n` WAL writes fail with an I/O error (before touching the disk).
    pub fn fail_writes(&self, n: usize) {
        self.lock().fail_writes = n;
    }

    /// Every control-file load takes `d` longer (a slow disk during a reload).
    pub fn slow_loads(&self, d: Option<Duration>) {
        self.lock().slow_loads = d;
    }
}

impl StorageHook for FaultHook {
    fn before(&self, _ttid: &TenantTimelineId, op: StorageOp) -> io::Result<()> {
        let mut f = self.lock();
        match op {
            StorageOp::FlushWal if f.block_flushes => {
                f.blocked += 1;
                self.changed.notify_all();
                while f.block_flushes {
                    f = self.changed.wait(f).unwrap_or_else(|p| p.into_inner());
                }
                f.blocked -= 1;
            }
            StorageOp::WriteWal if f.fail_writes > 0 => {
                f.fail_writes -= 1;
                return Err(io::Error::other("injected write failure"));
            }
            StorageOp::LoadControl => {
                if let Some(d) = f.slow_loads {
                    drop(f);
                    std::thread::sleep(d);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A server running in this process.
pub struct InProcessSafekeeper {
    /// What its connections share: the registry, the metrics.
    pub ctx: Arc<ServerCtx>,
    /// `127.0.0.1:<port>` of the PostgreSQL protocol.
    pub pg_addr: String,
    /// The HTTP listener.
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl InProcessSafekeeper {
    /// Starts a server (node 1, fsync off) in a temporary data directory, with `hook` in
    /// front of its storage. Call it on a multi-threaded runtime.
    pub async fn start(hook: Option<Arc<dyn StorageHook>>) -> anyhow::Result<Self> {
        Self::start_with(|c| c.storage_hook = hook).await
    }

    /// Starts a server (node 1, fsync off, in a temporary data directory) with `tweak`
    /// applied to its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut conf = Config::new(NodeId(1), dir.path().join("sk"));
        conf.sync = SyncMode::NoSync;
        tweak(&mut conf);
        let shutdown = CancellationToken::new();
        let server = Server::start(conf, shutdown.clone()).await?;
        let ctx = server.ctx().clone();
        let pg = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let pg_addr = pg.local_addr()?.to_string();
        let http_addr = http.local_addr()?;
        let task = tokio::spawn(server.run(pg, http, None));
        Ok(InProcessSafekeeper {
            ctx,
            pg_addr,
            http_addr,
            shutdown,
            task: Some(task),
            _dir: dir,
        })
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

/// The configuration of generation 1 whose members are `sks`, with ids 1, 2, … in order
/// (each server's `Config::id` must match).
pub fn generation_one(sks: &[InProcessSafekeeper]) -> Configuration {
    let members = sks
        .iter()
        .zip(1..)
        .map(|(sk, id)| SafekeeperId {
            id: NodeId(id),
            host: "127.0.0.1".into(),
            pg_port: sk
                .pg_addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0),
        })
        .collect();
    Configuration {
        generation: Generation(1),
        members,
        new_members: None,
    }
}

/// `GET path` over HTTP/1.1 from `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Ok((code, body.to_string()))
}
