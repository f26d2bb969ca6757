//! The API's accept loop, run by hand rather than by `axum::serve`, for the limits that
//! keep one client from hurting others: a header read timeout (a client that opens a
//! connection and trickles or withholds its request is dropped after
//! `--http-header-timeout`; `axum::serve` would hold it for ever), a cap on connections
//! served at once (`--http-max-connections`; past it a connection gets 503 and is closed),
//! and a request body cap (see [`super::MAX_BODY_BYTES`]).
//!
//! Each accepted connection is served by one generic function, [`Api::serve_connection`],
//! over any byte stream: a listener that wraps its sockets (TLS) calls
//! [`serve_listener`] with its wrapping step, or [`Api::serve_connection`] itself.
//!
//! Owns: [`Api`] (the router and the connection slots) and the accept loops. Must never:
//! spawn a task it does not wait for at shutdown, or let a connection outlive the
//! shutdown by more than [`SHUTDOWN_GRACE`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::ctx::ServerCtx;

/// Why an HTTPS listener cannot be served: the server has no certificate.
pub const HTTPS_NEEDS_CERT: &str =
    "an HTTPS listener needs the server's certificate (--ssl-cert-file)";

/// How long a request in progress may take to finish once shutdown began.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The answer to a connection over `--http-max-connections`.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 50\r\nconnection: close\r\n\r\n{\"msg\":\"too many HTTP connections, try again later\"}";

/// The API: the router and the slots connections take.
pub struct Api {
    ctx: Arc<ServerCtx>,
    router: axum::Router,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl Api {
    /// The API of the server `ctx`.
    pub fn new(ctx: Arc<ServerCtx>) -> Arc<Api> {
        Arc::new(Api {
            router: super::router(ctx.clone()),
            slots: Arc::new(Semaphore::new(ctx.conf.http_max_connections.max(1))),
            tasks: TaskTracker::new(),
            ctx,
        })
    }

    /// A slot for one more connection, if there is one.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Serves HTTP/1.1 on `io` until the client leaves, stalls in its headers past the
    /// header timeout, or shutdown (then the request in progress gets [`SHUTDOWN_GRACE`]
    /// to finish).
    pub async fn serve_connection<S>(&self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.ctx.conf.http_header_timeout);
        let svc = TowerToHyperService::new(self.router.clone());
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let shutdown = self.ctx.shutdown.clone();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
            }
        }
    }

    /// Takes one accepted socket: with a slot, `wrap` it (bounded by the header timeout:
    /// a TLS handshake is part of "sending the request") and serve it; without, answer 503
    /// (after `wrap`, so a TLS client can read it) and close.
    fn accept<W, Fut, S>(self: &Arc<Self>, socket: TcpStream, wrap: W)
    where
        W: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _ = socket.set_nodelay(true);
        let permit = self.admit();
        let me = self.clone();
        let limit = self.ctx.conf.http_header_timeout;
        self.tasks.spawn(async move {
            let io = match tokio::time::timeout(limit, wrap(socket)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!("HTTP connection not set up: {e}");
                    return;
                }
                Err(_) => return,
            };
            match permit {
                Some(_permit) => me.serve_connection(io).await,
                None => {
                    let mut io = io;
                    let _ = tokio::time::timeout(limit, async {
                        io.write_all(TOO_MANY).await?;
                        io.shutdown().await
                    })
                    .await;
                }
            }
        });
    }
}

/// Serves the API on `http` (plain HTTP) and, when given, on `https` (TLS with the
/// server's certificate, `--listen-https`) until shutdown, and waits for their
/// connections. Both listeners share one [`Api`] and so its connection slots.
pub async fn serve(
    http: TcpListener,
    https: Option<TcpListener>,
    ctx: Arc<ServerCtx>,
) -> std::io::Result<()> {
    let tls = match (&https, &ctx.conf.tls) {
        (Some(_), None) => {
            return Err(std::io::Error::other(HTTPS_NEEDS_CERT));
        }
        (_, tls) => tls.clone(),
    };
    let api = Api::new(ctx);
    let plain = serve_listener(http, &api, |s| async move { Ok(s) });
    match (https, tls) {
        (Some(listener), Some(tls)) => {
            // The acceptor is taken per connection, so a SIGHUP reload applies to the
            // next handshake.
            let secure = serve_listener(listener, &api, move |s| {
                let acceptor = tls.https_acceptor();
                async move { acceptor.accept(s).await }
            });
            tokio::join!(plain, secure);
        }
        _ => plain.await,
    }
    api.wait().await;
    Ok(())
}

/// Accepts on `listener` until shutdown, each socket put through `wrap` (e.g. a TLS
/// acceptor) and served by [`Api::serve_connection`]; connections share `api`'s slots.
/// Returns without waiting for them: call [`Api::wait`] once every listener of `api`
/// returned.
pub async fn serve_listener<W, Fut, S>(listener: TcpListener, api: &Arc<Api>, wrap: W)
where
    W: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = api.ctx.shutdown.clone();
    loop {
        let socket = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        api.accept(socket, wrap.clone());
    }
}

impl Api {
    /// Waits for every connection accepted by [`serve_listener`] to end (after shutdown).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
