//! The append half of the acceptor: AppendRequests and the record boundaries of the WAL
//! they carry.
//!
//! Owns: the sequencing rules (no gap, bytes already held skipped, the current term only,
//! at most MAX_SEND_SIZE) and the decoding that keeps `flush_lsn` at a CRC-checked record
//! boundary. Must never: count a byte of a refused request, or answer before a flush.

use pq_proto::proposer::{AcceptorMessage, AppendRequest, AppendResponse};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::Lsn;

use super::{Acceptor, AcceptorError, Effect, Output, Reply};

impl Acceptor {
    pub(super) fn handle_append(&mut self, a: AppendRequest) -> Result<Output, AcceptorError> {
        self.check_generation(a.h.generation)?;
        if a.h.term < self.state.term {
            // Term-only response: tells a deposed proposer to step down.
            let resp = AppendResponse {
                generation: self.state.mconf.generation,
                term: self.state.term,
                ..Default::default()
            };
            return Ok(Output::reply(
                Vec::new(),
                AcceptorMessage::AppendResponse(resp),
            ));
        }
        if a.h.term > self.state.term || self.term_start_lsn().is_none() {
            return Err(AcceptorError::AppendBeforeElected {
                term: self.state.term,
                msg_term: a.h.term,
            });
        }
        let (begin, end) = (a.h.begin_lsn, a.h.end_lsn);
        let len = end.distance_from(begin).unwrap_or(u64::MAX);
        let bytes = a.wal_data.len() as u64;
        if bytes > MAX_SEND_SIZE as u64 {
            return Err(AcceptorError::AppendTooLarge {
                bytes,
                max: MAX_SEND_SIZE as u64,
            });
        }
        if len != bytes {
            return Err(AcceptorError::BadRange { begin, end, bytes });
        }
        let mut effects = Vec::new();
        let write_lsn = self.wal.write_lsn;
        // Also for an empty request: a heartbeat past the end means bytes sent before it
        // never arrived (a stream that lost a message), and answering it would let the
        // proposer believe they did.
        if begin > write_lsn {
            return Err(AcceptorError::Gap { begin, write_lsn });
        }
        let mut data = a.wal_data;
        if begin < write_lsn && !data.is_empty() {
            // Bytes we already hold (the proposer resends, or a peer recovery brought them
            // first). Since ProposerElected of this term, all WAL here is this term's
            // proposer's history: up to the elected start point it matched that history,
            // and everything above was written by that proposer or taken from a peer in
            // the same term (which got it from the same proposer). So the bytes are the
            // same: skip them, keep the rest.
            let held = (write_lsn.0 - begin.0).min(bytes) as usize;
            data = data.slice(held..);
        }
        if !data.is_empty() {
            if self.wal.poisoned {
                return Err(AcceptorError::WalPoisoned);
            }
            self.decode(&data, end)?;
            effects.push(Effect::WriteWal {
                lsn: write_lsn,
                data,
            });
        }
        self.candidate_commit_lsn = self.candidate_commit_lsn.max(a.h.commit_lsn);
        self.state.peer_horizon_lsn = self.state.peer_horizon_lsn.max(a.h.truncate_lsn);
        Ok(Output {
            effects,
            reply: Reply::AfterFlush,
        })
    }

    /// Feeds WAL ending at `end` to the record boundaries and advances the end of complete
    /// records (see [`utils::xlog::RecordEnds`] for the XLOG_SWITCH rule: a flush_lsn
    /// inside a switch's padding would let the next term write into it).
    fn decode(&mut self, data: &[u8], end: Lsn) -> Result<(), AcceptorError> {
        let Some(ends) = self.wal.ends.as_mut() else {
            return Err(AcceptorError::UnexpectedMessage(
                "AppendRequest on a timeline without WAL",
            ));
        };
        // Positions move only once the whole request decoded: on an error none of its
        // bytes is written, so none of its records may count (a later flush would report
        // them as durable WAL). The decoder is unusable afterwards; the poison flag keeps
        // it from being fed until an election replaces it.
        match ends.feed(data) {
            Ok(record_end) => {
                self.wal.write_record_lsn = record_end;
                self.wal.write_lsn = end;
                Ok(())
            }
            Err(e) => {
                self.wal.poisoned = true;
                Err(AcceptorError::InvalidWal(e))
            }
        }
    }
}
