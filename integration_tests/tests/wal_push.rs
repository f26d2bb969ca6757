//! START_WAL_PUSH end to end: real WAL from PostgreSQL 15 pushed through the `safekeeper`
//! binary by a test proposer over TCP.

use std::process::Command;

use integration_tests::pg_tools::{pg_bin, run};
use integration_tests::real_wal::{RealWal, SEG, read_wal_range};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::TestProposer;
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::xlog_file_name;
use utils::{TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_real_wal_is_stored_byte_identical() -> anyhow::Result<()> {
    let real = RealWal::generate(3)?;
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let ttid = ttid();
    for version in [ProtocolVersion::V3] {
        let mut p = TestProposer::connect(&sk.addr(), ttid, version, true).await?;
        let g = p.greet(real.cluster).await?;
        assert_eq!(g.term, Term(0));
        let v = p.vote(Term(1)).await?;
        assert!(v.vote_given);
        let history = TermHistory(vec![TermLsn {
            term: Term(1),
            lsn: real.start,
        }]);
        p.elect(Term(1), history, real.start).await?;
        let flushes = p.push(Term(1), real.start, &real.wal).await?;
        for w in flushes.windows(2) {
            assert!(w[0] <= w[1], "flush_lsn went back: {w:?}");
        }
        for f in &flushes {
            assert!(
                real.is_record_boundary(*f),
                "flush_lsn {f} is not a record boundary"
            );
        }
        assert_eq!(*flushes.last().unwrap(), real.end_of_records);
    }
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(status.flush_lsn, real.end_of_records);
    assert_eq!(status.timeline_start_lsn, real.start);
    let st = sk.stop()?;
    assert!(st.success(), "SIGTERM exit: {st}");

    // Byte-identical to the primary from the timeline start to the end of records.
    let tl_dir = sk.timeline_dir(&ttid);
    let ours = read_wal_range(&tl_dir, real.start, real.end_of_records)?;
    assert!(
        ours == real.bytes(real.start, real.end_of_records),
        "WAL differs from the primary's"
    );

    // pg_waldump reads the safekeeper's segments (the first one includes the synthetic
    // image before the timeline start).
    let copy = tempfile::tempdir()?;
    for segno in real.first_segno..=real.last_segno {
        let name = xlog_file_name(1, segno, SEG);
        let src = if tl_dir.join(&name).exists() {
            tl_dir.join(&name)
        } else {
            tl_dir.join(format!("{name}.partial"))
        };
        std::fs::copy(&src, copy.path().join(&name))?;
    }
    let out = Command::new(pg_bin("pg_waldump"))
        .arg("-p")
        .arg(copy.path())
        .arg("-s")
        .arg(real.start.to_string())
        .arg(xlog_file_name(1, real.first_segno, SEG))
        .arg(xlog_file_name(1, real.last_segno, SEG))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = stdout.lines().filter(|l| l.starts_with("rmgr:")).count();
    assert_eq!(
        n,
        real.record_starts.len(),
        "pg_waldump stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = run;
    Ok(())
}
