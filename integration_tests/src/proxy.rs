//! A loopback TCP proxy with switchable faults, put between a process and a server (the S3
//! endpoint of [`crate::s3`]) to make that server "go down" or cut uploads in the middle.
//!
//! Owns: one listener on `127.0.0.1`, the connections it forwards, and the thread running
//! them. Must never: outlive its [`TcpProxy`] (Drop stops the thread and closes every
//! connection), or look inside the bytes it forwards.
//!
//! The proxy runs on its own thread with its own current-thread runtime rather than on the
//! caller's: most tests are synchronous and block while the process under test talks
//! through the proxy, so it must make progress without the test's help.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the proxy does with connections; switched at runtime with [`TcpProxy::pass`],
/// [`TcpProxy::refuse`] and [`TcpProxy::cut_after`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Forward everything both ways.
    Pass,
    /// The server is down: close new connections right after accepting them and existing
    /// ones at once.
    Refuse,
    /// Forward at most this many bytes client → server on each connection opened while in
    /// this mode, then close it (an upload that fails in the middle of an object).
    /// Connections opened before keep the mode they started with.
    CutAfter(u64),
}

/// A proxy from a free loopback port to `target`; see the module docs.
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    mode: watch::Sender<FaultMode>,
    accepted: Arc<AtomicU64>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding a free port of `127.0.0.1` to `target` (`host:port`, resolved
    /// once, now), in [`FaultMode::Pass`].
    pub fn start(target: &str) -> anyhow::Result<TcpProxy> {
        let target = std::net::ToSocketAddrs::to_socket_addrs(target)
            .with_context(|| format!("resolving proxy target {target}"))?
            .next()
            .with_context(|| format!("proxy target {target} resolves to no address"))?;
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind proxy listener")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("proxy runtime")?;
        let (mode, mode_rx) = watch::channel(FaultMode::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let thread = {
            let accepted = accepted.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("tcp-proxy-{port}"))
                .spawn(move || {
                    rt.block_on(async move {
                        match TcpListener::from_std(std_listener) {
                            Ok(listener) => {
                                accept_loop(listener, target, mode_rx, accepted, shutdown).await
                            }
                            Err(e) => eprintln!("tcp proxy on port {port}: {e}"),
                        }
                    });
                    // Dropping the runtime here aborts any connection task still running.
                })
                .context("spawn proxy thread")?
        };
        Ok(TcpProxy {
            port,
            target,
            mode,
            accepted,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The port the proxy listens on (`127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for clients of an HTTP server behind the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far, in any mode (shows a client really used the proxy).
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        *self.mode.borrow()
    }

    /// Switches to [`FaultMode::Pass`].
    pub fn pass(&self) {
        self.set_mode(FaultMode::Pass);
    }

    /// Switches to [`FaultMode::Refuse`]: existing connections are closed as well.
    pub fn refuse(&self) {
        self.set_mode(FaultMode::Refuse);
    }

    /// Switches to [`FaultMode::CutAfter`]`(bytes)` for connections opened from now on.
    pub fn cut_after(&self, bytes: u64) {
        self.set_mode(FaultMode::CutAfter(bytes));
    }

    /// Switches to `mode`.
    pub fn set_mode(&self, mode: FaultMode) {
        // `send_replace` stores the mode even when no connection is subscribed.
        self.mode.send_replace(mode);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until `shutdown`; every connection task is owned by a `JoinSet` dropped (and so
/// aborted) on return.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<FaultMode>,
    accepted: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        // Both branches are cancel-safe: `accept` loses no connection, `cancelled` no state.
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            res = listener.accept() => match res {
                Ok((client, _)) => client,
                Err(e) => {
                    // E.g. EMFILE: keep serving rather than die silently; back off a bit.
                    eprintln!("tcp proxy accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        // Reap finished tasks so the set stays as small as the live connections.
        while conns.try_join_next().is_some() {}
        let start_mode = *mode.borrow();
        if start_mode == FaultMode::Refuse {
            drop(client);
            continue;
        }
        conns.spawn(forward(client, target, start_mode, mode.clone()));
    }
}

/// Forwards one connection until both directions end, the byte budget of
/// [`FaultMode::CutAfter`] runs out, or the proxy switches to [`FaultMode::Refuse`];
/// returning drops (closes) both sockets.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    start_mode: FaultMode,
    mut mode: watch::Receiver<FaultMode>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return; // the client sees its connection closed, like the server being down
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let limit = match start_mode {
        FaultMode::CutAfter(n) => Some(n),
        FaultMode::Pass | FaultMode::Refuse => None,
    };
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let upload = async {
        if pump(client_r, server_w, limit).await == PumpEnd::Cut {
            return;
        }
        // The client half-closed (or failed) and `pump` passed that on: the server still
        // answers, so the connection lives until the download side ends.
        std::future::pending::<()>().await
    };
    // The connection ends when the server is done with it, the upload is cut, or the
    // server "goes down". Cancelling the pumps is the point here (it closes both sockets);
    // `wait_for` is cancel-safe.
    tokio::select! {
        _ = pump(server_r, client_w, None) => {}
        _ = upload => {}
        _ = mode.wait_for(|m| *m == FaultMode::Refuse) => {}
    }
}

/// How a [`pump`] ended.
#[derive(Debug, PartialEq, Eq)]
enum PumpEnd {
    /// The reader reached EOF or an error occurred.
    Eof,
    /// The byte limit was reached.
    Cut,
}

/// Copies `from` → `to`, at most `limit` bytes if set.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, limit: Option<u64>) -> PumpEnd {
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = limit;
    loop {
        if left == Some(0) {
            return PumpEnd::Cut;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return PumpEnd::Eof;
            }
            Ok(n) => n,
        };
        let n = match left {
            Some(l) => {
                let take = n.min(usize::try_from(l).unwrap_or(usize::MAX));
                left = Some(l - take as u64);
                take
            }
            None => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return PumpEnd::Eof;
        }
    }
}
