//! Peer recovery in the simulation: a safekeeper takes WAL of its own term from a peer, as
//! the server's recovery task does (`timeline/recovery.rs`):
//! the donor is chosen by the server's own [`choose_donor`], and its bytes are stepped
//! through the node's executor as AppendRequests of that term, on a connection of the
//! recovery's own, answered by the node's group commit like any other.
//!
//! The server starts a recovery only when no proposer has sent the node WAL for a
//! peer-status interval, and stops it when one does: a rule of time, which the simulation
//! does not model. Recovery steps here may come at any point, also between the appends of
//! a proposer connected to the node, so the safety of every interleaving is checked (the
//! acceptor skips bytes it already holds from either source).
//!
//! Owns: when a recovery step may happen and what it reads from the donor (its written
//! WAL below its flush_lsn, as the term-mode sender reads it). Must never: step the
//! acceptor itself.

use pq_proto::proposer::{AppendRequest, AppendRequestHeader, ProposerMessage, SafekeeperId};
use safekeeper::timeline::{Donor, Local, PeerPosition, choose_donor};
use utils::Lsn;

use super::{Step, World};
use crate::sim::acceptor_node::node_id;
use crate::sim::network::ConnId;

/// Weight of a recovery step for an eligible safekeeper.
pub(super) const W_RECOVER: f64 = 2.0;

/// WAL one recovery step takes at most (the largest XLogData a sender sends).
const CHUNK: u64 = 128 << 10;

/// The connection id of safekeeper `sk`'s recovery (far from the network's ids).
fn recovery_conn(sk: usize) -> ConnId {
    ConnId::MAX - sk as ConnId
}

impl World {
    /// The donor `sk` would recover from now, if any (the node up, its appends answered,
    /// as the server's recovery waits for its answer), starting, as the server's, at its
    /// end of written WAL.
    pub(super) fn recovery_donor(&self, sk: usize) -> Option<Donor> {
        let a = self.acceptors[sk].acceptor()?;
        if self.acceptors[sk].flush_in_flight() || self.acceptors[sk].owes() {
            return None;
        }
        let local = Local {
            term: a.term(),
            last_log_term: a.last_log_term(),
            flush_lsn: a.flush_lsn(),
        };
        let mut members = Vec::new();
        let mut answered = Vec::new();
        for (j, n) in self.acceptors.iter().enumerate() {
            members.push(SafekeeperId {
                id: node_id(j),
                host: "sim".into(),
                pg_port: j as u16,
            });
            if j == sk {
                continue;
            }
            if let Some(p) = n.acceptor() {
                answered.push(PeerPosition {
                    id: node_id(j),
                    flush_lsn: p.flush_lsn(),
                    commit_lsn: p.commit_lsn(),
                    term: p.term(),
                    last_log_term: p.last_log_term(),
                    backup_lsn: Lsn::INVALID,
                });
            }
        }
        let mut d = choose_donor(local, &members, &answered)?;
        d.from = d.from.max(a.write_lsn());
        (d.from < d.to).then_some(d)
    }

    /// One step of `sk`'s recovery: up to [`CHUNK`] of the donor's WAL, stepped through
    /// the executor as an AppendRequest (a crash may strike in the middle, as for any
    /// step).
    pub(super) fn recover(&mut self, sk: usize) -> Step {
        let Some(d) = self.recovery_donor(sk) else {
            return Ok(());
        };
        let donor = (d.id.0 - 1) as usize;
        let to = Lsn(d.to.0.min(d.from.0 + CHUNK));
        let Some(data) = self.acceptors[donor].storage().wal().read(d.from, to) else {
            return Ok(());
        };
        let generation = self.acceptors[sk]
            .acceptor()
            .map(|a| a.state().mconf.generation)
            .unwrap_or_default();
        self.report.recovered_bytes += data.len() as u64;
        self.log(|| {
            format!(
                "sk{sk} recovers {}..{to} from sk{donor} in term {}",
                d.from, d.term.0
            )
        });
        let msg = ProposerMessage::AppendRequest(AppendRequest {
            h: AppendRequestHeader {
                generation,
                term: d.term,
                begin_lsn: d.from,
                end_lsn: to,
                commit_lsn: d.commit_lsn,
                truncate_lsn: Lsn::INVALID,
            },
            wal_data: data.into(),
        });
        let conn = recovery_conn(sk);
        let crash_at = self.draw_crash();
        let out = self.acceptors[sk].propose(conn, msg, crash_at);
        self.handle(sk, conn, out)
    }
}
