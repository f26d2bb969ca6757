//! The `safekeeper` binary: flags, logging, signals; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use safekeeper::durability::SyncMode;
use safekeeper::offload::OffloadConf;
use safekeeper::remote::Compression;
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
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Tools that get WAL back out of the archive (`safekeeper archive --help`); without
    /// a subcommand the server starts.
    #[command(subcommand)]
    command: Option<Cmd>,
    /// This safekeeper's node id, unique in its quorum (required to start the server).
    #[arg(long, value_name = "ID")]
    id: Option<u64>,
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
    /// Offload WAL to this object store and remove local segments once offloaded:
    /// file:///ABSOLUTE/DIR, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or
    /// az://CONTAINER[/PREFIX]. Credentials, region and endpoint come from the usual
    /// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL;
    /// GOOGLE_SERVICE_ACCOUNT; AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY).
    /// Without it WAL is kept locally forever.
    #[arg(long, value_name = "URL")]
    remote_storage: Option<String>,
    /// How offloaded segments are stored: zstd (compressed, with checksummed metadata) or
    /// none (plain WAL files with a .meta sidecar). Both are read back either way.
    #[arg(long, value_name = "FORM", default_value = "zstd")]
    backup_compression: CompressionArg,
    /// The zstd level of offloaded segments (1 fastest … 19 smallest).
    #[arg(long, value_name = "LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    backup_compression_level: i32,
    /// Upload the partial segment once the commit position stood still this many seconds,
    /// so an idle timeline's last WAL is in the archive too; 0 = never.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    partial_backup_timeout: u64,
    /// WAL kept locally below the end of WAL even when offloaded (e.g. 0, 512MB, 4GB), for
    /// readers that are a little behind.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    wal_retention: u64,
    /// Segment uploads running at once, over all timelines.
    #[arg(long, value_name = "N", default_value_t = 4)]
    backup_workers: usize,
    /// Local disk for segments read back from the archive for readers (e.g. 1GB).
    #[arg(long, value_name = "SIZE", default_value = "1GB", value_parser = parse_size)]
    archive_cache_size: u64,
    /// Report (log and timeline status) a disk with less free space than this while WAL
    /// waits for offload and so cannot be removed (e.g. 10GB); default: 5% of the disk.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    low_disk_warning: Option<u64>,
}

/// Subcommands.
#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Get WAL back out of the archive the server offloads to (--remote-storage).
    Archive(archive_cmd::ArchiveArgs),
}

/// `--backup-compression`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressionArg {
    /// Compressed with zstd; the checksummed metadata is in the object.
    Zstd,
    /// Plain WAL files, with the metadata in a `.meta` sidecar.
    None,
}

mod archive_cmd;

/// A size: bytes, or a number with kB, MB, GB or TB (powers of 1024, as PostgreSQL's
/// settings count them).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 0, 512MB, 4GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        u => return Err(format!("unknown unit {u:?} in {s:?}: use kB, MB, GB or TB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One TLS crypto provider for the process (object store clients use it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(Cmd::Archive(a)) = args.command {
        // Warnings (retries) and errors on stderr; stdout is the command's output.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .init();
        return archive_cmd::run(a);
    }
    let Some(id) = args.id else {
        anyhow::bail!("--id is required to start the server (see safekeeper --help)");
    };
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
    let mut conf = Config::new(NodeId(id), args.datadir.clone());
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
    if let Some(url) = &args.remote_storage {
        let mut oc = OffloadConf::new(url);
        oc.compression = match args.backup_compression {
            CompressionArg::Zstd => Compression::Zstd(args.backup_compression_level),
            CompressionArg::None => Compression::None,
        };
        oc.partial_timeout = (args.partial_backup_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.partial_backup_timeout));
        oc.retention = args.wal_retention;
        oc.workers = args.backup_workers.max(1);
        oc.cache_bytes = args.archive_cache_size;
        oc.low_disk_bytes = args.low_disk_warning;
        conf.offload = Some(oc);
    }
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
            id,
            datadir = %args.datadir.display(),
            pg = %pg.local_addr()?,
            http = %http.local_addr()?,
            remote_storage = args.remote_storage.as_deref().unwrap_or("(none: WAL is kept locally)"),
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
