//! START_WAL_PUSH end to end: real WAL from PostgreSQL 15 pushed through the `safekeeper`
//! binary by a test proposer over TCP, once per protocol version (v3, and v2: the legacy
//! little-endian codec that `START_WAL_PUSH` without options selects).

use integration_tests::pg_tools::pg_waldump;
use integration_tests::real_wal::{RealWal, SEG, read_wal_range, segments_for_waldump};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::TestProposer;
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::xlog_file_name;
use utils::{TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

/// Pushes all of `real` into a new timeline over `version`; checks every flush_lsn.
async fn push_all(
    sk: &Safekeeper,
    real: &RealWal,
    version: ProtocolVersion,
) -> anyhow::Result<TenantTimelineId> {
    let ttid = ttid();
    let mut p = TestProposer::connect(&sk.addr(), ttid, version, true).await?;
    let g = p.greet(real.cluster).await?;
    assert_eq!(g.term, Term(0), "{version:?}: a new timeline has term 0");
    assert_eq!(g.node_id.0, sk.id, "{version:?}: AcceptorGreeting node id");
    let v = p.vote(Term(1)).await?;
    assert!(v.vote_given, "{version:?}: {v:?}");
    let history = TermHistory(vec![TermLsn {
        term: Term(1),
        lsn: real.start,
    }]);
    p.elect(Term(1), history, real.start).await?;
    let flushes = p.push(Term(1), real.start, &real.wal).await?;
    for w in flushes.windows(2) {
        assert!(w[0] <= w[1], "{version:?}: flush_lsn went back: {w:?}");
    }
    for f in &flushes {
        assert!(
            real.is_record_boundary(*f),
            "{version:?}: flush_lsn {f} is not a record boundary"
        );
    }
    assert_eq!(
        flushes.last().copied(),
        Some(real.end_of_records),
        "{version:?}: last flush_lsn"
    );
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(status.flush_lsn, real.end_of_records, "{version:?}");
    assert_eq!(status.timeline_start_lsn, real.start, "{version:?}");
    assert_eq!(status.term, Term(1), "{version:?}");
    Ok(ttid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_real_wal_is_stored_byte_identical() -> anyhow::Result<()> {
    let real = RealWal::generate(3)?;
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let mut timelines = Vec::new();
    for version in [ProtocolVersion::V3, ProtocolVersion::V2] {
        timelines.push((version, push_all(&sk, &real, version).await?));
    }
    let st = sk.stop()?;
    assert!(st.success(), "SIGTERM exit: {st}");

    for (version, ttid) in timelines {
        // Byte-identical to the primary from the timeline start to the end of records.
        let tl_dir = sk.timeline_dir(&ttid);
        let ours = read_wal_range(&tl_dir, real.start, real.end_of_records)?;
        assert!(
            ours == real.bytes(real.start, real.end_of_records),
            "{version:?}: WAL differs from the primary's"
        );

        // pg_waldump reads the safekeeper's segments (the first one includes the synthetic
        // image before the timeline start) and finds every record the primary wrote.
        let copy = segments_for_waldump(&tl_dir, real.first_segno, real.last_segno)?;
        let start = real.start.to_string();
        let dump = pg_waldump(
            copy.path(),
            &xlog_file_name(1, real.first_segno, SEG),
            Some(&xlog_file_name(1, real.last_segno, SEG)),
            &["-s", &start],
        )?;
        let lsns: Vec<_> = dump.records.iter().map(|r| r.lsn).collect();
        assert!(
            lsns == real.record_starts,
            "{version:?}: pg_waldump found {} records, the primary's WAL has {}; stderr: {}",
            lsns.len(),
            real.record_starts.len(),
            dump.stderr
        );
    }
    sk.assert_no_panics();
    Ok(())
}
