//! Membership changes in the simulation: a controller moves the timeline between member
//! sets of the three safekeepers ({0,1,2} and its pairs) through joint configurations, in
//! the order `walproposer membership` takes: a fresh copy of the timeline for each new
//! member (`pull_timeline`); the joint configuration (members the old set, new members
//! the new one) on every safekeeper; once majorities of both sets hold it durably, the
//! old set's highest term and most advanced position (last log term, flush) are noted,
//! the new members' terms are raised to that term (`term_bump`), and once a majority of
//! the new set holds that term and position, the final configuration (members the new
//! set). Every installation on one safekeeper is
//! one event, through the node's executor (`switch_membership`, durable before it counts),
//! so crashes, restarts, elections and recoveries interleave with every step. Proposers
//! learn a change as the real one does: greeted with a higher generation, they restart
//! under it ([`walproposer::proposer::Output::Reconfigure`]).
//!
//! Owns: the controller and its steps. Must never: install a configuration before the
//! previous step has its majorities, or count a switch that is not durable.

use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use utils::{Lsn, Term};

use super::{Step, World};
use crate::sim::acceptor_node::{Outcome, node_id};
use crate::sim::checker::Violation;
use crate::sim::config::{Mutation, N_ACCEPTORS};
use crate::sim::network::ConnId;

/// Weight of a step of a change under way.
const W_STEP: f64 = 2.0;

/// The connection id the controller's calls are made on (no proposer's; far from the
/// network's ids and from the recoveries').
const CONTROLLER_CONN: ConnId = ConnId::MAX / 2;

/// The member sets a change moves between.
const SETS: [&[usize]; 4] = [&[0, 1, 2], &[0, 1], &[0, 2], &[1, 2]];

/// Where the controller is.
#[derive(Clone, Debug, Default)]
pub(super) enum Controller {
    /// No change under way.
    #[default]
    Idle,
    /// The joint configuration is being installed; `target` is the highest commit any
    /// proposer had reported when the change began; `to_pull` are the new members still
    /// to be given a fresh copy of the timeline (they get the configuration after).
    Joint {
        from: Vec<usize>,
        to: Vec<usize>,
        conf: Configuration,
        target: Lsn,
        to_pull: Vec<usize>,
    },
    /// Waiting for a majority of the new set to hold the old set's highest `term` and
    /// most advanced `pos` (raising terms where needed); `conf` is the final one.
    CatchUp {
        to: Vec<usize>,
        conf: Configuration,
        term: Term,
        pos: (Term, Lsn),
    },
    /// The final configuration is being installed.
    Final { to: Vec<usize>, conf: Configuration },
}

/// The configuration's list for a set of safekeeper indexes.
fn members(set: &[usize]) -> Vec<SafekeeperId> {
    set.iter()
        .map(|&i| SafekeeperId {
            id: node_id(i),
            host: "sim".into(),
            pg_port: i as u16,
        })
        .collect()
}

/// The configuration every safekeeper and proposer starts with: generation 1, all three.
pub fn initial_configuration() -> Configuration {
    Configuration {
        generation: Generation(1),
        members: members(&[0, 1, 2]),
        new_members: None,
    }
}

fn majority(set: &[usize], ok: impl Fn(usize) -> bool) -> bool {
    set.iter().filter(|&&i| ok(i)).count() * 2 > set.len()
}

impl World {
    /// The weight of a membership event now.
    pub(super) fn membership_weight(&self) -> f64 {
        match &self.controller {
            Controller::Idle => self.cfg.w_membership,
            _ => W_STEP,
        }
    }

    /// One step of the controller: start a change, install the current step's
    /// configuration on one safekeeper that lacks it, or move to the next step.
    pub(super) fn membership_step(&mut self) -> Step {
        match self.controller.clone() {
            Controller::Idle => {
                let from = self.members.clone();
                let to: Vec<usize> = loop {
                    let s = SETS[self.rng.index(SETS.len())];
                    if s != from.as_slice() {
                        break s.to_vec();
                    }
                };
                let conf = Configuration {
                    generation: Generation(self.generation.0 + 1),
                    members: members(&from),
                    new_members: Some(members(&to)),
                };
                let target = self.checker.max_commit();
                self.log(|| {
                    format!(
                        "controller: change {from:?} -> {to:?}, joint generation {}, target {target}",
                        conf.generation.0
                    )
                });
                let to_pull = to.iter().copied().filter(|i| !from.contains(i)).collect();
                self.controller = Controller::Joint {
                    from,
                    to,
                    conf,
                    target,
                    to_pull,
                };
                Ok(())
            }
            Controller::Joint {
                from,
                to,
                conf,
                target,
                mut to_pull,
            } => {
                if !to_pull.is_empty() {
                    let k = self.rng.index(to_pull.len());
                    let i = to_pull[k];
                    if self.pull(i, &from)? {
                        to_pull.remove(k);
                        self.controller = Controller::Joint {
                            from,
                            to,
                            conf,
                            target,
                            to_pull,
                        };
                    }
                    return Ok(());
                }
                let holds = |w: &World, i: usize| w.durable_generation(i) >= conf.generation;
                if !(majority(&from, |i| holds(self, i)) && majority(&to, |i| holds(self, i))) {
                    return self.install_somewhere(&conf, &[]);
                }
                // The joint configuration is in place: nothing commits without the new
                // set from here on. What the old set reached, seen by a majority of it.
                let up: Vec<(Term, (Term, Lsn))> = from
                    .iter()
                    .filter_map(|&i| {
                        let a = self.acceptors[i].acceptor()?;
                        Some((a.term(), (a.last_log_term(), a.flush_lsn())))
                    })
                    .collect();
                if up.len() * 2 <= from.len() {
                    return Ok(()); // wait for a majority of the old set to be up
                }
                let term = up.iter().map(|u| u.0).max().unwrap_or_default();
                let pos = up.iter().map(|u| u.1).max().unwrap_or_default();
                let last = Configuration {
                    generation: Generation(conf.generation.0 + 1),
                    members: members(&to),
                    new_members: None,
                };
                self.log(|| {
                    format!(
                        "controller: joint generation {} in place; the new set must reach term {term}, position {pos:?} (commit target {target})",
                        conf.generation.0
                    )
                });
                self.controller = Controller::CatchUp {
                    to,
                    conf: last,
                    term,
                    pos,
                };
                Ok(())
            }
            Controller::CatchUp {
                to,
                conf,
                term,
                pos,
            } => {
                let skip = self.opts.mutation == Mutation::SkipTermBump;
                let reached = |w: &World, i: usize| {
                    (skip || w.acceptors[i].control().term >= term)
                        && w.acceptors[i]
                            .acceptor()
                            .is_some_and(|a| (a.last_log_term(), a.flush_lsn()) >= pos)
                };
                if majority(&to, |i| reached(self, i)) {
                    self.log(|| {
                        format!("controller: final generation {} {to:?}", conf.generation.0)
                    });
                    self.controller = Controller::Final { to, conf };
                    return Ok(());
                }
                if skip {
                    return Ok(());
                }
                self.bump_somewhere(&to, term)
            }
            Controller::Final { to, conf } => {
                if majority(&to, |i| self.durable_generation(i) >= conf.generation) {
                    self.log(|| {
                        format!(
                            "controller: members {to:?} at generation {}",
                            conf.generation.0
                        )
                    });
                    self.members = to;
                    self.generation = conf.generation;
                    self.report.membership_changes += 1;
                    self.controller = Controller::Idle;
                    return Ok(());
                }
                self.install_somewhere(&conf, &[])
            }
        }
    }

    /// Gives new member `i` a fresh copy of the timeline from the most advanced up
    /// member of `from` (what `walproposer membership` gets with `pull_timeline`, after
    /// the operator deleted a stale copy). False if `i` or every donor is down.
    fn pull(&mut self, i: usize, from: &[usize]) -> Result<bool, Violation> {
        let donor = from
            .iter()
            .copied()
            .filter(|&d| d != i)
            .filter_map(|d| {
                let a = self.acceptors[d].acceptor()?;
                Some(((a.last_log_term(), a.flush_lsn()), d))
            })
            .max()
            .map(|(_, d)| d);
        let Some(donor) = donor else {
            return Ok(false);
        };
        if !self.acceptors[i].is_up() {
            return Ok(false);
        }
        for id in self.net.ids() {
            if self
                .net
                .get(id)
                .is_some_and(|c| c.sk == i && c.acceptor_open)
            {
                let at = self.delay();
                self.net.close_by_acceptor(id, at);
            }
        }
        let disk = self.acceptors[donor].disk().clone();
        let flush = self.acceptors[i]
            .replace_with_copy_of(&disk)
            .map_err(|e| Violation::new("PullTimeline", format!("sk{i} from sk{donor}: {e}")))?;
        self.checker.on_replaced(i);
        self.report.membership_pulls += 1;
        self.log(|| format!("controller: sk{i} pulled from sk{donor}, flush {flush}"));
        Ok(true)
    }

    /// Raises the term of one up member of `set` whose durable term is below `term`
    /// (`POST …/term_bump`).
    fn bump_somewhere(&mut self, set: &[usize], term: Term) -> Step {
        let low: Vec<usize> = set
            .iter()
            .copied()
            .filter(|&i| self.acceptors[i].is_up() && self.acceptors[i].control().term < term)
            .collect();
        if low.is_empty() {
            return Ok(());
        }
        let i = low[self.rng.index(low.len())];
        let crash_at = self.draw_crash();
        self.log(|| format!("controller: term {term} on sk{i}"));
        let out = self.acceptors[i].bump_term(term, crash_at);
        self.handle(i, CONTROLLER_CONN, out)
    }

    /// The generation safekeeper `i` holds durably.
    fn durable_generation(&self, i: usize) -> Generation {
        self.acceptors[i].control().mconf.generation
    }

    /// Installs `conf` on one up safekeeper that does not hold it durably yet (the
    /// controller puts every configuration on all three, members or not).
    fn install_somewhere(&mut self, conf: &Configuration, skip: &[usize]) -> Step {
        let lacking: Vec<usize> = (0..N_ACCEPTORS)
            .filter(|i| !skip.contains(i))
            .filter(|&i| self.acceptors[i].is_up() && self.durable_generation(i) < conf.generation)
            .collect();
        if lacking.is_empty() {
            return Ok(());
        }
        let i = lacking[self.rng.index(lacking.len())];
        let crash_at = self.draw_crash();
        self.log(|| format!("controller: generation {} on sk{i}", conf.generation.0));
        match self.acceptors[i].switch_membership(conf.clone(), crash_at) {
            // A node that holds a higher generation, or another configuration of this
            // one: the controller never makes either.
            Outcome::Refused(e) => Err(Violation::new(
                "MembershipSwitch",
                format!("sk{i} refused generation {}: {e}", conf.generation.0),
            )),
            out => {
                if matches!(out, Outcome::Sent(_)) {
                    self.report.membership_switches += 1;
                }
                self.handle(i, CONTROLLER_CONN, out)
            }
        }
    }
}
