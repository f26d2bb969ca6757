//! A timeline's life beyond the proposer, through a server in the test process whose
//! storage can be stalled or failed on command (real files underneath):
//!
//! * `status_answers_while_a_flush_is_stalled`: TIMELINE_STATUS, IDENTIFY_SYSTEM and the
//!   HTTP status answer while the timeline's fdatasync is blocked, and report only what
//!   was durable before it;
//! * `a_broken_timeline_is_reloaded_once_however_many_ask`: after a write error, the
//!   timeline's streams end at once (57P03), and twenty clients asking for it at the same
//!   time cause one reload, after which it serves its acknowledged WAL;
//! * `deleting_a_timeline_ends_its_streams_and_no_others`: the timeline's shutdown ends its
//!   proposer and reader streams promptly, its files go, another timeline streams on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use integration_tests::in_process::{FaultHook, InProcessSafekeeper, http_get};
use integration_tests::real_wal::SEG;
use integration_tests::test_proposer::{Cluster, TestProposer, conninfo, history, server_error};
use pq_client::{PgConn, PgError};
use pq_proto::backend::BeMessage;
use pq_proto::proposer::ProtocolVersion;
use pq_proto::replication::ReplicationServerMessage;
use safekeeper::metrics::LoadReason;
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 7_300_000_000_000_000_002,
    wal_seg_size: SEG,
};
const START: Lsn = Lsn(SEG as u64 + 40);
/// A bound on what must happen promptly (a liveness bound, not a measurement).
const PROMPTLY: Duration = Duration::from_secs(10);

fn new_ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

/// Records of a few KiB from `start` until `bytes` are covered (one AppendRequest's worth
/// at most when `bytes` is small).
fn wal(start: Lsn, bytes: usize) -> Bytes {
    let mut g = WalGenerator::new(start, CLUSTER.system_id, SEG, 15).expect("generator");
    let mut out = BytesMut::new();
    let mut i = 0u8;
    while out.len() < bytes {
        g.append_logical_message("lifecycle", &[i; 3000], &mut out)
            .expect("record");
        i = i.wrapping_add(1);
    }
    out.freeze()
}

fn end_of(start: Lsn, wal: &Bytes) -> Lsn {
    Lsn(start.0 + wal.len() as u64)
}

async fn client(addr: &str, ttid: &TenantTimelineId, replication: bool) -> anyhow::Result<PgConn> {
    let mut ci = conninfo(addr, ttid, "lifecycle_test");
    if replication {
        ci.set("replication", "true");
    }
    Ok(pq_client::connect(&ci).await?)
}

/// `flush_lsn` and `term` from TIMELINE_STATUS.
async fn timeline_status(addr: &str, ttid: &TenantTimelineId) -> anyhow::Result<(Lsn, u64)> {
    let mut c = client(addr, ttid, true).await?;
    let rows = pq_client::simple_query(&mut c, "TIMELINE_STATUS").await?;
    let row = rows.first().context("TIMELINE_STATUS returned no row")?;
    let cell = |i: usize| row[i].clone().unwrap_or_default();
    Ok((cell(0).parse()?, cell(2).parse()?))
}

/// A commit-mode replication stream from `start`.
async fn reader(addr: &str, ttid: &TenantTimelineId, start: Lsn) -> anyhow::Result<PgConn> {
    let mut c = client(addr, ttid, true).await?;
    pq_client::start_copy(&mut c, &format!("START_REPLICATION PHYSICAL {start}")).await?;
    Ok(c)
}

/// Reads the stream until the server ends it; the SQLSTATE of its ErrorResponse (or
/// "EOF").
async fn stream_end(c: &mut PgConn) -> anyhow::Result<String> {
    loop {
        match pq_client::read(c).await {
            Ok(BeMessage::CopyData(p)) => {
                ReplicationServerMessage::decode(p)?;
            }
            Ok(other) => bail!("unexpected {other:?} in a replication stream"),
            Err(PgError::Server(e)) => return Ok(e.code.to_string()),
            Err(PgError::Closed) => return Ok("EOF".into()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_flush_is_stalled() -> anyhow::Result<()> {
    let hook = Arc::new(FaultHook::default());
    let sk = InProcessSafekeeper::start(Some(hook.clone())).await?;
    let ttid = new_ttid();
    let mut p = TestProposer::first_term(&sk.pg_addr, ttid, CLUSTER, START).await?;
    let first = wal(START, 40_000);
    let durable = end_of(START, &first);
    let flushes = p.push(Term(1), START, &first).await?;
    assert_eq!(flushes.last(), Some(&durable));

    // The next append's flush blocks on the "disk".
    hook.block_flushes();
    let more = wal(durable, 20_000);
    p.append(Term(1), durable, more.clone(), durable).await?;
    let h = hook.clone();
    let blocked = tokio::task::spawn_blocking(move || h.wait_for_blocked_flush(PROMPTLY)).await?;
    assert!(blocked, "the ingest loop never reached its flush");

    // Every way of asking answers, with what was durable before the stalled flush.
    let (flush, term) = tokio::time::timeout(PROMPTLY, timeline_status(&sk.pg_addr, &ttid))
        .await
        .context("TIMELINE_STATUS must answer while a flush is stalled")??;
    assert_eq!((flush, term), (durable, 1));
    let mut c = client(&sk.pg_addr, &ttid, true).await?;
    let rows = tokio::time::timeout(PROMPTLY, pq_client::simple_query(&mut c, "IDENTIFY_SYSTEM"))
        .await
        .context("IDENTIFY_SYSTEM must answer while a flush is stalled")??;
    assert_eq!(
        rows[0][0].as_deref(),
        Some(CLUSTER.system_id.to_string().as_str())
    );
    let path = format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    );
    let (code, body) = tokio::time::timeout(PROMPTLY, http_get(sk.http_addr, &path))
        .await
        .context("the HTTP status must answer while a flush is stalled")??;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("\"flush_lsn\":\"{durable}\"")),
        "{body}"
    );

    // Released: the append is answered with its new end.
    hook.release_flushes();
    let r = tokio::time::timeout(PROMPTLY, p.append_response()).await??;
    assert_eq!(r.flush_lsn, end_of(durable, &more));
    drop(p);
    sk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_timeline_is_reloaded_once_however_many_ask() -> anyhow::Result<()> {
    let hook = Arc::new(FaultHook::default());
    let sk = InProcessSafekeeper::start(Some(hook.clone())).await?;
    let ttid = new_ttid();
    let mut p = TestProposer::first_term(&sk.pg_addr, ttid, CLUSTER, START).await?;
    let first = wal(START, 40_000);
    let acked = end_of(START, &first);
    p.push(Term(1), START, &first).await?;
    // Commit it, so a commit-mode reader can have it all.
    p.append(Term(1), acked, Bytes::new(), acked).await?;
    p.append_response().await?;
    let mut r = reader(&sk.pg_addr, &ttid, START).await?;

    // A write fails: the proposer's stream ends with an I/O error, and so does the
    // reader's, at once (it would otherwise wait on a timeline that is being replaced).
    hook.fail_writes(1);
    p.append(Term(1), acked, wal(acked, 4000), acked).await?;
    let e = tokio::time::timeout(PROMPTLY, p.append_response())
        .await?
        .expect_err("the append must fail");
    let code = server_error(&e).map(|f| f.code.to_string());
    assert_eq!(code.as_deref(), Some("58030"), "{e:#}");
    let end = tokio::time::timeout(PROMPTLY, stream_end(&mut r))
        .await
        .context("the reader's stream must end when its timeline breaks")??;
    assert_eq!(end, "57P03");

    // Twenty clients ask for the broken timeline at once, while its reload is slow.
    hook.slow_loads(Some(Duration::from_millis(300)));
    let before = sk.ctx.metrics.timeline_loads(LoadReason::Reload);
    let mut askers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = sk.pg_addr.clone();
        askers.spawn(async move { timeline_status(&addr, &ttid).await });
    }
    while let Some(r) = askers.join_next().await {
        assert_eq!(
            r??,
            (acked, 1),
            "the reloaded timeline has its acknowledged WAL"
        );
    }
    hook.slow_loads(None);
    assert_eq!(
        sk.ctx.metrics.timeline_loads(LoadReason::Reload) - before,
        1,
        "one reload for twenty callers"
    );
    let (code, text) = http_get(sk.http_addr, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(
        text.contains(&format!(
            "safekeeper_timeline_loads_total{{reason=\"reload\"}} {}",
            before + 1
        )),
        "{text}"
    );
    // And it takes a proposer again.
    let (mut p2, v) = TestProposer::elected(
        &sk.pg_addr,
        ttid,
        ProtocolVersion::V3,
        CLUSTER,
        Term(2),
        history(&[(1, START), (2, acked)]),
        acked,
    )
    .await?;
    assert_eq!(v.flush_lsn, acked);
    let more = wal(acked, 8000);
    assert_eq!(
        p2.push(Term(2), acked, &more).await?.last(),
        Some(&end_of(acked, &more))
    );
    drop(p2);
    sk.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_timeline_ends_its_streams_and_no_others() -> anyhow::Result<()> {
    let sk = InProcessSafekeeper::start(None).await?;
    let (doomed, other) = (new_ttid(), new_ttid());
    let mut pd = TestProposer::first_term(&sk.pg_addr, doomed, CLUSTER, START).await?;
    let mut po = TestProposer::first_term(&sk.pg_addr, other, CLUSTER, START).await?;
    let first = wal(START, 20_000);
    let end = end_of(START, &first);
    pd.push(Term(1), START, &first).await?;
    po.push(Term(1), START, &first).await?;
    let mut r = reader(&sk.pg_addr, &doomed, START).await?;
    let dir = sk.ctx.timelines.timeline_dir(&doomed);
    assert!(dir.exists());

    let deleted = tokio::time::timeout(PROMPTLY, sk.ctx.timelines.delete(&doomed))
        .await
        .context("deleting must not wait for clients")??;
    assert!(deleted);
    // Both streams of the timeline ended, each with a message saying why.
    let end_r = tokio::time::timeout(PROMPTLY, stream_end(&mut r)).await??;
    assert_eq!(end_r, "57P01");
    let e = tokio::time::timeout(PROMPTLY, pd.append_response())
        .await?
        .expect_err("the proposer's stream must end");
    let code = server_error(&e).map(|f| f.code.to_string());
    assert_eq!(code.as_deref(), Some("57P01"), "{e:#}");
    assert!(!dir.exists(), "its files are gone");
    assert!(!sk.ctx.timelines.list().contains(&doomed));
    assert!(
        !sk.ctx.timelines.delete(&doomed).await?,
        "deleting again finds nothing"
    );

    // The other timeline streams on.
    let more = wal(end, 8000);
    assert_eq!(
        po.push(Term(1), end, &more).await?.last(),
        Some(&end_of(end, &more))
    );
    drop(po);
    sk.stop().await
}
