//! Neon's compute in its own sync mode (`postgres --sync-safekeepers`, the compute not
//! running: the election and the recovery alone, then it prints the LSN the quorum agrees
//! on) against three safekeepers with a plain list:
//!
//! * on an empty timeline it prints `0/0`, and a compute then starts and commits;
//! * a member that was down while the compute wrote (restarted after the compute stopped,
//!   peer recovery off) is brought to the end by the compute itself, which reads the missing
//!   WAL from a donor with our term-mode `START_REPLICATION`;
//! * a member holding an uncommitted tail of an older term (written by a test proposer that
//!   won a term on two members but reached only one) has that tail cut back and replaced by
//!   the newer term's WAL that the other two hold.
//!
//! Each ends with every member at the printed LSN, one term history, and the WAL read back
//! from each with the compute's `pg_receivewal` decoding with its `pg_waldump` and
//! byte-identical across the members.
//!
//! The build comes from `NEON_COMPUTE_DIST` (see [`integration_tests::neon`]); without it the
//! tests print one line naming the variable and pass.

use anyhow::{Context, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::neon::{
    ComputeSettings, NeonBuild, NeonCompute, SEG, check_wal_copies, pg_ports, start_safekeepers,
    timeline_info, wait_all_at, wait_all_at_compute_flush,
};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer};
use pq_proto::proposer::ProtocolVersion;
use serde_json::Value;
use utils::xlog::{WalGenerator, pg_major};
use utils::{Lsn, TenantId, TenantTimelineId, Term, TermLsn, TimelineId};

/// A new timeline id.
fn new_ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

#[test]
fn on_an_empty_timeline_it_prints_0_0_and_a_compute_then_commits() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-sync-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let sks = start_safekeepers(scratch.path(), 3, &[])?;
    let ttid = new_ttid();
    let data = build.initdb(&scratch.path().join("pgdata"))?;
    let settings = ComputeSettings::plain(ttid, &pg_ports(&sks));
    data.append_conf(&settings.conf_lines())?;

    let (lsn, log) = build.sync_safekeepers(&data)?;
    ensure!(
        lsn == Lsn(0),
        "sync on an empty timeline printed {lsn}; log:\n{log}"
    );
    // Again: still nothing to agree on.
    let (lsn, log) = build.sync_safekeepers(&data)?;
    ensure!(lsn == Lsn(0), "second sync printed {lsn}; log:\n{log}");
    for sk in &sks {
        let st = sk.timeline_status(&ttid)?;
        ensure!(
            st.flush_lsn == Lsn(0) && st.commit_lsn == Lsn(0),
            "safekeeper {} holds WAL after syncing an empty timeline: {st:?}",
            sk.id
        );
    }

    // What Neon does next: start the compute, which campaigns in a higher term and streams.
    let compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<()> {
        compute.psql("create table t (v int); insert into t select generate_series(1, 1000)")?;
        let (flush, st) = wait_all_at_compute_flush(&compute, &sks, &ttid)?;
        check_wal_copies(
            &build,
            &sks,
            &ttid,
            st[0].timeline_start_lsn,
            flush,
            scratch.path(),
        )?;
        Ok(())
    })();
    if let Err(e) = result {
        anyhow::bail!("{e:#}\n{}", compute.log_tail(40));
    }
    drop(compute);
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}

#[test]
fn a_lagging_member_is_caught_up_by_the_computes_own_donor_fetch() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-sync-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    // Peer recovery off: only the compute may bring the lagging member up.
    let mut sks = start_safekeepers(scratch.path(), 3, &["--peer-recovery", "off"])?;
    let ttid = new_ttid();
    let data = build.initdb(&scratch.path().join("pgdata"))?;
    let settings = ComputeSettings::plain(ttid, &pg_ports(&sks));
    let mut compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<Lsn> {
        compute.psql("create table t (v int); insert into t select generate_series(1, 1000)")?;
        wait_all_at_compute_flush(&compute, &sks, &ttid)?;
        // Member 3 goes down; the compute writes more than a segment without it.
        sks[2].kill()?;
        compute.pgbench(&["-i", "-s", "3", "-q"])?;
        let flush = compute.flush_lsn()?;
        compute.stop("fast")?;
        Ok(flush)
    })();
    let written = match result {
        Ok(l) => l,
        Err(e) => anyhow::bail!("{e:#}\n{}", compute.log_tail(40)),
    };
    drop(compute);
    sks[2].restart_same_ports()?;
    let behind = sks[2].timeline_status(&ttid)?;
    ensure!(
        behind.flush_lsn.0 + u64::from(SEG) < written.0,
        "member 3 is not a segment behind the compute's {written}: {behind:?}"
    );

    let (lsn, log) = build.sync_safekeepers(&data)?;
    // At least the compute's WAL before its shutdown checkpoint; the checkpoint too.
    ensure!(
        lsn >= written,
        "sync printed {lsn}, below the compute's {written}; log:\n{log}"
    );
    let st = wait_all_at(&sks, &ttid, lsn).with_context(|| format!("sync log:\n{log}"))?;
    same_term_history(&sks, &ttid)?;
    check_wal_copies(
        &build,
        &sks,
        &ttid,
        st[0].timeline_start_lsn,
        lsn,
        scratch.path(),
    )?;
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}

#[test]
fn a_divergent_uncommitted_tail_of_an_older_term_is_cut_and_replaced() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-sync-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let sks = start_safekeepers(scratch.path(), 3, &["--peer-recovery", "off"])?;
    let ttid = new_ttid();
    let data = build.initdb(&scratch.path().join("pgdata"))?;
    let settings = ComputeSettings::plain(ttid, &pg_ports(&sks));
    let mut compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<()> {
        compute.psql("create table t (v int); insert into t select generate_series(1, 1000)")?;
        compute.stop("fast")?;
        Ok(())
    })();
    if let Err(e) = result {
        anyhow::bail!("{e:#}\n{}", compute.log_tail(40));
    }
    drop(compute);

    // A common end L1 on all three.
    let (l1, log) = build.sync_safekeepers(&data)?;
    let st = wait_all_at(&sks, &ttid, l1).with_context(|| format!("sync log:\n{log}"))?;
    let start = st[0].timeline_start_lsn;
    let dump = check_wal_copies(&build, &sks, &ttid, start, l1, scratch.path())?;
    let prev = dump.records.last().context("no records before L1")?.lsn;
    let t = st.iter().map(|s| s.term).max().context("no members")?;
    let pg_version = timeline_info(&sks[0], &ttid)?["pg_version"]
        .as_u64()
        .context("no pg_version in the timeline status")? as u32;
    let cluster = Cluster {
        pg_version,
        system_id: data.system_id,
        wal_seg_size: SEG,
    };

    // Term t+1 wins votes of members 1 and 3 but writes its WAL (never committed) only to
    // member 3; term t+2 wins members 1 and 2 and writes a shorter, different WAL to both.
    let rt = tokio::runtime::Runtime::new()?;
    let (old_end, new_end) = rt.block_on(async {
        let old = Term(t.0 + 1);
        let mut p1 = connect(&sks[0], ttid, cluster).await?;
        ensure!(
            p1.vote(old).await?.vote_given,
            "member 1 refused term {old}"
        );
        drop(p1);
        let mut p3 = connect(&sks[2], ttid, cluster).await?;
        let old_end = elect_and_write(&mut p3, old, l1, prev, cluster, "older", 40).await?;
        drop(p3);

        let new = Term(t.0 + 2);
        let mut new_end = Lsn(0);
        for sk in &sks[..2] {
            let mut p = connect(sk, ttid, cluster).await?;
            new_end = elect_and_write(&mut p, new, l1, prev, cluster, "newer", 10).await?;
            // The quorum (1 and 2) has it: commit it, as its proposer would have.
            p.append(new, new_end, Bytes::new(), new_end).await?;
            p.append_response().await?;
        }
        anyhow::Ok((old_end, new_end))
    })?;
    ensure!(old_end > new_end, "the older tail should be the longer one");
    let before: Vec<_> = sks
        .iter()
        .map(|sk| sk.timeline_status(&ttid))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        before[2].flush_lsn == old_end
            && before[2].last_log_term == Term(t.0 + 1)
            && before[..2]
                .iter()
                .all(|s| s.flush_lsn == new_end && s.last_log_term == Term(t.0 + 2)),
        "not the divergence this test means to make: {before:?}"
    );

    let (l2, log) = build.sync_safekeepers(&data)?;
    ensure!(
        l2 == new_end,
        "sync printed {l2}, not the end of the newer term {new_end}; log:\n{log}"
    );
    wait_all_at(&sks, &ttid, l2).with_context(|| format!("sync log:\n{log}"))?;
    let history = same_term_history(&sks, &ttid)?;
    ensure!(
        !history.iter().any(|e| e["term"].as_u64() == Some(t.0 + 1)),
        "the cut term {} is still in the history: {history:?}",
        t.0 + 1
    );
    let dump = check_wal_copies(&build, &sks, &ttid, start, l2, scratch.path())?;
    let after_l1: Vec<_> = dump.records.iter().filter(|r| r.lsn >= l1).collect();
    ensure!(
        !after_l1.is_empty()
            && after_l1.iter().all(|r| r.desc.contains("newer"))
            && !dump.records.iter().any(|r| r.desc.contains("older")),
        "the WAL after {l1} is not the newer term's: {after_l1:?}"
    );
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}

/// A test proposer greeted by `sk` (protocol v3, no creation).
async fn connect(
    sk: &Safekeeper,
    ttid: TenantTimelineId,
    cluster: Cluster,
) -> anyhow::Result<TestProposer> {
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    p.greet(cluster).await?;
    Ok(p)
}

/// Wins `term` on `p`'s member, elects it continuing at `at` (the member's end), and
/// writes `records` logical messages (8 KiB each, prefix `prefix`, the first with `xl_prev`
/// = `prev`) without committing them. Returns the end of that WAL.
async fn elect_and_write(
    p: &mut TestProposer,
    term: Term,
    at: Lsn,
    prev: Lsn,
    cluster: Cluster,
    prefix: &str,
    records: usize,
) -> anyhow::Result<Lsn> {
    let v = p.vote(term).await?;
    ensure!(v.vote_given && v.flush_lsn == at, "vote for {term}: {v:?}");
    let mut history = v.term_history.clone();
    history.0.push(TermLsn { term, lsn: at });
    p.elect(term, history, at).await?;
    let mut gen_ = WalGenerator::new(at, cluster.system_id, SEG, pg_major(cluster.pg_version))?;
    gen_.set_prev_record_lsn(prev);
    let mut buf = BytesMut::new();
    for _ in 0..records {
        gen_.append_logical_message(prefix, &[b'x'; 8192], &mut buf)?;
    }
    let wal = buf.freeze();
    let flushes = p.push_with_commit(term, at, &wal, at).await?;
    let end = gen_.position();
    ensure!(
        flushes.last() == Some(&end),
        "the member reported {flushes:?}, not {end}"
    );
    Ok(end)
}

/// Every member's term history (from the HTTP status), checked equal; returns it.
fn same_term_history(sks: &[Safekeeper], ttid: &TenantTimelineId) -> anyhow::Result<Vec<Value>> {
    let histories: Vec<Value> = sks
        .iter()
        .map(|sk| Ok(timeline_info(sk, ttid)?["term_history"].clone()))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        histories.iter().all(|h| h == &histories[0]),
        "the members' term histories differ: {histories:?}"
    );
    histories[0]
        .as_array()
        .cloned()
        .context("term_history is not an array")
}
