//! `walproposer generate`'s load shapes for the benchmarks: `--sequential` (one record at
//! a time, each committed before the next) and `--append-size` (AppendRequests of a given
//! size). Both must leave the same, complete WAL on every safekeeper.

use std::process::Command;

use anyhow::{Context, ensure};
use integration_tests::pg_tools::pg_waldump;
use integration_tests::pg_tools::run;
use integration_tests::real_wal::{SEG, read_wal_range, segments_for_waldump};
use integration_tests::sk::{Safekeeper, workspace_bin};
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

fn start_three(dir: &std::path::Path) -> anyhow::Result<Vec<Safekeeper>> {
    (1..=3)
        .map(|i| Safekeeper::start(i, &dir.join(format!("sk{i}")), true))
        .collect()
}

/// Runs generate with `args` on a new timeline; its stdout and the timeline.
fn generate(sks: &[Safekeeper], args: &[&str]) -> anyhow::Result<(String, TenantTimelineId)> {
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    Ok((generate_on(sks, &ttid, args)?, ttid))
}

/// Runs generate with `args` on `ttid` (new or existing); its stdout.
fn generate_on(
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
    args: &[&str],
) -> anyhow::Result<String> {
    let list = sks
        .iter()
        .map(Safekeeper::addr)
        .collect::<Vec<_>>()
        .join(",");
    run(Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &list])
        .args(["--tenant-id", &ttid.tenant_id.to_string()])
        .args(["--timeline-id", &ttid.timeline_id.to_string()])
        .args(args))
}

fn end_lsn(stdout: &str) -> anyhow::Result<Lsn> {
    Ok(integration_tests::sk::generated_wal_range(stdout)?.1)
}

/// Every safekeeper flushed and committed up to `end`, with identical bytes.
fn all_hold(sks: &[Safekeeper], ttid: &TenantTimelineId, end: Lsn) -> anyhow::Result<()> {
    let start = Lsn(0x0100_0000);
    let first = read_wal_range(&sks[0].timeline_dir(ttid), start, end)?;
    for sk in sks {
        let st = sk.timeline_status(ttid)?;
        ensure!(
            st.flush_lsn == end && st.commit_lsn == end,
            "safekeeper {}: {st:?}, expected {end}",
            sk.id
        );
        ensure!(read_wal_range(&sk.timeline_dir(ttid), start, end)? == first);
    }
    Ok(())
}

/// A second `generate` on a timeline whose last record spans into a segment where no
/// record starts: its first record's xl_prev must point at that long record (found by
/// searching back a segment), so `pg_waldump` reads the whole timeline.
#[test]
fn continuing_after_a_record_spanning_segments_links_back_to_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start_three(dir.path())?;
    // One 20 MiB record: from segment 1 into segment 2, which holds only its tail.
    let (out, ttid) = generate(&sks, &["--records", "1", "--record-size", "20M"])?;
    let end1 = end_lsn(&out)?;
    ensure!(end1.segment_number(SEG) == 2, "{out}");
    let out = generate_on(&sks, &ttid, &["--records", "3", "--record-size", "100"])?;
    let end2 = end_lsn(&out)?;
    all_hold(&sks, &ttid, end2)?;
    let last = end2.segment_number(SEG);
    let copy = segments_for_waldump(&sks[0].timeline_dir(&ttid), 1, last)?;
    let dump = pg_waldump(
        copy.path(),
        &xlog_file_name(1, 1, SEG),
        Some(&xlog_file_name(1, last, SEG)),
        &[],
    )?;
    ensure!(
        dump.records.len() == 4,
        "{:?}\n{}",
        dump.records,
        dump.stderr
    );
    ensure!(
        dump.records[1].lsn == end1 && dump.records[1].prev == dump.records[0].lsn,
        "{:?}",
        dump.records
    );
    ensure!(
        dump.stderr
            .contains(&format!("invalid record length at {end2}")),
        "{}",
        dump.stderr
    );
    Ok(())
}

#[test]
fn sequential_commits_one_record_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start_three(dir.path())?;
    let (out, ttid) = generate(
        &sks,
        &["--sequential", "--records", "200", "--record-size", "100"],
    )?;
    ensure!(out.contains(" in 200 records"), "{out}");
    ensure!(out.contains("commit latency:  p50 "), "{out}");
    let end = end_lsn(&out)?;
    all_hold(&sks, &ttid, end)
}

#[test]
fn append_size_and_records_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start_three(dir.path())?;
    // 8 KiB AppendRequests of 3 KiB records: requests end mid-record, across pages and
    // into the next segment.
    let (out, ttid) = generate(
        &sks,
        &[
            "--bytes",
            "17M",
            "--record-size",
            "3k",
            "--append-size",
            "8k",
        ],
    )?;
    let end = end_lsn(&out)?;
    ensure!(end.0 >= 0x0100_0028 + (17 << 20), "{out}");
    all_hold(&sks, &ttid, end)?;
    // --records stops before --bytes.
    let (out, ttid) = generate(
        &sks,
        &["--bytes", "1G", "--records", "10", "--append-size", "16k"],
    )?;
    ensure!(out.contains(" in 10 records"), "{out}");
    all_hold(&sks, &ttid, end_lsn(&out)?)
}

/// `computes` of the timeline from the safekeeper's HTTP API.
fn computes(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sk.http_port))?;
    write!(
        s,
        "GET /v1/tenant/{}/timeline/{} HTTP/1.0\r\nHost: x\r\n\r\n",
        ttid.tenant_id, ttid.timeline_id
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let at = body.find("\"computes\":").context("no computes field")? + 11;
    let digits: String = body[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

#[test]
fn a_finished_generator_leaves_no_connection_behind() -> anyhow::Result<()> {
    // In-process, as the benchmark runs it for many timelines: when the driver is dropped
    // its connections close, so the safekeeper's acceptor threads are released.
    use walproposer::generate::{self, GenerateOptions, Pacing};
    use walproposer::proposer::Config;
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let rt = tokio::runtime::Runtime::new()?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut conf = Config::new(ttid.tenant_id, ttid.timeline_id, 1);
    conf.pg_version = 150000;
    conf.system_id = 42;
    conf.timeline_start_lsn = Lsn(0x0100_0028);
    let opts = GenerateOptions {
        bytes: 64 << 10,
        max_records: None,
        record_size: 8 << 10,
        rate: None,
        max_in_flight: 16 << 20,
        pacing: Pacing::Pipelined,
        final_wait: std::time::Duration::from_secs(10),
        token: None,
    };
    rt.block_on(generate::run(conf, vec![sk.addr()], opts))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = computes(&sk, &ttid)?;
        if n == 0 {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{n} proposer connection(s) still open 10 s after the generator finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
