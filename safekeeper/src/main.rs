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
    /// Address for the HTTP API (GET /v1/status, /metrics).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7676")]
    listen_http: SocketAddr,
    /// Skip every fsync. FOR TESTS ONLY: a machine crash then loses acknowledged WAL.
    #[arg(long)]
    no_sync: bool,
    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_connections: usize,
    /// Threads for the disk work of timelines: WAL writes and fsyncs, control files,
    /// loading and creating timelines. Size it for the disk: more than the device can
    /// overlap only queues.
    #[arg(long, value_name = "N", default_value_t = 16)]
    wal_io_threads: usize,
    /// Threads for WAL reads of readers that miss the page cache.
    #[arg(long, value_name = "N", default_value_t = 8)]
    read_io_threads: usize,
    /// Threads of the network runtime (proposer and client connections); 0 = one per CPU.
    #[arg(long, value_name = "N", default_value_t = 0)]
    network_threads: usize,
    /// Threads of the runtime that sends WAL to readers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    sender_threads: usize,
    /// Segment files kept open between writes, over all timelines; past it an idle
    /// timeline closes its segment and reopens it at its next write. 0 = the open-files
    /// limit less --max-connections and a reserve of 512.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_open_segments: usize,
    /// Seconds between asking the peers of a timeline (its membership configuration) for
    /// their positions; 0 = never.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    peer_status_interval: u64,
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
    let files = raise_open_files_limit();
    let mut conf = Config::new(NodeId(args.id), args.datadir.clone());
    conf.sync = if args.no_sync {
        SyncMode::NoSync
    } else {
        SyncMode::Sync
    };
    conf.max_connections = args.max_connections;
    // Each connection is a descriptor, so is each open segment file; a reserve covers
    // control files, directories being fsynced, readers' segments and the listeners.
    const RESERVE: usize = 512;
    if args.max_connections + RESERVE > files {
        tracing::warn!(
            files,
            max_connections = args.max_connections,
            "the open-files limit is below --max-connections plus {RESERVE}: connections may fail with \"Too many open files\""
        );
    }
    conf.max_open_segments = match args.max_open_segments {
        0 => files.saturating_sub(args.max_connections + RESERVE).max(64),
        n => n,
    };
    conf.wal_io_threads = args.wal_io_threads;
    conf.read_io_threads = args.read_io_threads;
    conf.sender_threads = args.sender_threads;
    conf.peer_status_interval = (args.peer_status_interval > 0)
        .then(|| std::time::Duration::from_secs(args.peer_status_interval));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.network_threads > 0 {
        rt.worker_threads(args.network_threads);
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = Server::start(conf, shutdown.clone()).await?;
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

/// Every proposer connection is a socket and an open segment file: raise the soft limit
/// on open files to the hard one (as far as the kernel allows), say what it is, and
/// return it (1024, the usual default, if it cannot be read).
fn raise_open_files_limit() -> usize {
    let limit = match utils::limits::raise_open_files(None) {
        (0, _) => 1024,
        (n, _) => n,
    };
    tracing::info!(limit, "open files limit");
    usize::try_from(limit).unwrap_or(usize::MAX)
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
