//! The invariants, checked as the run goes (ref §8 and DESIGN.md §6).
//!
//! Owns: the ground truth the checks compare against — the WAL each term's source
//! generated (so every byte in the system has a known origin), the reference log of
//! committed bytes (recorded the first time a range below some commit_lsn is seen), the
//! terms won — and per-safekeeper bookkeeping (how far its WAL was verified, the highest
//! term and flush_lsn it told anyone). Must never: look at a node's private state beyond
//! the public accessors, or let a check depend on how the sim happened to schedule.
//!
//! Core invariants: ElectionSafety, LogSafety, LogIsMonotonic, NoCommittedLoss, and
//! AckedWalIntact (checked by the world: a restart never finds WAL below the control
//! file's durable-flush watermark damaged or gone, which the restart path refuses).
//! Auxiliary ones (on with `aux_checks`): FlushIsDurable, AckedFlushKept, TermDurable,
//! CommitBelowFlush, WalProvenance (and the world's EffectContract: an effect the disk
//! cannot perform as specified, such as a truncation past the written end).
//!
//! The byte-comparing checks are in `wal_checks`.

mod wal_checks;

use std::collections::BTreeMap;

use pq_proto::proposer::AcceptorMessage;
use utils::{Lsn, Term, TermHistory};

use super::acceptor_node::AcceptorNode;
use super::config::N_ACCEPTORS;
use super::storage::Rope;
use wal_checks::first_diff;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Its name.
    pub invariant: &'static str,
    /// What was seen.
    pub details: String,
}

impl Violation {
    /// A violation of `invariant`.
    pub fn new(invariant: &'static str, details: impl Into<String>) -> Self {
        Violation {
            invariant,
            details: details.into(),
        }
    }
}

type Check = Result<(), Violation>;

#[derive(Clone, Debug, Default)]
struct AcceptorTrack {
    /// `[timeline_start, verified)` of its WAL (durable or not) equals the reference.
    verified: Lsn,
    /// `[timeline_start, durable_match)` of its durable WAL equals the reference.
    durable_match: Lsn,
    /// The byte at `durable_match` differs from the reference (uncommitted WAL of another
    /// history): stop advancing until that byte is cut.
    durable_blocked: bool,
    /// `[timeline_start, provenance)` of its WAL was checked against its history.
    provenance: Lsn,
    /// Highest term it sent in any reply.
    max_reported_term: Term,
    /// Highest flush_lsn it reported since its WAL was last cut.
    acked_flush: Lsn,
}

/// The invariant checker of one run.
#[derive(Debug)]
pub struct Checker {
    aux: bool,
    timeline_start: Lsn,
    /// Committed bytes from `timeline_start` on.
    reference: Vec<u8>,
    /// Terms won, and by whom.
    won: BTreeMap<Term, String>,
    /// The WAL each term's source generated.
    generated: BTreeMap<Term, Rope>,
    /// The highest commit_lsn a proposer reported, and by whom.
    max_commit: (Lsn, String),
    acceptors: Vec<AcceptorTrack>,
}

impl Checker {
    /// A checker for a timeline starting at `timeline_start`.
    pub fn new(timeline_start: Lsn, aux: bool) -> Self {
        let track = AcceptorTrack {
            verified: timeline_start,
            provenance: timeline_start,
            durable_match: timeline_start,
            ..Default::default()
        };
        Checker {
            aux,
            timeline_start,
            reference: Vec::new(),
            won: BTreeMap::new(),
            generated: BTreeMap::new(),
            max_commit: (timeline_start, String::new()),
            acceptors: vec![track; N_ACCEPTORS],
        }
    }

    /// End of the reference log.
    pub fn reference_end(&self) -> Lsn {
        Lsn(self.timeline_start.0 + self.reference.len() as u64)
    }

    /// The highest commit_lsn any proposer reported.
    pub fn max_commit(&self) -> Lsn {
        self.max_commit.0
    }

    /// ElectionSafety: `term` was won by `who`, which imposes `history` (LogIsMonotonic).
    pub fn on_elected(
        &mut self,
        term: Term,
        term_start: Lsn,
        history: Option<&TermHistory>,
        who: &str,
    ) -> Check {
        match history {
            Some(h)
                if h.is_monotonic()
                    && h.last()
                        .is_some_and(|e| e.term == term && e.lsn == term_start) => {}
            _ => {
                return Err(Violation::new(
                    "LogIsMonotonic",
                    format!("{who} won term {term} at {term_start} with history {history:?}"),
                ));
            }
        }
        if let Some(first) = self.won.get(&term) {
            return Err(Violation::new(
                "ElectionSafety",
                format!("term {term} won twice: first by {first}, now by {who}"),
            ));
        }
        self.won.insert(term, who.to_string());
        self.generated.insert(term, Rope::new(term_start));
        Ok(())
    }

    /// The source of `term` generated `data` at `lsn`.
    pub fn on_generated(&mut self, term: Term, lsn: Lsn, data: bytes::Bytes) -> Check {
        let rope = self.generated.get_mut(&term).ok_or_else(|| {
            Violation::new("SimContract", format!("WAL generated in unwon term {term}"))
        })?;
        rope.append(lsn, data)
            .map_err(|e| Violation::new("SimContract", format!("source of term {term}: {e}")))
    }

    /// A proposer with `history` reported `commit`: the committed bytes are what that
    /// history's terms generated; they extend the reference where it is shorter.
    ///
    /// `verified` is how far this proposer's log was already compared (it only grows).
    pub fn on_committed(
        &mut self,
        commit: Lsn,
        history: Option<&TermHistory>,
        who: &str,
        verified: &mut Lsn,
    ) -> Check {
        let Some(history) = history else {
            return Err(Violation::new(
                "SimContract",
                format!("{who} committed {commit} without a history"),
            ));
        };
        if !history.is_monotonic() {
            return Err(Violation::new(
                "LogIsMonotonic",
                format!("{who}'s history {history:?} is not monotonic"),
            ));
        }
        // The whole committed log must be what the history's terms generated, and equal
        // to what was committed before.
        let end = self.reference_end();
        let mut mismatch = None;
        let reference = &self.reference;
        let start = self.timeline_start;
        let checked_to = commit.min(end);
        let from = (*verified).max(start);
        self.visit_generated(history, from, checked_to, |lsn, s| {
            let off = (lsn.0 - start.0) as usize;
            if mismatch.is_none()
                && let Some(i) = first_diff(&reference[off..off + s.len()], s)
            {
                mismatch = Some(Lsn(lsn.0 + i as u64));
            }
        })
        .map_err(|e| Violation::new("LogSafety", format!("{who} committed {commit}: {e}")))?;
        if let Some(at) = mismatch {
            return Err(Violation::new(
                "LogSafety",
                format!(
                    "{who} committed {commit} with history {history:?}, but its WAL at {at} \
                     differs from the WAL committed before"
                ),
            ));
        }
        if commit > end {
            let mut add = Vec::with_capacity((commit.0 - end.0) as usize);
            self.visit_generated(history, end, commit, |_, s| add.extend_from_slice(s))
                .map_err(|e| {
                    Violation::new("LogSafety", format!("{who} committed {commit}: {e}"))
                })?;
            self.reference.extend_from_slice(&add);
        }
        *verified = (*verified).max(commit);
        if commit > self.max_commit.0 {
            self.max_commit = (commit, who.to_string());
        }
        Ok(())
    }

    /// Calls `f` with the bytes `[from, to)` as `history` says they were written: each
    /// range by the source of the term that history assigns it to.
    fn visit_generated(
        &self,
        history: &TermHistory,
        from: Lsn,
        to: Lsn,
        mut f: impl FnMut(Lsn, &[u8]),
    ) -> Result<(), String> {
        let entries = &history.0;
        if from >= to {
            return Ok(());
        }
        if entries.first().is_none_or(|e| e.lsn > from) {
            return Err(format!("history {history:?} does not cover {from}"));
        }
        for (i, e) in entries.iter().enumerate() {
            let next = entries.get(i + 1).map_or(Lsn(u64::MAX), |n| n.lsn);
            let (a, b) = (from.max(e.lsn), to.min(next));
            if a >= b {
                continue;
            }
            let rope = self
                .generated
                .get(&e.term)
                .ok_or_else(|| format!("no proposer was ever elected in term {}", e.term))?;
            if !rope.visit(a, b, &mut f) {
                return Err(format!(
                    "the source of term {} never generated [{a}, {b}) (it generated [{}, {}))",
                    e.term,
                    rope.start(),
                    rope.end()
                ));
            }
        }
        Ok(())
    }

    /// The acceptor cut its WAL at `end` (truncation, or a new first segment).
    /// Safekeeper `sk`'s timeline was replaced by a copy of a peer's (a membership
    /// change's `DELETE` and `pull_timeline`): what was known of its WAL and replies is
    /// forgotten and learnt again from the copy.
    pub fn on_replaced(&mut self, sk: usize) {
        let start = self.timeline_start;
        let t = &mut self.acceptors[sk];
        t.verified = start;
        t.durable_match = start;
        t.durable_blocked = false;
        t.provenance = start;
        t.max_reported_term = Term(0);
        t.acked_flush = Lsn::INVALID;
    }

    pub fn on_cut(&mut self, sk: usize, end: Lsn) {
        let t = &mut self.acceptors[sk];
        t.acked_flush = t.acked_flush.min(end);
    }

    /// FlushIsDurable (aux): a reply leaves `sk` whose durable WAL ends at `durable_end`.
    pub fn on_reply(&mut self, sk: usize, msg: &AcceptorMessage, durable_end: Lsn) -> Check {
        let (term, flush) = match msg {
            AcceptorMessage::Greeting(g) => (g.term, Lsn::INVALID),
            AcceptorMessage::VoteResponse(v) => (v.term, v.flush_lsn),
            AcceptorMessage::AppendResponse(r) => (r.term, r.flush_lsn),
        };
        let t = &mut self.acceptors[sk];
        t.max_reported_term = t.max_reported_term.max(term);
        t.acked_flush = t.acked_flush.max(flush);
        if self.aux && flush > durable_end {
            return Err(Violation::new(
                "FlushIsDurable",
                format!(
                    "sk{sk} reports flush_lsn {flush}, but its WAL is durable up to {durable_end} only"
                ),
            ));
        }
        Ok(())
    }

    /// AckedFlushKept and TermDurable (aux): `sk` restarted with `flush_lsn` and `term`.
    pub fn on_restart(&mut self, sk: usize, flush_lsn: Lsn, term: Term) -> Check {
        let t = &self.acceptors[sk];
        if !self.aux {
            return Ok(());
        }
        if flush_lsn < t.acked_flush {
            return Err(Violation::new(
                "AckedFlushKept",
                format!(
                    "sk{sk} restarted with flush_lsn {flush_lsn}, below the {} it acknowledged",
                    t.acked_flush
                ),
            ));
        }
        if term < t.max_reported_term {
            return Err(Violation::new(
                "TermDurable",
                format!(
                    "sk{sk} restarted in term {term}, below term {} it told a proposer",
                    t.max_reported_term
                ),
            ));
        }
        Ok(())
    }

    /// Checks the state after a step.
    pub fn check_step(&mut self, acceptors: &mut [AcceptorNode]) -> Check {
        for (sk, node) in acceptors.iter_mut().enumerate() {
            if let Some(cut) = node.disk_mut().mem.take_changed_from() {
                let t = &mut self.acceptors[sk];
                t.verified = t.verified.min(cut).max(self.timeline_start);
                t.provenance = t.provenance.min(cut).max(self.timeline_start);
                if cut <= t.durable_match {
                    t.durable_match = cut.max(self.timeline_start);
                    t.durable_blocked = false;
                }
            }
            self.check_histories(sk, node)?;
            self.check_provenance(sk, node)?;
            self.extend_from_acceptor(sk, node)?;
        }
        for (sk, node) in acceptors.iter().enumerate() {
            self.check_log_safety(sk, node)?;
            self.advance_durable_match(sk, node);
        }
        self.check_no_committed_loss()
    }

    /// LogIsMonotonic on the in-memory and persisted histories, plus the aux sanity of
    /// term and commit.
    fn check_histories(&self, sk: usize, node: &AcceptorNode) -> Check {
        let persisted = &node.control().term_history;
        if !persisted.is_monotonic() {
            return Err(Violation::new(
                "LogIsMonotonic",
                format!("sk{sk}'s persisted history {persisted:?} is not monotonic"),
            ));
        }
        let Some(a) = node.acceptor() else {
            return Ok(());
        };
        let h = &a.state().term_history;
        if !h.is_monotonic() {
            return Err(Violation::new(
                "LogIsMonotonic",
                format!("sk{sk}'s history {h:?} is not monotonic"),
            ));
        }
        if !self.aux {
            return Ok(());
        }
        if h.last().is_some_and(|e| e.term > a.term()) {
            return Err(Violation::new(
                "TermDurable",
                format!("sk{sk} is in term {} but its history is {h:?}", a.term()),
            ));
        }
        if a.term() < self.acceptors[sk].max_reported_term {
            return Err(Violation::new(
                "TermDurable",
                format!(
                    "sk{sk} is in term {}, below term {} it reported",
                    a.term(),
                    self.acceptors[sk].max_reported_term
                ),
            ));
        }
        if a.commit_lsn() > a.flush_lsn() {
            return Err(Violation::new(
                "CommitBelowFlush",
                format!(
                    "sk{sk} commit_lsn {} > flush_lsn {}",
                    a.commit_lsn(),
                    a.flush_lsn()
                ),
            ));
        }
        if a.flush_lsn() > node.durable_wal_end() {
            return Err(Violation::new(
                "FlushIsDurable",
                format!(
                    "sk{sk} flush_lsn {} but its WAL is durable up to {} only",
                    a.flush_lsn(),
                    node.durable_wal_end()
                ),
            ));
        }
        Ok(())
    }
}
