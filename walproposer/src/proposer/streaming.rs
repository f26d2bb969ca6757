//! Streaming after the election: AppendRequests pulled by the driver, acknowledgements,
//! the quorum commit, the WAL window and fetches from a donor.

use bytes::Bytes;
use pq_proto::proposer::{AppendRequest, AppendRequestHeader, AppendResponse, ProposerMessage};
use utils::Lsn;

use super::{Mode, Output, Phase, Proposer, SkId};

impl Proposer {
    pub(super) fn on_append_response(&mut self, sk: SkId, r: AppendResponse) {
        if r.term > self.term {
            return self.step_down(r.term, format!("safekeeper {sk} moved to term {}", r.term));
        }
        let s = &mut self.sks[sk];
        s.flush_lsn = s.flush_lsn.max(r.flush_lsn);
        s.last_flush_lsn = s.last_flush_lsn.max(r.flush_lsn);
        s.commit_lsn = s.commit_lsn.max(r.commit_lsn);
        self.max_acked_flush = self.max_acked_flush.max(r.flush_lsn);
        self.update_commit();
        self.trim_window();
        self.check_synced();
    }

    /// The quorum's flush: the highest acknowledged flush a majority of every quorum set
    /// has ([`super::Quorums`]), where acks below
    /// the term start count as 0 (WAL of older terms is committed only together with
    /// WAL of this term — Raft's rule against committing from older terms).
    pub(super) fn update_commit(&mut self) {
        let Some(el) = &self.elected else { return };
        let start = el.term_start_lsn;
        let q = self.quorums.agreed_lsn(|i| {
            let s = &self.sks[i];
            if s.phase == Phase::Streaming && s.flush_lsn >= start {
                s.flush_lsn
            } else {
                Lsn::INVALID
            }
        });
        if q > self.commit_lsn {
            self.commit_lsn = q;
            self.outputs.push_back(Output::Committed(q));
        }
        let min_flush = self
            .sks
            .iter()
            .map(|s| s.last_flush_lsn)
            .min()
            .unwrap_or_default();
        self.truncate_lsn = self.truncate_lsn.max(min_flush.min(self.commit_lsn));
    }

    pub(super) fn check_synced(&mut self) {
        let Some(el) = &self.elected else { return };
        let start = el.term_start_lsn;
        if self.conf.mode == Mode::Sync
            && !self.synced
            && self.commit_lsn >= start
            && self.all_streaming_committed(start)
        {
            self.synced = true;
            self.done = true;
            self.outputs.push_back(Output::Synced(start));
        }
    }

    /// Drops WAL every streaming safekeeper has, and WAL beyond the memory budget.
    ///
    /// Never drops WAL that no safekeeper has acknowledged in this term: with none
    /// streaming nothing is dropped, and the memory budget only drops what some
    /// safekeeper holds durably (a donor can give it back). The sources keep within the
    /// budget by watching `end_lsn() - commit_lsn()`.
    pub(super) fn trim_window(&mut self) {
        let needed = self
            .sks
            .iter()
            .filter(|s| s.phase == Phase::Streaming)
            .map(|s| s.flush_lsn.max(s.start_lsn))
            .min()
            .unwrap_or(self.window.base());
        let budget =
            Lsn(self.window.end().0.saturating_sub(self.conf.max_window)).min(self.max_acked_flush);
        self.window.trim(needed.max(budget));
    }

    /// New WAL from the source, at the end of what the proposer holds.
    pub fn append_wal(&mut self, lsn: Lsn, data: Bytes) -> Result<(), crate::window::WindowError> {
        self.window.append(lsn, data)?;
        self.trim_window();
        Ok(())
    }

    /// WAL fetched from a donor: ending at the window's base (it extends the window), or,
    /// for a safekeeper further behind than the window reaches, a chunk further back
    /// (kept aside and sent to it from there; see [`Output::NeedWal`]).
    pub fn provide_wal(&mut self, lsn: Lsn, data: Bytes) -> Result<(), crate::window::WindowError> {
        let end = Lsn(lsn.0 + data.len() as u64);
        if end < self.window.base() && !data.is_empty() {
            self.side = Some((lsn, data));
            self.fetching = None;
            return Ok(());
        }
        self.window.prepend(lsn, data)?;
        if let Some((from, _)) = self.fetching
            && self.window.base() <= from
        {
            self.fetching = None;
        }
        Ok(())
    }

    /// Up to `max` bytes at `lsn` from the WAL kept aside, if it holds them.
    fn read_side(&self, lsn: Lsn, max: usize) -> Option<Bytes> {
        let (start, data) = self.side.as_ref()?;
        let end = Lsn(start.0 + data.len() as u64);
        if lsn < *start || lsn >= end {
            return None;
        }
        let off = (lsn.0 - start.0) as usize;
        Some(data.slice(off..(off + max).min(data.len())))
    }

    /// The fetch asked for by [`Output::NeedWal`] failed; it will be asked again.
    pub fn fetch_failed(&mut self) {
        self.fetching = None;
    }

    /// The next message for `sk`, if one is due: WAL it has not been sent, or an empty
    /// AppendRequest carrying a new commit_lsn or keeping the connection alive. Call
    /// whenever the connection can take more; `None` = nothing to send now.
    pub fn poll_send(&mut self, sk: SkId, now_ms: u64) -> Option<ProposerMessage> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.done && !self.synced {
            return None;
        }
        self.elected.as_ref()?;
        if self.sks[sk].phase != Phase::Streaming {
            return None;
        }
        let next = self.sks[sk].next_lsn;
        let mut data = Bytes::new();
        if next < self.window.end() {
            if next < self.window.base() {
                match self.read_side(next, self.conf.max_append) {
                    Some(d) => data = d,
                    None => self.request_fetch(sk, next),
                }
            } else if let Some(d) = self.window.read(next, self.conf.max_append) {
                data = d;
            }
        }
        let s = &self.sks[sk];
        let heartbeat_due = s.probe || self.now_ms >= s.last_sent_ms + self.conf.heartbeat_ms;
        if data.is_empty() && s.sent_commit >= self.commit_lsn && !heartbeat_due {
            return None;
        }
        let end = Lsn(next.0 + data.len() as u64);
        let h = AppendRequestHeader {
            generation: self.generation(),
            term: self.term,
            begin_lsn: next,
            end_lsn: end,
            commit_lsn: self.commit_lsn,
            truncate_lsn: self.truncate_lsn,
        };
        let s = &mut self.sks[sk];
        s.next_lsn = end;
        s.sent_commit = self.commit_lsn;
        s.last_sent_ms = self.now_ms;
        s.probe = false;
        Some(ProposerMessage::AppendRequest(AppendRequest {
            h,
            wal_data: data,
        }))
    }

    pub(super) fn request_fetch(&mut self, sk: SkId, from: Lsn) {
        // Fetch a bounded amount at a time, from where the safekeeper is: the part next
        // to the window extends it; a safekeeper further behind than half the budget gets
        // chunks kept aside (extending the window that far back would only have the
        // budget drop them again before they were sent).
        let to = Lsn(self.window.base().0.min(from.0 + self.conf.max_window / 2));
        if let Some((f, t)) = self.fetching
            && f <= from
            && from < t
        {
            return;
        }
        let Some(el) = &self.elected else { return };
        // A donor must hold [from, to) in our term: streaming, and flushed to at least `to`.
        let donor = std::iter::once(el.donor)
            .chain(0..self.sks.len())
            .filter(|&d| d != sk)
            .find(|&d| {
                let s = &self.sks[d];
                // Up to its start point its WAL is ours already (the common point).
                s.phase == Phase::Streaming && s.flush_lsn.max(s.start_lsn) >= to
            });
        let Some(donor) = donor else { return };
        self.fetching = Some((from, to));
        self.outputs.push_back(Output::NeedWal {
            from,
            to,
            donor,
            term: self.term,
        });
    }
}
