//! START_REPLICATION modes against the `safekeeper` binary, with synthetic WAL pushed by a
//! test proposer and read by a raw replication client that checks every frame: commit
//! mode never goes above commit_lsn, term mode ends on a term change, a stop LSN ends the
//! stream cleanly, `0/0` is the tail, a timeline without WAL makes the reader wait, and
//! the start/timeline errors say what is wrong; shutdown ends every stream, even one to a
//! client that stopped reading.

mod send_wal_util;

use std::time::Duration;

use integration_tests::real_wal::{SEG, read_wal_range};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::TestProposer;
use pq_proto::proposer::ProtocolVersion;
use send_wal_util::{
    CLUSTER, Frame, GEN_START, GenWal, ReplStream, append_with_commit, error_fields, heartbeat,
    new_ttid, wait_for_log,
};
use utils::{Lsn, Term};

const T: Duration = Duration::from_secs(20);
/// Long enough for at least one keepalive (sent after 1 s idle).
const IDLE: Duration = Duration::from_millis(2200);

fn start_sk(dir: &tempfile::TempDir) -> anyhow::Result<Safekeeper> {
    Safekeeper::start(1, &dir.path().join("sk"), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_mode_never_sends_above_commit_lsn() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 3 << 20);
    let c1 = wal.record_end_at_or_after(Lsn(GEN_START.0 + (1 << 20)));
    let c2 = wal.record_end_at_or_after(Lsn(GEN_START.0 + (2 << 20)));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    // The proposer holds commit back at c1 while the safekeeper flushes everything.
    let flush = append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, c1).await?;
    assert_eq!(flush, wal.end());
    let st = sk.timeline_status(&ttid)?;
    assert_eq!((st.flush_lsn, st.commit_lsn), (wal.end(), c1));

    // From the start of the timeline's first segment (below the timeline start: the
    // synthetic image the safekeeper wrote there).
    let seg_start = GEN_START.segment_lsn(SEG);
    let mut r = ReplStream::start(
        &sk,
        Some(&ttid),
        "replica",
        &format!("START_REPLICATION PHYSICAL {seg_start} TIMELINE 1"),
    )
    .await?;
    let got = r.read_wal(seg_start, c1, T).await?;
    assert!(
        got[(GEN_START.0 - seg_start.0) as usize..] == *wal.bytes(GEN_START, c1),
        "WAL below commit_lsn differs"
    );
    assert_eq!(
        got,
        read_wal_range(&sk.timeline_dir(&ttid), seg_start, c1)?,
        "the synthetic head differs from the safekeeper's file"
    );
    // Nothing above c1, however long we wait: only keepalives, asking for a reply and
    // announcing c1 as the end.
    let ka = r.expect_no_wal_for(IDLE).await?;
    assert!(!ka.is_empty(), "no keepalive while idle");
    assert!(
        ka.iter().all(|k| k.wal_end == c1 && k.reply_requested),
        "{ka:?}"
    );

    // Commit moves to c2: exactly [c1, c2) arrives.
    heartbeat(&mut p, Term(1), wal.end(), c2).await?;
    let got = r.read_wal(c1, c2, T).await?;
    assert!(got == wal.bytes(c1, c2), "WAL [c1, c2) differs");
    r.expect_no_wal_for(Duration::from_millis(300)).await?;

    heartbeat(&mut p, Term(1), wal.end(), wal.end()).await?;
    let got = r.read_wal(c2, wal.end(), T).await?;
    assert!(got == wal.bytes(c2, wal.end()), "WAL [c2, end) differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_mode_streams_to_flush_and_ends_with_an_error_on_term_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 1 << 20);
    let c1 = wal.record_end_at_or_after(Lsn(GEN_START.0 + (256 << 10)));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, c1).await?;

    // A wrong term ends the stream at once, with the reason.
    let mut wrong = ReplStream::start(
        &sk,
        Some(&ttid),
        "wal_proposer_recovery",
        &format!("START_REPLICATION PHYSICAL {GEN_START} (term='5')"),
    )
    .await?;
    let e = wrong.next(T).await.expect_err("a stream in a wrong term");
    let f = error_fields(&e).unwrap_or_else(|| panic!("not a server error: {e:#}"));
    assert!(
        f.message.contains("term changed: requested 5, now 1"),
        "{}",
        f.message
    );

    // Term 1: everything flushed, above commit_lsn.
    let mut r = ReplStream::start(
        &sk,
        Some(&ttid),
        "wal_proposer_recovery",
        &format!("START_REPLICATION PHYSICAL {GEN_START} (term='1')"),
    )
    .await?;
    let got = r.read_wal(GEN_START, wal.end(), T).await?;
    assert!(got == wal.wal, "term-mode WAL differs");

    // Another proposer takes term 2: the stream ends with an error naming both terms.
    let mut p2 = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    p2.greet(CLUSTER).await?;
    assert!(p2.vote(Term(2)).await?.vote_given);
    let e = loop {
        match r.next(T).await {
            Ok(Frame::Keepalive(_)) => continue,
            Ok(other) => panic!("unexpected {other:?} after the term change"),
            Err(e) => break e,
        }
    };
    let f = error_fields(&e).unwrap_or_else(|| panic!("not a server error: {e:#}"));
    assert!(
        f.message.contains("term changed: requested 1, now 2"),
        "{}",
        f.message
    );
    assert_eq!(f.code.as_str(), "55000");
    drop(p);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lsn_ends_the_stream_cleanly_and_the_connection_goes_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 1 << 20);
    let c1 = wal.record_end_at_or_after(Lsn(GEN_START.0 + (300 << 10)));
    let stop = wal.record_end_at_or_after(Lsn(GEN_START.0 + (200 << 10)));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, c1).await?;

    let mut r = ReplStream::connect(&sk, Some(&ttid), "recovery").await?;
    r.start_on(&format!("START_REPLICATION {GEN_START} {stop} TIMELINE 1"))
        .await?;
    let got = r.read_wal(GEN_START, stop, T).await?;
    assert!(got == wal.bytes(GEN_START, stop), "WAL differs");
    match r.next(T).await? {
        Frame::CopyDone => {}
        other => panic!("expected CopyDone at the stop point, got {other:?}"),
    }
    r.copy_done().await?;
    assert_eq!(
        r.read_until_ready(T).await?,
        ["START_STREAMING", "START_REPLICATION"]
    );

    // The same connection goes on: a query, then a term-mode fetch above commit_lsn with
    // a stop point, as a proposer fetching WAL from a donor does.
    let rows = r.query("IDENTIFY_SYSTEM").await?;
    assert_eq!(rows[0][2].as_deref(), Some(c1.to_string().as_str()));
    r.start_on(&format!(
        "START_REPLICATION PHYSICAL {stop} {} (term='1')",
        wal.end()
    ))
    .await?;
    let got = r.read_wal(stop, wal.end(), T).await?;
    assert!(got == wal.bytes(stop, wal.end()), "term-mode WAL differs");
    assert!(matches!(r.next(T).await?, Frame::CopyDone));
    r.copy_done().await?;
    r.read_until_ready(T).await?;

    // A stop point equal to the start: nothing to send, a clean end at once.
    r.start_on(&format!("START_REPLICATION {stop} {stop}"))
        .await?;
    assert!(matches!(r.next(T).await?, Frame::CopyDone));
    r.copy_done().await?;
    r.read_until_ready(T).await?;
    wait_for_log(&sk, "replication stream ended cleanly", T).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_0_0_streams_from_the_current_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 1 << 20);
    let mid = wal.record_end_at_or_after(Lsn(GEN_START.0 + (400 << 10)));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    let first = wal.wal.slice(..(mid.0 - GEN_START.0) as usize);
    append_with_commit(&mut p, Term(1), GEN_START, &first, mid).await?;
    assert_eq!(sk.timeline_status(&ttid)?.commit_lsn, mid);

    let mut r = ReplStream::start(&sk, Some(&ttid), "tail", "START_REPLICATION 0/0").await?;
    let ka = r.expect_no_wal_for(IDLE).await?;
    assert!(
        !ka.is_empty() && ka.iter().all(|k| k.wal_end == mid),
        "{ka:?}"
    );
    let rest = wal.wal.slice((mid.0 - GEN_START.0) as usize..);
    append_with_commit(&mut p, Term(1), mid, &rest, wal.end()).await?;
    let got = r.read_wal(mid, wal.end(), T).await?;
    assert!(got == wal.bytes(mid, wal.end()), "tail WAL differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_without_wal_makes_the_reader_wait_with_keepalives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 512 << 10);
    // The greeting creates the timeline; no proposer is elected yet.
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, true).await?;
    p.greet(CLUSTER).await?;
    let seg_start = GEN_START.segment_lsn(SEG);
    let mut r = ReplStream::start(
        &sk,
        Some(&ttid),
        "early",
        &format!("START_REPLICATION {seg_start} TIMELINE 1"),
    )
    .await?;
    let ka = r.expect_no_wal_for(IDLE).await?;
    assert!(!ka.is_empty(), "no keepalive while the timeline had no WAL");
    assert!(ka.iter().all(|k| k.wal_end == Lsn::INVALID), "{ka:?}");

    // Now a proposer is elected and commits WAL: the waiting reader gets all of it, from
    // the start of the timeline's first segment.
    assert!(p.vote(Term(1)).await?.vote_given);
    p.elect(
        Term(1),
        utils::TermHistory(vec![utils::TermLsn {
            term: Term(1),
            lsn: GEN_START,
        }]),
        GEN_START,
    )
    .await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, wal.end()).await?;
    let got = r.read_wal(seg_start, wal.end(), T).await?;
    assert!(
        got[(GEN_START.0 - seg_start.0) as usize..] == wal.wal[..],
        "WAL differs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_starts_are_errors_that_say_what_is_wrong() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 64 << 10);
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, wal.end()).await?;

    let mut r = ReplStream::connect(&sk, Some(&ttid), "bad").await?;
    let before = Lsn(GEN_START.segment_lsn(SEG).0 - (1 << 20));
    let refused = |res: anyhow::Result<()>| -> String {
        let e = res.expect_err("refused");
        error_fields(&e)
            .unwrap_or_else(|| panic!("not a server error: {e:#}"))
            .message
            .clone()
    };
    // Before the timeline's first segment: says from where WAL is available.
    let msg = refused(r.start_on(&format!("START_REPLICATION {before}")).await);
    assert!(
        msg.contains(&format!(
            "WAL is available from {}",
            GEN_START.segment_lsn(SEG)
        )),
        "{msg}"
    );
    // Another PostgreSQL timeline.
    let msg = refused(
        r.start_on(&format!("START_REPLICATION {GEN_START} TIMELINE 2"))
            .await,
    );
    assert!(msg.contains("timeline 2"), "{msg}");
    // A stop point before the start.
    let msg = refused(
        r.start_on(&format!("START_REPLICATION {} {GEN_START}", wal.end()))
            .await,
    );
    assert!(msg.contains("before the starting point"), "{msg}");
    // Errors before the stream leave the connection usable.
    let rows = r.query("IDENTIFY_SYSTEM").await?;
    assert_eq!(
        rows[0][0].as_deref(),
        Some(CLUSTER.system_id.to_string().as_str())
    );

    // A timeline this safekeeper does not have: the error names it.
    let other = new_ttid();
    let mut r = ReplStream::connect(&sk, Some(&other), "lost").await?;
    let msg = refused(r.start_on("START_REPLICATION 0/1000000").await);
    assert!(
        msg.contains(&other.timeline_id.to_string()) && msg.contains(&other.tenant_id.to_string()),
        "{msg}"
    );
    let e = r
        .query("IDENTIFY_SYSTEM")
        .await
        .expect_err("unknown timeline");
    assert!(format!("{e:#}").contains(&other.timeline_id.to_string()));

    // Without options the only timeline is used.
    let mut r = ReplStream::connect(&sk, None, "default").await?;
    r.start_on(&format!("START_REPLICATION {GEN_START}"))
        .await?;
    let got = r.read_wal(GEN_START, wal.end(), T).await?;
    assert!(got == wal.wal, "WAL differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_even_to_a_client_that_stopped_reading() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = start_sk(&dir)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, 24 << 20);
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, wal.end()).await?;
    drop(p);
    // One reader never reads: its sender ends up blocked on a full socket.
    let stalled = ReplStream::start(
        &sk,
        Some(&ttid),
        "stalled",
        &format!("START_REPLICATION {GEN_START}"),
    )
    .await?;
    // One reader is idle at the tail.
    let mut idle = ReplStream::start(&sk, Some(&ttid), "idle", "START_REPLICATION 0/0").await?;
    idle.expect_no_wal_for(Duration::from_millis(1200)).await?;
    let status = sk.psql(Some(&ttid), "READER_STATUS")?;
    assert_eq!(status.lines().count(), 2, "{status}");

    let st = tokio::task::block_in_place(|| sk.stop())?;
    assert!(st.success(), "exit status {st}");
    let e = loop {
        match idle.next(T).await {
            Ok(Frame::Keepalive(_)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    let f = error_fields(&e).unwrap_or_else(|| panic!("not a server error: {e:#}"));
    assert_eq!(f.code.as_str(), "57P01", "{}", f.message);
    let log = send_wal_util::plain_log(&sk);
    assert!(
        log.contains("app=\"stalled\" end=")
            && log.contains("replication stream ended: terminating connection"),
        "{log}"
    );
    drop(stalled);
    Ok(())
}
