//! `--idle-timeout`: a connection that finished its startup and then sends no command is
//! closed with 57P05 (idle_session_timeout), so idle clients cannot hold every connection
//! slot; a client that keeps sending commands, and a running stream, are not idle. And
//! `--reserved-connections`: when only reserved slots are left, a proposer still gets in
//! and every other client gets 53300.

use std::time::Duration;

use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer};
use pq_client::{Conninfo, PgError};
use pq_proto::backend::SqlState;
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_free_their_slot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Two slots, two idle clients: without the timeout a third client is refused forever.
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk"),
        false,
        &["--idle-timeout", "1", "--max-connections", "2"],
    )?;
    let ci = Conninfo::parse(&sk.conninfo(None))?;
    let mut idle1 = pq_client::connect(&ci).await?;
    let mut idle2 = pq_client::connect(&ci).await?;
    for conn in [&mut idle1, &mut idle2] {
        // Without the timeout this read would wait forever.
        match tokio::time::timeout(Duration::from_secs(30), pq_client::read(conn)).await? {
            Err(PgError::Server(e)) => {
                assert_eq!(e.code, SqlState::IDLE_SESSION_TIMEOUT, "{e:?}");
                assert!(e.message.contains("idle"), "{e:?}");
            }
            other => panic!("expected 57P05 on an idle connection, got {other:?}"),
        }
    }
    // Their slots are free again: a new client is served, and while it keeps asking
    // (more often than the timeout) it stays connected.
    let mut busy = pq_client::connect(&ci).await?;
    for _ in 0..4 {
        pq_client::simple_query(&mut busy, "SHOW wal_segment_size").await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    pq_client::simple_query(&mut busy, "SHOW wal_segment_size").await?;
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_slots_keep_room_for_proposers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Four slots, two of them reserved; no idle timeout: the idle clients stay.
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk"),
        false,
        &[
            "--idle-timeout",
            "0",
            "--max-connections",
            "4",
            "--reserved-connections",
            "2",
        ],
    )?;
    let ci = Conninfo::parse(&sk.conninfo(None))?;
    let _idle1 = pq_client::connect(&ci).await?;
    let _idle2 = pq_client::connect(&ci).await?;
    // The general slots are taken: a third reader is refused at its first command.
    let mut third = pq_client::connect(&ci).await?;
    match pq_client::simple_query(&mut third, "IDENTIFY_SYSTEM").await {
        Err(PgError::Server(e)) => {
            assert_eq!(e.code, SqlState::TOO_MANY_CONNECTIONS, "{e:?}");
            assert!(e.message.contains("reserved for proposers"), "{e:?}");
        }
        other => panic!("expected 53300 in a reserved slot, got {other:?}"),
    }
    drop(third);
    // A proposer takes a reserved slot and is elected.
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let cluster = Cluster {
        pg_version: 150004,
        system_id: 7,
        wal_seg_size: 16 * 1024 * 1024,
    };
    let p = TestProposer::first_term(&sk.addr(), ttid, cluster, Lsn(0x0100_0028)).await?;
    drop(p);
    sk.assert_no_panics();
    Ok(())
}
