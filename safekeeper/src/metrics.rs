//! The server's metrics: one registry, created with the server and handed to whatever
//! records into it (no global statics), encoded in the Prometheus text format at
//! `GET /metrics`.
//!
//! Owns: the metric families and their names. Must never: create a series per timeline
//! or per connection (label values come from small fixed sets).

use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a timeline was read from disk.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LoadReason {
    /// At server start.
    Start,
    /// After a storage error broke it.
    Reload,
    /// Created (by a proposer's greeting).
    Create,
}

impl EncodeLabelValue for LoadReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            LoadReason::Start => "start",
            LoadReason::Reload => "reload",
            LoadReason::Create => "create",
        })
    }
}

/// Labels of [`Metrics::timeline_loads`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// Why.
    pub reason: LoadReason,
}

/// How an offload attempt of one segment ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BackupOutcome {
    /// Stored now.
    Uploaded,
    /// Already in the store.
    Exists,
    /// Failed (retried with backoff).
    Error,
}

impl EncodeLabelValue for BackupOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            BackupOutcome::Uploaded => "uploaded",
            BackupOutcome::Exists => "exists",
            BackupOutcome::Error => "error",
        })
    }
}

/// Labels of the backup counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackupLabels {
    /// How it ended.
    pub outcome: BackupOutcome,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Timelines read from disk (or created), by reason.
    pub timeline_loads: Family<LoadLabels, Counter>,
    /// Group-commit flushes done by ingest loops.
    pub ingest_flushes: Counter,
    /// Seconds per group-commit flush (fdatasync and any control-file persist).
    pub ingest_flush_seconds: Histogram,
    /// WAL bytes made durable per group-commit flush.
    pub ingest_flush_bytes: Histogram,
    /// Proposer connections streaming now.
    pub proposer_connections: Gauge,
    /// WAL senders streaming now.
    pub sender_streams: Gauge,
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

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("safekeeper");
        let timeline_loads = Family::<LoadLabels, Counter>::default();
        registry.register(
            "timeline_loads",
            "Timelines read from disk or created, by reason",
            timeline_loads.clone(),
        );
        let ingest_flushes = Counter::default();
        registry.register(
            "ingest_flushes",
            "Group-commit flushes of the ingest loops",
            ingest_flushes.clone(),
        );
        // 20 µs to ~650 ms.
        let ingest_flush_seconds = Histogram::new(exponential_buckets(20e-6, 2.0, 16));
        registry.register(
            "ingest_flush_seconds",
            "Duration of a group-commit flush (fdatasync and control-file persist)",
            ingest_flush_seconds.clone(),
        );
        // 512 B to 64 MiB.
        let ingest_flush_bytes = Histogram::new(exponential_buckets(512.0, 2.0, 18));
        registry.register(
            "ingest_flush_bytes",
            "WAL bytes made durable by one group-commit flush",
            ingest_flush_bytes.clone(),
        );
        let proposer_connections = Gauge::default();
        registry.register(
            "proposer_connections",
            "Proposer connections streaming WAL in",
            proposer_connections.clone(),
        );
        let sender_streams = Gauge::default();
        registry.register(
            "sender_streams",
            "Replication streams sending WAL out",
            sender_streams.clone(),
        );
        let backup_segments = Family::<BackupLabels, Counter>::default();
        registry.register(
            "backup_segments",
            "Complete WAL segments offloaded to remote storage, by outcome",
            backup_segments.clone(),
        );
        let backup_bytes = Counter::default();
        registry.register(
            "backup_bytes",
            "Bytes written to remote storage by segment uploads",
            backup_bytes.clone(),
        );
        // 10 ms to ~80 s.
        let backup_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "backup_seconds",
            "Duration of one segment upload (read, compress, store)",
            backup_seconds.clone(),
        );
        let backup_backlog_segments = Gauge::default();
        registry.register(
            "backup_backlog_segments",
            "Complete WAL segments waiting for offload, over all timelines",
            backup_backlog_segments.clone(),
        );
        let backup_partial_uploads = Counter::default();
        registry.register(
            "backup_partial_uploads",
            "Partial WAL segments uploaded after a quiet period",
            backup_partial_uploads.clone(),
        );
        let backup_gaps = Counter::default();
        registry.register(
            "backup_gaps",
            "WAL segments that were neither on local disk nor in remote storage when due",
            backup_gaps.clone(),
        );
        let removed_segments = Counter::default();
        registry.register(
            "removed_segments",
            "Local WAL segments removed after offload",
            removed_segments.clone(),
        );
        let archive_downloads = Counter::default();
        registry.register(
            "archive_downloads",
            "WAL segments downloaded from remote storage for readers",
            archive_downloads.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            backup_segments,
            backup_bytes,
            backup_seconds,
            backup_backlog_segments,
            backup_partial_uploads,
            backup_gaps,
            removed_segments,
            archive_downloads,
            timeline_loads,
            ingest_flushes,
            ingest_flush_seconds,
            ingest_flush_bytes,
            proposer_connections,
            sender_streams,
        }
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

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
