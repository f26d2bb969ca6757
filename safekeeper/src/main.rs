//! The `safekeeper` binary: flags, logging, signals; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use safekeeper::auth::JwtAuth;
use safekeeper::durability::SyncMode;
use safekeeper::offload::OffloadConf;
use safekeeper::remote::Compression;
use safekeeper::server::{Config, Server};
use safekeeper::tls::ServerTls;
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
    /// Server certificate (PEM; the chain, the server's own certificate first). With
    /// --ssl-key-file it enables TLS on the PostgreSQL port: an SSLRequest is then answered
    /// `S` (clients choose with sslmode). SIGHUP reloads both files.
    #[arg(long, value_name = "PATH", requires = "ssl_key_file")]
    ssl_cert_file: Option<PathBuf>,
    /// Private key of --ssl-cert-file (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "ssl_cert_file")]
    ssl_key_file: Option<PathBuf>,
    /// Address for the HTTP API (status, metrics, creating, inspecting and deleting
    /// timelines: docs/http-api.md; its OpenAPI document is GET /v1/openapi.json).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7676")]
    listen_http: SocketAddr,
    /// Also serve the HTTP API over TLS on this address, with the certificate of
    /// --ssl-cert-file (reloaded on SIGHUP like the PostgreSQL port's). The plain
    /// --listen-http listener stays; bind it to loopback when only HTTPS should be reachable.
    #[arg(long, value_name = "HOST:PORT", requires = "ssl_cert_file")]
    listen_https: Option<SocketAddr>,
    /// Seconds an HTTP client may take to send a request's headers (counted from the
    /// connection's start or the previous answer) before its connection is closed, so
    /// stalled clients do not hold connections.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout: u64,
    /// HTTP connections served at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    http_max_connections: u64,
    /// Skip every fsync. FOR TESTS ONLY: a machine crash then loses acknowledged WAL.
    #[arg(long)]
    no_sync: bool,
    /// Connections served at once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_connections: usize,
    /// Of --max-connections, slots kept for proposers (START_WAL_PUSH) and, with
    /// --pg-auth-public-key-path, safekeeperdata tokens: once only these are left, other
    /// clients get "too many clients" (53300), so computes still get in. Default: 10, or
    /// a tenth of --max-connections when that is less.
    #[arg(long, value_name = "N")]
    reserved_connections: Option<usize>,
    /// Close a connection that sends no command for this many seconds (after its startup
    /// or between commands; a running stream is never idle), so idle clients cannot hold
    /// every connection slot; 0 = never.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    idle_timeout: u64,
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
    /// Fetch WAL a timeline lacks from a peer in the same term while no proposer streams
    /// to it (needs --peer-status-interval): on or off.
    // `Set`: a bool field otherwise gets clap's flag action (no value taken), and then
    // neither `--peer-recovery off` nor `--peer-recovery=off` parses.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        value_parser = parse_on_off,
        action = clap::ArgAction::Set
    )]
    peer_recovery: bool,
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
    /// Require a JWT as the password on the PostgreSQL port, verified against this
    /// Ed25519 public key (PEM), or against every key file in this directory (rotation:
    /// a token is good if any key verifies it). Scopes: safekeeperdata (everything) or
    /// tenant (that tenant's timelines only). Without it the port trusts every client.
    #[arg(long, value_name = "FILE|DIR")]
    pg_auth_public_key_path: Option<PathBuf>,
    /// Require `Authorization: Bearer <JWT>` on the HTTP API (except /metrics and
    /// /v1/status), verified like --pg-auth-public-key-path.
    #[arg(long, value_name = "FILE|DIR")]
    http_auth_public_key_path: Option<PathBuf>,
    /// The token (scope safekeeperdata) this safekeeper sends to its peers when it asks
    /// them for their positions; or set SAFEKEEPER_AUTH_TOKEN (not both).
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
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

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}

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
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let reserved = args
        .reserved_connections
        .unwrap_or((args.max_connections / 10).min(10));
    anyhow::ensure!(
        reserved < args.max_connections,
        "--reserved-connections ({reserved}) must be below --max-connections ({})",
        args.max_connections
    );
    conf.reserved_connections = reserved;
    conf.idle_timeout =
        (args.idle_timeout > 0).then(|| std::time::Duration::from_secs(args.idle_timeout));
    conf.http_header_timeout = std::time::Duration::from_secs(args.http_header_timeout);
    conf.http_max_connections = usize::try_from(args.http_max_connections).unwrap_or(usize::MAX);
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
    conf.peer_recovery = args.peer_recovery;
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
    let load_keys = |p: &Option<PathBuf>| -> anyhow::Result<_> {
        let Some(p) = p else { return Ok(None) };
        let auth = JwtAuth::load(p)?;
        tracing::info!(path = %p.display(), keys = auth.key_count(), "loaded token keys");
        Ok(Some(Arc::new(auth)))
    };
    conf.pg_auth = load_keys(&args.pg_auth_public_key_path)?;
    conf.http_auth = load_keys(&args.http_auth_public_key_path)?;
    conf.peer_token = utils::token::client_token(
        args.auth_token_file.as_deref(),
        "--auth-token-file",
        "SAFEKEEPER_AUTH_TOKEN",
    )?
    .map(Arc::from);
    if let (Some(cert), Some(key)) = (&args.ssl_cert_file, &args.ssl_key_file) {
        let tls = ServerTls::load(cert, key).context("cannot enable TLS")?;
        conf.tls = Some(std::sync::Arc::new(tls));
    }
    let tls = conf.tls.clone();
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
        let https = match args.listen_https {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("could not listen on {addr}"))?,
            ),
            None => None,
        };
        tracing::info!(
            id,
            datadir = %args.datadir.display(),
            pg = %pg.local_addr()?,
            http = %http.local_addr()?,
            https = https.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_else(|| "(off)".into()),
            remote_storage = args.remote_storage.as_deref().unwrap_or("(none: WAL is kept locally)"),
            tls = tls.as_ref().map(|t| t.cert_path().display().to_string()).unwrap_or_else(|| "(off)".into()),
            "safekeeper started"
        );
        tokio::spawn(wait_for_signal(shutdown.clone()));
        tokio::spawn(reload_on_sighup(tls, shutdown.clone()));
        server.run(pg, http, https).await?;
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

/// SIGHUP: reload the TLS certificate and key (new connections use them; a failed reload
/// keeps the old ones). Without TLS there is nothing to reload, but the signal is still
/// caught: its default action would end the process.
async fn reload_on_sighup(tls: Option<std::sync::Arc<ServerTls>>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        match &tls {
            None => tracing::info!("SIGHUP received: no TLS certificate to reload"),
            Some(t) => match t.reload() {
                Ok(()) => {
                    tracing::info!(cert = %t.cert_path().display(), "SIGHUP received: TLS certificate reloaded")
                }
                Err(e) => tracing::error!(
                    "SIGHUP received: TLS certificate NOT reloaded, keeping the current one: {e}"
                ),
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["safekeeper", "--id", "1"].iter().chain(extra))
    }

    #[test]
    fn peer_recovery_takes_on_or_off() {
        assert!(parse(&[]).unwrap().peer_recovery);
        assert!(parse(&["--peer-recovery", "on"]).unwrap().peer_recovery);
        assert!(!parse(&["--peer-recovery", "off"]).unwrap().peer_recovery);
        assert!(!parse(&["--peer-recovery=off"]).unwrap().peer_recovery);
        assert!(parse(&["--peer-recovery", "maybe"]).is_err());
        assert!(parse(&["--peer-recovery"]).is_err());
    }
}
