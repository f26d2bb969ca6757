//! Item 5 (the part without readers): RSS of one safekeeper idle with many timelines,
//! its peak RSS under the ingest load (sampled by the ingest section), and its threads
//! and RSS with a crowd of proposers streaming at once ([`crate::crowd`]).
//!
//! The idle timelines are created by the proposer library itself (the same code as
//! `walproposer generate`), `concurrency` at a time, each with a little WAL; the
//! safekeeper is then restarted so the figure is that of timelines loaded from disk.

use std::time::Duration;

use utils::{Lsn, TenantId, TimelineId};
use walproposer::generate::{self, GenerateOptions, Pacing};
use walproposer::proposer::Config;

use crate::crowd;
use crate::procs::{Safekeeper, hwm_kib, rss_kib, thread_count};
use crate::report::{met, mib};
use crate::{Ctx, fresh_dir, new_ids};

/// Creates `n` timelines with 64 KiB of WAL each on the safekeeper at `addr`.
fn create_timelines(addr: &str, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            if set.len() >= concurrency
                && let Some(r) = set.join_next().await
            {
                r??;
            }
            let (t, tl) = new_ids();
            let mut conf = Config::new(t.parse::<TenantId>()?, tl.parse::<TimelineId>()?, 1);
            conf.pg_version = 150000;
            conf.system_id = 0x5eed_0000 + i as u64;
            conf.timeline_start_lsn = Lsn(0x0100_0028);
            let opts = GenerateOptions {
                bytes: 64 << 10,
                max_records: None,
                record_size: 8 << 10,
                rate: None,
                max_in_flight: 16 << 20,
                pacing: Pacing::Pipelined,
                final_wait: Duration::from_secs(10),
                token: None,
            };
            let addrs = vec![addr.to_string()];
            set.spawn(async move { generate::run(conf, addrs, opts).await.map(|_| ()) });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        anyhow::Ok(())
    })
}

/// Item 5: idle RSS with many timelines; RSS under load.
pub fn scale(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let dir = fresh_dir(&ctx.work.join("scale"))?;
    let sk_dir = dir.join("sk1");
    let mut sk = Safekeeper::start(1, &sk_dir)?;
    std::thread::sleep(Duration::from_secs(1));
    let empty = rss_kib(sk.proc.pid());
    let t = std::time::Instant::now();
    create_timelines(&sk.addr(), p.timelines, 16)?;
    let created_in = t.elapsed();
    let after_create = rss_kib(sk.proc.pid());
    sk.proc.stop();
    drop(sk);
    sk = Safekeeper::start(1, &sk_dir)?;
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_kib(sk.proc.pid());
    let loaded_hwm = hwm_kib(sk.proc.pid());
    eprintln!(
        "  {} timelines (created in {:.1} s): empty {empty} KiB, after creating {after_create} KiB, \
         restarted {loaded} KiB (peak {loaded_hwm})",
        p.timelines,
        created_in.as_secs_f64()
    );
    let sec = "5. Memory and scale";
    ctx.report.row(
        sec,
        format!(
            "safekeeper RSS idle with {} timelines (restarted, loaded from disk)",
            p.timelines
        ),
        format!(
            "{} ({:.1} KiB per timeline)",
            mib(loaded),
            loaded.saturating_sub(empty) as f64 / p.timelines as f64
        ),
        format!("{} (no timelines)", mib(empty)),
        None,
        "",
        format!(
            "{} × (greeting, election, 64 KiB of WAL) through the proposer library, restart, VmRSS",
            p.timelines
        ),
    );
    ctx.report.row(
        sec,
        format!(
            "safekeeper RSS right after creating {} timelines (same process)",
            p.timelines
        ),
        mib(after_create),
        format!("{} (no timelines)", mib(empty)),
        None,
        "",
        "VmRSS",
    );
    if ctx.load_rss_kib > 0 {
        ctx.report.row(
            sec,
            "safekeeper RSS, peak under the 128 KiB ingest load (1 safekeeper)",
            mib(ctx.load_rss_kib),
            format!("{} (idle, no timelines)", mib(empty)),
            None,
            "",
            "VmRSS every 50 ms during item 1's 128 KiB runs",
        );
    }
    drop(sk);
    std::fs::remove_dir_all(&dir)?;
    for &n in &p.crowds {
        crowd_figures(ctx, n)?;
    }
    Ok(())
}

/// Open files asked for before a crowd: far above what 10,000 proposers need.
const OPEN_FILES_WANTED: u64 = 200_000;
/// The thread budget of a safekeeper serving a crowd.
const MAX_THREADS: u64 = 64;

/// Open files a crowd of `n` needs in the safekeeper: a socket per proposer, plus room
/// for the rest. Open segment files fit in what is left: the safekeeper budgets them
/// below its limit (`--max-open-segments`), closing the segment of an idle timeline when
/// over it. The harness itself needs one socket per proposer.
fn open_files_needed(n: usize) -> u64 {
    n as u64 + 1024
}

/// `n` proposers streaming at once into a fresh safekeeper (fsync on): its threads and
/// RSS, and whether every proposer got its WAL flushed.
fn crowd_figures(ctx: &mut Ctx, n: usize) -> anyhow::Result<()> {
    let sec = "5. Memory and scale";
    let (limit, why) = utils::limits::raise_open_files(Some(OPEN_FILES_WANTED));
    if limit < open_files_needed(n) {
        let note = format!(
            "{n} proposers at once: not measured. The safekeeper would need about {} open \
             files (a socket per proposer and a reserve); the limit is {limit}{}.",
            open_files_needed(n),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        );
        eprintln!("  {note}");
        ctx.report.notes.push(note);
        return Ok(());
    }
    let dir = fresh_dir(&ctx.work.join("crowd"))?;
    let max_conns = (n + 100).to_string();
    let mut sk =
        Safekeeper::start_with_args(1, &dir.join("sk1"), &["--max-connections", &max_conns])?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = sk.proc.pid();
    let (idle_threads, idle_rss) = (thread_count(pid), rss_kib(pid));
    let phase_timeout = Duration::from_secs(60 + n as u64 / 50);
    let c = crowd::run(&sk.addr(), pid, n, phase_timeout)?;
    let hwm = hwm_kib(pid);
    sk.proc.check_alive()?;
    eprintln!(
        "  crowd of {n}: {} elected in {:.1} s, {} flushed {:.1} s later; threads {} (idle \
         {idle_threads}), RSS peak {} KiB (VmHWM {hwm}, idle {idle_rss}), {} open files",
        c.elected,
        c.elect_time.as_secs_f64(),
        c.flushed,
        c.append_time.as_secs_f64(),
        c.peak_threads,
        c.peak_rss_kib,
        c.open_files
    );
    let load = format!(
        "{n} × (START_WAL_PUSH, greeting, vote, elected) held open, {} setting up at \
         once; when all are elected, {} AppendRequests of {} × {} KiB records each, one at a \
         time",
        crowd::HANDSHAKES_AT_ONCE,
        crowd::ROUNDS,
        crowd::RECORDS_PER_ROUND,
        crowd::RECORD_SIZE / 1024
    );
    ctx.report.row(
        sec,
        format!(
            "safekeeper threads, peak, with {n} proposers streaming at once (one timeline each)"
        ),
        c.peak_threads.to_string(),
        format!("{idle_threads} (idle, no timelines)"),
        None,
        met(c.peak_threads <= MAX_THREADS, &format!("≤ {MAX_THREADS}")),
        format!("{load}; Threads in /proc every 20 ms"),
    );
    ctx.report.row(
        sec,
        format!("safekeeper RSS, peak, with {n} proposers streaming at once"),
        format!(
            "{} (VmHWM {}; {:.0} KiB per proposer)",
            mib(c.peak_rss_kib),
            mib(hwm),
            c.peak_rss_kib.saturating_sub(idle_rss) as f64 / n as f64
        ),
        format!("{} (idle, no timelines)", mib(idle_rss)),
        None,
        "",
        "the same crowd: VmRSS every 20 ms, VmHWM",
    );
    ctx.report.row(
        sec,
        format!("{n} proposers streaming at once: WAL flushed"),
        format!(
            "{} of {n} (electing all: {:.1} s; then the appends: {:.1} s)",
            c.flushed,
            c.elect_time.as_secs_f64(),
            c.append_time.as_secs_f64()
        ),
        "—",
        None,
        met(c.flushed == n, "all"),
        "the same crowd: flush_lsn of the last AppendResponse",
    );
    if c.flushed < n {
        let unanswered = n - c.flushed - c.failed;
        ctx.report.notes.push(format!(
            "{n} proposers at once: {} elected, {} got their WAL flushed, {} failed{}{}.",
            c.elected,
            c.flushed,
            c.failed,
            if c.errors.is_empty() {
                String::new()
            } else {
                format!(" (first errors: {})", c.errors.join("; "))
            },
            if unanswered > 0 {
                format!(
                    ", {unanswered} had no answer within {} s per phase",
                    phase_timeout.as_secs()
                )
            } else {
                String::new()
            }
        ));
    }
    drop(sk);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
