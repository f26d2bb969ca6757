//! The peers' horizon: safekeepers of a timeline with a membership configuration ask each
//! other for their positions over the PostgreSQL protocol (`pq_client` inside the server)
//! and take the lowest flush_lsn of all members as the horizon no peer needs WAL below.

use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::in_process::{InProcessSafekeeper, generation_one};
use integration_tests::real_wal::SEG;
use integration_tests::test_proposer::{Cluster, TestProposer, history};
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::WalGenerator;
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 7_300_000_000_000_000_003,
    wal_seg_size: SEG,
};
const START: Lsn = Lsn(SEG as u64 + 40);

fn wal(bytes: usize) -> Bytes {
    let mut g = WalGenerator::new(START, CLUSTER.system_id, SEG, 15).expect("generator");
    let mut out = BytesMut::new();
    while out.len() < bytes {
        g.append_logical_message("peers", &[5; 2000], &mut out)
            .expect("record");
    }
    out.freeze()
}

/// Waits until every safekeeper reports `want` as the peers' horizon.
async fn horizons_reach(
    sks: &[InProcessSafekeeper],
    ttid: &TenantTimelineId,
    want: Lsn,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = Vec::new();
        for sk in sks {
            got.push(sk.ctx.timelines.get(ttid).await?.status().peer_horizon_lsn);
        }
        if got.iter().all(|&h| h == want) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "peers' horizons {got:?}, expected {want} on all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_learn_the_lowest_flush_of_all_of_them() -> anyhow::Result<()> {
    let mut sks = Vec::new();
    for id in 1..=3u64 {
        sks.push(
            InProcessSafekeeper::start_with(|c| {
                c.id = NodeId(id);
                c.peer_status_interval = Some(Duration::from_millis(100));
            })
            .await?,
        );
    }
    let mconf = generation_one(&sks);
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let all = wal(200_000);
    let half = all.slice(..100_000);
    let mut proposers = Vec::new();
    let mut lagging_flush = Lsn::INVALID;
    for (i, sk) in sks.iter().enumerate() {
        let mut p = TestProposer::connect(&sk.pg_addr, ttid, ProtocolVersion::V3, true).await?;
        p.greet_with(CLUSTER, mconf.clone()).await?;
        let v = p.vote(Term(1)).await?;
        ensure!(v.vote_given, "{v:?}");
        p.elect(Term(1), history(&[(1, START)]), START).await?;
        // The third member lags: it has half the WAL.
        let w = if i == 2 { &half } else { &all };
        let flushes = p.push(Term(1), START, w).await.context("push")?;
        if i == 2 {
            // Its flush_lsn: the last record boundary of the half.
            lagging_flush = *flushes.last().context("answered")?;
        }
        proposers.push(p);
    }
    let half_end = Lsn(START.0 + half.len() as u64);
    let end = Lsn(START.0 + all.len() as u64);
    horizons_reach(&sks, &ttid, lagging_flush).await?;
    // The lagging member catches up: the horizon follows.
    proposers[2]
        .push(Term(1), half_end, &all.slice(half.len()..))
        .await?;
    horizons_reach(&sks, &ttid, end).await?;
    drop(proposers);
    for sk in sks {
        sk.stop().await?;
    }
    Ok(())
}
