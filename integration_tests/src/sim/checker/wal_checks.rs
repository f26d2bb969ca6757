//! The checks that compare WAL bytes: provenance (each acceptor's WAL is what its
//! history's terms generated), LogSafety against the reference log, and the durable
//! copies NoCommittedLoss counts.
//!
//! Owns: incremental comparison (each byte is compared once per version of it; a cut
//! below a checked point makes the checker look again). Must never: report uncommitted
//! WAL of another history as a violation: such bytes only stop the durable count.

use utils::Lsn;

use super::{Check, Checker, Violation};
use crate::sim::acceptor_node::AcceptorNode;
use crate::sim::config::N_ACCEPTORS;
use crate::sim::storage::Rope;

impl Checker {
    /// WalProvenance (aux): an acceptor's WAL below its flush_lsn is what the terms of
    /// its history generated (each range by the source of the term owning it).
    pub(super) fn check_provenance(&mut self, sk: usize, node: &AcceptorNode) -> Check {
        let Some(a) = node.acceptor().filter(|_| self.aux) else {
            return Ok(());
        };
        let from = self.acceptors[sk].provenance;
        let to = a.flush_lsn().min(node.storage().end());
        if to <= from {
            return Ok(());
        }
        let history = &a.state().term_history;
        let wal = node.storage().wal();
        let mut mismatch = None;
        let mut missing = false;
        self.visit_generated(history, from, to, |lsn, expected| {
            if mismatch.is_some() || missing {
                return;
            }
            let held = wal.visit(lsn, Lsn(lsn.0 + expected.len() as u64), |at, s| {
                let off = (at.0 - lsn.0) as usize;
                if mismatch.is_none()
                    && let Some(i) = first_diff(s, &expected[off..off + s.len()])
                {
                    mismatch = Some(Lsn(at.0 + i as u64));
                }
            });
            missing |= !held;
        })
        .map_err(|e| {
            Violation::new("WalProvenance", format!("sk{sk}'s WAL [{from}, {to}): {e}"))
        })?;
        if let Some(at) = mismatch {
            return Err(Violation::new(
                "WalProvenance",
                format!(
                    "sk{sk}'s WAL at {at} (below its flush_lsn {}) is not what term {:?} of its \
                     history {history:?} generated",
                    a.flush_lsn(),
                    history.term_at(at)
                ),
            ));
        }
        if missing {
            return Err(Violation::new(
                "WalProvenance",
                format!("sk{sk} misses WAL below its flush_lsn {}", a.flush_lsn()),
            ));
        }
        self.acceptors[sk].provenance = to;
        Ok(())
    }

    /// The commit_lsn an acceptor holds: in memory when up, persisted when down.
    pub(super) fn commit_of(node: &AcceptorNode) -> Lsn {
        node.acceptor()
            .map_or(node.control().commit_lsn, |a| a.commit_lsn())
    }

    pub(super) fn extend_from_acceptor(&mut self, sk: usize, node: &AcceptorNode) -> Check {
        let commit = Self::commit_of(node);
        let end = self.reference_end();
        if commit <= end {
            return Ok(());
        }
        match node.storage().wal().read(end, commit) {
            Some(bytes) => {
                self.reference.extend_from_slice(&bytes);
                Ok(())
            }
            None => Err(Violation::new(
                "LogSafety",
                format!(
                    "sk{sk} has commit_lsn {commit} but holds WAL [{}, {}) only",
                    node.storage().wal().start(),
                    node.storage().end()
                ),
            )),
        }
    }

    /// LogSafety: an acceptor's WAL below its own commit_lsn is the reference.
    pub(super) fn check_log_safety(&mut self, sk: usize, node: &AcceptorNode) -> Check {
        let commit = Self::commit_of(node);
        let t = &mut self.acceptors[sk];
        let target = commit.min(Lsn(self.timeline_start.0 + self.reference.len() as u64));
        if target <= t.verified {
            return Ok(());
        }
        match compare(
            node.storage().wal(),
            t.verified,
            target,
            &self.reference,
            self.timeline_start,
        ) {
            Ok(()) => {
                t.verified = target;
                Ok(())
            }
            Err(Some(at)) => Err(Violation::new(
                "LogSafety",
                format!(
                    "sk{sk}'s WAL at {at}, below its commit_lsn {commit}, differs from the \
                     committed WAL (history {:?})",
                    node.acceptor()
                        .map_or(&node.control().term_history, |a| &a.state().term_history)
                ),
            )),
            Err(None) => Err(Violation::new(
                "LogSafety",
                format!(
                    "sk{sk} has commit_lsn {commit} but holds WAL [{}, {}) only",
                    node.storage().wal().start(),
                    node.storage().end()
                ),
            )),
        }
    }

    pub(super) fn advance_durable_match(&mut self, sk: usize, node: &AcceptorNode) {
        let t = &mut self.acceptors[sk];
        let target = node
            .storage()
            .durable_end()
            .min(Lsn(self.timeline_start.0 + self.reference.len() as u64));
        if t.durable_blocked || target <= t.durable_match {
            return;
        }
        match compare(
            node.storage().wal(),
            t.durable_match,
            target,
            &self.reference,
            self.timeline_start,
        ) {
            Ok(()) => t.durable_match = target,
            Err(Some(at)) => {
                t.durable_match = at;
                t.durable_blocked = true;
            }
            Err(None) => t.durable_blocked = true,
        }
    }

    /// NoCommittedLoss: the highest commit any proposer reported is in the durable WAL
    /// of a quorum, identical to the reference.
    pub(super) fn check_no_committed_loss(&self) -> Check {
        let (commit, who) = &self.max_commit;
        if *commit <= self.timeline_start {
            return Ok(());
        }
        let holders: Vec<usize> = (0..N_ACCEPTORS)
            .filter(|&sk| self.acceptors[sk].durable_match >= *commit)
            .collect();
        if holders.len() * 2 <= N_ACCEPTORS {
            let held: Vec<String> = self
                .acceptors
                .iter()
                .enumerate()
                .map(|(sk, t)| format!("sk{sk} up to {}", t.durable_match))
                .collect();
            return Err(Violation::new(
                "NoCommittedLoss",
                format!(
                    "{who} reported commit {commit}, but only {holders:?} hold it durably ({})",
                    held.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Compares `rope[from, to)` with the reference (which starts at `ref_start`): `Ok`, the
/// first differing LSN, or `Err(None)` if the rope does not hold the range.
fn compare(
    rope: &Rope,
    from: Lsn,
    to: Lsn,
    reference: &[u8],
    ref_start: Lsn,
) -> Result<(), Option<Lsn>> {
    let mut diff = None;
    let held = rope.visit(from, to, |lsn, s| {
        if diff.is_some() {
            return;
        }
        let off = (lsn.0 - ref_start.0) as usize;
        if let Some(i) = first_diff(s, &reference[off..off + s.len()]) {
            diff = Some(Lsn(lsn.0 + i as u64));
        }
    });
    match (held, diff) {
        (false, _) => Err(None),
        (true, Some(at)) => Err(Some(at)),
        (true, None) => Ok(()),
    }
}

pub(super) fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}
