//! Many readers on one timeline: 50 replication streams in commit mode follow a proposer
//! that appends WAL; every one gets exactly the proposer's bytes, and the ingest rate with
//! and without them is printed (no timing assertion: this box may be busy). A stalled
//! reader that reads nothing during ingest holds no more than a bounded buffer and later
//! gets everything from disk at its own pace.

mod send_wal_util;

use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::TestProposer;
use send_wal_util::{
    CLUSTER, Frame, GEN_START, GenWal, ReplStream, check_xlog_data, heartbeat, new_ttid,
};
use utils::{Lsn, TenantTimelineId, Term};

const READERS: usize = 50;
const WAL_BYTES: usize = 64 << 20;
const T: Duration = Duration::from_secs(60);

/// Reads `[from, end)` and compares it with `wal` on the fly (nothing is kept).
async fn follow(mut r: ReplStream, wal: Bytes, from: Lsn, end: Lsn) -> anyhow::Result<()> {
    let mut pos = from;
    while pos < end {
        match r.next(T).await? {
            Frame::Data(x) => {
                check_xlog_data(&x, pos)?;
                let off = (pos.0 - from.0) as usize;
                anyhow::ensure!(
                    x.data[..] == wal[off..off + x.data.len()],
                    "bytes at {pos} differ"
                );
                anyhow::ensure!(x.wal_end <= end, "wal_end {} above the end", x.wal_end);
                pos = Lsn(pos.0 + x.data.len() as u64);
            }
            Frame::Keepalive(_) => {}
            other => anyhow::bail!("{other:?} at {pos}"),
        }
    }
    Ok(())
}

/// Pushes `wal` into a new timeline and returns the ingest rate in bytes/s.
async fn ingest(
    sk: &Safekeeper,
    ttid: TenantTimelineId,
    wal: &GenWal,
    before_push: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, TestProposer)> {
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    before_push().await?;
    let t0 = Instant::now();
    let flushes = p.push(Term(1), GEN_START, &wal.wal).await?;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(flushes.last().copied(), Some(wal.end()));
    heartbeat(&mut p, Term(1), wal.end(), wal.end()).await?;
    Ok((wal.wal.len() as f64 / secs, p))
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_readers_get_identical_bytes_while_a_proposer_appends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk"), false)?;
    let wal = GenWal::new(GEN_START, WAL_BYTES);
    let end = wal.end();

    // Baseline: nobody reads (the best of two runs, into two timelines).
    let (a1, _p1) = ingest(&sk, new_ttid(), &wal, async || Ok(())).await?;
    let (a2, _p2) = ingest(&sk, new_ttid(), &wal, async || Ok(())).await?;
    let alone = a1.max(a2);

    // The readers run on threads of their own, so that in this process too the proposer
    // does not wait in a queue behind them (they still share the 2 CPUs).
    let reader_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // The same WAL into another timeline, with 50 readers started before the first byte
    // (they wait on the commit watch) and one reader that reads nothing during ingest.
    let ttid = new_ttid();
    let mut readers = Vec::new();
    let mut stalled = None;
    let rss_before = sk.pid().and_then(vm_rss_kib);
    let sk_cpu0 = sk.pid().and_then(cpu_secs);
    let me_cpu0 = cpu_secs(std::process::id());
    let t0 = Instant::now();
    let (with_readers, _p) = ingest(&sk, ttid, &wal, async || {
        for i in 0..READERS {
            let r = ReplStream::start(
                &sk,
                Some(&ttid),
                &format!("reader{i}"),
                &format!("START_REPLICATION {GEN_START}"),
            )
            .await?;
            readers.push(reader_rt.spawn(follow(r, wal.wal.clone(), GEN_START, end)));
        }
        stalled = Some(
            ReplStream::start(
                &sk,
                Some(&ttid),
                "stalled",
                &format!("START_REPLICATION {GEN_START}"),
            )
            .await?,
        );
        Ok(())
    })
    .await?;
    for (i, r) in readers.into_iter().enumerate() {
        r.await?.map_err(|e| anyhow::anyhow!("reader{i}: {e:#}"))?;
    }
    let all_read = t0.elapsed().as_secs_f64();
    let sk_cpu = sk.pid().and_then(cpu_secs).zip(sk_cpu0).map(|(a, b)| a - b);
    let me_cpu = cpu_secs(std::process::id())
        .zip(me_cpu0)
        .map(|(a, b)| a - b);
    let rss_after = sk.pid().and_then(vm_rss_kib);

    // The stalled reader still gets every byte, read from disk now.
    let t1 = Instant::now();
    follow(
        stalled.take().expect("started"),
        wal.wal.clone(),
        GEN_START,
        end,
    )
    .await?;
    let stalled_secs = t1.elapsed().as_secs_f64();

    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "ingest of {} MiB: {:.1} MiB/s with no reader, {:.1} MiB/s with {READERS} readers \
         ({:.0}% of the baseline); all {READERS} readers done {:.2} s after the first byte \
         ({:.1} MiB/s served in total); the stalled reader then read everything in {:.2} s; \
         safekeeper RSS {} KiB before, {} KiB after; CPU used meanwhile: safekeeper {:.2} s, \
         this test process (proposer + readers checking every byte) {:.2} s",
        mib(wal.wal.len() as f64),
        mib(alone),
        mib(with_readers),
        100.0 * with_readers / alone,
        all_read,
        mib(wal.wal.len() as f64 * READERS as f64 / all_read),
        stalled_secs,
        rss_before.map_or("?".into(), |v| v.to_string()),
        rss_after.map_or("?".into(), |v| v.to_string()),
        sk_cpu.unwrap_or(f64::NAN),
        me_cpu.unwrap_or(f64::NAN),
    );
    // Bounded buffers: 51 streams hold at most a chunk each, far below the WAL they read
    // (this is a bound on memory, not on time).
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        assert!(
            a.saturating_sub(b) < 128 * 1024,
            "the safekeeper grew by {} KiB serving {READERS} readers",
            a - b
        );
    }
    reader_rt.shutdown_background();
    Ok(())
}
