//! The `safekeeper` binary: flags, logging, signals; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use safekeeper::durability::SyncMode;
use safekeeper::server::{Config, Server};
use tokio_util::sync::CancellationToken;
use utils::NodeId;

/// A WAL safekeeper: keeps a PostgreSQL primary's write-ahead log durable on a quorum of
/// machines and serves it back to replicas, pageservers and tools.
///
/// Proposers connect with START_WAL_PUSH; readers with START_REPLICATION (pg_receivewal,
/// a standby's primary_conninfo). Look at a timeline with
/// `psql "host=127.0.0.1 port=5454 replication=1" -c TIMELINE_STATUS`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// This safekeeper's node id, unique in its quorum.
    #[arg(long, value_name = "ID")]
    id: u64,
    /// Data directory: one subdirectory per tenant and timeline.
    #[arg(short = 'D', long, value_name = "DIR", default_value = "./.safekeeper")]
    datadir: PathBuf,
    /// Address for the PostgreSQL protocol (proposers and readers).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5454")]
    listen_pg: SocketAddr,
    /// Address for the HTTP API (GET /v1/status).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7676")]
    listen_http: SocketAddr,
    /// Skip every fsync. FOR TESTS ONLY: a machine crash then loses acknowledged WAL.
    #[arg(long)]
    no_sync: bool,
    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_connections: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if args.no_sync {
        tracing::warn!(
            "--no-sync: fsync is DISABLED; acknowledged WAL can be lost on a machine crash. Use for tests only."
        );
    }
    let conf = Config {
        id: NodeId(args.id),
        datadir: args.datadir.clone(),
        sync: if args.no_sync {
            SyncMode::NoSync
        } else {
            SyncMode::Sync
        },
        max_connections: args.max_connections,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = Server::start(&conf, shutdown.clone())?;
        let pg = tokio::net::TcpListener::bind(args.listen_pg)
            .await
            .with_context(|| format!("could not listen on {}", args.listen_pg))?;
        let http = tokio::net::TcpListener::bind(args.listen_http)
            .await
            .with_context(|| format!("could not listen on {}", args.listen_http))?;
        tracing::info!(
            id = args.id,
            datadir = %args.datadir.display(),
            pg = %pg.local_addr()?,
            http = %http.local_addr()?,
            "safekeeper started"
        );
        tokio::spawn(wait_for_signal(shutdown.clone()));
        server.run(pg, http).await?;
        anyhow::Ok(())
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
