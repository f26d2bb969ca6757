//! The safekeeper side of the world: delivering messages to a safekeeper's executor, its
//! replies, its crashes (struck by its disk in the middle of an executor call) and
//! restarts.
//!
//! Owns: the server's per-connection behaviour around the executor (greeting first; an
//! error closes the connection, whose end the executor hears as a disconnect; group commit
//! when the inbox is empty). Must never: reply for the executor (it answers only after
//! its effects are performed).

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};

use super::{Step, World};
use crate::sim::acceptor_node::Outcome;
use crate::sim::checker::Violation;
use crate::sim::describe;
use crate::sim::network::{ConnId, ToAcceptor};

/// Storage operations into an executor call at which an armed crash may strike.
const CRASH_POINTS: usize = 3;

impl World {
    /// Delivers the next packet of `id` to its safekeeper: EOF ends the connection (the
    /// server's disconnect); a message is stepped through the executor.
    pub(super) fn deliver_to_acceptor(&mut self, id: ConnId) -> Step {
        let Some(body) = self.net.pop_to_acceptor(id, self.now) else {
            return Ok(());
        };
        let Some((sk, greeted)) = self.net.get(id).map(|c| (c.sk, c.greeted)) else {
            return Ok(());
        };
        let msg = match body {
            ToAcceptor::Eof => {
                self.log(|| format!("sk{sk} conn {id}: EOF"));
                if let Some(c) = self.net.get_mut(id) {
                    c.acceptor_open = false;
                }
                self.net.gc(id);
                let out = self.acceptors[sk].disconnect(id);
                return self.handle(sk, id, out);
            }
            ToAcceptor::Msg(m) => m,
        };
        self.log(|| format!("sk{sk} conn {id} <- {}", describe::proposer_msg(&msg)));
        if !greeted && !matches!(msg, ProposerMessage::Greeting(_)) {
            self.log(|| format!("sk{sk} conn {id}: first message is not a greeting"));
            self.report.acceptor_errors += 1;
            return self.close_by_acceptor(id);
        }
        if let Some(c) = self.net.get_mut(id) {
            c.greeted = true;
        }
        if self.acceptors[sk].flush_in_flight() && !matches!(msg, ProposerMessage::AppendRequest(_))
        {
            // As the server: a flush in flight finishes, and its answers go out, before
            // anything but an append is stepped.
            self.flush_done(sk)?;
            if !self.acceptors[sk].is_up() {
                return Ok(()); // it crashed finishing
            }
        }
        let crash_at = self.draw_crash();
        let out = self.acceptors[sk].propose(id, msg, crash_at);
        self.handle(sk, id, out)
    }

    /// Whether the next executor call crashes its node, and before which operation.
    pub(super) fn draw_crash(&mut self) -> Option<usize> {
        self.rng
            .chance(self.cfg.crash_mid_effects)
            .then(|| self.rng.index(CRASH_POINTS))
    }

    /// What follows an executor call on node `sk` for a message of connection `id`.
    pub(super) fn handle(&mut self, sk: usize, id: ConnId, out: Outcome) -> Step {
        for end in self.acceptors[sk].disk_mut().take_cuts() {
            self.log(|| format!("sk{sk} cuts its WAL at {end}"));
            self.checker.on_cut(sk, end);
        }
        match out {
            Outcome::Sent(sent) => {
                for s in sent {
                    self.reply(sk, s.conn, s.msg)?;
                }
                Ok(())
            }
            Outcome::Refused(e) => {
                self.report.acceptor_errors += 1;
                self.log(|| format!("sk{sk} conn {id}: error: {e}"));
                self.close_by_acceptor(id)
            }
            Outcome::Crashed => {
                self.log(|| format!("sk{sk} crashes in the middle of a step"));
                self.crash_acceptor(sk);
                Ok(())
            }
            Outcome::Broken(e) => Err(Violation::new(
                "EffectContract",
                format!("sk{sk} cannot perform an effect: {e}"),
            )),
        }
    }

    /// The safekeeper ends a connection after an error: the server's stream ends and the
    /// executor hears of the disconnect.
    pub(super) fn close_by_acceptor(&mut self, id: ConnId) -> Step {
        let at = self.delay();
        let sk = self.net.get(id).map(|c| c.sk);
        if let (true, Some(sk)) = (self.net.close_by_acceptor(id, at), sk) {
            let out = self.acceptors[sk].disconnect(id);
            return self.handle(sk, id, out);
        }
        Ok(())
    }

    /// Group commit on `sk`: its inbox is empty, one flush answers every owed connection,
    /// either right here or (as the server does for large flushes) begun now and finished
    /// by a later event, appends being written meanwhile.
    pub(super) fn flush(&mut self, sk: usize) -> Step {
        if !self.acceptors[sk].owes() || self.acceptors[sk].flush_in_flight() {
            return Ok(());
        }
        let crash_at = self.draw_crash();
        let out = if self.rng.chance(0.5) {
            self.log(|| format!("sk{sk} begins a flush"));
            self.acceptors[sk].start_flush(crash_at)
        } else {
            self.acceptors[sk].flush(crash_at)
        };
        self.handle(sk, 0, out)
    }

    /// The flush in flight on `sk` has run: its connections are answered.
    pub(super) fn flush_done(&mut self, sk: usize) -> Step {
        if !self.acceptors[sk].flush_in_flight() {
            return Ok(());
        }
        self.log(|| format!("sk{sk}'s flush completes"));
        let crash_at = self.draw_crash();
        let out = self.acceptors[sk].finish_flush(crash_at);
        self.handle(sk, 0, out)
    }

    /// Sends a reply on connection `id` (after checking what it claims), if it is open.
    pub(super) fn reply(&mut self, sk: usize, id: ConnId, msg: AcceptorMessage) -> Step {
        let durable = self.acceptors[sk].durable_wal_end();
        self.checker.on_reply(sk, &msg, durable)?;
        if !self.net.get(id).is_some_and(|c| c.acceptor_open) {
            return Ok(());
        }
        self.log(|| format!("sk{sk} conn {id} -> {}", describe::acceptor_msg(&msg)));
        let at = self.delay();
        self.net.send_to_proposer(id, msg, at);
        Ok(())
    }

    /// Kills safekeeper `sk`: its connections close, unflushed bytes are lost or torn.
    pub(super) fn crash_acceptor(&mut self, sk: usize) {
        self.report.acceptor_crashes += 1;
        for id in self.net.ids() {
            if self
                .net
                .get(id)
                .is_some_and(|c| c.sk == sk && c.acceptor_open)
            {
                let at = self.delay();
                self.net.close_by_acceptor(id, at);
            }
        }
        let torn = self.rng.chance(self.cfg.torn_write);
        let keep_frac = self.rng.range(0, 1000);
        let restart_at = self.now
            + self
                .rng
                .range(self.cfg.acceptor_down_ms.0, self.cfg.acceptor_down_ms.1);
        let volatile =
            self.acceptors[sk].crash(restart_at, |v| if torn { v * keep_frac / 1000 } else { 0 });
        if torn && volatile > 0 {
            self.report.torn_writes += 1;
        }
        self.log(|| {
            format!(
                "sk{sk} crashes ({volatile} volatile bytes, torn {torn}), down until {restart_at}"
            )
        });
    }

    /// Restarts safekeeper `sk` from its disk, through the server's restart path.
    pub(super) fn restart_acceptor(&mut self, sk: usize) -> Step {
        let flush = match self.acceptors[sk].restart() {
            Ok(flush) => flush,
            // A disk that loses nothing it was told to keep never gets here: the crash
            // drops only unflushed bytes, which the restart path calls a torn tail.
            Err(e) => {
                let e = e.to_string();
                self.log(|| format!("sk{sk} refuses to restart: {e}"));
                return Err(Violation::new("AckedWalIntact", format!("sk{sk}: {e}")));
            }
        };
        self.report.acceptor_restarts += 1;
        let node = &self.acceptors[sk];
        let term = node.control().term;
        self.log(|| {
            format!(
                "sk{sk} restarts: term {term}, commit {}, flush {flush}, history {}",
                node.control().commit_lsn,
                describe::history(&node.control().term_history)
            )
        });
        self.checker.on_restart(sk, flush, term)
    }
}
