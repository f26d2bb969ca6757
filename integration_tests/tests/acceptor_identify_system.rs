//! `IDENTIFY_SYSTEM` with the real `psql`: the timeline is chosen by the startup
//! `options`, or is the only one the safekeeper holds.

use integration_tests::real_wal::GeneratedWal;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer};
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);

fn cluster(system_id: u64) -> Cluster {
    Cluster {
        pg_version: 150004,
        system_id,
        wal_seg_size: 16 * 1024 * 1024,
    }
}

/// Creates a timeline and streams some WAL into it, then tells it that everything is
/// committed. Returns the end of its WAL.
async fn fill(
    sk: &Safekeeper,
    ttid: TenantTimelineId,
    c: Cluster,
    kib: usize,
) -> anyhow::Result<Lsn> {
    let mut generator = WalGenerator::new(START, c.system_id, c.wal_seg_size, 15)?;
    let wal = GeneratedWal::generate(&mut generator, kib * 1024)?;
    let mut p = TestProposer::first_term(&sk.addr(), ttid, c, START).await?;
    p.push(Term(1), START, &wal.wal).await?;
    p.append(Term(1), wal.end(), bytes::Bytes::new(), wal.end())
        .await?;
    let r = p.append_response().await?;
    assert_eq!((r.flush_lsn, r.commit_lsn), (wal.end(), wal.end()));
    Ok(wal.end())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_system_via_psql() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let one = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let c1 = cluster(7_300_000_000_000_000_011);
    let end1 = fill(&sk, one, c1, 700).await?;

    // Named in options, and (the only timeline) not named at all.
    let expected = format!("{}|1|{end1}|", c1.system_id);
    let out = sk.psql(Some(&one), "IDENTIFY_SYSTEM")?;
    assert_eq!(out.trim(), expected, "with options");
    let out = sk.psql(None, "IDENTIFY_SYSTEM")?;
    assert_eq!(out.trim(), expected, "without options, one timeline");

    // With two timelines each is reached by name; without a name psql gets a clear error.
    let two = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let c2 = cluster(7_300_000_000_000_000_022);
    let end2 = fill(&sk, two, c2, 50).await?;
    assert_ne!(end1, end2);
    let out = sk.psql(Some(&two), "IDENTIFY_SYSTEM")?;
    assert_eq!(out.trim(), format!("{}|1|{end2}|", c2.system_id));
    let out = sk.psql(Some(&one), "IDENTIFY_SYSTEM")?;
    assert_eq!(out.trim(), expected);
    let err = sk.psql(None, "IDENTIFY_SYSTEM").unwrap_err().to_string();
    assert!(
        err.contains("no timeline selected") && err.contains("tenant_id"),
        "psql without options on two timelines: {err}"
    );
    sk.assert_no_panics();
    Ok(())
}
