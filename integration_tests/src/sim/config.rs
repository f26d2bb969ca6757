//! The seeded randomness of a run and everything the seed decides about it.
//!
//! Owns: [`SimRng`] (the only source of randomness in the simulation: ChaCha8, whose
//! stream is specified and portable, so a seed means the same run on every machine) and
//! [`SimConfig`] (fault rates, delays, proposer settings, WAL sizes), drawn from the seed
//! before the run starts. Must never: read the clock, the environment or any other
//! entropy; the caller's [`SimOptions`] are the only outside input.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use utils::Lsn;
use utils::xlog::{SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ};

/// PG_VERSION_NUM of the simulated cluster.
pub const PG_VERSION: u32 = 150004;
/// Its major version.
pub const PG_MAJOR: u32 = 15;
/// 1 MiB segments: the smallest Postgres allows, so runs cross segment boundaries cheaply.
pub const SEG_SIZE: u32 = 1 << 20;
/// The cluster's system identifier.
pub const SYSTEM_ID: u64 = 0x5eed_5eed_0000_0001;
/// Number of safekeepers.
pub const N_ACCEPTORS: usize = 3;

/// The seeded random number generator of one run.
#[derive(Debug, Clone)]
pub struct SimRng(ChaCha8Rng);

impl SimRng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A uniform value in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.0.random_range(lo..=hi)
        }
    }

    /// A uniform index below `n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        if n <= 1 { 0 } else { self.0.random_range(0..n) }
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.0.random_bool(p)
        }
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    /// The index of an entry drawn with probability proportional to its weight; `None`
    /// if every weight is zero.
    pub fn weighted(&mut self, weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = self.0.random::<f64>() * total;
        for (i, &w) in weights.iter().enumerate() {
            if w <= 0.0 {
                continue;
            }
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        weights.iter().rposition(|w| *w > 0.0)
    }
}

/// A deliberately broken safekeeper, to show that the checker catches real bugs through
/// the real executor: the breakage sits at a seam the executor does not control (the
/// disk, or the reply on its way out), so the executor's own code runs unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The real safekeeper, unchanged.
    None,
    /// The disk drops the control-file write of a granted vote: a crash-restart forgets
    /// the vote and may vote again.
    DropVotePersist,
    /// Every vote is granted, whatever the term (the reply is rewritten).
    GrantEveryVote,
    /// The disk ignores fdatasync: replies claim durability it does not have.
    DropFlush,
    /// The membership controller finishes a change without raising the new set's term to
    /// the old set's (no `term_bump`): a former member's forgotten promises let a term be
    /// won twice.
    SkipTermBump,
}

/// What the caller chooses for a run (the seed chooses the rest).
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Steps to run.
    pub steps: u64,
    /// Crashes, broken connections and connection failures.
    pub faults: bool,
    /// Also drop, duplicate and reorder single messages inside a connection (a stream
    /// that lies); the acceptor must refuse such a stream.
    pub silent_faults: bool,
    /// Also flip a bit inside a record of an AppendRequest in flight (a buggy or corrupted
    /// proposer); the acceptor must refuse the record and report nothing of it.
    pub corrupt_faults: bool,
    /// The acceptor variant to run.
    pub mutation: Mutation,
    /// Check the auxiliary invariants too (durability of acknowledgements and terms, WAL
    /// provenance); off shows what the core TLA+ invariants catch on their own.
    pub aux_checks: bool,
    /// Print every event.
    pub verbose: bool,
    /// Steps after the faulty phase in which faults stop and the proposer must commit
    /// what it holds (0: no liveness check).
    pub settle_steps: u64,
    /// Let the source outrun the proposer's window (shows the proposer dropping WAL no
    /// safekeeper holds, then stalling).
    pub unbounded_source: bool,
    /// Force one proposer (`Some(1)`) or two; `None` lets the seed choose.
    pub proposers: Option<usize>,
    /// Change the membership now and then (joint configurations between {0,1,2} and its
    /// pairs, as `walproposer membership` drives them).
    pub membership: bool,
    /// How often changes start, relative to the default rate.
    pub membership_rate: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            steps: 8000,
            faults: true,
            silent_faults: true,
            corrupt_faults: true,
            mutation: Mutation::None,
            aux_checks: true,
            verbose: false,
            settle_steps: 5000,
            unbounded_source: false,
            proposers: None,
            membership: true,
            membership_rate: 1.0,
        }
    }
}

/// Everything the seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of proposers (computes).
    pub n_proposers: usize,
    /// Where the timeline's WAL starts.
    pub timeline_start: Lsn,
    /// Largest advance of the virtual clock in one step, in ms.
    pub max_step_ms: u64,
    /// One-way network delay bounds, in ms.
    pub net_delay_ms: (u64, u64),
    /// Probability that a connection attempt fails.
    pub connect_fail: f64,
    /// Messages in flight per connection before the proposer stops pulling WAL for it.
    pub send_window: usize,
    /// Weight of "crash an acceptor" per live acceptor.
    pub w_crash_acceptor: f64,
    /// Weight of "start a membership change" while none is under way.
    pub w_membership: f64,
    /// Weight of "crash a proposer" per live proposer.
    pub w_crash_proposer: f64,
    /// Weight of "break a connection" per connection.
    pub w_break_conn: f64,
    /// Weight of a silent message fault per connection.
    pub w_silent: f64,
    /// Weight of corrupting a WAL message per connection.
    pub w_corrupt: f64,
    /// Probability that a crash keeps a random prefix of the unflushed bytes (torn write).
    pub torn_write: f64,
    /// Probability that an acceptor crashes in the middle of a list of effects.
    pub crash_mid_effects: f64,
    /// Downtime bounds of a crashed acceptor, in ms.
    pub acceptor_down_ms: (u64, u64),
    /// Delay before a crashed or stepped-down proposer restarts, in ms.
    pub proposer_down_ms: (u64, u64),
    /// Delay of a donor fetch, in ms.
    pub fetch_delay_ms: (u64, u64),
    /// Probability that a fetch fails for no reason.
    pub fetch_fail: f64,
    /// Proposer: largest AppendRequest payload.
    pub max_append: usize,
    /// Proposer: WAL kept in memory.
    pub max_window: u64,
    /// Proposer: heartbeat interval.
    pub heartbeat_ms: u64,
    /// Proposer: reconnect backoff bounds.
    pub backoff_ms: (u64, u64),
    /// Source: WAL bytes generated per run at most.
    pub wal_budget: u64,
    /// Source: uncommitted WAL allowed before the source waits (Postgres' synchronous
    /// commit backpressure).
    pub max_in_flight: u64,
    /// Source: probability that a record is large (spans pages).
    pub big_record: f64,
    /// Source: probability that a record is huge (spans many pages, maybe a segment).
    pub huge_record: f64,
    /// Source: probability that a batch ends with an XLOG_SWITCH record.
    pub switch_record: f64,
}

impl SimConfig {
    /// The configuration of `seed` under `opts`. Every value is drawn whatever the
    /// options, and the options then switch things off: a seed keeps its shape (sizes,
    /// delays, windows) when a fault class is turned off for its replay.
    pub fn from_seed(rng: &mut SimRng, opts: &SimOptions) -> Self {
        let two_proposers = rng.chance(0.3);
        let n_proposers = opts.proposers.unwrap_or(if two_proposers { 2 } else { 1 });
        // Start on the first page, a middle page or the last page of segment 1: the last
        // makes every run cross a segment boundary within its first few KiB.
        let page = rng.pick(&[0u64, 1, 37, u64::from(SEG_SIZE) / XLOG_BLCKSZ as u64 - 1]);
        let header = if page == 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        } as u64;
        let timeline_start =
            Lsn(u64::from(SEG_SIZE) + page * XLOG_BLCKSZ as u64 + header + 8 * rng.range(0, 3));
        let faults = |on: bool, v: f64| if opts.faults && on { v } else { 0.0 };
        let chaos = faults(true, rng.pick(&[0.0, 0.5, 1.0, 1.0, 2.0, 4.0]));
        let silent = faults(opts.silent_faults, rng.pick(&[0.0, 0.0, 0.05, 0.2]));
        let corrupt = faults(opts.corrupt_faults, rng.pick(&[0.0, 0.02, 0.1]));
        let connect_fail = faults(true, rng.pick(&[0.0, 0.05, 0.3]));
        let fetch_fail = faults(true, rng.pick(&[0.0, 0.1]));
        let max_window = rng.pick(&[64 << 10, 256 << 10, 8 << 20]);
        let net_max = rng.range(2, 40);
        SimConfig {
            n_proposers,
            timeline_start,
            max_step_ms: rng.range(2, 15),
            net_delay_ms: (1, net_max),
            connect_fail,
            send_window: rng.pick(&[2, 8, 32]),
            w_crash_acceptor: 0.01 * chaos,
            w_membership: if opts.membership {
                0.004 * chaos * opts.membership_rate
            } else {
                0.0
            },
            w_crash_proposer: 0.01 * chaos,
            w_break_conn: 0.01 * chaos,
            w_silent: silent,
            w_corrupt: corrupt,
            torn_write: rng.pick(&[0.0, 0.5, 0.9]),
            crash_mid_effects: 0.002 * chaos,
            acceptor_down_ms: (10, rng.range(50, 2000)),
            proposer_down_ms: (10, rng.range(100, 3000)),
            fetch_delay_ms: (1, rng.range(2, 100)),
            fetch_fail,
            max_append: rng.pick(&[8 << 10, 32 << 10, 128 << 10]),
            max_window,
            heartbeat_ms: rng.range(100, 1000),
            backoff_ms: (rng.range(10, 100), rng.range(200, 2000)),
            wal_budget: rng.pick(&[64 << 10, 256 << 10, 512 << 10, 3 << 20]),
            max_in_flight: (max_window / 2).min(rng.pick(&[16 << 10, 256 << 10, 4 << 20])),
            big_record: rng.pick(&[0.0, 0.05, 0.2]),
            huge_record: rng.pick(&[0.0, 0.0, 0.01, 0.05]),
            switch_record: rng.pick(&[0.0, 0.0, 0.0, 0.02]),
        }
    }

    /// A random one-way network delay.
    pub fn net_delay(&self, rng: &mut SimRng) -> u64 {
        rng.range(self.net_delay_ms.0, self.net_delay_ms.1)
    }
}
