//! What the whole server shares: its configuration, the timeline registry, the metrics,
//! the shutdown token and the runtime WAL senders run on. Built by [`crate::server`],
//! passed to every connection.
//!
//! Owns: [`Config`] and [`ServerCtx`]. Must never: hold mutable state of its own (each
//! part synchronizes itself).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use utils::NodeId;

use crate::auth::JwtAuth;
use crate::durability::SyncMode;
use crate::metrics::Metrics;
use crate::offload::OffloadConf;
use crate::storage::StorageHook;
use crate::timelines::Timelines;
use crate::tls::ServerTls;

/// Server settings.
#[derive(Clone)]
pub struct Config {
    /// This safekeeper's node id.
    pub id: NodeId,
    /// The data directory.
    pub datadir: PathBuf,
    /// Whether syncs are real.
    pub sync: SyncMode,
    /// Connections served at once; more get "too many clients".
    pub max_connections: usize,
    /// Of `max_connections`, slots only proposers (START_WAL_PUSH) and, with
    /// authentication, `safekeeperdata` tokens may keep: a flood of other clients cannot
    /// lock the computes out.
    pub reserved_connections: usize,
    /// Threads for WAL writes, fsyncs and other disk work of timelines (the ceiling of
    /// the WAL pool).
    pub wal_io_threads: usize,
    /// Threads for WAL reads of senders that miss the page cache.
    pub read_io_threads: usize,
    /// Worker threads of the runtime WAL senders run on.
    pub sender_threads: usize,
    /// Segment files all timelines may keep open between writes (see
    /// [`crate::wal_storage::OpenSegments`]); keep it below the open-files limit minus
    /// `max_connections`.
    pub max_open_segments: usize,
    /// How long a connection may wait between commands (after its startup, or after a
    /// command's answer) before it is closed; `None`: forever. Streams are not idle.
    pub idle_timeout: Option<Duration>,
    /// How often a timeline with a membership configuration asks its peers for their
    /// positions (the peers' horizon); `None`: never.
    pub peer_status_interval: Option<Duration>,
    /// Recover WAL a timeline lacks from a peer in the same term while no proposer
    /// streams to it (see `timeline/recovery.rs`).
    pub peer_recovery: bool,
    /// WAL offload to remote storage (`None`: off, and local WAL is never removed).
    pub offload: Option<OffloadConf>,
    /// A hook in front of every storage operation, for tests (`None` in production).
    pub storage_hook: Option<Arc<dyn StorageHook>>,
    /// Token verification on the PostgreSQL port (`None`: trust).
    pub pg_auth: Option<Arc<JwtAuth>>,
    /// Token verification on the HTTP API (`None`: open).
    pub http_auth: Option<Arc<JwtAuth>>,
    /// How long an HTTP client may take to send a request's headers (from the connection's
    /// start or the previous response) before its connection is closed.
    pub http_header_timeout: Duration,
    /// HTTP connections served at once; more get 503.
    pub http_max_connections: usize,
    /// The token this safekeeper sends as its password when it connects to its peers
    /// (`None`: none; peers that check tokens then refuse it).
    pub peer_token: Option<Arc<str>>,
    /// The TLS certificate and key (`None`: SSLRequest is answered `N`).
    pub tls: Option<Arc<ServerTls>>,
}

impl Config {
    /// The defaults for a node and a data directory (fsync on).
    pub fn new(id: NodeId, datadir: PathBuf) -> Self {
        Config {
            id,
            datadir,
            sync: SyncMode::Sync,
            max_connections: 1000,
            reserved_connections: 10,
            idle_timeout: Some(Duration::from_secs(60)),
            wal_io_threads: 16,
            read_io_threads: 8,
            sender_threads: 2,
            max_open_segments: 10_000,
            peer_status_interval: Some(Duration::from_secs(10)),
            peer_recovery: true,
            offload: None,
            storage_hook: None,
            pg_auth: None,
            http_auth: None,
            http_header_timeout: Duration::from_secs(10),
            http_max_connections: 100,
            peer_token: None,
            tls: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("id", &self.id)
            .field("datadir", &self.datadir)
            .field("sync", &self.sync)
            .field("max_connections", &self.max_connections)
            .field("reserved_connections", &self.reserved_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("wal_io_threads", &self.wal_io_threads)
            .field("read_io_threads", &self.read_io_threads)
            .field("sender_threads", &self.sender_threads)
            .field("max_open_segments", &self.max_open_segments)
            .field("peer_status_interval", &self.peer_status_interval)
            .field("peer_recovery", &self.peer_recovery)
            .field("offload", &self.offload)
            .field("storage_hook", &self.storage_hook.is_some())
            .field("pg_auth", &self.pg_auth.is_some())
            .field("http_auth", &self.http_auth.is_some())
            .field("http_header_timeout", &self.http_header_timeout)
            .field("http_max_connections", &self.http_max_connections)
            .field("peer_token", &self.peer_token.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

/// What every connection shares.
pub struct ServerCtx {
    /// The settings the server started with.
    pub conf: Config,
    /// The timelines.
    pub timelines: Arc<Timelines>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM/SIGINT (each timeline's token is a child of it).
    pub shutdown: CancellationToken,
    /// The runtime WAL senders run on (owned by the server, shut down with it).
    pub senders: tokio::runtime::Handle,
}

impl ServerCtx {
    /// This safekeeper's id.
    pub fn node_id(&self) -> NodeId {
        self.conf.id
    }
}
