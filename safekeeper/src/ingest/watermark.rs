//! The durable-flush watermark as the executor writes it: never above what a completed
//! flush really covered, and lowered in the control file before a truncation cuts below
//! it.
//!
//! The acceptor keeps its flush_lsn in [`TimelineState::durable_flush_lsn`]; this module
//! follows the storage calls as they return (writes, flushes begun and awaited,
//! truncations) and clamps the value written to the end of the bytes a flush made
//! durable. Sans-IO: the executor reports each call here after it returned.
//!
//! Owns: [`Watermark`]. Must never: raise the value written above a completed flush, or
//! let a truncation go below the watermark of the control file before it was lowered.

use utils::Lsn;

use crate::state::TimelineState;

/// What the storage has made durable, and the control file as last written.
#[derive(Debug)]
pub(super) struct Watermark {
    /// End of the bytes handed to the storage.
    written: Lsn,
    /// End of the bytes a completed flush covered.
    synced: Lsn,
    /// `written` when the flush in flight began.
    pending: Option<Lsn>,
    /// The control file as last written.
    persisted: TimelineState,
}

impl Watermark {
    /// The storage holds `persisted` and WAL ending at `end`, all of it durable (the
    /// restart path trusts what it finds: the server fsyncs its data directory before it
    /// opens timelines, and a crash leaves only durable bytes).
    pub(super) fn new(persisted: TimelineState, end: Lsn) -> Self {
        Watermark {
            written: end,
            synced: end,
            pending: None,
            persisted,
        }
    }

    /// `init_wal` returned: WAL now starts (and ends) at `start`; the synthetic bytes
    /// before it are not durable yet, and there is nothing below it to be.
    pub(super) fn initialized(&mut self, start: Lsn) {
        self.written = start;
        self.synced = self.synced.min(start);
    }

    /// `write_wal` of bytes ending at `end` returned.
    pub(super) fn wrote(&mut self, end: Lsn) {
        self.written = end;
    }

    /// `flush_wal` returned: everything written is durable.
    pub(super) fn flushed(&mut self) {
        self.synced = self.synced.max(self.written);
    }

    /// `begin_flush` returned: the flush covers what is written now.
    pub(super) fn flush_begun(&mut self) {
        self.pending = Some(self.written);
    }

    /// `await_flush` returned: what the begun flush covered is durable.
    pub(super) fn flush_awaited(&mut self) {
        if let Some(end) = self.pending.take() {
            self.synced = self.synced.max(end.min(self.written));
        }
    }

    /// A flush that was begun will never be awaited (the storage failed).
    pub(super) fn flush_abandoned(&mut self) {
        self.pending = None;
    }

    /// Before `truncate_wal(end)`: the control file to write first, if its watermark is
    /// above `end` (so a crash between the two never leaves a watermark above the WAL).
    /// The last written state with only the watermark lowered.
    pub(super) fn before_truncate(&self, end: Lsn) -> Option<TimelineState> {
        (self.persisted.durable_flush_lsn > end).then(|| TimelineState {
            durable_flush_lsn: end,
            ..self.persisted.clone()
        })
    }

    /// `truncate_wal(end)` returned.
    pub(super) fn truncated(&mut self, end: Lsn) {
        self.written = end;
        self.synced = self.synced.min(end);
        if let Some(p) = self.pending.as_mut() {
            *p = (*p).min(end);
        }
    }

    /// The state to write for `state`: its watermark clamped to what is durable (a
    /// clamped value is still a record boundary in practice: the acceptor's flush_lsn is
    /// never above a completed flush, so the clamp only guards against a bug).
    pub(super) fn to_persist(&self, state: &TimelineState) -> TimelineState {
        TimelineState {
            durable_flush_lsn: state.durable_flush_lsn.min(self.synced),
            ..state.clone()
        }
    }

    /// `persist_control(state)` returned.
    pub(super) fn persisted(&mut self, state: TimelineState) {
        self.persisted = state;
    }

    /// The watermark of the control file as last written.
    #[cfg(test)]
    pub(super) fn persisted_watermark(&self) -> Lsn {
        self.persisted.durable_flush_lsn
    }
}

#[cfg(test)]
mod tests {
    use utils::{TenantId, TenantTimelineId, TimelineId};

    use super::*;
    use crate::state::ServerInfo;

    fn state(watermark: u64) -> TimelineState {
        let mut s = TimelineState::new(
            TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16])),
            ServerInfo::default(),
        );
        s.durable_flush_lsn = Lsn(watermark);
        s
    }

    #[test]
    fn the_value_written_is_clamped_to_completed_flushes() {
        let mut w = Watermark::new(state(100), Lsn(100));
        w.wrote(Lsn(300));
        assert_eq!(w.to_persist(&state(300)).durable_flush_lsn, Lsn(100));
        w.flush_begun();
        w.wrote(Lsn(400));
        assert_eq!(w.to_persist(&state(300)).durable_flush_lsn, Lsn(100));
        w.flush_awaited();
        assert_eq!(w.to_persist(&state(400)).durable_flush_lsn, Lsn(300));
        w.flushed();
        assert_eq!(w.to_persist(&state(400)).durable_flush_lsn, Lsn(400));
    }

    #[test]
    fn a_truncation_below_the_persisted_watermark_lowers_it_first() {
        let mut w = Watermark::new(state(0), Lsn(500));
        w.persisted(state(500));
        assert_eq!(w.before_truncate(Lsn(500)), None);
        let first = w.before_truncate(Lsn(200)).expect("lowered first");
        assert_eq!(first.durable_flush_lsn, Lsn(200));
        w.persisted(first);
        w.truncated(Lsn(200));
        assert_eq!(w.persisted_watermark(), Lsn(200));
        assert_eq!(w.to_persist(&state(500)).durable_flush_lsn, Lsn(200));
    }
}
