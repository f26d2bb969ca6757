//! The world: every node, the network and the virtual clock, advanced one seeded event
//! per step, with the invariants checked after each step.
//!
//! Owns: the schedule (which event happens next, drawn with weights from what can happen
//! now), wiring the proposers' outputs to the network and the safekeepers' effects to
//! their disks, crashes and restarts, and the per-run statistics. Must never: use wall
//! time, threads, or iterate anything whose order is not fixed (only `Vec` and
//! `BTreeMap`), so that one seed always gives the same run.
//!
//! The safekeeper side lives in `acceptor_side`, the compute side in `proposer_side`.

mod acceptor_side;
mod membership_side;
mod proposer_side;
mod recovery_side;

pub use membership_side::initial_configuration;

use walproposer::proposer::Input;

use super::SeedReport;
use super::acceptor_node::AcceptorNode;
use super::checker::{Checker, Violation};
use super::config::{N_ACCEPTORS, SimConfig, SimOptions, SimRng};
use super::network::{ConnId, Dir, Network, SilentFault};
use super::proposer_node::ProposerNode;

type Step = Result<(), Violation>;

/// Room of a source that ignores the proposer's window.
const UNBOUNDED: u64 = 1 << 40;

/// One thing that can happen in a step.
#[derive(Clone, Copy, Debug)]
enum Event {
    ToAcceptor(ConnId),
    ToProposer(ConnId),
    Flush(usize),
    FlushDone(usize),
    Tick(usize),
    Source(usize),
    FetchDone(usize),
    RestartAcceptor(usize),
    RestartProposer(usize),
    CrashAcceptor(usize),
    CrashProposer(usize),
    Break(ConnId),
    Silent(ConnId, Dir, SilentFault),
    Corrupt(ConnId),
    Recover(usize),
    Membership,
}

/// The simulated cluster of one seed.
pub struct World {
    opts: SimOptions,
    cfg: SimConfig,
    rng: SimRng,
    now: u64,
    step: u64,
    acceptors: Vec<AcceptorNode>,
    proposers: Vec<ProposerNode>,
    net: Network,
    checker: Checker,
    report: SeedReport,
    /// The membership change under way, if any.
    controller: membership_side::Controller,
    /// The members once the last change finished (indexes), and their generation.
    members: Vec<usize>,
    generation: pq_proto::proposer::Generation,
}

impl World {
    /// The world of `seed`.
    pub fn new(seed: u64, opts: SimOptions) -> Self {
        let mut rng = SimRng::new(seed);
        let cfg = SimConfig::from_seed(&mut rng, &opts);
        let acceptors = (0..N_ACCEPTORS)
            .map(|i| AcceptorNode::new(i, opts.mutation, opts.aux_checks))
            .collect();
        let proposers = (0..cfg.n_proposers)
            .map(|i| ProposerNode::new(i, if i == 0 { 0 } else { rng.range(0, 3000) }))
            .collect();
        let checker = Checker::new(cfg.timeline_start, opts.aux_checks);
        let report = SeedReport {
            seed,
            proposers: cfg.n_proposers,
            ..Default::default()
        };
        World {
            opts,
            cfg,
            rng,
            now: 0,
            step: 0,
            acceptors,
            proposers,
            net: Network::default(),
            checker,
            report,
            controller: membership_side::Controller::Idle,
            members: vec![0, 1, 2],
            generation: initial_configuration().generation,
        }
    }

    /// The seed's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Runs `opts.steps` steps (or until a violation); `until` may stop it earlier.
    pub fn run(mut self, until: impl Fn(&World) -> bool) -> SeedReport {
        self.log(|| format!("config {:?}", self.cfg));
        while self.step < self.opts.steps {
            if let Err(v) = self.step() {
                self.log(|| format!("VIOLATION {}: {}", v.invariant, v.details));
                self.report.violation = Some((self.step, v));
                break;
            }
            if until(&self) {
                break;
            }
        }
        if self.report.violation.is_none() && self.opts.settle_steps > 0 {
            self.settle(until);
        }
        self.report.steps = self.step;
        self.report.virtual_ms = self.now;
        self.report.committed_bytes = self.checker.max_commit().0 - self.cfg.timeline_start.0;
        self.report
    }

    /// The liveness check: faults stop, the source stops (the WAL the proposer holds is
    /// then a fixed goal: with a source still appending, a run would settle only at a
    /// lull, which some schedules rarely have), the second compute goes away for good,
    /// down nodes come back; within `settle_steps` the remaining proposer must be elected
    /// and have committed all the WAL it holds. A run that does not get there is reported in
    /// [`SeedReport::stalled`] (not a safety violation).
    fn settle(&mut self, until: impl Fn(&World) -> bool) {
        let c = &mut self.cfg;
        c.w_crash_acceptor = 0.0;
        c.w_membership = 0.0;
        c.w_crash_proposer = 0.0;
        c.w_break_conn = 0.0;
        c.w_silent = 0.0;
        c.w_corrupt = 0.0;
        c.connect_fail = 0.0;
        c.crash_mid_effects = 0.0;
        c.fetch_fail = 0.0;
        c.wal_budget = c.wal_budget.min(self.report.generated_bytes);
        for p in 1..self.proposers.len() {
            if self.proposers[p].is_up() {
                self.stop_proposer(p, "is retired");
            }
            self.proposers[p].restart_at = u64::MAX;
        }
        self.log(|| "faults stop; waiting for the proposer to commit what it holds".into());
        let deadline = self.step + self.opts.settle_steps;
        while self.step < deadline {
            if let Err(v) = self.step() {
                self.log(|| format!("VIOLATION {}: {}", v.invariant, v.details));
                self.report.violation = Some((self.step, v));
                return;
            }
            if self.settled() || until(self) {
                return;
            }
        }
        let p = &self.proposers[0];
        let state = match &p.proposer {
            None => "down".to_string(),
            Some(pr) => format!(
                "term {}, elected {}, commit {}, end of WAL {}",
                pr.term(),
                pr.term_start_lsn().is_some(),
                pr.commit_lsn(),
                pr.end_lsn()
            ),
        };
        self.log(|| format!("STALLED: {} {state}", p.name()));
        self.report.stalled = Some(format!("{} {state}", p.name()));
    }

    /// True if proposer 0 is elected and has committed everything it holds.
    fn settled(&self) -> bool {
        self.proposers[0].proposer.as_ref().is_some_and(|pr| {
            pr.term_start_lsn().is_some()
                && pr.commit_lsn().is_valid()
                && pr.commit_lsn() >= pr.end_lsn()
        })
    }

    /// True once the sources generated their whole budget and all of it is committed.
    pub fn all_committed(&self) -> bool {
        self.report.generated_bytes >= self.cfg.wal_budget
            && self.proposers.iter().any(|p| {
                p.proposer
                    .as_ref()
                    .is_some_and(|pr| pr.commit_lsn() == pr.end_lsn())
            })
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.opts.verbose {
            println!("[{:>6} t={:>7}] {}", self.step, self.now, f());
        }
    }

    fn delay(&mut self) -> u64 {
        self.now + self.cfg.net_delay(&mut self.rng)
    }

    fn step(&mut self) -> Step {
        self.step += 1;
        self.now += self.rng.range(0, self.cfg.max_step_ms);
        if !self.anything_due() {
            match self.next_due() {
                Some(t) => self.now = self.now.max(t),
                None => self.now += self.rng.range(0, 100),
            }
        }
        let (events, weights) = self.candidates();
        if let Some(i) = self.rng.weighted(&weights) {
            self.execute(events[i])?;
        }
        for p in 0..self.proposers.len() {
            self.pump(p)?;
        }
        self.checker.check_step(&mut self.acceptors)
    }

    fn anything_due(&self) -> bool {
        let now = self.now;
        self.acceptors
            .iter()
            .any(|a| a.owes() || a.flush_in_flight())
            || self.net.conns().any(|c| {
                c.to_acceptor.front().is_some_and(|p| p.at <= now)
                    || c.to_proposer.front().is_some_and(|p| p.at <= now)
            })
            || self.proposers.iter().any(|p| {
                p.fetch.is_some_and(|f| f.ready_at <= now) || (!p.is_up() && p.restart_at <= now)
            })
            || self
                .acceptors
                .iter()
                .any(|a| !a.is_up() && a.restart_at <= now)
    }

    fn next_due(&self) -> Option<u64> {
        let fetches = self
            .proposers
            .iter()
            .filter_map(|p| p.fetch.map(|f| f.ready_at));
        let p_restarts = self
            .proposers
            .iter()
            .filter(|p| !p.is_up() && p.restart_at != u64::MAX)
            .map(|p| p.restart_at);
        let a_restarts = self
            .acceptors
            .iter()
            .filter(|a| !a.is_up())
            .map(|a| a.restart_at);
        self.net
            .next_due()
            .into_iter()
            .chain(fetches)
            .chain(p_restarts)
            .chain(a_restarts)
            .min()
    }

    fn candidates(&self) -> (Vec<Event>, Vec<f64>) {
        let now = self.now;
        let cfg = &self.cfg;
        let mut evs = Vec::new();
        let mut ws = Vec::new();
        let mut add = |e: Event, w: f64| {
            if w > 0.0 {
                evs.push(e);
                ws.push(w);
            }
        };
        for c in self.net.conns() {
            let inbox_due = c.to_acceptor.front().is_some_and(|p| p.at <= now);
            if inbox_due {
                add(Event::ToAcceptor(c.id), 10.0);
            }
            if c.to_proposer.front().is_some_and(|p| p.at <= now) {
                add(Event::ToProposer(c.id), 10.0);
            }
            if c.acceptor_open && c.proposer_open {
                add(Event::Break(c.id), cfg.w_break_conn);
            }
            for (dir, len) in [
                (Dir::ToAcceptor, c.to_acceptor.len()),
                (Dir::ToProposer, c.to_proposer.len()),
            ] {
                if len > 0 {
                    for f in [
                        SilentFault::Drop,
                        SilentFault::Duplicate,
                        SilentFault::Reorder,
                    ] {
                        add(Event::Silent(c.id, dir, f), cfg.w_silent / 6.0);
                    }
                }
            }
            if !c.to_acceptor.is_empty() {
                add(Event::Corrupt(c.id), cfg.w_corrupt);
            }
        }
        for (i, p) in self.proposers.iter().enumerate() {
            match &p.proposer {
                Some(pr) => {
                    add(Event::Tick(i), 1.0);
                    if let Some(src) = &p.source
                        && self.report.generated_bytes < cfg.wal_budget
                        && self.source_room(pr, src) >= 2048
                    {
                        add(Event::Source(i), 3.0);
                    }
                    if p.fetch.is_some_and(|f| f.ready_at <= now) {
                        add(Event::FetchDone(i), 10.0);
                    }
                    add(Event::CrashProposer(i), cfg.w_crash_proposer);
                }
                None if p.restart_at <= now => add(Event::RestartProposer(i), 5.0),
                None => {}
            }
        }
        for (i, a) in self.acceptors.iter().enumerate() {
            if a.flush_in_flight() {
                add(Event::FlushDone(i), 5.0);
            }
            if a.owes() && !a.flush_in_flight() {
                // Group commit: flush once the inbox is empty; now and then earlier.
                let inbox_due = self.net.conns().any(|c| {
                    c.sk == i
                        && c.acceptor_open
                        && c.to_acceptor.front().is_some_and(|p| p.at <= now)
                });
                add(Event::Flush(i), if inbox_due { 0.5 } else { 10.0 });
            }
            if a.is_up() {
                // Crashes that lose something are the interesting ones: unflushed bytes
                // (maybe torn), or a term or history not yet in the control file (a
                // correct acceptor has none of the latter between steps).
                let volatile = a.storage().end() > a.storage().durable_end();
                let unpersisted = a.acceptor().is_some_and(|acc| {
                    acc.term() != a.control().term
                        || acc.state().term_history != a.control().term_history
                });
                let w = cfg.w_crash_acceptor * if volatile || unpersisted { 5.0 } else { 1.0 };
                add(Event::CrashAcceptor(i), w);
            } else if a.restart_at <= now {
                add(Event::RestartAcceptor(i), 5.0);
            }
            if self.recovery_donor(i).is_some() {
                add(Event::Recover(i), recovery_side::W_RECOVER);
            }
        }
        add(Event::Membership, self.membership_weight());
        (evs, ws)
    }

    fn execute(&mut self, ev: Event) -> Step {
        match ev {
            Event::ToAcceptor(id) => self.deliver_to_acceptor(id),
            Event::ToProposer(id) => self.deliver_to_proposer(id),
            Event::Flush(sk) => self.flush(sk),
            Event::FlushDone(sk) => self.flush_done(sk),
            Event::Tick(p) => self.feed(p, Input::Tick),
            Event::Source(p) => self.source_append(p),
            Event::FetchDone(p) => self.fetch_done(p),
            Event::RestartAcceptor(sk) => self.restart_acceptor(sk),
            Event::Recover(sk) => self.recover(sk),
            Event::Membership => self.membership_step(),
            Event::RestartProposer(p) => {
                let (cfg, now) = (&self.cfg, self.now);
                self.proposers[p].start(cfg, now);
                self.report.proposer_starts += 1;
                self.log(|| format!("{} starts", self.proposers[p].name()));
                self.process_outputs(p)
            }
            Event::CrashAcceptor(sk) => {
                self.crash_acceptor(sk);
                Ok(())
            }
            Event::CrashProposer(p) => {
                self.report.proposer_crashes += 1;
                self.stop_proposer(p, "crashes");
                Ok(())
            }
            Event::Break(id) => {
                self.report.conn_breaks += 1;
                let at = self.delay();
                self.log(|| format!("conn {id} breaks"));
                let sk = self.net.get(id).map(|c| c.sk);
                if let (true, Some(sk)) = (self.net.break_conn(id, at), sk) {
                    // The server's stream sees the reset: the executor hears the
                    // disconnect.
                    let out = self.acceptors[sk].disconnect(id);
                    return self.handle(sk, id, out);
                }
                Ok(())
            }
            Event::Silent(id, dir, fault) => {
                if let Some(d) = self.net.silent_fault(id, dir, fault, &mut self.rng) {
                    self.report.silent_faults += 1;
                    self.log(|| format!("conn {id} {dir:?}: {d}"));
                }
                Ok(())
            }
            Event::Corrupt(id) => {
                let spans = self
                    .net
                    .get(id)
                    .map(|c| (&self.proposers[c.proposer], c.incarnation))
                    .filter(|(p, inc)| p.incarnation == *inc)
                    .and_then(|(p, _)| p.source.as_ref())
                    .map(|s| s.spans())
                    .unwrap_or_default();
                if let Some(d) = self.net.corrupt(id, spans, &mut self.rng) {
                    self.report.corruptions += 1;
                    self.log(|| format!("conn {id}: {d}"));
                }
                Ok(())
            }
        }
    }
}
