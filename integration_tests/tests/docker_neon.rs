//! Neon's compute in containers: docker-compose.yml's `neon` profile (service `neon-compute`,
//! image `safekeeper-neon-compute:local` built by scripts/docker/build from
//! `NEON_COMPUTE_DIST`) streams through sk1..sk3 by their service names. The compute starts
//! with a generation, as Neon's control plane starts computes: its entrypoint first creates
//! the timeline on the three over their HTTP API. `scripts/docker/check --neon` runs pgbench
//! through it (no failed transaction) and reads TIMELINE_STATUS of its timeline; then every
//! safekeeper must have flushed and committed the compute's flush LSN, and hold generation 1
//! with members {1,2,3}. Then a clean restart of the compute (its entrypoint resumes at the
//! quorum's end of WAL): the data is there and a commit goes through the quorum again.
//!
//! Owns: this scenario. Must never: leave its project behind (a [`docker_util::Stack`],
//! removed with `down -v` when it ends) or run beside another docker scenario. It skips,
//! loudly, when `docker info` fails or when the image could not be built (no Neon compute
//! build: set `NEON_COMPUTE_DIST`, as .ci/run does).
//!
//! Knobs: `SK_NEON_CHECK_SECONDS` (pgbench duration, default 10).

// Shared with docker_faults, which uses the rest of it.
#[allow(dead_code)]
mod docker_util;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use docker_util::{
    Stack, docker, docker_unavailable, ensure_images, knob, repo_root, run_bounded, serial,
    sweep_stale_projects,
};
use integration_tests::pg_bin;
use integration_tests::prometheus::http_get;
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

const IMAGE: &str = "safekeeper-neon-compute:local";

/// SQL on the Neon compute, with this machine's psql on its published port.
fn compute_sql(s: &Stack, sql: &str) -> anyhow::Result<String> {
    run_bounded(
        Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(s.neon_compute_port().to_string())
            .args(["-U", "cloud_admin", "-d", "postgres", "-c", sql]),
        Duration::from_secs(60),
    )
}

/// Waits until every safekeeper has flushed and committed the compute's flush LSN on its
/// timeline.
fn wait_all_at_flush(s: &Stack, ttid: &TenantTimelineId) -> anyhow::Result<Lsn> {
    let flush: Lsn = compute_sql(s, "SELECT pg_current_wal_flush_lsn()")?.parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st: Vec<_> = (0..3).map(|i| s.status_of(i, Some(ttid))).collect();
        if st.iter().all(|r| {
            r.as_ref()
                .is_ok_and(|st| st.flush_lsn >= flush && st.commit_lsn >= flush)
        }) {
            return Ok(flush);
        }
        if Instant::now() > deadline {
            bail!("the safekeepers did not all reach the compute's flush LSN {flush}: {st:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn neon_profile_compute_with_generation_pgbench_reaches_all_three() -> anyhow::Result<()> {
    let name = "neon_profile";
    if let Some(why) = docker_unavailable() {
        eprintln!(
            "\n!!!!!!!! SKIPPED docker_neon::{name}: `docker info` fails, so Neon's compute was \
             NOT tested in containers !!!!!!!!\n{why}\n"
        );
        return Ok(());
    }
    let _one_at_a_time = serial()?;
    sweep_stale_projects();
    ensure_images()?;
    if docker(&["image", "inspect", IMAGE]).is_err() {
        eprintln!(
            "\n!!!!!!!! SKIPPED docker_neon::{name}: image {IMAGE} was not built (no Neon \
             compute build: set NEON_COMPUTE_DIST, see scripts/docker/build), so Neon's compute \
             was NOT tested in containers !!!!!!!!\n"
        );
        return Ok(());
    }
    let started = Instant::now();
    let stack = Stack::with_profiles("neon", 11, &["neon"])?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let res = body(&stack, &ttid);
    eprintln!("docker_neon::{name}: {:.1?}", started.elapsed());
    res.map_err(|e| {
        let logs = stack.logs();
        e.context(format!(
            "{name} failed; the containers' last log lines:\n{logs}\n"
        ))
    })
}

fn body(s: &Stack, ttid: &TenantTimelineId) -> anyhow::Result<()> {
    let seconds = knob("SK_NEON_CHECK_SECONDS", 10);
    let mut cmd = Command::new(repo_root().join("scripts/docker/check"));
    cmd.arg("--neon")
        .envs(s.env())
        .env("SK_NEON_TENANT_ID", ttid.tenant_id.to_string())
        .env("SK_NEON_TIMELINE_ID", ttid.timeline_id.to_string())
        .env("SK_NEON_GENERATION", "1")
        .env("SK_CHECK_SECONDS", seconds.to_string());
    let out = run_bounded(&mut cmd, Duration::from_secs(seconds + 300))?;
    eprintln!("{out}");
    ensure!(
        out.contains("number of failed transactions: 0 "),
        "pgbench through the Neon compute had failures:\n{out}"
    );
    ensure!(
        out.contains("OK: all three safekeepers report commit_lsn"),
        "scripts/docker/check --neon did not report OK:\n{out}"
    );

    // Independently of the script: every safekeeper reaches the compute's flush LSN on the
    // compute's timeline.
    let before = wait_all_at_flush(s, ttid)?;

    // The timeline was created with generation 1 and members {1,2,3} by the entrypoint.
    let path = format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    );
    for i in 0..3 {
        let (code, text) = http_get(&s.http_addr(i), &path)?;
        ensure!(code == 200, "sk{}: HTTP {code}: {text}", i + 1);
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let m = &v["mconf"];
        let ids: Vec<u64> = m["members"]
            .as_array()
            .with_context(|| format!("no members in {text}"))?
            .iter()
            .filter_map(|x| x["id"].as_u64())
            .collect();
        ensure!(
            m["generation"].as_u64() == Some(1) && ids == [1, 2, 3],
            "sk{}: expected generation 1 with members [1, 2, 3]: {text}",
            i + 1
        );
    }

    // A clean restart (fast shutdown, start): the entrypoint resumes at the quorum's end of
    // WAL; the data is there and commits go through the quorum again.
    let rows = compute_sql(s, "SELECT count(*) FROM pgbench_history")?;
    s.compose(&["restart", "--timeout", "30", "neon-compute"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Err(e) = compute_sql(s, "INSERT INTO docker_check VALUES (now())") {
        ensure!(
            Instant::now() < deadline,
            "no commit through the restarted Neon compute: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let after_rows = compute_sql(s, "SELECT count(*) FROM pgbench_history")?;
    ensure!(
        after_rows == rows,
        "pgbench_history had {rows} rows before the restart, {after_rows} after"
    );
    let after = wait_all_at_flush(s, ttid)?;
    ensure!(
        after > before,
        "no WAL after the restart: {before} -> {after}"
    );
    Ok(())
}
