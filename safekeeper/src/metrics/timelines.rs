//! Series computed at scrape time from the registry of timelines: how many timelines are in
//! each state, and how far commit trails flush and readers trail commit, aggregated over
//! timelines (no series per timeline).
//!
//! Owns: [`TimelineSource`] (what the registry tells), [`TimelineStats`] and the collector.
//! Must never: hold the registry's lock while encoding, or expose a timeline id.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{StateLabels, TimelineState};

/// What the registry of timelines reports at a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimelineStats {
    /// Timelines per state, in [`TimelineState::ALL`] order.
    pub by_state: [u64; 4],
    /// Largest `flush_lsn − commit_lsn` of an active timeline (bytes durable here and not
    /// yet known committed).
    pub commit_lag_max: u64,
    /// Sum of `flush_lsn − commit_lsn` over active timelines.
    pub commit_lag_sum: u64,
    /// Largest `commit_lsn − position` of the slowest reader of an active timeline (its
    /// reported flush position, or what was sent to it when it reported none).
    pub reader_lag_max: u64,
}

impl TimelineStats {
    /// Counts one timeline in `state`.
    pub fn count(&mut self, state: TimelineState) {
        let i = TimelineState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0);
        self.by_state[i] += 1;
    }

    /// Adds an active timeline's positions: its flush and commit LSNs and its readers'
    /// positions (see [`TimelineStats::reader_lag_max`]).
    pub fn add_active(&mut self, flush: u64, commit: u64, readers: impl Iterator<Item = u64>) {
        let lag = flush.saturating_sub(commit);
        self.commit_lag_max = self.commit_lag_max.max(lag);
        self.commit_lag_sum = self.commit_lag_sum.saturating_add(lag);
        for pos in readers {
            self.reader_lag_max = self.reader_lag_max.max(commit.saturating_sub(pos));
        }
    }
}

/// The registry of timelines, as the metrics see it.
pub trait TimelineSource: Send + Sync {
    /// The counts and lags now.
    fn timeline_stats(&self) -> TimelineStats;
}

/// Encodes [`TimelineStats`] at each scrape.
pub(super) struct TimelineCollector {
    source: Weak<dyn TimelineSource>,
}

impl TimelineCollector {
    pub(super) fn new(source: Weak<dyn TimelineSource>) -> Self {
        TimelineCollector { source }
    }
}

impl std::fmt::Debug for TimelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimelineCollector").finish_non_exhaustive()
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value as i64);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for TimelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.upgrade() else {
            return Ok(());
        };
        let s = source.timeline_stats();
        let mut family = encoder.encode_descriptor(
            "safekeeper_timelines",
            "Timelines in the registry, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in TimelineState::ALL.iter().zip(s.by_state) {
            let labels = StateLabels { state: *state };
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }
        let e = &mut encoder;
        gauge(
            e,
            "safekeeper_commit_lag_bytes_max",
            "Largest flush_lsn - commit_lsn over active timelines",
            s.commit_lag_max,
        )?;
        gauge(
            e,
            "safekeeper_commit_lag_bytes_sum",
            "Sum of flush_lsn - commit_lsn over active timelines",
            s.commit_lag_sum,
        )?;
        gauge(
            e,
            "safekeeper_reader_lag_bytes_max",
            "Largest commit_lsn - position of a connected reader over active timelines",
            s.reader_lag_max,
        )
    }
}
