//! The server's metrics: one registry, created with the server and handed to whatever
//! records into it (no global statics), encoded in the OpenMetrics text format at
//! `GET /metrics`.
//!
//! Three kinds of series:
//! * counters, gauges and histograms recorded where things happen (atomics for counters and
//!   gauges; a histogram takes a short lock, so they are observed once per batch — a
//!   `pwritev`, an fdatasync, a group commit — never per message);
//! * the timelines by state and the commit/reader lags, computed at scrape time from the
//!   registry of timelines ([`timelines`]);
//! * the standard `process_*` series from `/proc/self` ([`process`]).
//!
//! Cardinality: no series carries a timeline, tenant, connection or address. Every label
//! value comes from a closed set (`reason` 3, `outcome` 3, `state` 4, `sqlstate` the ~20
//! codes the server answers with), so the whole exposition is a fixed number of series
//! (under 200 samples, most of them histogram buckets) whatever the number of timelines or
//! connections. Lags over timelines are aggregated (max and sum).
//!
//! Owns: the metric families and their names. Must never: create a series per timeline
//! or per connection, or put anything a client sent into a label.

mod labels;
pub mod process;
#[cfg(test)]
mod tests;
pub mod timelines;

use std::sync::{Mutex, Weak};
use std::time::Instant;

use pq_proto::backend::SqlState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

pub use labels::{
    BackupLabels, BackupOutcome, ErrorLabels, LoadLabels, LoadReason, SqlStateLabel, StateLabels,
    TimelineState,
};
pub use timelines::{TimelineSource, TimelineStats};

/// Buckets of the disk latency histograms: 10 µs to ~5 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(10e-6, 2.0, 20)
}

/// What the segment files of every timeline record: cheap clones of the same series
/// (each metric is an `Arc` inside), carried in the segment environment.
#[derive(Clone, Debug)]
pub struct WalIoMetrics {
    /// WAL bytes written to segment files (by `pwritev`).
    pub written_bytes: Counter,
    /// Seconds per `pwritev` of a batch.
    pub write_seconds: Histogram,
    /// Seconds per fdatasync of a WAL segment (skipped syncs under `--no-sync` are not
    /// observed).
    pub fsync_seconds: Histogram,
}

impl WalIoMetrics {
    /// Series registered nowhere: for tools and tests that write WAL without a server.
    pub fn detached() -> Self {
        WalIoMetrics {
            written_bytes: Counter::default(),
            write_seconds: Histogram::new(latency_buckets()),
            fsync_seconds: Histogram::new(latency_buckets()),
        }
    }

    /// Records one `pwritev` of `bytes` begun at `started`.
    pub fn wrote(&self, bytes: usize, started: Instant) {
        self.written_bytes.inc_by(bytes as u64);
        self.write_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// Records one fdatasync begun at `started`.
    pub fn synced(&self, started: Instant) {
        self.fsync_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// Every metric of the server.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Timelines read from disk (or created), by reason.
    pub timeline_loads: Family<LoadLabels, Counter>,
    /// WAL bytes received from proposers (AppendRequest payloads).
    pub wal_received_bytes: Counter,
    /// WAL bytes sent to readers (XLogData payloads).
    pub wal_sent_bytes: Counter,
    /// Streams ended because WAL read for sending failed its checks (`XX001`).
    pub wal_corruption_detected: Counter,
    /// Recoveries from a peer begun (`timeline/recovery.rs`).
    pub peer_recoveries: Counter,
    /// Recoveries from a peer that failed (donor unreachable, WAL refused).
    pub peer_recovery_errors: Counter,
    /// WAL bytes read from peers by recoveries and submitted to the ingest loop.
    pub peer_recovery_bytes: Counter,
    /// Segment file I/O: bytes written, write and fdatasync latency.
    pub wal_io: WalIoMetrics,
    /// Group-commit flushes done by ingest loops.
    pub ingest_flushes: Counter,
    /// Seconds per group-commit flush (fdatasync and any control-file persist).
    pub ingest_flush_seconds: Histogram,
    /// WAL bytes made durable per group-commit flush.
    pub ingest_flush_bytes: Histogram,
    /// AppendRequests made durable per group-commit flush.
    pub ingest_flush_appends: Histogram,
    /// Proposer connections streaming now.
    pub proposer_connections: Gauge,
    /// WAL senders streaming now.
    pub sender_streams: Gauge,
    /// ErrorResponses sent to clients, by SQLSTATE.
    pub client_errors: Family<ErrorLabels, Counter>,
    /// Complete segments offloaded, by outcome.
    pub backup_segments: Family<BackupLabels, Counter>,
    /// Bytes written to remote storage by uploads (compressed size).
    pub backup_bytes: Counter,
    /// Seconds per segment upload (read, compress, store).
    pub backup_seconds: Histogram,
    /// Complete segments waiting for offload, over all timelines.
    pub backup_backlog_segments: Gauge,
    /// Partial segments uploaded.
    pub backup_partial_uploads: Counter,
    /// Segments that could be backed up from nowhere (neither local nor in the store).
    pub backup_gaps: Counter,
    /// Local segments removed after offload.
    pub removed_segments: Counter,
    /// Segments fetched from remote storage for readers.
    pub archive_downloads: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` as `safekeeper_<name>` and hands it back.
fn reg<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// A fresh registry with every family registered, and the process collector.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector::new()));
        let r = root.sub_registry_with_prefix("safekeeper");
        let timeline_loads = reg(
            r,
            "timeline_loads",
            "Timelines read from disk or created, by reason",
            Family::default(),
        );
        let wal_received_bytes = reg(
            r,
            "wal_received_bytes",
            "WAL bytes received from proposers",
            Counter::default(),
        );
        let peer_recoveries = reg(
            r,
            "peer_recoveries",
            "Recoveries of missing WAL from a peer begun",
            Counter::default(),
        );
        let peer_recovery_errors = reg(
            r,
            "peer_recovery_errors",
            "Recoveries from a peer that failed",
            Counter::default(),
        );
        let peer_recovery_bytes = reg(
            r,
            "peer_recovery_bytes",
            "WAL bytes recovered from peers",
            Counter::default(),
        );
        let wal_sent_bytes = reg(
            r,
            "wal_sent_bytes",
            "WAL bytes sent to readers (replicas, pageservers, peers)",
            Counter::default(),
        );
        let wal_corruption_detected = reg(
            r,
            "wal_corruption_detected",
            "Replication streams ended because WAL read from disk failed its record checks (CRC, page headers)",
            Counter::default(),
        );
        let wal_io = WalIoMetrics {
            written_bytes: reg(
                r,
                "wal_written_bytes",
                "WAL bytes written to segment files",
                Counter::default(),
            ),
            write_seconds: reg(
                r,
                "wal_write_seconds",
                "Duration of one pwritev of batched WAL into a segment file",
                Histogram::new(latency_buckets()),
            ),
            fsync_seconds: reg(
                r,
                "wal_fsync_seconds",
                "Duration of one fdatasync of a WAL segment file",
                Histogram::new(latency_buckets()),
            ),
        };
        let ingest_flushes = reg(
            r,
            "ingest_flushes",
            "Group-commit flushes of the ingest loops",
            Counter::default(),
        );
        // 20 µs to ~650 ms.
        let ingest_flush_seconds = reg(
            r,
            "ingest_flush_seconds",
            "Duration of a group-commit flush (fdatasync and control-file persist)",
            Histogram::new(exponential_buckets(20e-6, 2.0, 16)),
        );
        // 512 B to 64 MiB.
        let ingest_flush_bytes = reg(
            r,
            "ingest_flush_bytes",
            "WAL bytes made durable by one group-commit flush",
            Histogram::new(exponential_buckets(512.0, 2.0, 18)),
        );
        // 1 to 4096.
        let ingest_flush_appends = reg(
            r,
            "ingest_flush_appends",
            "AppendRequests made durable by one group-commit flush",
            Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        );
        let proposer_connections = reg(
            r,
            "proposer_connections",
            "Proposer connections streaming WAL in",
            Gauge::default(),
        );
        let sender_streams = reg(
            r,
            "sender_streams",
            "Replication streams sending WAL out (connected readers)",
            Gauge::default(),
        );
        let client_errors = reg(
            r,
            "client_errors",
            "ErrorResponses sent to clients, by SQLSTATE",
            Family::default(),
        );
        let backup_segments = reg(
            r,
            "backup_segments",
            "Complete WAL segments offloaded to remote storage, by outcome",
            Family::default(),
        );
        let backup_bytes = reg(
            r,
            "backup_bytes",
            "Bytes written to remote storage by segment uploads",
            Counter::default(),
        );
        // 10 ms to ~80 s.
        let backup_seconds = reg(
            r,
            "backup_seconds",
            "Duration of one segment upload (read, compress, store)",
            Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        );
        let backup_backlog_segments = reg(
            r,
            "backup_backlog_segments",
            "Complete WAL segments waiting for offload, over all timelines",
            Gauge::default(),
        );
        let backup_partial_uploads = reg(
            r,
            "backup_partial_uploads",
            "Partial WAL segments uploaded after a quiet period",
            Counter::default(),
        );
        let backup_gaps = reg(
            r,
            "backup_gaps",
            "WAL segments that were neither on local disk nor in remote storage when due",
            Counter::default(),
        );
        let removed_segments = reg(
            r,
            "removed_segments",
            "Local WAL segments removed after offload",
            Counter::default(),
        );
        let archive_downloads = reg(
            r,
            "archive_downloads",
            "WAL segments downloaded from remote storage for readers",
            Counter::default(),
        );
        Metrics {
            registry: Mutex::new(root),
            timeline_loads,
            wal_received_bytes,
            wal_sent_bytes,
            wal_corruption_detected,
            peer_recoveries,
            peer_recovery_errors,
            peer_recovery_bytes,
            wal_io,
            ingest_flushes,
            ingest_flush_seconds,
            ingest_flush_bytes,
            ingest_flush_appends,
            proposer_connections,
            sender_streams,
            client_errors,
            backup_segments,
            backup_bytes,
            backup_seconds,
            backup_backlog_segments,
            backup_partial_uploads,
            backup_gaps,
            removed_segments,
            archive_downloads,
        }
    }

    /// Adds the series computed from the registry of timelines at each scrape (timelines
    /// by state, commit and reader lags). Held weakly: the registry owns the metrics
    /// handle, not the other way round; once it is gone those series are left out.
    pub fn watch_timelines(&self, source: Weak<dyn TimelineSource>) {
        self.lock()
            .register_collector(Box::new(timelines::TimelineCollector::new(source)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a timeline load.
    pub fn timeline_loaded(&self, reason: LoadReason) {
        self.timeline_loads
            .get_or_create(&LoadLabels { reason })
            .inc();
    }

    /// Loads so far for `reason`.
    pub fn timeline_loads(&self, reason: LoadReason) -> u64 {
        self.timeline_loads
            .get_or_create(&LoadLabels { reason })
            .get()
    }

    /// Counts an ErrorResponse sent to a client.
    pub fn client_error(&self, code: SqlState) {
        self.client_errors
            .get_or_create(&ErrorLabels {
                sqlstate: SqlStateLabel(code),
            })
            .inc();
    }

    /// ErrorResponses sent so far with `code`.
    pub fn client_errors(&self, code: SqlState) -> u64 {
        self.client_errors
            .get_or_create(&ErrorLabels {
                sqlstate: SqlStateLabel(code),
            })
            .get()
    }

    /// Counts an offload attempt of a complete segment.
    pub fn backup(&self, outcome: BackupOutcome) {
        self.backup_segments
            .get_or_create(&BackupLabels { outcome })
            .inc();
    }

    /// Offload attempts so far that ended with `outcome`.
    pub fn backups(&self, outcome: BackupOutcome) -> u64 {
        self.backup_segments
            .get_or_create(&BackupLabels { outcome })
            .get()
    }

    /// Everything in the OpenMetrics text exposition format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.lock();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
