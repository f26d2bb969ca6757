//! Peer recovery: a safekeeper that missed WAL while it was down, restarted when no
//! proposer is left, fetches what it lacks from its peers (term-mode START_REPLICATION,
//! fed through its own ingest path) and ends byte-identical to them; a member a proposer
//! streams WAL to is left to that proposer, one whose proposer sends it nothing is not.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::in_process::{InProcessSafekeeper, generation_one};
use integration_tests::real_wal::{SEG, read_wal_range};
use integration_tests::sk::{Safekeeper, workspace_bin};
use integration_tests::test_proposer::{Cluster, TestProposer, history};
use pq_proto::proposer::ProtocolVersion;
use utils::xlog::WalGenerator;
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TimelineId};

/// Where `walproposer generate` starts the timeline's WAL (the second segment).
const WAL_START: Lsn = Lsn(0x0100_0000);

fn ids_args(ttid: &TenantTimelineId) -> Vec<String> {
    vec![
        "--tenant-id".into(),
        ttid.tenant_id.to_string(),
        "--timeline-id".into(),
        ttid.timeline_id.to_string(),
    ]
}

#[test]
fn a_restarted_member_catches_up_from_its_peers_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sks: Vec<Safekeeper> = (1..=3)
        .map(|i| {
            Safekeeper::start_with_args(
                i,
                &dir.path().join(format!("sk{i}")),
                false,
                &["--peer-status-interval", "1"],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let members = sks
        .iter()
        .map(Safekeeper::member)
        .collect::<Vec<_>>()
        .join(",");
    let total: u64 = 32 << 20;
    // Paced so that the kill lands in the middle of the push.
    let generate = Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &members, "--bytes"])
        .arg(total.to_string())
        .args(["--record-size", "8k", "--rate", "8M"])
        .args(ids_args(&ttid))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;

    // SIGKILL safekeeper 3 about a quarter of the way.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        ensure!(Instant::now() < deadline, "no progress before the kill");
        if let Ok(st) = sks[2].timeline_status(&ttid)
            && st.flush_lsn.0 > WAL_START.0 + total / 4
        {
            sks[2].kill()?;
            break st.flush_lsn;
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // The proposer finishes on the other two, and is gone.
    let out = generate.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "generate failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = integration_tests::sk::generated_wal_range(&stdout)?.1;
    ensure!(end.0 >= WAL_START.0 + total, "pushed only up to {end}");
    for sk in &sks[..2] {
        let st = sk.timeline_status(&ttid)?;
        ensure!(st.flush_lsn == end, "safekeeper {}: {st:?}", sk.id);
    }

    // Restarted with no proposer anywhere: it has only its peers to learn from. (It
    // starts recovering as soon as its timeline loads: the log says from where.)
    sks[2].restart_same_ports()?;
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(60);
    let st = loop {
        let st = sks[2].timeline_status(&ttid)?;
        if st.flush_lsn == end {
            break st;
        }
        ensure!(
            Instant::now() < deadline,
            "safekeeper 3 stuck at {st:?}, peers at {end}\nlog:\n{}",
            sks[2].log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let waited = restarted.elapsed();
    let log = sks[2].log();
    let started = log
        .lines()
        .find(|l| l.contains("peer recovery started"))
        .with_context(|| format!("no recovery in the log:\n{log}"))?;
    let from: Lsn = started
        .split("started: ")
        .nth(1)
        .and_then(|r| r.split("..").next())
        .context("no range in the start line")?
        .trim()
        .parse()?;
    ensure!(
        killed_at <= from && from < end,
        "recovered from {from}, killed at {killed_at}, end {end}"
    );
    let done = log
        .lines()
        .find(|l| l.contains("peer recovery done"))
        .with_context(|| format!("recovery did not finish:\n{log}"))?;
    let (code, metrics) = sks[2].http_get("/metrics")?;
    ensure!(code == 200);
    let recovered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("safekeeper_peer_recovery_bytes_total "))
        .context("no safekeeper_peer_recovery_bytes_total")?
        .trim()
        .parse()?;
    ensure!(
        recovered as u64 >= end.0 - from.0,
        "recovered {recovered} bytes, {} missing",
        end.0 - from.0
    );
    println!(
        "safekeeper 3 killed at {killed_at}, recovered {from}..{end} ({:.1} MiB) from its peers; \
         flush_lsn reached the end {:.2} s after the restart; log: {done}",
        (end.0 - from.0) as f64 / (1 << 20) as f64,
        waited.as_secs_f64()
    );
    // Its term and history did not move: recovery is no election.
    let peer = sks[0].timeline_status(&ttid)?;
    ensure!(st.term == peer.term && st.last_log_term == peer.last_log_term);
    ensure!(st.commit_lsn <= end);

    // Byte-identical WAL on all three.
    let first = read_wal_range(&sks[0].timeline_dir(&ttid), WAL_START, end)?;
    for sk in &sks[1..] {
        let other = read_wal_range(&sk.timeline_dir(&ttid), WAL_START, end)?;
        ensure!(
            first == other,
            "safekeeper {} differs from safekeeper 1 in {WAL_START}..{end}",
            sk.id
        );
    }

    // It survives a restart with what it recovered (it was made durable and is found
    // again by the restart scan).
    sks[2].restart_same_ports()?;
    let again = sks[2].timeline_status(&ttid)?;
    ensure!(again.flush_lsn == end, "after a restart: {again:?}");
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}

const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 7_300_000_000_000_000_011,
    wal_seg_size: SEG,
};
const START: Lsn = Lsn(SEG as u64 + 40);

fn wal(bytes: usize) -> Bytes {
    let mut g = WalGenerator::new(START, CLUSTER.system_id, SEG, 15).expect("generator");
    let mut out = BytesMut::new();
    while out.len() < bytes {
        g.append_logical_message("recovery", &[7; 3000], &mut out)
            .expect("record");
    }
    out.freeze()
}

/// A member behind its peers is not recovered while a proposer streams WAL to it (that
/// stream brings it up to date). Once the proposer, still connected, has sent nothing for a
/// peer-status interval (never elected, or not sending what the member lacks), the member
/// catches up from its peers with the proposer connected; the proposer then goes on from
/// where it was, and the bytes the member already holds are skipped, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_recovers_while_its_proposer_sends_nothing_it_lacks() -> anyhow::Result<()> {
    let interval = Duration::from_secs(1);
    let mut sks = Vec::new();
    for id in 1..=3u64 {
        sks.push(
            InProcessSafekeeper::start_with(|c| {
                c.id = NodeId(id);
                c.peer_status_interval = Some(interval);
            })
            .await?,
        );
    }
    let mconf = generation_one(&sks);
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let all = wal(3 << 20);
    let part = all.slice(..(1 << 20));
    let mut proposers = Vec::new();
    let mut lagging = Lsn::INVALID;
    let mut end = Lsn::INVALID;
    for (i, sk) in sks.iter().enumerate() {
        let mut p = TestProposer::connect(&sk.pg_addr, ttid, ProtocolVersion::V3, true).await?;
        p.greet_with(CLUSTER, mconf.clone()).await?;
        let v = p.vote(Term(1)).await?;
        ensure!(v.vote_given, "{v:?}");
        p.elect(Term(1), history(&[(1, START)]), START).await?;
        let w = if i == 2 { &part } else { &all };
        let flushes = p.push(Term(1), START, w).await.context("push")?;
        let last = *flushes.last().context("answered")?;
        if i == 2 {
            lagging = last;
        } else {
            end = last;
        }
        proposers.push(p);
    }
    ensure!(lagging < end);
    let flush_of = |sk: &InProcessSafekeeper| {
        let ctx = sk.ctx.clone();
        async move { anyhow::Ok(ctx.timelines.get(&ttid).await?.status().flush_lsn) }
    };
    // The third member's proposer streams on, in small pieces, for several status rounds:
    // no recovery starts.
    let mut sent = part.len();
    let streamed_until = tokio::time::Instant::now() + 3 * interval;
    // (About 1.2 MiB at most: it must leave the peers some WAL the member lacks.)
    while tokio::time::Instant::now() < streamed_until && sent + 4096 < all.len() - (512 << 10) {
        let piece = all.slice(sent..sent + 4096);
        proposers[2]
            .push(Term(1), Lsn(START.0 + sent as u64), &piece)
            .await?;
        sent += piece.len();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(
        sks[2].ctx.metrics.peer_recoveries.get() == 0,
        "a recovery started while the proposer streamed WAL"
    );
    // The proposer stays connected but sends nothing: the member catches up from its
    // peers all the same.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = flush_of(&sks[2]).await?;
        if f == end {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the third member stayed at {f}, its peers at {end}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(sks[2].ctx.metrics.peer_recoveries.get() >= 1);
    ensure!(sks[2].ctx.timelines.get(&ttid).await?.computes() == 1);
    // From its end of written WAL (what the proposer wrote is continued, not rewritten).
    ensure!(sks[2].ctx.metrics.peer_recovery_bytes.get() == all.len() as u64 - sent as u64);
    // The proposer goes on from where it was: what the member holds is skipped.
    let flushes = proposers[2]
        .push(Term(1), Lsn(START.0 + sent as u64), &all.slice(sent..))
        .await
        .context("the proposer's stream after the recovery")?;
    ensure!(flushes.last() == Some(&end), "{flushes:?}");
    ensure!(flush_of(&sks[2]).await? == end);
    for sk in sks {
        sk.stop().await?;
    }
    Ok(())
}
