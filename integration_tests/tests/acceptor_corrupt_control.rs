//! A corrupt control file makes its timeline unavailable, not the server: after one
//! flipped byte, every command for that timeline is refused with SQLSTATE XX001 and a
//! message naming the file, while another timeline on the same safekeeper is served and
//! takes new WAL.

use integration_tests::real_wal::GeneratedWal;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer, conninfo, history, server_error};
use pq_client::PgError;
use pq_proto::backend::SqlState;
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150004,
    system_id: 7_300_000_000_000_000_001,
    wal_seg_size: 16 * 1024 * 1024,
};
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);

fn generator() -> WalGenerator {
    WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15).expect("generator")
}

/// Creates the timeline and streams `wal` into it in term 1.
async fn fill(sk: &Safekeeper, ttid: TenantTimelineId, wal: &GeneratedWal) -> anyhow::Result<()> {
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, START).await?;
    let flushes = p.push(Term(1), START, &wal.wal).await?;
    assert_eq!(flushes.last().copied(), Some(wal.end()));
    Ok(())
}

fn assert_corrupt(fields: &pq_proto::backend::ErrorFields, control: &str, what: &str) {
    assert_eq!(fields.code, SqlState::DATA_CORRUPTED, "{what}: {fields:?}");
    assert!(
        fields.message.contains(control) && fields.message.contains("corrupt"),
        "{what}: the message must name {control} and say it is corrupt: {:?}",
        fields.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_control_file_disables_only_its_timeline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let bad = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let good = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut good_gen = generator();
    let good_wal = GeneratedWal::generate(&mut good_gen, 300 * 1024)?;
    fill(
        &sk,
        bad,
        &GeneratedWal::generate(&mut generator(), 300 * 1024)?,
    )
    .await?;
    fill(&sk, good, &good_wal).await?;
    let st = sk.stop()?;
    assert!(st.success(), "SIGTERM exit: {st}");

    let control = sk.timeline_dir(&bad).join("safekeeper.control");
    let mut bytes = std::fs::read(&control)?;
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(&control, &bytes)?;
    let control = control.display().to_string();
    sk.restart()?;

    // The corrupt timeline: TIMELINE_STATUS and IDENTIFY_SYSTEM over psql's protocol,
    // with the SQLSTATE checked, then on the same connection (an ERROR, not FATAL).
    let mut conn = pq_client::connect(&conninfo(&sk.addr(), &bad, "test")).await?;
    for q in ["TIMELINE_STATUS", "IDENTIFY_SYSTEM"] {
        match pq_client::simple_query(&mut conn, q).await {
            Err(PgError::Server(f)) => assert_corrupt(&f, &control, q),
            other => panic!("{q} on the corrupt timeline: {other:?}"),
        }
    }
    let err = sk.psql(Some(&bad), "TIMELINE_STATUS").unwrap_err();
    assert!(
        err.to_string().contains(&control),
        "psql shows the file: {err:#}"
    );
    // START_WAL_PUSH: the greeting is refused, with or without timeline creation.
    for allow_creation in [true, false] {
        let mut p =
            TestProposer::connect(&sk.addr(), bad, ProtocolVersion::V3, allow_creation).await?;
        let e = p.greet(CLUSTER).await.unwrap_err();
        let f = server_error(&e).unwrap_or_else(|| panic!("no ErrorResponse: {e:#}"));
        assert_corrupt(f, &control, "START_WAL_PUSH");
    }
    // The file was left alone (no "repair" by overwriting it).
    assert_eq!(std::fs::read(&control)?, bytes);

    // The other timeline is served, and a new proposer streams more WAL into it.
    let status = sk.timeline_status(&good)?;
    assert_eq!(status.flush_lsn, good_wal.end());
    assert_eq!(status.term, Term(1));
    let end = good_wal.end();
    let (mut p, v) = TestProposer::elected(
        &sk.addr(),
        good,
        ProtocolVersion::V3,
        CLUSTER,
        Term(2),
        history(&[(1, START), (2, end)]),
        end,
    )
    .await?;
    assert_eq!(v.flush_lsn, end);
    let more = GeneratedWal::generate(&mut good_gen, 200 * 1024)?;
    let flushes = p.push(Term(2), end, &more.wal).await?;
    assert_eq!(flushes.last().copied(), Some(more.end()));
    let status = sk.timeline_status(&good)?;
    assert_eq!(
        (status.flush_lsn, status.term, status.last_log_term),
        (more.end(), Term(2), Term(2))
    );
    assert!(sk.is_running());
    sk.assert_no_panics();
    Ok(())
}
