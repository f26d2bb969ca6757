//! The compute side of the world: delivering to a proposer, performing its outputs
//! (connections, sends, elections, donor fetches, step-downs), pulling WAL-carrying
//! messages while connections have room, and the WAL source.
//!
//! Owns: the driver's job for each proposer (what `walproposer::driver` does over TCP).
//! Must never: hand a proposer an event from a connection it already gave up.

use pq_proto::proposer::ProposerMessage;
use walproposer::proposer::{Input, Output, Proposer};

use super::{Step, UNBOUNDED, World};
use crate::sim::checker::Violation;
use crate::sim::config::{N_ACCEPTORS, SimConfig};
use crate::sim::describe;
use crate::sim::network::{ConnId, ToProposer};
use crate::sim::proposer_node::{Fetch, Source};

impl World {
    /// Delivers the next packet of `id` to its proposer, if that connection is still the
    /// proposer's current one.
    pub(super) fn deliver_to_proposer(&mut self, id: ConnId) -> Step {
        let Some(body) = self.net.pop_to_proposer(id, self.now) else {
            return Ok(());
        };
        let Some((p, sk)) = self.net.get(id).map(|c| (c.proposer, c.sk)) else {
            return Ok(());
        };
        if self.proposers[p].conns[sk] != Some(id) {
            return Ok(()); // a connection the proposer already gave up
        }
        let input = match body {
            ToProposer::Connected => Input::Connected(sk),
            ToProposer::Msg(m) => {
                self.log(|| {
                    format!(
                        "{} conn {id} <- sk{sk} {}",
                        self.proposers[p].name(),
                        describe::acceptor_msg(&m)
                    )
                });
                Input::Message(sk, m)
            }
            ToProposer::Closed => {
                self.proposers[p].conns[sk] = None;
                if let Some(c) = self.net.get_mut(id) {
                    c.proposer_open = false;
                }
                self.net.gc(id);
                Input::Disconnected(sk)
            }
        };
        if !matches!(input, Input::Message(..)) {
            self.log(|| format!("{} conn {id}: {input:?}", self.proposers[p].name()));
        }
        self.feed(p, input)
    }

    /// Hands `input` to proposer `p` and performs what it outputs.
    pub(super) fn feed(&mut self, p: usize, input: Input) -> Step {
        let now = self.now;
        if let Some(pr) = self.proposers[p].proposer.as_mut() {
            pr.handle(now, input);
        }
        self.process_outputs(p)
    }

    /// Pulls what the proposer wants to send while the connections have room.
    pub(super) fn pump(&mut self, p: usize) -> Step {
        for sk in 0..N_ACCEPTORS {
            let Some(id) = self.proposers[p].conns[sk] else {
                continue;
            };
            for _ in 0..256 {
                if self.net.in_flight_to_acceptor(id) >= self.cfg.send_window {
                    break;
                }
                let now = self.now;
                let Some(m) = self.proposers[p]
                    .proposer
                    .as_mut()
                    .and_then(|pr| pr.poll_send(sk, now))
                else {
                    break;
                };
                self.send(p, sk, m);
            }
        }
        self.process_outputs(p)
    }

    /// Sends `m` on proposer `p`'s current connection to `sk` (lost if there is none).
    pub(super) fn send(&mut self, p: usize, sk: usize, m: ProposerMessage) {
        if let Some(id) = self.proposers[p].conns[sk] {
            self.log(|| {
                format!(
                    "{} conn {id} -> sk{sk} {}",
                    self.proposers[p].name(),
                    describe::proposer_msg(&m)
                )
            });
            let at = self.delay();
            self.net.send_to_acceptor(id, m, at);
        }
    }

    /// Performs proposer `p`'s outputs until there are none; a step-down stops the compute.
    pub(super) fn process_outputs(&mut self, p: usize) -> Step {
        loop {
            let outs = match self.proposers[p].proposer.as_mut() {
                Some(pr) => pr.drain_outputs(),
                None => return Ok(()),
            };
            if outs.is_empty() {
                return Ok(());
            }
            for o in outs {
                if self.output(p, o)? {
                    let why = "steps down";
                    self.report.step_downs += 1;
                    self.stop_proposer(p, why);
                    return Ok(());
                }
            }
        }
    }

    /// Performs one proposer output; true if the proposer stepped down.
    pub(super) fn output(&mut self, p: usize, o: Output) -> Result<bool, Violation> {
        let name = self.proposers[p].name();
        match o {
            Output::Connect(sk) => {
                if let Some(old) = self.proposers[p].conns[sk].take() {
                    let at = self.delay();
                    self.net.close_by_proposer(old, at);
                }
                let accepted =
                    self.acceptors[sk].is_up() && !self.rng.chance(self.cfg.connect_fail);
                if !accepted {
                    self.report.connect_failures += 1;
                }
                let at = self.delay();
                let inc = self.proposers[p].incarnation;
                let id = self.net.connect(p, inc, sk, accepted, at);
                self.proposers[p].conns[sk] = Some(id);
                self.log(|| format!("{name} connects to sk{sk}: conn {id} (accepted {accepted})"));
            }
            Output::Disconnect(sk, why) => {
                self.log(|| format!("{name} drops sk{sk}: {why}"));
                if let Some(id) = self.proposers[p].conns[sk].take() {
                    let at = self.delay();
                    self.net.close_by_proposer(id, at);
                }
            }
            Output::Send(sk, m) => self.send(p, sk, m),
            Output::Elected {
                term,
                term_start_lsn,
            } => {
                self.report.elections += 1;
                let history = self.proposers[p]
                    .proposer
                    .as_ref()
                    .and_then(|pr| pr.history());
                self.log(|| {
                    let h = history.map(describe::history).unwrap_or_default();
                    format!("{name} ELECTED term {term} at {term_start_lsn}, history {h}")
                });
                self.checker
                    .on_elected(term, term_start_lsn, history, &name)?;
                let src = Source::new(term, term_start_lsn)
                    .map_err(|e| Violation::new("TermStartIsRecordBoundary", e))?;
                self.proposers[p].source = Some(src);
            }
            Output::NeedWal {
                from,
                to,
                donor,
                term,
            } => {
                let ready_at = self.now
                    + self
                        .rng
                        .range(self.cfg.fetch_delay_ms.0, self.cfg.fetch_delay_ms.1);
                self.log(|| format!("{name} needs WAL {from}..{to} from sk{donor} (term {term})"));
                self.proposers[p].fetch = Some(Fetch {
                    from,
                    to,
                    donor,
                    term,
                    ready_at,
                });
            }
            Output::Committed(lsn) => {
                self.log(|| format!("{name} committed {lsn}"));
                let node = &mut self.proposers[p];
                let history = node.proposer.as_ref().and_then(|pr| pr.history());
                self.checker
                    .on_committed(lsn, history, &name, &mut node.commit_verified)?;
            }
            Output::Synced(_) => {}
            Output::Reconfigure(c) => {
                // A newer configuration: the compute restarts its proposer under it.
                self.log(|| format!("{name} restarts for generation {}", c.generation.0));
                self.proposers[p].mconf = c;
                return Ok(true);
            }
            Output::SteppedDown { term, reason } => {
                self.log(|| format!("{name} steps down (term {term}): {reason}"));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The compute process ends (crash or exit after stepping down) and restarts later.
    pub(super) fn stop_proposer(&mut self, p: usize, why: &str) {
        let restart_at = self.now
            + self
                .rng
                .range(self.cfg.proposer_down_ms.0, self.cfg.proposer_down_ms.1);
        self.log(|| {
            format!(
                "{} {why}; restarts at {restart_at}",
                self.proposers[p].name()
            )
        });
        for sk in 0..N_ACCEPTORS {
            if let Some(id) = self.proposers[p].conns[sk].take() {
                let at = self.delay();
                self.net.close_by_proposer(id, at);
            }
        }
        let node = &mut self.proposers[p];
        node.proposer = None;
        node.source = None;
        node.fetch = None;
        node.restart_at = restart_at;
    }

    /// How much WAL the source may add now: it keeps the uncommitted WAL within
    /// `max_in_flight`, and within the proposer's window (the proposer drops WAL beyond
    /// its window even when no safekeeper holds it yet; a source must not outrun it).
    pub(super) fn source_room(&self, pr: &Proposer, src: &Source) -> u64 {
        if self.opts.unbounded_source {
            let lag = pr
                .end_lsn()
                .0
                .saturating_sub(pr.commit_lsn().max(src.start()).0);
            return if lag < self.cfg.max_in_flight {
                UNBOUNDED
            } else {
                0
            };
        }
        Self::room(&self.cfg, pr, src)
    }

    /// Room left under `max_in_flight` and the proposer's window.
    pub(super) fn room(cfg: &SimConfig, pr: &Proposer, src: &Source) -> u64 {
        let lag = pr
            .end_lsn()
            .0
            .saturating_sub(pr.commit_lsn().max(src.start()).0);
        cfg.max_in_flight.min(cfg.max_window).saturating_sub(lag)
    }

    /// The source of proposer `p` appends a batch of records.
    pub(super) fn source_append(&mut self, p: usize) -> Step {
        let node = &mut self.proposers[p];
        let (Some(pr), Some(src)) = (node.proposer.as_mut(), node.source.as_mut()) else {
            return Ok(());
        };
        if src.position() != pr.end_lsn() {
            return Err(Violation::new(
                "SimContract",
                format!(
                    "source at {} but proposer WAL ends at {}",
                    src.position(),
                    pr.end_lsn()
                ),
            ));
        }
        let room = if self.opts.unbounded_source {
            UNBOUNDED
        } else {
            Self::room(&self.cfg, pr, src)
        };
        let (lsn, data) = src
            .generate(&mut self.rng, &self.cfg, room)
            .map_err(|e| Violation::new("SimContract", e))?;
        let term = src.term;
        pr.append_wal(lsn, data.clone())
            .map_err(|e| Violation::new("SimContract", format!("append_wal: {e}")))?;
        self.report.generated_bytes += data.len() as u64;
        let name = node.name();
        self.log(|| format!("{name} source appends {lsn}+{}", data.len()));
        self.checker.on_generated(term, lsn, data)?;
        self.process_outputs(p)
    }

    /// The donor read of proposer `p` completes: served from the donor's disk if it still
    /// holds the range in the term, else failed.
    pub(super) fn fetch_done(&mut self, p: usize) -> Step {
        let Some(f) = self.proposers[p].fetch.take() else {
            return Ok(());
        };
        let donor = &self.acceptors[f.donor];
        let ok_donor = donor
            .acceptor()
            .is_some_and(|a| a.term() == f.term && a.flush_lsn() >= f.to);
        let data = if ok_donor && !self.rng.chance(self.cfg.fetch_fail) {
            donor.storage().wal().read(f.from, f.to)
        } else {
            None
        };
        let name = self.proposers[p].name();
        let Some(pr) = self.proposers[p].proposer.as_mut() else {
            return Ok(());
        };
        match data {
            Some(bytes) => match pr.provide_wal(f.from, bytes.into()) {
                Ok(()) => {
                    self.report.fetches_ok += 1;
                    self.log(|| format!("{name} fetched {}..{} from sk{}", f.from, f.to, f.donor));
                }
                Err(e) => {
                    self.report.fetches_failed += 1;
                    pr.fetch_failed();
                    self.log(|| format!("{name} fetched WAL does not fit: {e}"));
                }
            },
            None => {
                self.report.fetches_failed += 1;
                pr.fetch_failed();
                self.log(|| {
                    format!(
                        "{name} fetch {}..{} from sk{} failed",
                        f.from, f.to, f.donor
                    )
                });
            }
        }
        self.process_outputs(p)
    }
}
