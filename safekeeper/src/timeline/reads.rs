//! Reads of a timeline's WAL that must not race a truncation: term-mode senders (peers,
//! proposers fetching WAL they lack) read up to `flush_lsn`, which a new election may cut.
//!
//! Owns: [`Timeline::read_in_term`]. Must never: let a read overlap a step that cuts WAL
//! (ProposerElected holds the cut lock for writing until its new end is published).

use utils::{Lsn, Term};

use super::Timeline;

impl Timeline {
    /// Runs `read` (a blocking read of WAL below `end`) if the timeline is still in `term`,
    /// not broken, and its flush_lsn is at least `end`, with truncations held off until it
    /// returns. `None` if the term moved on or the WAL was cut below `end`. Blocks: call it
    /// on a pool thread.
    pub fn read_in_term<R>(&self, term: Term, end: Lsn, read: impl FnOnce() -> R) -> Option<R> {
        let _cut = self.cut.read().unwrap_or_else(|p| p.into_inner());
        {
            let st = self.status.borrow();
            if st.term != term || st.broken || end > st.flush_lsn {
                return None;
            }
        }
        Some(read())
    }
}
