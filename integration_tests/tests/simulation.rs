//! The seeded simulation of proposer + acceptors (see `integration_tests::sim`).
//!
//! * `simulation`: seeds `0..SK_SIM_SEEDS` (default 1000) with all faults; every
//!   invariant must hold, and most seeds must commit WAL. Seeds whose proposer did not
//!   commit what it holds once the faults stopped are listed (a liveness report).
//! * `replay`: runs `SK_SIM_SEED` only; `SK_SIM_VERBOSE=1` prints every event.
//! * `broken_acceptor_is_caught` and two more mutations: a deliberately broken acceptor
//!   must be caught by the core invariants.
//! * `fault_free_run_commits_everything`: without faults all generated WAL commits.
//! * Regression tests of acceptor bugs the simulation found, and `#[ignore]`d tests of
//!   the known ones still open (run them with `-- --ignored`).
//!
//! Knobs: `SK_SIM_STEPS` (steps per seed), `SK_SIM_SETTLE` (calm steps at the end, 0 =
//! no liveness check), `SK_SIM_FAULTS=0` (no faults at all), `SK_SIM_PROPOSERS=1|2`,
//! `SK_SIM_SILENT=0` (no silent message faults), `SK_SIM_CORRUPT=0` (no corrupted WAL in
//! flight), `SK_SIM_UNBOUNDED_SOURCE=1` (the source may outrun the proposer's window),
//! `SK_SIM_AUX=0` (core invariants only),
//! `SK_SIM_MUTATION=drop-vote-persist|grant-every-vote|drop-flush|skip-term-bump`, `SK_SIM_THREADS`,
//! `SK_SIM_PER_SEED=1` (one line per seed), `SK_SIM_MEMBERSHIP_RATE` (how often membership
//! changes start, relative to the default; 0 for none).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use integration_tests::sim::acceptor_node::{AcceptorNode, Outcome};
use integration_tests::sim::{
    Mutation, SimOptions, World, parse_mutation, replay_command, run_seed, run_seeds,
};
use pq_proto::proposer::{
    AcceptorMessage, AppendRequest, AppendRequestHeader, Generation, ProposerElected,
    ProposerMessage, VoteRequest,
};
use safekeeper::ingest::Sent;
use utils::xlog::WalGenerator;
use utils::{Lsn, Term, TermHistory, TermLsn};

/// The replies of an executor call that must neither fail nor crash.
fn sent(out: Outcome) -> Vec<Sent> {
    match out {
        Outcome::Sent(s) => s,
        Outcome::Refused(e) => panic!("refused: {e}"),
        Outcome::Crashed => panic!("crashed"),
        Outcome::Broken(e) => panic!("broken: {e}"),
    }
}

/// An acceptor node (its executor over the simulated disk) that voted for term 1 and took
/// its ProposerElected with WAL starting at `start`; and that ProposerElected.
fn elected_node(start: Lsn) -> (AcceptorNode, ProposerMessage) {
    let mut node = AcceptorNode::new(0, Mutation::None, true);
    sent(node.propose(1, vote(1), None));
    let elected = ProposerMessage::Elected(ProposerElected {
        generation: Generation(1),
        term: Term(1),
        start_streaming_at: start,
        term_history: TermHistory(vec![TermLsn {
            term: Term(1),
            lsn: start,
        }]),
    });
    sent(node.propose(1, elected.clone(), None));
    (node, elected)
}

/// A VoteRequest for `term`.
fn vote(term: u64) -> ProposerMessage {
    ProposerMessage::VoteRequest(VoteRequest {
        generation: Generation(1),
        term: Term(term),
    })
}

/// A term-1 AppendRequest of `data` at `begin`, committing nothing.
fn append(begin: Lsn, data: Bytes) -> ProposerMessage {
    ProposerMessage::AppendRequest(AppendRequest {
        h: AppendRequestHeader {
            generation: Generation(1),
            term: Term(1),
            begin_lsn: begin,
            end_lsn: Lsn(begin.0 + data.len() as u64),
            commit_lsn: Lsn::INVALID,
            truncate_lsn: Lsn::INVALID,
        },
        wal_data: data,
    })
}

/// A generator of the regression tests' WAL (1 MiB segments) from `start`.
fn generator(start: Lsn) -> WalGenerator {
    WalGenerator::new(start, 0x5eed_5eed_0000_0001, 1 << 20, 15).expect("generator")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name)
        .ok()
        .map(|v| !matches!(v.trim(), "" | "0" | "false" | "no"))
}

/// Options from the environment, over the defaults.
fn options() -> SimOptions {
    let mut o = SimOptions::default();
    if let Some(r) = std::env::var("SK_SIM_MEMBERSHIP_RATE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        o.membership_rate = r;
    }
    if let Some(s) = env_u64("SK_SIM_STEPS") {
        o.steps = s;
    }
    if let Some(b) = env_flag("SK_SIM_FAULTS") {
        o.faults = b;
    }
    if let Some(n) = env_u64("SK_SIM_PROPOSERS") {
        o.proposers = Some(n as usize);
    }
    if let Some(n) = env_u64("SK_SIM_SETTLE") {
        o.settle_steps = n;
    }
    if let Some(b) = env_flag("SK_SIM_UNBOUNDED_SOURCE") {
        o.unbounded_source = b;
    }
    if let Some(b) = env_flag("SK_SIM_SILENT") {
        o.silent_faults = b;
    }
    if let Some(b) = env_flag("SK_SIM_CORRUPT") {
        o.corrupt_faults = b;
    }
    if let Some(b) = env_flag("SK_SIM_AUX") {
        o.aux_checks = b;
    }
    if let Ok(m) = std::env::var("SK_SIM_MUTATION") {
        o.mutation =
            parse_mutation(m.trim()).unwrap_or_else(|| panic!("unknown SK_SIM_MUTATION {m}"));
    }
    o
}

fn threads() -> usize {
    env_u64("SK_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

#[test]
fn simulation() {
    let seeds = env_u64("SK_SIM_SEEDS").unwrap_or(1000);
    let opts = options();
    let started = Instant::now();
    let summary = run_seeds(0..seeds, &opts, threads(), false);
    println!(
        "simulation of {seeds} seeds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    if env_flag("SK_SIM_PER_SEED").unwrap_or(false) {
        for r in &summary.reports {
            println!(
                "seed {}: {} proposer(s), {} elections, {} bytes generated, {} committed, {} safekeeper crashes",
                r.seed,
                r.proposers,
                r.elections,
                r.generated_bytes,
                r.committed_bytes,
                r.acceptor_crashes
            );
        }
    }
    for r in summary.stalled.iter().take(20) {
        println!(
            "seed {} stalled after the faults stopped: {}",
            r.seed,
            r.stalled.as_deref().unwrap_or_default()
        );
    }
    if let Some(first) = summary.failures.first() {
        for r in &summary.failures {
            let (step, v) = r.violation.as_ref().expect("a failure has a violation");
            println!(
                "seed {} step {step}: {}: {}",
                r.seed, v.invariant, v.details
            );
        }
        let (step, v) = first.violation.as_ref().expect("a failure has a violation");
        panic!(
            "{} of {seeds} seeds broke an invariant; first: seed {} at step {step}: {}: {}\nreplay: {}",
            summary.failures.len(),
            first.seed,
            v.invariant,
            v.details,
            replay_command(first.seed, &opts)
        );
    }
    // The checker must not pass vacuously: most seeds commit WAL.
    assert!(
        summary.seeds_committing * 10 >= summary.seeds * 8,
        "only {} of {} seeds committed anything",
        summary.seeds_committing,
        summary.seeds
    );
}

#[test]
fn replay() {
    let Some(seed) = env_u64("SK_SIM_SEED") else {
        println!("set SK_SIM_SEED to replay a seed");
        return;
    };
    let mut opts = options();
    opts.verbose = env_flag("SK_SIM_VERBOSE").unwrap_or(false);
    let r = run_seed(seed, &opts);
    println!("{r:#?}");
    if let Some((step, v)) = &r.violation {
        panic!("seed {seed} step {step}: {}: {}", v.invariant, v.details);
    }
}

/// Runs the default seeds with a broken acceptor and the core invariants only (the
/// auxiliary ones would flag most mutations at once); stops at the first violation, which
/// must be one of `expected`.
fn assert_caught(mutation: Mutation, expected: &[&str]) {
    let opts = SimOptions {
        mutation,
        // A broken membership change shows only where changes are frequent.
        membership_rate: if mutation == Mutation::SkipTermBump {
            20.0
        } else {
            1.0
        },
        aux_checks: false,
        settle_steps: 0,
        ..options()
    };
    let seeds = env_u64("SK_SIM_SEEDS").unwrap_or(1000);
    let summary = run_seeds(0..seeds, &opts, threads(), true);
    let Some(first) = summary.failures.first() else {
        panic!("broken acceptor {mutation:?} went unnoticed in {seeds} seeds");
    };
    let (step, v) = first.violation.as_ref().expect("a failure has a violation");
    println!(
        "{mutation:?} caught: seed {} step {step}: {}: {}\nreplay: {}",
        first.seed,
        v.invariant,
        v.details,
        replay_command(first.seed, &opts)
    );
    assert!(
        expected.contains(&v.invariant),
        "{mutation:?}: unexpected invariant {}",
        v.invariant
    );
}

/// An acceptor that does not persist a granted vote: after a crash it has forgotten it
/// and votes again in the same term, so two proposers win one term.
#[test]
fn broken_acceptor_is_caught() {
    assert_caught(
        Mutation::DropVotePersist,
        &["ElectionSafety", "LogSafety", "NoCommittedLoss"],
    );
}

/// An acceptor that grants every vote.
#[test]
fn acceptor_granting_every_vote_is_caught() {
    assert_caught(
        Mutation::GrantEveryVote,
        &[
            "ElectionSafety",
            "LogSafety",
            "LogIsMonotonic",
            "NoCommittedLoss",
        ],
    );
}

/// A membership change finished without raising the new set's term to the old set's
/// highest (Neon's `term_bump` step): a member re-added with a fresh copy has forgotten
/// its promises, and a term is won twice.
#[test]
fn membership_change_without_the_term_bump_is_caught() {
    assert_caught(
        Mutation::SkipTermBump,
        &["ElectionSafety", "LogSafety", "NoCommittedLoss"],
    );
}

/// An acceptor that acknowledges WAL it never fdatasynced: its restart finds WAL below
/// the durable-flush watermark gone (AckedWalIntact), unless the loss shows first.
#[test]
fn acceptor_skipping_fsync_is_caught() {
    assert_caught(
        Mutation::DropFlush,
        &["NoCommittedLoss", "LogSafety", "AckedWalIntact"],
    );
}

#[test]
fn fault_free_run_commits_everything() {
    for seed in 0..100 {
        let opts = SimOptions {
            faults: false,
            proposers: Some(1),
            steps: 200_000,
            ..SimOptions::default()
        };
        let world = World::new(seed, opts);
        let budget = world.config().wal_budget;
        let r = world.run(World::all_committed);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        assert_eq!(r.elections, 1, "seed {seed}: one election without faults");
        assert!(r.generated_bytes >= budget, "seed {seed}: {r:?}");
        assert_eq!(
            r.committed_bytes, r.generated_bytes,
            "seed {seed}: all generated WAL must commit: {r:?}"
        );
    }
}

/// A proposer that sends WAL which does not decode (a corrupted message, or a record the
/// decoder rejects) must not move the acceptor's flush_lsn. Found by the simulation with
/// `SK_SIM_CORRUPT=1` (seed 2: FlushIsDurable; with `SK_SIM_AUX=0`, LogSafety and
/// NoCommittedLoss: the next election truncated "at" a point past the written end, a
/// hole of zeros that then got committed): `Acceptor::decode` used to advance
/// `write_record_lsn` for the good records before the bad one in the same request.
#[test]
fn invalid_wal_does_not_advance_flush_lsn() {
    let start = Lsn(0x0100_0028);
    let (mut node, _) = elected_node(start);
    // Two records in one AppendRequest; a bit of the second one's body is flipped.
    let mut g = generator(start);
    let mut wal = BytesMut::new();
    let first = g
        .append_logical_message("t", b"good", &mut wal)
        .expect("record");
    let second = g
        .append_logical_message("t", &[7u8; 100], &mut wal)
        .expect("record");
    let flip = (second.start_lsn.0 - start.0) as usize + 60;
    wal[flip] ^= 1;
    let res = node.propose(1, append(start, wal.freeze()), None);
    assert!(
        matches!(res, Outcome::Refused(_)),
        "corrupted WAL must be refused"
    );
    // Nothing was written, so nothing may be reported as flushed.
    let out = sent(node.propose(2, vote(2), None));
    let [
        Sent {
            msg: AcceptorMessage::VoteResponse(v),
            ..
        },
    ] = &out[..]
    else {
        panic!("a vote is answered: {out:?}");
    };
    assert!(
        v.flush_lsn <= start,
        "flush_lsn {} reported, but no byte past {start} was written (the first record ends at {})",
        v.flush_lsn,
        first.end_lsn
    );
}

/// An XLOG_SWITCH record ends at its segment's end, once all its padding has arrived. When
/// the padding's last bytes come in the same AppendRequest as complete records of the next
/// segment, `Acceptor::decode` first moves `write_record_lsn` to the end of those records,
/// then overwrites it with the (lower) pending switch end: flush_lsn under-reports until
/// another record completes. With an idle source (Postgres after `pg_switch_wal()` or
/// `archive_timeout`, then a commit), that commit is never acknowledged: the simulation's
/// seed 4646 ends with all three safekeepers stuck at flush_lsn 0/400000 while the last
/// record, 0/400000..0/400410, sits written behind it.
#[test]
fn switch_then_records_in_one_append_are_flushed() {
    let seg = 1u64 << 20;
    let start = Lsn(seg + 40);
    let (mut node, _) = elected_node(start);
    let mut g = generator(start);
    let mut wal = BytesMut::new();
    g.append_logical_message("t", b"before", &mut wal)
        .expect("record");
    g.append_switch(&mut wal).expect("switch");
    let last = g
        .append_logical_message("t", b"after", &mut wal)
        .expect("record");
    let wal = wal.freeze();
    // Up to 100 bytes before the segment end (the switch record and most of its padding)
    // in requests of 64 KiB; then one with the rest of the padding and the record of the
    // next segment.
    let split = (2 * seg - 100 - start.0) as usize;
    let mut chunks: Vec<(usize, usize)> = (0..split)
        .step_by(64 << 10)
        .map(|a| (a, (a + (64 << 10)).min(split)))
        .collect();
    chunks.push((split, wal.len()));
    let mut replies = Vec::new();
    for (a, b) in chunks {
        let begin = Lsn(start.0 + a as u64);
        // Answered at once where a segment completed (the last request); owed otherwise.
        replies.extend(sent(node.propose(1, append(begin, wal.slice(a..b)), None)));
    }
    replies.extend(sent(node.flush(None)));
    let Some(Sent {
        msg: AcceptorMessage::AppendResponse(r),
        ..
    }) = replies.last()
    else {
        panic!("the appends are answered: {replies:?}");
    };
    assert_eq!(
        r.flush_lsn, last.end_lsn,
        "every record is written and flushed"
    );
}

/// A refused message must leave no trace (`AcceptorError`'s contract): a ProposerElected
/// refused after the acceptor marked its written WAL as flushed would lose the `FlushWal`
/// effect with the error, and the next `flush()` would report bytes that were never
/// fdatasynced (only the server's checkpoint at disconnect would save them).
#[test]
fn failed_elected_keeps_unflushed_wal_unflushed() {
    let start = Lsn(0x0100_0028);
    let (mut node, elected) = elected_node(start);
    let mut g = generator(start);
    let mut wal = BytesMut::new();
    g.append_logical_message("t", b"unflushed", &mut wal)
        .expect("record");
    let end = Lsn(start.0 + wal.len() as u64);
    sent(node.propose(1, append(start, wal.freeze()), None));
    // The same ProposerElected again (a duplicated message): refused.
    assert!(matches!(
        node.propose(2, elected, None),
        Outcome::Refused(_)
    ));
    // The record was written but never flushed: the owed response must flush it first.
    let out = sent(node.flush(None));
    assert!(!out.is_empty(), "the append is answered");
    assert_eq!(
        node.storage().durable_end(),
        end,
        "flush reports flush_lsn {} without an fdatasync",
        node.acceptor().map(|a| a.flush_lsn()).unwrap_or_default()
    );
}

/// Liveness: once faults stop, the proposer commits everything it holds. Known to fail
/// (the summary of `simulation` lists the stalled seeds), for three reasons:
/// * most stalls (e.g. seeds 23, 58, 274, 670): `Proposer::trim_window` drops WAL that no
///   safekeeper holds — all of the window when no safekeeper is streaming at that moment
///   (`unwrap_or(self.window.end())`), and anything beyond `max_window` — after which no
///   donor can provide it and the term stalls for good;
/// * "elected false" (e.g. seed 903): a reply lost on an open connection (a blackholed
///   peer) is waited for forever: the proposer has no response timeout (ref §2.7 drops a
///   connection silent for `safekeeper_connect_timeout`);
/// * seed 4646: the acceptor bug of `switch_then_records_in_one_append_are_flushed`.
#[test]
fn proposer_commits_everything_after_faults_stop() {
    let seeds = env_u64("SK_SIM_SEEDS").unwrap_or(1000);
    let opts = options();
    let summary = run_seeds(0..seeds, &opts, threads(), false);
    let stalled: Vec<String> = summary
        .stalled
        .iter()
        .map(|r| {
            format!(
                "seed {}: {}",
                r.seed,
                r.stalled.as_deref().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        stalled.is_empty(),
        "stalled after the faults stopped:\n{}",
        stalled.join("\n")
    );
}

/// The same bug without any fault: a source that appends a batch larger than the room
/// left in the proposer's window loses the batch's first bytes before any safekeeper has
/// them, and nothing commits after that (seed 0; replay with `SK_SIM_SEED=0
/// SK_SIM_FAULTS=0 SK_SIM_PROPOSERS=1 SK_SIM_UNBOUNDED_SOURCE=1 SK_SIM_STEPS=20000`).
#[test]
fn fault_free_run_with_a_source_outrunning_the_window() {
    for seed in 0..20 {
        let opts = SimOptions {
            faults: false,
            proposers: Some(1),
            unbounded_source: true,
            steps: 200_000,
            ..SimOptions::default()
        };
        let r = World::new(seed, opts).run(World::all_committed);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        assert_eq!(
            r.committed_bytes, r.generated_bytes,
            "seed {seed}: all generated WAL must commit: {r:?}"
        );
    }
}
