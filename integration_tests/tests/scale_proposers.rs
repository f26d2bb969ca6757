//! Many proposers streaming at once into one safekeeper, one timeline each: every one gets
//! its WAL flushed, and the safekeeper stays on a bounded number of threads (≤ 64) while
//! all of them are connected and appending.
//!
//! This is what a connection holding a thread cannot do: with one blocking thread per
//! START_WAL_PUSH, 1,000 connected proposers need 1,000 threads, and tokio's blocking
//! pool stops at 512, so the rest are never answered. The count is `SK_SCALE_PROPOSERS`
//! (default 1,000).
//!
//! Never asserts on timings: the overall timeout only turns a hang into a failure that
//! says how far the proposers got.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use integration_tests::real_wal::{GeneratedWal, SEG};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer};
use tokio::sync::Barrier;
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

/// Proposers when `SK_SCALE_PROPOSERS` is not set.
const DEFAULT_PROPOSERS: usize = 1000;
/// The most threads the safekeeper may have with all of them streaming.
const MAX_THREADS: u64 = 64;
/// AppendRequest rounds per proposer: each waits for its answer before the next, so
/// the streams of different proposers interleave on the server.
const ROUNDS: usize = 3;
/// WAL per round, at least (whole records: [`GeneratedWal`] writes a 10-byte, a 3 kB and
/// a 20 kB logical message, ~23 KiB crossing page boundaries).
const ROUND_BYTES: usize = 8 * 1024;
/// Everything (connect, elect, append) must be done by then.
const OVERALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the sampler reads `/proc/<pid>/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 7_300_000_000_000_000_042,
    wal_seg_size: SEG,
};
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(SEG as u64 + 40);

/// This process holds one socket per proposer: more than the usual soft limit of 1,024
/// open files.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The `Threads:` line of `/proc/<pid>/status` (0 if the process is gone).
fn thread_count(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How far the proposers got, shared with the timeout message.
#[derive(Default)]
struct Progress {
    elected: AtomicUsize,
    flushed: AtomicUsize,
    failed: AtomicUsize,
}

/// The safekeeper's thread count, sampled from `/proc`.
#[derive(Default)]
struct Threads {
    /// Set once every proposer is elected: samples from then on count in `peak`.
    streaming: AtomicBool,
    /// Peak before that.
    connecting: AtomicU64,
    /// Peak with all proposers connected and appending.
    peak: AtomicU64,
    /// Samples in `peak`.
    samples: AtomicUsize,
}

impl Threads {
    fn sample(&self, pid: u32) {
        let now = thread_count(pid);
        if self.streaming.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
            self.samples.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connecting.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Samples every [`SAMPLE_EVERY`] until aborted.
    async fn sample_until_aborted(self: Arc<Self>, pid: u32) {
        loop {
            self.sample(pid);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }
}

/// The WAL every proposer appends, one entry per round; all timelines get the same bytes
/// (each is its own timeline, so that is fine, and it is generated once).
fn rounds() -> anyhow::Result<Vec<GeneratedWal>> {
    let mut g = WalGenerator::new(START, CLUSTER.system_id, SEG, 15)?;
    (0..ROUNDS)
        .map(|_| GeneratedWal::generate(&mut g, ROUND_BYTES))
        .collect()
}

/// One proposer: elected in term 1 on a new timeline, waits for all the others, then
/// appends its rounds and checks the last flush_lsn; stays connected until every proposer
/// is done (`done`) so that the samples see all the connections at once. Always reaches
/// both barriers, even after an error, so one failure cannot hang the others.
async fn proposer(
    addr: String,
    wal: Arc<Vec<GeneratedWal>>,
    elected: Arc<Barrier>,
    done: Arc<Barrier>,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let p = TestProposer::first_term(&addr, ttid, CLUSTER, START).await;
    if p.is_ok() {
        progress.elected.fetch_add(1, Ordering::Relaxed);
    }
    elected.wait().await;
    let result = async {
        let mut p = p.context("election")?;
        let mut last = Lsn::INVALID;
        for round in wal.iter() {
            let flushes = p.push(Term(1), round.start, &round.wal).await?;
            last = flushes.last().copied().unwrap_or(last);
        }
        let end = wal.last().map_or(START, GeneratedWal::end);
        ensure!(
            last == end,
            "{ttid}: last flush_lsn {last}, WAL ends at {end}"
        );
        progress.flushed.fetch_add(1, Ordering::Relaxed);
        anyhow::Ok(p)
    }
    .await;
    if result.is_err() {
        progress.failed.fetch_add(1, Ordering::Relaxed);
    }
    done.wait().await;
    result.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_proposers_stream_at_once_on_few_threads() -> anyhow::Result<()> {
    raise_open_files_limit();
    let n: usize = match std::env::var("SK_SCALE_PROPOSERS") {
        Ok(v) => v.parse().context("SK_SCALE_PROPOSERS")?,
        Err(_) => DEFAULT_PROPOSERS,
    };
    let dir = tempfile::tempdir()?;
    // fsync on, although this is a test of threads and concurrency, not of durability:
    // the bound matters most while pool threads sit in fdatasync (with --no-sync every
    // flush is CPU only), and it costs little here (1,000 proposers: ~1.8 s with fsync,
    // ~1.2 s without, on a 2-vCPU VM). The connection limit is raised above N so that it
    // is not what is tested (the default, 1,000, leaves no slot to spare).
    let max_conns = (n + 200).to_string();
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk1"),
        true,
        &["--max-connections", &max_conns],
    )?;
    let pid = sk.pid().context("safekeeper pid")?;
    let idle_threads = thread_count(pid);
    let wal = Arc::new(rounds()?);
    let progress = Arc::new(Progress::default());
    // Every proposer plus this task: the samples start once all are elected and end
    // before any disconnects.
    let elected = Arc::new(Barrier::new(n + 1));
    let done = Arc::new(Barrier::new(n + 1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(proposer(
            sk.addr(),
            wal.clone(),
            elected.clone(),
            done.clone(),
            progress.clone(),
        ));
    }

    // Sampled from the start; what counts is the peak after the election barrier, with
    // every proposer connected and appending (the connecting phase is printed too).
    let threads = Arc::new(Threads::default());
    let sampler = tokio::spawn(threads.clone().sample_until_aborted(pid));
    let run = async {
        elected.wait().await;
        threads.streaming.store(true, Ordering::Relaxed);
        let all_elected = started.elapsed();
        threads.sample(pid);
        // Until every proposer has its answer (flushed or failed), then once more with
        // all of them still connected.
        while progress.flushed.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed) < n
        {
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        threads.sample(pid);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        done.wait().await;
        let mut errors = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r? {
                errors.push(format!("{e:#}"));
            }
        }
        anyhow::Ok((all_elected, fds, errors))
    };
    let outcome = tokio::time::timeout(OVERALL_TIMEOUT, run).await;
    sampler.abort();
    let (all_elected, fds, errors) = match outcome {
        Ok(r) => r?,
        Err(_) => panic!(
            "after {OVERALL_TIMEOUT:?}: {} of {n} proposers elected, {} got their WAL flushed, \
             {} failed, the rest never answered; safekeeper threads so far: peak {} while \
             connecting, {} while streaming",
            progress.elected.load(Ordering::Relaxed),
            progress.flushed.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed),
            threads.connecting.load(Ordering::Relaxed),
            threads.peak.load(Ordering::Relaxed),
        ),
    };
    let total = started.elapsed();
    let peak = threads.peak.load(Ordering::Relaxed);
    println!(
        "{n} proposers: {} elected after {:.2} s, {} flushed after {:.2} s; safekeeper \
         threads: {idle_threads} idle, peak {} while connecting, peak {peak} over {} samples \
         while all were connected and appending; {fds} open files then",
        progress.elected.load(Ordering::Relaxed),
        all_elected.as_secs_f64(),
        progress.flushed.load(Ordering::Relaxed),
        total.as_secs_f64(),
        threads.connecting.load(Ordering::Relaxed),
        threads.samples.load(Ordering::Relaxed),
    );
    assert!(
        errors.is_empty(),
        "{} of {n} proposers failed (flushed: {}); first errors: {:?}",
        errors.len(),
        progress.flushed.load(Ordering::Relaxed),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(progress.flushed.load(Ordering::Relaxed), n);
    assert!(
        peak <= MAX_THREADS,
        "the safekeeper had {peak} threads with {n} proposers streaming (at most {MAX_THREADS})"
    );
    sk.assert_no_panics();
    Ok(())
}
