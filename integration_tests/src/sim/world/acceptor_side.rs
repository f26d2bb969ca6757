//! The safekeeper side of the world: delivering messages to a safekeeper, performing
//! its effects (with a crash possible between two), its replies, crashes and restarts.
//!
//! Owns: the server's per-connection behaviour (greeting first, an error closes the
//! connection and checkpoints, group commit answers when the inbox is empty). Must never:
//! reply before the effects are performed.

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use safekeeper::acceptor::{Effect, Output as AcceptorOutput, Reply};

use super::{Step, World};
use crate::sim::checker::Violation;
use crate::sim::describe;
use crate::sim::network::{ConnId, ToAcceptor};
use crate::sim::storage::WriteOutcome;

impl World {
    /// Delivers the next packet of `id` to its safekeeper: EOF ends the connection (with
    /// the server's checkpoint); a message is stepped and its output performed.
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
                    c.owed = false;
                }
                self.net.gc(id);
                self.acceptors[sk].checkpoint();
                return Ok(());
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
        match self.acceptors[sk].process(msg) {
            Ok(out) => self.perform(sk, id, out),
            Err(e) => {
                self.report.acceptor_errors += 1;
                self.log(|| format!("sk{sk} conn {id}: error: {e}"));
                self.close_by_acceptor(id)
            }
        }
    }

    /// The safekeeper ends a connection after an error: the server's loop ends and
    /// checkpoints.
    pub(super) fn close_by_acceptor(&mut self, id: ConnId) -> Step {
        let at = self.delay();
        let sk = self.net.get(id).map(|c| c.sk);
        if let (true, Some(sk)) = (self.net.close_by_acceptor(id, at), sk) {
            self.acceptors[sk].checkpoint();
        }
        Ok(())
    }

    /// Group commit: the owed AppendResponse of `id`, after one flush.
    pub(super) fn flush(&mut self, id: ConnId) -> Step {
        let Some(c) = self.net.get_mut(id) else {
            return Ok(());
        };
        c.owed = false;
        let sk = c.sk;
        let Some(out) = self.acceptors[sk].flush() else {
            return Ok(());
        };
        self.perform(sk, id, out)
    }

    /// Performs the acceptor's effects in order (the node may crash between two), then
    /// sends the reply on the connection the message came on.
    pub(super) fn perform(&mut self, sk: usize, id: ConnId, out: AcceptorOutput) -> Step {
        let crash_at = if !out.effects.is_empty() && self.rng.chance(self.cfg.crash_mid_effects) {
            Some(self.rng.index(out.effects.len()))
        } else {
            None
        };
        let mut segment_completed = false;
        for (i, effect) in out.effects.into_iter().enumerate() {
            if crash_at == Some(i) {
                self.log(|| format!("sk{sk} crashes before effect {i}"));
                self.crash_acceptor(sk);
                return Ok(());
            }
            self.log(|| format!("sk{sk} {}", describe::effect(&effect)));
            match &effect {
                Effect::TruncateWal { end } => self.checker.on_cut(sk, *end),
                Effect::InitWal { start, .. } => self.checker.on_cut(sk, *start),
                _ => {}
            }
            match self.acceptors[sk].apply(effect, self.opts.aux_checks) {
                Ok(WriteOutcome::SegmentCompleted) => segment_completed = true,
                Ok(WriteOutcome::Written) => {}
                Err(e) => {
                    return Err(Violation::new(
                        "EffectContract",
                        format!("sk{sk} cannot perform an effect: {e}"),
                    ));
                }
            }
        }
        match out.reply {
            Reply::None => Ok(()),
            Reply::Now(msg) => self.reply(sk, id, msg),
            Reply::AfterFlush if segment_completed => {
                // The server answers at once when a segment completed (it is durable).
                if let Some(c) = self.net.get_mut(id) {
                    c.owed = false;
                }
                let Some(out) = self.acceptors[sk].flush() else {
                    return Ok(());
                };
                self.perform(sk, id, out)
            }
            Reply::AfterFlush => {
                if let Some(c) = self.net.get_mut(id) {
                    c.owed = c.acceptor_open;
                }
                Ok(())
            }
        }
    }

    /// Sends a reply on the connection the message came on (after checking what it claims).
    pub(super) fn reply(&mut self, sk: usize, id: ConnId, msg: AcceptorMessage) -> Step {
        let durable = self.acceptors[sk].durable_wal_end();
        self.checker.on_reply(sk, &msg, durable)?;
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

    /// Restarts safekeeper `sk` from its disk.
    pub(super) fn restart_acceptor(&mut self, sk: usize) -> Step {
        let flush = self.acceptors[sk].restart();
        self.report.acceptor_restarts += 1;
        let node = &self.acceptors[sk];
        let term = node.control.term;
        self.log(|| {
            format!(
                "sk{sk} restarts: term {term}, commit {}, flush {flush}, history {}",
                node.control.commit_lsn,
                describe::history(&node.control.term_history)
            )
        });
        self.checker.on_restart(sk, flush, term)
    }
}
