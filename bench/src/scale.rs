//! Item 5 (the part without readers): RSS of one safekeeper idle with many timelines,
//! and its peak RSS under the ingest load (sampled by the ingest section).
//!
//! The timelines are created by the proposer library itself (the same code as
//! `walproposer generate`), `concurrency` at a time, each with a little WAL; the
//! safekeeper is then restarted so the figure is that of timelines loaded from disk.

use std::time::Duration;

use utils::{Lsn, TenantId, TimelineId};
use walproposer::generate::{self, GenerateOptions, Pacing};
use walproposer::proposer::Config;

use crate::procs::{Safekeeper, hwm_kib, rss_kib};
use crate::report::mib;
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
    Ok(())
}
