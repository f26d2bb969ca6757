//! Real PostgreSQL 15 clients reading WAL from the `safekeeper` binary: `pg_receivewal`
//! (segments byte-identical to the primary's, readable by `pg_waldump`), a hot standby
//! made with `pg_basebackup` whose `primary_conninfo` points at the safekeeper (rows
//! replicate; its hot-standby feedback reaches the proposer), and `psql` (the walsender
//! commands it can run, and a START_REPLICATION it cannot read).

mod send_wal_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::pg::{PgCluster, PgOptions};
use integration_tests::pg_tools::{pg_bin, pg_waldump, run_unchecked};
use integration_tests::real_wal::{RealWal, SEG, primary_wal_from, read_segments};
use integration_tests::sk::Safekeeper;
use integration_tests::standby::{Standby, output_within};
use integration_tests::test_proposer::TestProposer;
use send_wal_util::{
    CLUSTER, GEN_START, GenWal, append_with_commit, heartbeat, new_ttid, wait_for_log,
};
use utils::xlog::xlog_file_name;
use utils::{Lsn, SegNo, TenantTimelineId, Term};

/// A libpq connection string for a client of the safekeeper naming the timeline (no
/// `replication`: the tools add it).
fn sk_connstr(sk: &Safekeeper, ttid: &TenantTimelineId) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable options='-c tenant_id={} timeline_id={}'",
        sk.pg_port, ttid.tenant_id, ttid.timeline_id
    )
}

/// Runs pg_receivewal into `out` until `endpos` (a clean `--endpos`/`--no-loop` exit).
fn pg_receivewal(
    sk: &Safekeeper,
    ttid: &TenantTimelineId,
    out: &Path,
    endpos: Lsn,
    slot: Option<&str>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new(pg_bin("pg_receivewal"));
    cmd.arg("-d")
        .arg(sk_connstr(sk, ttid))
        .arg("-D")
        .arg(out)
        .arg(format!("--endpos={endpos}"))
        .args(["--no-loop", "--no-sync", "--verbose", "--no-password"]);
    if let Some(s) = slot {
        cmd.arg(format!("--slot={s}"));
    }
    let o = output_within(&mut cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() {
        bail!(
            "pg_receivewal failed ({}):\n{stderr}\nsafekeeper log:\n{}",
            o.status,
            sk.log()
        );
    }
    Ok(stderr)
}

/// A record start in segment `segno` near its middle, not right after a page header (so
/// the end of the record before it is exactly there).
fn record_start_mid_segment(real: &RealWal, segno: SegNo) -> Lsn {
    let in_seg: Vec<Lsn> = real
        .record_starts
        .iter()
        .copied()
        .filter(|l| l.segment_number(SEG) == segno && l.page_offset() >= 64)
        .collect();
    in_seg[in_seg.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_receivewal_writes_segments_identical_to_the_primary() -> anyhow::Result<()> {
    let real = RealWal::generate(3)?;
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk"), false)?;
    let ttid = new_ttid();
    // WAL up to a record boundary in the middle of the last segment is pushed and
    // committed, so the copy ends in a `.partial` after at least two segment boundaries.
    let last = real.last_segno;
    let commit = record_start_mid_segment(&real, last);
    let pushed = Bytes::copy_from_slice(real.bytes(real.start, commit));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, real.cluster, real.start).await?;
    let flushes = p.push(Term(1), real.start, &pushed).await?;
    assert_eq!(flushes.last().copied(), Some(commit));
    let r = heartbeat(&mut p, Term(1), commit, commit).await?;
    assert_eq!(r.commit_lsn, commit);
    ensure!(last >= real.first_segno + 2, "need two segment boundaries");

    let out = tempfile::tempdir()?;
    // First run: an empty directory and a slot, so pg_receivewal asks
    // READ_REPLICATION_SLOT where to start: the first segment of the timeline. It stops
    // in the middle of the second segment, leaving it `.partial`.
    let mid = record_start_mid_segment(&real, real.first_segno + 1);
    let log1 = pg_receivewal(&sk, &ttid, out.path(), mid, Some("sk_slot"))?;
    let first_seg_start = Lsn(real.first_segno * u64::from(SEG));
    assert!(
        log1.contains(&format!("starting log streaming at {first_seg_start}")),
        "{log1}"
    );
    let partial_mid = out.path().join(format!(
        "{}.partial",
        xlog_file_name(1, real.first_segno + 1, SEG)
    ));
    assert!(partial_mid.exists(), "{log1}");
    // Second run: restarts at the start of the `.partial` segment (no slot) and goes on to
    // commit_lsn. (pg_receivewal 15 stops once it has received data *beyond* --endpos,
    // and nothing beyond commit_lsn ever comes, hence commit_lsn - 1.)
    let log2 = pg_receivewal(&sk, &ttid, out.path(), Lsn(commit.0 - 1), None)?;
    let restart = Lsn((real.first_segno + 1) * u64::from(SEG));
    assert!(
        log2.contains(&format!("starting log streaming at {restart}")),
        "{log2}"
    );

    // Complete segments for all but the last, which is `.partial`.
    for segno in real.first_segno..last {
        let f = out.path().join(xlog_file_name(1, segno, SEG));
        assert!(f.exists(), "{} missing; {log2}", f.display());
    }
    let partial = out
        .path()
        .join(format!("{}.partial", xlog_file_name(1, last, SEG)));
    assert!(partial.exists(), "no .partial for the last segment");
    // Byte-identical to the primary for [timeline start, commit_lsn), and nothing above
    // commit_lsn was ever sent (pg_receivewal pads its files with zeros).
    let mut ours = BytesMut::new();
    for segno in real.first_segno..=last {
        let name = xlog_file_name(1, segno, SEG);
        let path = if segno == last {
            partial.clone()
        } else {
            out.path().join(&name)
        };
        let bytes = std::fs::read(&path)?;
        assert_eq!(bytes.len(), SEG as usize, "{}", path.display());
        ours.extend_from_slice(&bytes);
    }
    let from = (real.start.0 - first_seg_start.0) as usize;
    let to = (commit.0 - first_seg_start.0) as usize;
    assert!(
        ours[from..to] == *real.bytes(real.start, commit),
        "pg_receivewal's WAL differs from the primary's"
    );
    assert!(
        ours[to..].iter().all(|&b| b == 0),
        "bytes above commit_lsn reached pg_receivewal"
    );

    // pg_waldump reads every record of [timeline start, commit_lsn) and stops at commit.
    let dump_dir = tempfile::tempdir()?;
    for segno in real.first_segno..=last {
        let name = xlog_file_name(1, segno, SEG);
        let src = if segno == last {
            partial.clone()
        } else {
            out.path().join(&name)
        };
        std::fs::copy(&src, dump_dir.path().join(&name))?;
    }
    let start_arg = real.start.to_string();
    let dump = pg_waldump(
        dump_dir.path(),
        &xlog_file_name(1, real.first_segno, SEG),
        Some(&xlog_file_name(1, last, SEG)),
        &["-s", &start_arg],
    )?;
    let expected = real.record_starts.iter().filter(|&&l| l < commit).count();
    assert_eq!(dump.records.len(), expected, "{}", dump.stderr);
    assert!(
        dump.stderr.contains(&format!(
            "invalid record length at {commit}: wanted 24, got 0"
        )),
        "{}",
        dump.stderr
    );
    // Each run's stream is in the safekeeper's log.
    wait_for_log(
        &sk,
        "replication stream ended cleanly",
        Duration::from_secs(5),
    )
    .await?;
    Ok(())
}

/// Switches the primary to a new segment and returns the last complete one.
fn switch_wal(primary: &PgCluster) -> anyhow::Result<SegNo> {
    primary.psql("SELECT pg_switch_wal()")?;
    Ok(primary.current_wal_insert_lsn()?.segment_number(SEG) - 1)
}

/// Waits (bounded) until the row `id` of `t` is visible on the standby.
async fn wait_for_row(standby: &Standby, sk: &Safekeeper, id: i32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if standby.psql(&format!("SELECT count(*) FROM t WHERE id = {id}"))? == "1" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "row {id} committed on the primary never appeared on the standby\n\
                 standby log:\n{}\nsafekeeper log:\n{}",
                standby.log(),
                sk.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_replicates_from_the_safekeeper_and_its_feedback_reaches_the_proposer()
-> anyhow::Result<()> {
    let mut primary = PgCluster::init(PgOptions::default())?;
    primary.start()?;
    primary.psql("CREATE TABLE t (id int)")?;
    primary.psql("SELECT pg_switch_wal()")?;
    let (mut standby, backup_start) = Standby::basebackup(&primary)?;
    let first_segno = backup_start.segment_number(SEG);
    primary.psql("INSERT INTO t VALUES (1)")?;
    let last_segno = switch_wal(&primary)?;

    // The safekeeper's timeline starts at the first record of the segment holding the
    // backup's start; a proposer pushes the primary's WAL from there and commits it.
    let (cluster, start, wal) = primary_wal_from(&primary, first_segno, last_segno)?;
    let seg_start = Lsn(first_segno * u64::from(SEG));

    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk"), false)?;
    let ttid = new_ttid();
    let mut p = TestProposer::first_term(&sk.addr(), ttid, cluster, start).await?;
    p.push(Term(1), start, &wal).await?;
    let mut end = Lsn(start.0 + wal.len() as u64);
    let r = heartbeat(&mut p, Term(1), end, end).await?;
    assert_eq!((r.flush_lsn, r.commit_lsn), (end, end));

    standby.configure(&format!(
        "{} application_name=standby1",
        sk_connstr(&sk, &ttid)
    ))?;
    if let Err(e) = standby.start() {
        bail!("{e:#}\nsafekeeper log:\n{}", sk.log());
    }
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()")?, "t");
    // Its walreceiver asked for the start of the timeline's first segment.
    wait_for_log(
        &sk,
        &format!("app=\"standby1\" start={seg_start} stop=None mode=\"commit\""),
        Duration::from_secs(5),
    )
    .await?;
    // Open for queries once consistent; the row inserted after the backup follows.
    wait_for_row(&standby, &sk, 1).await?;

    // A row committed on the primary becomes visible on the standby once its WAL is in
    // the safekeeper and committed.
    primary.psql("INSERT INTO t VALUES (42)")?;
    let new_last = switch_wal(&primary)?;
    let more = read_segments(&primary, last_segno + 1, new_last)?.freeze();
    p.push(Term(1), end, &more).await?;
    end = Lsn(end.0 + more.len() as u64);
    heartbeat(&mut p, Term(1), end, end).await?;
    wait_for_row(&standby, &sk, 42).await?;

    // Hot-standby feedback: the standby's xmin shows up in the AppendResponses.
    let next_xid: u64 = primary.psql("SELECT txid_current()")?.trim().parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let hs = loop {
        let r = heartbeat(&mut p, Term(1), end, end).await?;
        if r.hs_feedback.xmin != 0 {
            break r.hs_feedback;
        }
        if Instant::now() > deadline {
            bail!(
                "no hot-standby feedback in AppendResponses after 30 s; READER_STATUS: {}\n\
                 standby log:\n{}",
                sk.psql(Some(&ttid), "READER_STATUS")?,
                standby.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        hs.xmin <= next_xid + 1,
        "xmin {} is ahead of the primary's next xid {next_xid}",
        hs.xmin
    );
    assert!(hs.ts > 0, "{hs:?}");
    // The reader's positions and feedback are visible.
    let status = sk.psql(Some(&ttid), "READER_STATUS")?;
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.contains("|standby1|"))
        .with_context(|| format!("standby1 not in READER_STATUS:\n{status}"))?
        .split('|')
        .collect();
    let flush: Lsn = row[4].parse()?;
    assert!(flush > start && flush <= end, "{status}");
    assert_ne!(row[6], "0", "{status}");
    drop(standby);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_the_walsender_commands_and_survives_start_replication() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk"), false)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 256 << 10);
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, wal.end()).await?;
    let end = wal.end();

    // With the timeline named and with the single-timeline default.
    for t in [Some(&ttid), None] {
        assert_eq!(
            sk.psql(t, "IDENTIFY_SYSTEM")?.trim(),
            format!("{}|1|{end}|", CLUSTER.system_id)
        );
    }
    assert_eq!(sk.psql(None, "SHOW wal_segment_size")?.trim(), "16MB");
    assert_eq!(sk.psql(None, "SHOW data_directory_mode")?.trim(), "0700");
    assert_eq!(
        sk.psql(None, "READ_REPLICATION_SLOT s")?.trim(),
        "physical|0/1000000|1"
    );
    assert_eq!(
        sk.psql(None, "CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL")?
            .trim(),
        "s|0/0||"
    );
    sk.psql(None, "DROP_REPLICATION_SLOT s")?;
    let e = sk.psql(None, "TIMELINE_HISTORY 2").expect_err("no history");
    assert!(format!("{e:#}").contains("timeline 2"), "{e:#}");

    // psql cannot read CopyBoth: it reports status 8 and disconnects. The server logs
    // the end of that stream and goes on serving.
    let o = run_unchecked(
        Command::new(pg_bin("psql"))
            .arg(sk.conninfo(Some(&ttid)))
            .args(["-X", "-c", "START_REPLICATION 0/0"]),
    )?;
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unexpected PQresultStatus: 8"), "{stderr}");
    wait_for_log(
        &sk,
        "replication stream ended: client disconnected",
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(
        sk.psql(Some(&ttid), "IDENTIFY_SYSTEM")?.trim(),
        format!("{}|1|{end}|", CLUSTER.system_id)
    );
    // Its reader entry is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sk.psql(Some(&ttid), "READER_STATUS")?.trim().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "a reader entry outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The proposer is unaffected.
    let r = heartbeat(&mut p, Term(1), end, end).await?;
    assert_eq!(r.flush_lsn, end);
    Ok(())
}
