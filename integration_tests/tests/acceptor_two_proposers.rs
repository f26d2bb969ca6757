//! Two proposers on one timeline: A is elected in term 1 and streams real WAL; B wins
//! term 2 with a history whose highest common point X lies inside A's uncommitted tail,
//! truncates it and streams different (generated) WAL from X. A is deposed: its appends
//! get term-only answers and its vote for term 2 is refused.

use integration_tests::pg_tools::pg_waldump;
use integration_tests::real_wal::{
    GeneratedWal, RealWal, SEG, read_wal_range, segments_for_waldump,
};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{TestProposer, history};
use pq_proto::proposer::ProtocolVersion;
use pq_proto::replication::MAX_SEND_SIZE;
use utils::xlog::{WalGenerator, pg_major, xlog_file_name};
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_term_truncates_divergent_tail_and_deposes_old_proposer() -> anyhow::Result<()> {
    let real = RealWal::generate(1)?;
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let tl_dir = sk.timeline_dir(&ttid);

    // A: term 1, streams 2 MiB of the primary's WAL. It reports as committed only the
    // first flush_lsn it got, so everything above that is an uncommitted tail.
    let (mut a, _) = TestProposer::elected(
        &sk.addr(),
        ttid,
        ProtocolVersion::V3,
        real.cluster,
        Term(1),
        history(&[(1, real.start)]),
        real.start,
    )
    .await?;
    let a_end = Lsn(real.start.0 + 2 * 1024 * 1024);
    let mut pos = real.start;
    let mut commit = Lsn::INVALID;
    let mut a_flush = Lsn::INVALID;
    while pos < a_end {
        let n = ((a_end.0 - pos.0) as usize).min(MAX_SEND_SIZE);
        a.append(
            Term(1),
            pos,
            real.bytes(pos, Lsn(pos.0 + n as u64)).to_vec().into(),
            commit,
        )
        .await?;
        pos = Lsn(pos.0 + n as u64);
        a_flush = a.append_response().await?.flush_lsn;
        assert!(real.is_record_boundary(a_flush), "A: flush_lsn {a_flush}");
        if !commit.is_valid() {
            commit = a_flush;
        }
    }
    // One more append so the acceptor knows that commit_lsn.
    a.append(Term(1), a_end, bytes::Bytes::new(), commit)
        .await?;
    a.append_response().await?;
    let status = sk.timeline_status(&ttid)?;
    assert_eq!((status.flush_lsn, status.commit_lsn), (a_flush, commit));

    // X: a record start between A's commit_lsn and its flush_lsn, about halfway.
    let tail: Vec<Lsn> = real
        .record_starts
        .iter()
        .copied()
        .filter(|&l| l > commit && l < a_flush)
        .collect();
    assert!(tail.len() > 10, "too few records in A's tail");
    let x = tail[tail.len() / 2];
    let prev = real
        .record_starts
        .iter()
        .copied()
        .rfind(|&l| l < x)
        .expect("a record before X");
    println!(
        "A: start {}, commit {commit}, flush {a_flush}; X = {x}",
        real.start
    );

    // B: term 2 (granted; the acceptor reports A's WAL and history).
    let mut b = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V2, true).await?;
    assert_eq!(b.greet(real.cluster).await?.term, Term(1));
    let v = b.vote(Term(2)).await?;
    assert!(v.vote_given, "{v:?}");
    assert_eq!((v.term, v.flush_lsn), (Term(2), a_flush));
    assert_eq!(v.term_history, history(&[(1, real.start)]));

    // A is deposed as soon as term 2 is voted: term-only answers, no write.
    let a_next = real.bytes(a_end, Lsn(a_end.0 + 8192)).to_vec();
    a.append(Term(1), a_end, a_next.clone().into(), commit)
        .await?;
    let r = a.append_response().await?;
    assert_eq!(
        (r.term, r.flush_lsn, r.commit_lsn),
        (Term(2), Lsn::INVALID, Lsn::INVALID),
        "A's AppendRequest after the vote for term 2: {r:?}"
    );

    // B's history switches to term 2 at X, inside A's tail: HCP = X.
    b.elect(Term(2), history(&[(1, real.start), (2, x)]), x)
        .await?;
    let mut generator = WalGenerator::new(
        x,
        real.cluster.system_id,
        SEG,
        pg_major(real.cluster.pg_version),
    )?;
    generator.set_prev_record_lsn(prev);
    let b_wal = GeneratedWal::generate(&mut generator, 400 * 1024)?;
    let b_end = b_wal.end();
    assert!(b_end < a_end, "B's WAL must end inside A's old tail");
    let flushes = b.push(Term(2), x, &b_wal.wal).await?;
    for f in &flushes {
        assert!(b_wal.is_record_boundary(*f), "B: flush_lsn {f}");
    }
    assert_eq!(flushes.last().copied(), Some(b_end));

    // A again: still term-only, and its vote for term 2 is refused with term 2.
    a.append(Term(1), a_end, a_next.into(), commit).await?;
    let r = a.append_response().await?;
    assert_eq!(
        (r.term, r.flush_lsn, r.commit_lsn),
        (Term(2), Lsn::INVALID, Lsn::INVALID)
    );
    let v = a.vote(Term(2)).await?;
    assert!(!v.vote_given, "A's vote for term 2 must be refused: {v:?}");
    assert_eq!(v.term, Term(2));

    // The acceptor's WAL: the primary's up to X, B's from X, nothing of A's tail after.
    let ours = read_wal_range(&tl_dir, real.start, x)?;
    assert!(ours == real.bytes(real.start, x), "WAL below X changed");
    let ours = read_wal_range(&tl_dir, x, b_end)?;
    assert!(ours == b_wal.wal, "WAL from X differs from B's");
    let after = read_wal_range(&tl_dir, b_end, a_end)?;
    assert!(
        after.iter().all(|&b| b == 0),
        "A's truncated tail is still on disk after B's WAL"
    );
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(
        (status.flush_lsn, status.term, status.last_log_term),
        (b_end, Term(2), Term(2))
    );
    drop(a);
    drop(b);

    // After a restart, a third proposer sees B's WAL and the history [(1, start), (2, X)].
    let st = sk.stop()?;
    assert!(st.success(), "SIGTERM exit: {st}");
    sk.restart()?;
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(
        (status.flush_lsn, status.term, status.last_log_term),
        (b_end, Term(2), Term(2))
    );
    let mut c = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    assert_eq!(c.greet(real.cluster).await?.term, Term(2));
    let v = c.vote(Term(3)).await?;
    assert!(v.vote_given);
    assert_eq!(v.flush_lsn, b_end);
    assert_eq!(v.term_history, history(&[(1, real.start), (2, x)]));
    drop(c);
    sk.stop()?;

    // pg_waldump follows the chain across X: the primary's records, then B's.
    let last_segno = b_end.segment_number(SEG);
    let copy = segments_for_waldump(&tl_dir, real.first_segno, last_segno)?;
    let (s, e) = (real.start.to_string(), b_end.to_string());
    let dump = pg_waldump(
        copy.path(),
        &xlog_file_name(1, real.first_segno, SEG),
        Some(&xlog_file_name(1, last_segno, SEG)),
        &["-s", &s, "-e", &e],
    )?;
    let before: Vec<Lsn> = dump
        .records
        .iter()
        .map(|r| r.lsn)
        .filter(|&l| l < x)
        .collect();
    let expected: Vec<Lsn> = real
        .record_starts
        .iter()
        .copied()
        .filter(|&l| l < x)
        .collect();
    assert!(
        before == expected,
        "pg_waldump below X: stderr {}",
        dump.stderr
    );
    let from_b: Vec<_> = dump.records.iter().filter(|r| r.lsn >= x).collect();
    assert_eq!(
        from_b.len(),
        b_wal.record_ends.len(),
        "pg_waldump records from X; stderr {}",
        dump.stderr
    );
    assert_eq!(from_b[0].lsn, x);
    assert_eq!(from_b[0].prev, prev);
    assert!(
        from_b
            .iter()
            .all(|r| r.rmgr == "LogicalMessage" && r.desc.contains("acceptor_test")),
        "{from_b:?}"
    );
    sk.assert_no_panics();
    Ok(())
}

/// B's history has nothing in common with the acceptor's and starts beyond the end of its
/// WAL: taking it would leave a hole of zeros inside the WAL the acceptor reports, so the
/// election is refused (as Neon's "truncate to non-written WAL" is) and the WAL stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_starting_beyond_the_acceptors_wal_is_refused() -> anyhow::Result<()> {
    const START: Lsn = Lsn(0x0100_0028);
    let cluster = integration_tests::test_proposer::Cluster {
        pg_version: 150004,
        system_id: 7_300_000_000_000_000_004,
        wal_seg_size: SEG,
    };
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut generator = WalGenerator::new(START, cluster.system_id, SEG, 15)?;
    let a_wal = GeneratedWal::generate(&mut generator, 100 * 1024)?;
    let mut a = TestProposer::first_term(&sk.addr(), ttid, cluster, START).await?;
    a.push(Term(1), START, &a_wal.wal).await?;
    let f = a_wal.end();
    drop(a);

    // B: term 2 from Y, a page past A's end; the highest common point is B's first entry.
    let y = Lsn((f.0 / 8192 + 2) * 8192 + 24);
    let mut b = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, true).await?;
    b.greet(cluster).await?;
    let v = b.vote(Term(2)).await?;
    assert!(v.vote_given);
    assert_eq!(v.flush_lsn, f);
    b.elect(Term(2), history(&[(2, y)]), y).await?;
    let mut bg = WalGenerator::new(y, cluster.system_id, SEG, 15)?;
    let b_wal = GeneratedWal::generate(&mut bg, 8 * 1024)?;
    b.append(Term(2), y, b_wal.wal.clone(), Lsn::INVALID)
        .await?;
    match tokio::time::timeout(std::time::Duration::from_secs(10), b.recv()).await? {
        Err(e) => {
            let fields = integration_tests::test_proposer::server_error(&e)
                .unwrap_or_else(|| panic!("no ErrorResponse: {e:#}"));
            assert!(fields.message.contains(&y.to_string()), "{fields:?}");
        }
        Ok(m) => {
            panic!("ProposerElected at {y}, beyond the acceptor's WAL end {f}, was taken: {m:?}")
        }
    }
    let status = sk.timeline_status(&ttid)?;
    assert_eq!((status.flush_lsn, status.last_log_term), (f, Term(1)));
    let st = sk.stop()?;
    assert!(st.success());
    sk.restart()?;
    assert_eq!(sk.timeline_status(&ttid)?.flush_lsn, f);
    sk.assert_no_panics();
    Ok(())
}
