//! What the registry tells the metrics at a scrape: timelines by state, commit and reader
//! lags ([`crate::metrics::timelines`]).
//!
//! Owns: the walk over the map for the metrics. Must never: hold the map lock while it
//! looks into a timeline (the active ones are cloned out first).

use crate::metrics::{TimelineSource, TimelineState, TimelineStats};

use super::{Entry, Timelines};

impl TimelineSource for Timelines {
    fn timeline_stats(&self) -> TimelineStats {
        let mut stats = TimelineStats::default();
        let active: Vec<_> = {
            let map = self.lock();
            for e in map.values() {
                stats.count(match e {
                    Entry::Active(_) => TimelineState::Active,
                    Entry::Creating(_) => TimelineState::Creating,
                    Entry::Deleting(_) => TimelineState::Deleting,
                    Entry::Unavailable { .. } => TimelineState::Unavailable,
                });
            }
            map.values()
                .filter_map(|e| match e {
                    Entry::Active(tl) => Some(tl.clone()),
                    _ => None,
                })
                .collect()
        };
        for tl in active {
            let st = tl.status();
            let readers = tl.feedback.readers();
            let positions = readers.iter().map(|r| {
                if r.flush_lsn.is_valid() {
                    r.flush_lsn.0
                } else {
                    r.sent_lsn.0
                }
            });
            stats.add_active(st.flush_lsn.0, st.commit_lsn.0, positions);
        }
        stats
    }
}
