//! The `walproposer` binary against three `safekeeper` processes: `generate` pushes WAL
//! through a quorum while one safekeeper is killed and restarted, and `sync` brings
//! safekeepers left at different ends (one behind, one with a divergent uncommitted tail
//! of an older term) to one end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::pg_tools::{pg_bin, run};
use integration_tests::real_wal::read_wal_range;
use integration_tests::sk::{Safekeeper, workspace_bin};
use integration_tests::test_proposer::{Cluster, TestProposer};
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::{WalGenerator, xlog_file_name};
use utils::{Lsn, TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

const SEG: u32 = 16 * 1024 * 1024;

fn start_three(dir: &std::path::Path) -> anyhow::Result<Vec<Safekeeper>> {
    (1..=3)
        .map(|i| Safekeeper::start(i, &dir.join(format!("sk{i}")), false))
        .collect()
}

fn addrs(sks: &[Safekeeper]) -> String {
    sks.iter()
        .map(Safekeeper::addr)
        .collect::<Vec<_>>()
        .join(",")
}

fn ids_args(ttid: &TenantTimelineId) -> Vec<String> {
    vec![
        "--tenant-id".into(),
        ttid.tenant_id.to_string(),
        "--timeline-id".into(),
        ttid.timeline_id.to_string(),
    ]
}

/// Runs `walproposer sync` and returns the LSN it prints.
fn sync(sks: &[Safekeeper], ttid: &TenantTimelineId) -> anyhow::Result<Lsn> {
    let out = run(Command::new(workspace_bin("walproposer"))
        .args(["sync", "--safekeepers", &addrs(sks), "--timeout", "60"])
        .args(ids_args(ttid)))?;
    out.trim()
        .parse()
        .with_context(|| format!("sync printed {out:?}"))
}

/// The bytes of every safekeeper's WAL in `[from, to)` are identical.
fn assert_identical(
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
    from: Lsn,
    to: Lsn,
) -> anyhow::Result<()> {
    let first = read_wal_range(&sks[0].timeline_dir(ttid), from, to)?;
    for sk in &sks[1..] {
        let other = read_wal_range(&sk.timeline_dir(ttid), from, to)?;
        ensure!(
            first == other,
            "safekeeper {} differs from safekeeper {} in {from}..{to}",
            sk.id,
            sks[0].id
        );
    }
    Ok(())
}

#[test]
fn generate_through_a_kill_then_sync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sks = start_three(dir.path())?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let total: u64 = 256 << 20;
    let generate = Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &addrs(&sks), "--bytes"])
        .arg(total.to_string())
        .args(["--record-size", "8k"])
        .args(ids_args(&ttid))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Kill safekeeper 2 once about a third has been pushed, restart it a little later.
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        ensure!(Instant::now() < deadline, "no progress before the kill");
        if let Ok(st) = sks[1].timeline_status(&ttid)
            && st.flush_lsn.0 > 0x0100_0000 + total / 3
        {
            sks[1].kill()?;
            break st.flush_lsn;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    sks[1].restart_same_ports()?;
    let out = generate.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "generate failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let end = integration_tests::sk::generated_wal_range(&stdout)?.1;
    ensure!(end.0 >= 0x0100_0028 + total, "pushed only up to {end}");
    ensure!(killed_at < end);

    // Every safekeeper, the restarted one included, holds and has committed all of it.
    for sk in &sks {
        let st = sk.timeline_status(&ttid)?;
        ensure!(
            st.flush_lsn == end && st.commit_lsn == end,
            "safekeeper {}: {st:?}, expected {end}\ngenerate: {}\nlog:\n{}",
            sk.id,
            String::from_utf8_lossy(&out.stderr),
            sk.log()
        );
    }
    let start = Lsn(0x0100_0000);
    assert_identical(&sks, &ttid, start, end)?;

    // pg_waldump reads the segments (copied under their bare names).
    let copy = tempfile::tempdir()?;
    let tl = sks[0].timeline_dir(&ttid);
    let last_segno = end.segment_number(SEG);
    for segno in 1..=last_segno {
        let name = xlog_file_name(1, segno, SEG);
        let src = if tl.join(&name).exists() {
            tl.join(&name)
        } else {
            tl.join(format!("{name}.partial"))
        };
        std::fs::copy(src, copy.path().join(&name))?;
    }
    let out = Command::new(pg_bin("pg_waldump"))
        .arg("-p")
        .arg(copy.path())
        .arg("--stats")
        .arg(xlog_file_name(1, 1, SEG))
        .arg(xlog_file_name(1, last_segno, SEG))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&format!("invalid record length at {end}")),
        "pg_waldump did not read up to {end}: {stderr}"
    );

    // sync on a quorum already at one end prints that end.
    assert_eq!(sync(&sks, &ttid)?, end);
    Ok(())
}

/// Valid WAL continuing at `start`: `n` logical messages of `size` bytes.
fn wal(start: Lsn, n: usize, size: usize, tag: u8) -> (Bytes, Lsn) {
    let mut g = WalGenerator::new(start, 4242, SEG, 15).expect("generator");
    let mut out = BytesMut::new();
    for _ in 0..n {
        g.append_logical_message("sync", &vec![tag; size], &mut out)
            .expect("record");
    }
    (out.freeze(), g.position())
}

fn hist(entries: &[(u64, Lsn)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(t, lsn)| TermLsn { term: Term(t), lsn })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reconciles_a_lagging_and_a_divergent_safekeeper() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start_three(dir.path())?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let cluster = Cluster {
        pg_version: 150000,
        system_id: 4242,
        wal_seg_size: SEG,
    };
    let start = Lsn(0x0100_0028);
    let connect = |i: usize| {
        let addr = sks[i].addr();
        async move {
            let mut p = TestProposer::connect(&addr, ttid, ProtocolVersion::V3, true).await?;
            p.greet(cluster).await?;
            anyhow::Ok(p)
        }
    };
    // Term 1 on all three: W1 to safekeepers 1 and 2, only the first part to 3 (behind).
    let (w1, e1) = wal(start, 200, 3000, b'1');
    let h1 = hist(&[(1, start)]);
    for i in 0..3 {
        let mut p = connect(i).await?;
        ensure!(p.vote(Term(1)).await?.vote_given);
        p.elect(Term(1), h1.clone(), start).await?;
        let data = if i == 2 {
            w1.slice(..w1.len() / 3)
        } else {
            w1.clone()
        };
        // Safekeepers 1 and 2 both hold W1: it is committed.
        p.push_with_commit(
            Term(1),
            start,
            &data,
            e1.min(Lsn(start.0 + data.len() as u64)),
        )
        .await?;
    }
    // Term 2 wins 1 and 2 but only 1 gets its WAL: an uncommitted tail.
    let (w2, _) = wal(e1, 50, 3000, b'2');
    let h2 = hist(&[(1, start), (2, e1)]);
    let mut p2a = connect(0).await?;
    let mut p2b = connect(1).await?;
    ensure!(p2a.vote(Term(2)).await?.vote_given && p2b.vote(Term(2)).await?.vote_given);
    p2a.elect(Term(2), h2, e1).await?;
    p2a.push_with_commit(Term(2), e1, &w2, e1).await?;
    drop((p2a, p2b));
    // Term 3 wins 2 and 3 and writes its own WAL to 2 only: safekeeper 1's term-2 tail
    // is now divergent.
    let (w3, e3) = wal(e1, 80, 3000, b'3');
    let h3 = hist(&[(1, start), (3, e1)]);
    let mut p3 = connect(1).await?;
    let mut p3c = connect(2).await?;
    ensure!(p3.vote(Term(3)).await?.vote_given && p3c.vote(Term(3)).await?.vote_given);
    p3.elect(Term(3), h3, e1).await?;
    p3.push_with_commit(Term(3), e1, &w3, e1).await?;
    drop((p3, p3c));

    let before: Vec<_> = sks
        .iter()
        .map(|s| s.timeline_status(&ttid))
        .collect::<Result<_, _>>()?;
    ensure!(before[0].last_log_term == Term(2) && before[1].last_log_term == Term(3));
    ensure!(
        before[2].flush_lsn < e1,
        "safekeeper 3 should be behind: {:?}",
        before[2]
    );

    let lsn = tokio::task::spawn_blocking({
        let sks_addrs = addrs(&sks);
        move || -> anyhow::Result<Lsn> {
            let out = run(Command::new(workspace_bin("walproposer"))
                .args(["sync", "--safekeepers", &sks_addrs, "--timeout", "60"])
                .args(ids_args(&ttid)))?;
            Ok(out.trim().parse()?)
        }
    })
    .await??;
    // Both tails are uncommitted, so either may win, depending on which two safekeepers
    // vote first: term 3's (on safekeeper 2) or term 2's (on safekeeper 1). Whichever it
    // is, every safekeeper ends with exactly it, the other tail truncated and the
    // lagging safekeeper caught up.
    let winner = if lsn == e3 { &w3 } else { &w2 };
    ensure!(
        lsn == e3 || lsn == before[0].flush_lsn,
        "sync printed {lsn}: neither term 3's end {e3} nor term 2's {}",
        before[0].flush_lsn
    );
    for sk in &sks {
        let st = sk.timeline_status(&ttid)?;
        if st.flush_lsn != lsn || st.commit_lsn != lsn {
            bail!(
                "safekeeper {} not synced: {st:?}, expected {lsn}; log:\n{}",
                sk.id,
                sk.log()
            );
        }
    }
    assert_identical(&sks, &ttid, start, lsn)?;
    let ours = read_wal_range(&sks[2].timeline_dir(&ttid), e1, lsn)?;
    ensure!(
        ours == winner[..],
        "the WAL after {e1} is not the winning tail"
    );
    Ok(())
}

/// `sync` greets with the timeline's real PostgreSQL version, asked from the safekeepers
/// (Neon's safekeeper refuses version 0); with none knowing it, it asks for
/// `--pg-version`; a version of another major is refused by the safekeepers.
#[test]
fn sync_greets_with_the_timelines_pg_version() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start_three(dir.path())?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    run(Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &addrs(&sks), "--bytes", "256k"])
        .args(["--pg-version", "160002"])
        .args(ids_args(&ttid)))?;
    let end = sync(&sks, &ttid)?;
    for sk in &sks {
        let log = sk.log();
        let greetings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("proposer greeting"))
            .collect();
        ensure!(greetings.len() >= 2, "safekeeper {}: {greetings:?}", sk.id);
        ensure!(
            greetings.iter().all(|l| l.contains("pg_version=160002")),
            "safekeeper {}: {greetings:?}",
            sk.id
        );
        ensure!(sk.timeline_status(&ttid)?.flush_lsn == end);
    }

    // A timeline no safekeeper holds: sync cannot know the version.
    let new = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let o = integration_tests::pg_tools::run_unchecked(
        Command::new(workspace_bin("walproposer"))
            .args(["sync", "--safekeepers", &addrs(&sks), "--timeout", "10"])
            .args(ids_args(&new)),
    )?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success() && stderr.contains("--pg-version"),
        "{stderr}"
    );

    // The flag is what is sent: another major is refused by the safekeepers.
    let o = integration_tests::pg_tools::run_unchecked(
        Command::new(workspace_bin("walproposer"))
            .args(["sync", "--safekeepers", &addrs(&sks), "--timeout", "10"])
            .args(["--pg-version", "150004"])
            .args(ids_args(&ttid)),
    )?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success(),
        "synced with another major version: {stderr}"
    );
    ensure!(
        sks[0].log().contains("pg_version=150004"),
        "{}",
        sks[0].log()
    );
    Ok(())
}
