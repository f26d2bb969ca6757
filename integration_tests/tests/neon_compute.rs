//! Neon's compute (its PostgreSQL 17 fork with the `neon` extension's walproposer) as the
//! client, started the way Neon's control plane starts computes: with a safekeeper
//! generation (`neon.safekeepers = 'g#1:…'`) after the timeline was created on each member
//! with `POST /v1/tenant/timeline`. pgbench runs through the quorum; all three safekeepers
//! end at the compute's flush position.
//!
//! The build comes from `NEON_COMPUTE_DIST` (see [`integration_tests::neon`]); without it the
//! tests print one line naming the variable and pass.

use std::time::{Duration, Instant};

use anyhow::ensure;
use integration_tests::http::Api;
use integration_tests::neon::{ComputeSettings, NeonBuild, NeonCompute};
use integration_tests::sk::Safekeeper;
use serde_json::json;
use utils::{TenantId, TenantTimelineId, TimelineId};

#[test]
fn a_neon_compute_with_a_generation_streams_through_three_safekeepers() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|i| Safekeeper::start(i, &scratch.path().join(format!("sk{i}")), false))
        .collect::<anyhow::Result<_>>()?;
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

    let ports: Vec<u16> = sks.iter().map(|sk| sk.pg_port).collect();
    let settings = ComputeSettings::generation(ttid, 1, &ports);
    let compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<()> {
        compute.pgbench(&["-i", "-s", "2", "-q"])?;
        let out = compute.pgbench(&["-c", "4", "-j", "2", "-T", "5"])?;
        ensure!(out.contains("number of failed transactions: 0"), "{out}");
        let flush = compute.flush_lsn()?;
        // Every commit waited for a quorum; all three reach the compute's flush position.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st: Vec<_> = sks
                .iter()
                .map(|sk| sk.timeline_status(&ttid))
                .collect::<anyhow::Result<_>>()?;
            if st
                .iter()
                .all(|s| s.commit_lsn >= flush && s.flush_lsn == st[0].flush_lsn)
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "safekeepers did not reach {flush}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
