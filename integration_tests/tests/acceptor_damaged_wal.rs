//! The restart scan against the durable-flush watermark, with real files: a flipped byte
//! in acknowledged WAL (below the flush_lsn the proposer was told) refuses the timeline
//! with an ERROR naming the record and segment, and cuts nothing; garbage after the end
//! of acknowledged WAL is a torn write (WARN), cut, and the timeline is served.

use std::path::{Path, PathBuf};

use integration_tests::http::Api;
use integration_tests::real_wal::GeneratedWal;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer, conninfo, history};
use pq_client::PgError;
use pq_proto::backend::SqlState;
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::{WalGenerator, xlog_file_name};
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150004,
    system_id: 7_300_000_000_000_000_002,
    wal_seg_size: 16 * 1024 * 1024,
};
/// How much WAL the timeline gets before the restart.
const WAL_BYTES: usize = 400 * 1024;
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);

fn generator() -> WalGenerator {
    WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15).expect("generator")
}

/// A stopped safekeeper, its timeline, the WAL it acknowledged, its `.partial` segment.
type Stopped = (Safekeeper, TenantTimelineId, GeneratedWal, PathBuf);

/// A safekeeper holding one timeline with `wal` pushed and acknowledged in term 1, then
/// stopped cleanly. With `commit_at_start`, the proposer's commit position stays at the
/// start (the rest of its quorum is away), so the restart scan, which starts at the
/// persisted commit position, reads all of the WAL; otherwise it commits as it goes.
async fn stopped_with_wal(dir: &Path, commit_at_start: bool) -> anyhow::Result<Stopped> {
    let mut sk = Safekeeper::start(1, &dir.join("sk1"), true)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut g = generator();
    let wal = GeneratedWal::generate(&mut g, WAL_BYTES)?;
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, START).await?;
    let flushes = if commit_at_start {
        p.push_with_commit(Term(1), START, &wal.wal, START).await?
    } else {
        p.push(Term(1), START, &wal.wal).await?
    };
    assert_eq!(flushes.last().copied(), Some(wal.end()), "acknowledged");
    drop(p);
    let st = sk.stop()?;
    assert!(st.success(), "SIGTERM exit: {st}; log:\n{}", sk.log());
    let partial = sk.timeline_dir(&ttid).join(format!(
        "{}.partial",
        xlog_file_name(1, 1, CLUSTER.wal_seg_size)
    ));
    assert!(partial.exists(), "{}", partial.display());
    Ok((sk, ttid, wal, partial))
}

/// Writes `bytes` at `lsn` of segment 1's file.
fn overwrite(path: &Path, lsn: Lsn, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, lsn.segment_offset(CLUSTER.wal_seg_size) as u64)?;
    f.sync_all()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_acknowledged_wal_refuses_the_timeline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut sk, ttid, wal, partial) = stopped_with_wal(dir.path(), true).await?;
    // A byte in the middle of a record well below the acknowledged end.
    let i = wal.record_ends.len() / 2;
    let (a, b) = (wal.record_ends[i - 1], wal.record_ends[i]);
    let at = Lsn(a.0 + (b.0 - a.0) / 2);
    let mut byte = [0u8; 1];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&partial)?;
        f.read_exact_at(&mut byte, at.segment_offset(CLUSTER.wal_seg_size) as u64)?;
    }
    overwrite(&partial, at, &[byte[0] ^ 0x5a])?;
    let damaged = std::fs::read(&partial)?;
    let log_before = sk.log().len();
    sk.restart()?;

    let log = sk.log()[log_before..].to_string();
    let line = log
        .lines()
        .find(|l| l.contains("corruption of acknowledged WAL"))
        .unwrap_or_else(|| panic!("no corruption line in the log:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&xlog_file_name(1, 1, CLUSTER.wal_seg_size)),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "WAL up to {} had been fsynced and acknowledged",
            wal.end()
        )),
        "{line}"
    );
    assert!(!log.contains("torn write"), "{log}");

    // TIMELINE_STATUS is refused with the message; the HTTP status route too.
    let mut conn = pq_client::connect(&conninfo(&sk.addr(), &ttid, "test")).await?;
    match pq_client::simple_query(&mut conn, "TIMELINE_STATUS").await {
        Err(PgError::Server(f)) => {
            assert_eq!(f.code, SqlState::DATA_CORRUPTED, "{f:?}");
            assert!(
                f.message.contains("corruption of acknowledged WAL"),
                "{f:?}"
            );
        }
        other => panic!("TIMELINE_STATUS on the damaged timeline: {other:?}"),
    }
    let (code, body) = sk.http_get(&format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("corruption of acknowledged WAL"), "{body}");
    // Nothing was cut or repaired.
    assert_eq!(std::fs::read(&partial)?, damaged);
    // The operator's fix, first half (docs/operations.md): the refused timeline can be
    // deleted, to be pulled again from a peer.
    let api = Api::new(sk.http_port);
    let a = api.delete(&format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!sk.timeline_dir(&ttid).exists());
    assert!(sk.is_running());
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_acknowledged_wal_is_a_torn_write_that_is_cut() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut sk, ttid, wal, partial) = stopped_with_wal(dir.path(), false).await?;
    let end = wal.end();
    // What a crash can leave after the last fsync: part of a record that never made it.
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
    let at = Lsn(end.0.next_multiple_of(8));
    overwrite(&partial, at, &garbage)?;
    let log_before = sk.log().len();
    sk.restart()?;

    let log = sk.log()[log_before..].to_string();
    let line = log
        .lines()
        .find(|l| l.contains("torn write after the last fsync"))
        .unwrap_or_else(|| panic!("no torn-write line in the log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("cutting the unacknowledged tail"), "{line}");
    assert!(!log.contains("corruption of acknowledged WAL"), "{log}");

    // Served, ending at the acknowledged end, and it takes new WAL in a new term.
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(status.flush_lsn, end);
    let (mut p, v) = TestProposer::elected(
        &sk.addr(),
        ttid,
        ProtocolVersion::V3,
        CLUSTER,
        Term(2),
        history(&[(1, START), (2, end)]),
        end,
    )
    .await?;
    assert_eq!(v.flush_lsn, end);
    // The generator is deterministic: the same WAL again, then more after it.
    let mut g = generator();
    assert_eq!(GeneratedWal::generate(&mut g, WAL_BYTES)?.end(), end);
    let more = GeneratedWal::generate(&mut g, 100 * 1024)?;
    let flushes = p.push(Term(2), end, &more.wal).await?;
    assert_eq!(flushes.last().copied(), Some(more.end()));
    assert!(sk.is_running());
    sk.assert_no_panics();
    Ok(())
}
