//! Neon's compute (its PostgreSQL 17 fork with the `neon` extension's walproposer) as the
//! client, started the way Neon's control plane starts computes: with a safekeeper
//! generation (`neon.safekeepers = 'g#1:…'`) after the timeline was created on each member
//! with `POST /v1/tenant/timeline`. pgbench runs through the quorum with one member
//! SIGKILLed mid-run and restarted (no failed transaction); all three safekeepers end at the
//! compute's flush position, and the timeline read back from each with the compute's
//! `pg_receivewal` decodes with its `pg_waldump` and is byte-identical across the members.
//!
//! The build comes from `NEON_COMPUTE_DIST` (see [`integration_tests::neon`]); without it the
//! tests print one line naming the variable and pass. pgbench runs
//! `SK_NEON_PGBENCH_SECONDS` seconds (default 10).

use anyhow::ensure;
use integration_tests::http::Api;
use integration_tests::neon::{
    ComputeSettings, NeonBuild, NeonCompute, check_wal_copies, pg_ports, pgbench_seconds,
    pgbench_with_a_kill, start_safekeepers, wait_all_at_compute_flush,
};
use integration_tests::sk::Safekeeper;
use serde_json::json;
use utils::{TenantId, TenantTimelineId, TimelineId};

#[test]
fn a_neon_compute_with_a_generation_streams_through_three_safekeepers_one_killed_mid_run()
-> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let mut sks: Vec<Safekeeper> = start_safekeepers(scratch.path(), 3, &[])?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let data = build.initdb(&scratch.path().join("pgdata"))?;

    // What Neon's storage controller does first: create the timeline on every member.
    let members: Vec<_> = sks
        .iter()
        .map(|sk| json!({"id": sk.id, "host": "127.0.0.1", "pg_port": sk.pg_port}))
        .collect();
    let body = json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "mconf": {"generation": 1, "members": members, "new_members": null},
        "pg_version": 170000,
        "system_id": data.system_id,
        "wal_seg_size": 16 * 1024 * 1024,
        "start_lsn": data.start_lsn.to_string(),
        "commit_lsn": null,
    });
    for sk in &sks {
        let a = Api::new(sk.http_port).post_json("/v1/tenant/timeline", &body)?;
        ensure!(a.status == 201, "create on safekeeper {}: {a:?}", sk.id);
    }

    let settings = ComputeSettings::generation(ttid, 1, &pg_ports(&sks));
    let compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<()> {
        compute.pgbench(&["-i", "-s", "2", "-q"])?;
        pgbench_with_a_kill(&compute, &mut sks[1], pgbench_seconds())?;
        // Every commit waited for a quorum; all three reach the compute's flush position,
        // the restarted member too.
        let (flush, st) = wait_all_at_compute_flush(&compute, &sks, &ttid)?;
        ensure!(
            st.iter().all(|s| s.timeline_start_lsn == data.start_lsn),
            "timeline start is not the created one ({}): {st:?}",
            data.start_lsn
        );
        check_wal_copies(&build, &sks, &ttid, data.start_lsn, flush, scratch.path())?;
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
