//! Term histories: the list of `(term, start LSN)` switch points of the WAL an acceptor
//! holds, and the highest-common-point computation both sides of an election agree on.

use crate::{Lsn, Term};

/// One switch point of a term history: from `lsn` on, the WAL was written in `term`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TermLsn {
    /// The term.
    pub term: Term,
    /// Where that term's WAL starts.
    pub lsn: Lsn,
}

/// The list of term switch points, ascending in both term and LSN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TermHistory(pub Vec<TermLsn>);

/// Why two histories cannot be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The proposer sent an empty history.
    #[error("the proposer's term history is empty")]
    EmptyProposerHistory,
    /// The same term starts at different LSNs in the two histories: one of them is corrupt.
    #[error("term {term} starts at {ours} here but at {theirs} in the proposer's history")]
    Diverged {
        /// The term.
        term: Term,
        /// Its start in the local history.
        ours: Lsn,
        /// Its start in the proposer's history.
        theirs: Lsn,
    },
    /// A proposed history whose terms do not strictly increase.
    #[error(
        "invalid term history: terms must strictly increase, but entry {index} has term {term} after term {prev}"
    )]
    TermsNotIncreasing {
        /// Index of the offending entry.
        index: usize,
        /// The term before it.
        prev: Term,
        /// Its term.
        term: Term,
    },
    /// A proposed history whose switch LSNs decrease.
    #[error(
        "invalid term history: switch points must not decrease, but term {term} starts at {lsn} after {prev}"
    )]
    LsnDecreasing {
        /// The offending entry's term.
        term: Term,
        /// The previous entry's start.
        prev: Lsn,
        /// Its start.
        lsn: Lsn,
    },
    /// A proposed history whose last entry is not the elected term.
    #[error("invalid term history: its last entry has term {last}, not the elected term {elected}")]
    LastNotElected {
        /// The last entry's term.
        last: Term,
        /// The term the proposer was elected in.
        elected: Term,
    },
    /// A proposed history whose first entry starts at LSN 0.
    #[error("invalid term history: the first term starts at 0/0")]
    InvalidStart,
}

impl TermHistory {
    /// An empty history.
    pub fn empty() -> Self {
        TermHistory(Vec::new())
    }

    /// The entries whose switch point is at or below `lsn` (a switch exactly at `lsn`
    /// counts: that term owns the WAL from there on, even if none of it is written yet).
    pub fn up_to(&self, lsn: Lsn) -> TermHistory {
        TermHistory(self.0.iter().copied().filter(|e| e.lsn <= lsn).collect())
    }

    /// Term of the last entry at or below `flush_lsn`; 0 if none (the `last_log_term`).
    pub fn last_log_term(&self, flush_lsn: Lsn) -> Term {
        self.0
            .iter()
            .rev()
            .find(|e| e.lsn <= flush_lsn)
            .map_or(Term(0), |e| e.term)
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<TermLsn> {
        self.0.last().copied()
    }

    /// True if terms and LSNs never decrease along the history (LogIsMonotonic).
    pub fn is_monotonic(&self) -> bool {
        self.0
            .windows(2)
            .all(|w| w[0].term < w[1].term && w[0].lsn <= w[1].lsn)
    }

    /// Checks a history a proposer elected in `elected` sent with its ProposerElected,
    /// streaming from `start`: not empty, the first term starting at a valid LSN, terms
    /// strictly increasing, switch points never decreasing, and the last entry of the
    /// elected term. (Where streaming starts is checked against the acceptor's own history
    /// by the caller.) Nothing that fails this may be persisted: it would be returned in
    /// later votes.
    pub fn validate_proposed(&self, elected: Term) -> Result<(), HistoryError> {
        let (first, last) = match (self.0.first(), self.0.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Err(HistoryError::EmptyProposerHistory),
        };
        if !first.lsn.is_valid() {
            return Err(HistoryError::InvalidStart);
        }
        for (i, w) in self.0.windows(2).enumerate() {
            if w[1].term <= w[0].term {
                return Err(HistoryError::TermsNotIncreasing {
                    index: i + 1,
                    prev: w[0].term,
                    term: w[1].term,
                });
            }
            if w[1].lsn < w[0].lsn {
                return Err(HistoryError::LsnDecreasing {
                    term: w[1].term,
                    prev: w[0].lsn,
                    lsn: w[1].lsn,
                });
            }
        }
        if last.term != elected {
            return Err(HistoryError::LastNotElected {
                last: last.term,
                elected,
            });
        }
        Ok(())
    }

    /// The term that wrote the byte at `lsn`, if the history covers it.
    pub fn term_at(&self, lsn: Lsn) -> Option<Term> {
        self.0.iter().rev().find(|e| e.lsn <= lsn).map(|e| e.term)
    }

    /// The highest common point of `proposer`'s history and this (local) history, whose
    /// WAL ends at `local_flush_lsn`: the LSN up to which both hold the same WAL, which is
    /// where the local WAL must be cut and the proposer's stream continue.
    ///
    /// Walk both histories from the start while terms are equal (equal terms must start at
    /// equal LSNs). With nothing in common, the answer is the proposer's first entry (the
    /// timeline start). If the last common entry is the proposer's last one, everything
    /// the acceptor has in that term is common: `local_flush_lsn`. Otherwise the common
    /// part ends where either side switched to a different term next.
    pub fn highest_common_point(
        &self,
        proposer: &TermHistory,
        local_flush_lsn: Lsn,
    ) -> Result<TermLsn, HistoryError> {
        let local = self.up_to(local_flush_lsn);
        let first = proposer
            .0
            .first()
            .copied()
            .ok_or(HistoryError::EmptyProposerHistory)?;
        let mut i = 0;
        while i < local.0.len() && i < proposer.0.len() && local.0[i].term == proposer.0[i].term {
            if local.0[i].lsn != proposer.0[i].lsn {
                return Err(HistoryError::Diverged {
                    term: local.0[i].term,
                    ours: local.0[i].lsn,
                    theirs: proposer.0[i].lsn,
                });
            }
            i += 1;
        }
        if i == 0 {
            return Ok(first);
        }
        let common = proposer.0[i - 1];
        if i == proposer.0.len() {
            return Ok(TermLsn {
                term: common.term,
                lsn: local_flush_lsn,
            });
        }
        let local_next = local.0.get(i).map_or(local_flush_lsn, |e| e.lsn);
        Ok(TermLsn {
            term: common.term,
            lsn: proposer.0[i].lsn.min(local_next),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory(
            entries
                .iter()
                .map(|&(t, l)| TermLsn {
                    term: Term(t),
                    lsn: Lsn(l),
                })
                .collect(),
        )
    }

    #[test]
    fn proposed_histories_are_validated() {
        let t = Term;
        assert_eq!(h(&[(0, 100), (5, 100)]).validate_proposed(t(5)), Ok(()));
        assert_eq!(
            h(&[(1, 100), (3, 200), (5, 300)]).validate_proposed(t(5)),
            Ok(())
        );
        assert_eq!(
            h(&[]).validate_proposed(t(5)),
            Err(HistoryError::EmptyProposerHistory)
        );
        assert_eq!(
            h(&[(5, 0)]).validate_proposed(t(5)),
            Err(HistoryError::InvalidStart)
        );
        let unsorted = h(&[(5, 100), (1, 200), (3, 300)]).validate_proposed(t(3));
        assert!(
            matches!(
                unsorted,
                Err(HistoryError::TermsNotIncreasing { index: 1, .. })
            ),
            "{unsorted:?}"
        );
        let repeated = h(&[(1, 100), (1, 200), (3, 300)]).validate_proposed(t(3));
        assert!(matches!(
            repeated,
            Err(HistoryError::TermsNotIncreasing { index: 1, .. })
        ));
        assert_eq!(
            h(&[(1, 300), (3, 200)]).validate_proposed(t(3)),
            Err(HistoryError::LsnDecreasing {
                term: t(3),
                prev: Lsn(300),
                lsn: Lsn(200)
            })
        );
        assert_eq!(
            h(&[(1, 100), (3, 200)]).validate_proposed(t(4)),
            Err(HistoryError::LastNotElected {
                last: t(3),
                elected: t(4)
            })
        );
        let msg = h(&[(5, 100), (1, 200)])
            .validate_proposed(t(1))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("strictly increase"), "{msg}");
    }

    #[test]
    fn cut_and_last_log_term() {
        let hist = h(&[(1, 100), (3, 200), (5, 300)]);
        assert_eq!(hist.up_to(Lsn(200)), h(&[(1, 100), (3, 200)]));
        assert_eq!(hist.last_log_term(Lsn(250)), Term(3));
        assert_eq!(hist.last_log_term(Lsn(50)), Term(0));
        assert_eq!(hist.term_at(Lsn(300)), Some(Term(5)));
        assert!(hist.is_monotonic());
        assert!(!h(&[(3, 100), (2, 200)]).is_monotonic());
    }

    #[test]
    fn hcp_empty_local_takes_proposer_start() {
        let prop = h(&[(1, 100)]);
        let hcp = TermHistory::empty()
            .highest_common_point(&prop, Lsn(0))
            .unwrap();
        assert_eq!(hcp.lsn, Lsn(100));
    }

    #[test]
    fn hcp_same_term_continues_at_local_end() {
        let prop = h(&[(1, 100), (2, 500)]);
        let local = h(&[(1, 100), (2, 500)]);
        let hcp = local.highest_common_point(&prop, Lsn(800)).unwrap();
        assert_eq!(
            hcp,
            TermLsn {
                term: Term(2),
                lsn: Lsn(800)
            }
        );
    }

    #[test]
    fn hcp_divergent_tail_is_cut_at_switch() {
        // Local wrote term 2 from 500 up to 900; the proposer's history says term 3
        // took over at 600: everything local above 600 is divergent.
        let prop = h(&[(1, 100), (3, 600), (4, 700)]);
        let local = h(&[(1, 100), (2, 500)]);
        let hcp = local.highest_common_point(&prop, Lsn(900)).unwrap();
        assert_eq!(hcp.lsn, Lsn(500));
        // A lagging acceptor that never saw term 2: common up to its own end.
        let local = h(&[(1, 100)]);
        let hcp = local.highest_common_point(&prop, Lsn(300)).unwrap();
        assert_eq!(hcp.lsn, Lsn(300));
        // Lagging, but the proposer's next switch is below its end.
        let hcp = local.highest_common_point(&prop, Lsn(650)).unwrap();
        assert_eq!(hcp.lsn, Lsn(600));
    }

    #[test]
    fn hcp_rejects_diverged_starts() {
        let prop = h(&[(1, 100)]);
        let local = h(&[(1, 104)]);
        assert!(matches!(
            local.highest_common_point(&prop, Lsn(200)),
            Err(HistoryError::Diverged { .. })
        ));
        assert!(
            local
                .highest_common_point(&TermHistory::empty(), Lsn(1))
                .is_err()
        );
    }
}
