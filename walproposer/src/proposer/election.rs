//! The election: greetings, votes, the donor choice and each safekeeper's start point.

use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, ProposerElected, ProposerMessage, VoteRequest, VoteResponse,
};
use utils::{Lsn, Term, TermLsn};

use super::{ElectedState, Mode, Output, Phase, Proposer, SkId};
use crate::window::WalWindow;

impl Proposer {
    pub(super) fn on_message(&mut self, sk: SkId, m: AcceptorMessage) {
        let phase = self.sks[sk].phase.clone();
        match (phase, m) {
            (Phase::Greeting, AcceptorMessage::Greeting(g)) => self.on_greeting(sk, g),
            (Phase::Voting, AcceptorMessage::VoteResponse(v)) => self.on_vote(sk, v),
            (Phase::Streaming, AcceptorMessage::AppendResponse(r)) => {
                self.on_append_response(sk, r)
            }
            (Phase::Offline { .. } | Phase::Connecting, _) => {} // from a connection already given up
            (p, m) => self.fail(sk, format!("unexpected {m:?} in state {p:?}")),
        }
    }

    pub(super) fn on_greeting(&mut self, sk: SkId, g: AcceptorGreeting) {
        if g.mconf.generation > self.generation() {
            // The membership changed under us: whatever this proposer did, a new one with
            // the new configuration must run the election (its quorums differ).
            self.done = true;
            self.outputs.push_back(Output::Reconfigure(g.mconf));
            return;
        }
        self.max_term_seen = self.max_term_seen.max(g.term);
        self.sks[sk].phase = Phase::Greeted;
        if self.elected.is_some() || self.campaigning {
            if g.term > self.term {
                // Someone else campaigns in a later term.
                return self.step_down(
                    g.term,
                    format!(
                        "safekeeper {sk} is at term {}, ours is {}",
                        g.term, self.term
                    ),
                );
            }
            self.request_vote(sk);
            return;
        }
        if self
            .quorums
            .reached(|i| self.sks[i].phase == Phase::Greeted)
        {
            self.campaigning = true;
            self.term = Term(self.max_term_seen.0 + 1);
            for i in 0..self.sks.len() {
                if self.sks[i].phase == Phase::Greeted {
                    self.request_vote(i);
                }
            }
        }
    }

    pub(super) fn request_vote(&mut self, sk: SkId) {
        self.sks[sk].phase = Phase::Voting;
        let v = VoteRequest {
            generation: self.generation(),
            term: self.term,
        };
        self.send(sk, ProposerMessage::VoteRequest(v));
    }

    pub(super) fn on_vote(&mut self, sk: SkId, v: VoteResponse) {
        if v.term > self.term {
            return self.step_down(v.term, format!("safekeeper {sk} is at term {}", v.term));
        }
        self.sks[sk].last_flush_lsn = v.flush_lsn;
        if self.elected.is_some() {
            // A safekeeper (re)joining after the election: granted now, or it had
            // already voted for us; either way it gets our history.
            return self.start_streaming(sk, &v);
        }
        if !v.vote_given {
            return self.step_down(
                v.term,
                format!("safekeeper {sk} refused the vote for term {}", self.term),
            );
        }
        self.sks[sk].phase = Phase::Voted(v);
        let votes: Vec<(SkId, VoteResponse)> = self
            .sks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.phase {
                Phase::Voted(v) => Some((i, v.clone())),
                _ => None,
            })
            .collect();
        if self
            .quorums
            .reached(|i| matches!(self.sks[i].phase, Phase::Voted(_)))
        {
            self.become_elected(votes);
        }
    }

    pub(super) fn become_elected(&mut self, votes: Vec<(SkId, VoteResponse)>) {
        // The donor holds the most advanced WAL: highest (last_log_term, flush_lsn).
        let (donor, dv) = votes
            .iter()
            .max_by_key(|(_, v)| (v.term_history.last_log_term(v.flush_lsn), v.flush_lsn))
            .cloned()
            .expect("a quorum is not empty");
        let mut term_start = dv.flush_lsn;
        if !term_start.is_valid() {
            term_start = self.conf.timeline_start_lsn;
        }
        let mut history = dv.term_history.up_to(dv.flush_lsn);
        history.0.push(TermLsn {
            term: self.term,
            lsn: term_start,
        });
        self.truncate_lsn = votes
            .iter()
            .map(|(_, v)| v.truncate_lsn)
            .max()
            .unwrap_or_default();
        self.campaigning = false;
        self.elected = Some(ElectedState {
            term_start_lsn: term_start,
            history,
            donor,
        });
        self.window = WalWindow::new(term_start);
        // The donor holds everything below the term start durably.
        self.max_acked_flush = term_start;
        self.outputs.push_back(Output::Elected {
            term: self.term,
            term_start_lsn: term_start,
        });
        if self.conf.mode == Mode::Sync && !term_start.is_valid() {
            // A timeline without WAL: nothing to synchronize.
            self.synced = true;
            self.done = true;
            self.outputs.push_back(Output::Synced(Lsn::INVALID));
            return;
        }
        for (sk, v) in votes {
            self.start_streaming(sk, &v);
        }
    }

    pub(super) fn start_streaming(&mut self, sk: SkId, v: &VoteResponse) {
        let el = self.elected.as_ref().expect("elected");
        let hcp = match v
            .term_history
            .highest_common_point(&el.history, v.flush_lsn)
        {
            Ok(p) => p.lsn,
            Err(e) => return self.fail(sk, format!("histories do not reconcile: {e}")),
        };
        let msg = ProposerElected {
            generation: self.generation(),
            term: self.term,
            start_streaming_at: hcp,
            term_history: el.history.clone(),
        };
        let s = &mut self.sks[sk];
        s.phase = Phase::Streaming;
        s.start_lsn = hcp;
        s.next_lsn = hcp;
        s.probe = true;
        s.flush_lsn = Lsn::INVALID;
        s.sent_commit = Lsn::INVALID;
        self.send(sk, ProposerMessage::Elected(msg));
    }
}
