//! The process around the acceptor: one process per data directory, and a clean exit on
//! SIGTERM that keeps every acknowledged byte.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::free_port;
use integration_tests::real_wal::GeneratedWal;
use integration_tests::sk::{Safekeeper, workspace_bin};
use integration_tests::test_proposer::{Cluster, TestProposer, conninfo, server_error};
use pq_client::PgError;
use pq_proto::backend::SqlState;
use pq_proto::proposer::{AcceptorMessage, ProtocolVersion};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150004,
    system_id: 7_300_000_000_000_000_003,
    wal_seg_size: 16 * 1024 * 1024,
};
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);

fn new_ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

fn generator() -> WalGenerator {
    WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15).expect("generator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_the_same_datadir_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let datadir = dir.path().join("sk1");
    let mut sk = Safekeeper::start(1, &datadir, false)?;
    let ttid = new_ttid();
    let wal = GeneratedWal::generate(&mut generator(), 100 * 1024)?;
    TestProposer::first_term(&sk.addr(), ttid, CLUSTER, START)
        .await?
        .push(Term(1), START, &wal.wal)
        .await?;

    let mut child = Command::new(workspace_bin("safekeeper"))
        .args(["--id", "2", "--no-sync", "-D"])
        .arg(&datadir)
        .arg("--listen-pg")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--listen-http")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second safekeeper on the same data directory kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second process: {}", out.status);
    assert!(
        stderr.contains(&datadir.display().to_string()) && stderr.contains("in use"),
        "the error must name the data directory and say it is in use: {stderr}"
    );

    // The first one is unaffected.
    assert!(sk.is_running());
    assert_eq!(sk.timeline_status(&ttid)?.flush_lsn, wal.end());

    // Once it is gone, the lock is free again: the refusal was the lock.
    assert!(sk.stop()?.success());
    let sk2 = Safekeeper::start(2, &datadir, false)?;
    assert_eq!(sk2.timeline_status(&ttid)?.flush_lsn, wal.end());
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_acknowledged_wal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;

    // Idle at SIGTERM: a proposer connection and a query connection stay open.
    let ttid = new_ttid();
    let wal = GeneratedWal::generate(&mut generator(), 1024 * 1024)?;
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, START).await?;
    let acked = *p.push(Term(1), START, &wal.wal).await?.last().unwrap();
    assert_eq!(acked, wal.end());
    let before = sk.timeline_status(&ttid)?;
    let mut idle = pq_client::connect(&conninfo(&sk.addr(), &ttid, "idle")).await?;

    let st = sk.stop()?;
    assert_eq!(st.code(), Some(0), "SIGTERM exit: {st}; log:\n{}", sk.log());
    // Both connections were told why they end.
    let e = tokio::time::timeout(Duration::from_secs(5), p.recv())
        .await?
        .expect_err("the proposer's stream must end");
    let f = server_error(&e).unwrap_or_else(|| panic!("no ErrorResponse: {e:#}"));
    assert_eq!(f.code, SqlState::ADMIN_SHUTDOWN, "{f:?}");
    match tokio::time::timeout(Duration::from_secs(5), pq_client::read(&mut idle)).await? {
        Err(PgError::Server(f)) => assert_eq!(f.code, SqlState::ADMIN_SHUTDOWN, "{f:?}"),
        other => panic!("idle connection at shutdown: {other:?}"),
    }

    sk.restart()?;
    let after = sk.timeline_status(&ttid)?;
    assert_eq!(
        after.flush_lsn, acked,
        "flush_lsn after SIGTERM and restart"
    );
    assert_eq!(
        after, before,
        "the state after the restart (commit_lsn is persisted at shutdown)"
    );
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V2, false).await?;
    assert_eq!(p.greet(CLUSTER).await?.term, Term(1));
    let v = p.vote(Term(2)).await?;
    assert!(v.vote_given);
    assert_eq!(v.flush_lsn, acked);
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_and_keeps_acknowledged_wal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let ttid = new_ttid();
    let wal = GeneratedWal::generate(&mut generator(), 4 * 1024 * 1024)?;
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, START).await?;
    let half = wal.wal.len() / 2;
    let mut acked = *p
        .push(Term(1), START, &wal.wal.slice(..half))
        .await?
        .last()
        .unwrap();
    // Four more requests in flight, then SIGTERM.
    let mut sent = half;
    for _ in 0..4 {
        let n = MAX_SEND_SIZE.min(wal.wal.len() - sent);
        p.append(
            Term(1),
            Lsn(START.0 + sent as u64),
            wal.wal.slice(sent..sent + n),
            acked,
        )
        .await?;
        sent += n;
    }
    let st = sk.stop()?;
    assert_eq!(st.code(), Some(0), "SIGTERM exit: {st}; log:\n{}", sk.log());
    loop {
        match tokio::time::timeout(Duration::from_secs(5), p.recv()).await? {
            Ok(AcceptorMessage::AppendResponse(r)) => acked = acked.max(r.flush_lsn),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                if let Some(f) = server_error(&e) {
                    assert_eq!(f.code, SqlState::ADMIN_SHUTDOWN, "{f:?}");
                }
                break;
            }
        }
    }
    sk.restart()?;
    let flush = sk.timeline_status(&ttid)?.flush_lsn;
    assert!(
        flush >= acked,
        "flush_lsn {flush} after restart, {acked} acknowledged"
    );
    assert!(
        flush <= Lsn(START.0 + sent as u64) && wal.is_record_boundary(flush),
        "flush_lsn {flush} after restart"
    );
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_clients_that_never_start() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let ttid = new_ttid();
    // A TCP connection that never sends a byte, one stuck in the middle of its startup
    // packet, and a proposer that entered START_WAL_PUSH but never greeted.
    let mut silent = integration_tests::test_proposer::raw_socket(&sk.addr()).await?;
    let mut half = integration_tests::test_proposer::raw_socket(&sk.addr()).await?;
    half.write_all(&[0, 0, 0, 100, 0, 3, 0, 0, b'u']).await?;
    let mut mute = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, true).await?;
    // Let the server reach the point where it waits on each of them.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let st = sk.stop_within(Duration::from_secs(10))?;
    assert_eq!(st.code(), Some(0), "SIGTERM exit: {st}; log:\n{}", sk.log());
    let e = tokio::time::timeout(Duration::from_secs(5), mute.recv())
        .await?
        .expect_err("the stream must end");
    let f = server_error(&e).unwrap_or_else(|| panic!("no ErrorResponse: {e:#}"));
    assert_eq!(f.code, SqlState::ADMIN_SHUTDOWN, "{f:?}");
    for sock in [&mut silent, &mut half] {
        let mut buf = Vec::new();
        // Closed (possibly after an ErrorResponse), not left hanging.
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await??;
    }
    sk.assert_no_panics();
    Ok(())
}
