//! The label sets of the server's metric families: small closed enums, so every family has
//! a fixed, small number of series.
//!
//! Owns: the label types and their text. Must never: take a label value from a client
//! (an id, a name, an address): that would make the series count unbounded.

use pq_proto::backend::SqlState;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

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

/// Labels of [`super::Metrics::client_errors`]: the SQLSTATE of an ErrorResponse sent.
/// The server only answers with the named codes of [`SqlState`] (about twenty), so the
/// family has at most that many series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The five-character code.
    pub sqlstate: SqlStateLabel,
}

/// A SQLSTATE as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct SqlStateLabel(pub SqlState);

impl EncodeLabelValue for SqlStateLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.0.as_str())
    }
}

/// The states of a timeline in the registry, as the `state` label of
/// `safekeeper_timelines`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TimelineState {
    /// Loaded and served.
    Active,
    /// Being created or reloaded.
    Creating,
    /// Being deleted.
    Deleting,
    /// Found on disk but not servable.
    Unavailable,
}

impl TimelineState {
    /// Every state, in the order they are exposed.
    pub const ALL: [TimelineState; 4] = [
        TimelineState::Active,
        TimelineState::Creating,
        TimelineState::Deleting,
        TimelineState::Unavailable,
    ];
}

impl EncodeLabelValue for TimelineState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            TimelineState::Active => "active",
            TimelineState::Creating => "creating",
            TimelineState::Deleting => "deleting",
            TimelineState::Unavailable => "unavailable",
        })
    }
}

/// Labels of `safekeeper_timelines`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The registry state.
    pub state: TimelineState,
}
