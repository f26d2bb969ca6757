//! Neon's compute with a plain safekeeper list (`neon.safekeepers = 'h:p,h:p,h:p'`, no
//! create call: its greeting creates the timeline), once per proposer protocol version
//! (`neon.safekeeper_proto_version` 3 and 2). `pgbench -i`, then pgbench with one
//! safekeeper SIGKILLed a third of the way in and restarted at two thirds: no failed
//! transaction. At the end all three safekeepers are at the compute's flush position, and
//! the whole timeline read back from each with the compute's `pg_receivewal` decodes with its
//! `pg_waldump` and is byte-identical across the members.
//!
//! The build comes from `NEON_COMPUTE_DIST` (see [`integration_tests::neon`]); without it the
//! tests print one line naming the variable and pass. pgbench runs
//! `SK_NEON_PGBENCH_SECONDS` seconds (default 10; the full run is 20).

use anyhow::ensure;
use integration_tests::neon::{
    ComputeSettings, NeonBuild, NeonCompute, check_wal_copies, pg_ports, pgbench_seconds,
    pgbench_with_a_kill, start_safekeepers, wait_all_at_compute_flush,
};
use utils::{TenantId, TenantTimelineId, TimelineId};

#[test]
fn protocol_v3_survives_a_killed_safekeeper() -> anyhow::Result<()> {
    plain_list_with_a_kill(3)
}

#[test]
fn protocol_v2_survives_a_killed_safekeeper() -> anyhow::Result<()> {
    plain_list_with_a_kill(2)
}

fn plain_list_with_a_kill(proto_version: u32) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-plain-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let mut sks = start_safekeepers(scratch.path(), 3, &[])?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let data = build.initdb(&scratch.path().join("pgdata"))?;
    let settings = ComputeSettings::plain(ttid, &pg_ports(&sks)).with_proto_version(proto_version);
    let compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let result = (|| -> anyhow::Result<()> {
        compute.pgbench(&["-i", "-s", "2", "-q"])?;
        pgbench_with_a_kill(&compute, &mut sks[2], pgbench_seconds())?;
        let (flush, st) = wait_all_at_compute_flush(&compute, &sks, &ttid)?;
        let start = st[0].timeline_start_lsn;
        ensure!(
            start.is_valid() && st.iter().all(|s| s.timeline_start_lsn == start),
            "the members disagree on the timeline start: {st:?}"
        );
        check_wal_copies(&build, &sks, &ttid, start, flush, scratch.path())?;
        Ok(())
    })();
    if let Err(e) = result {
        anyhow::bail!("protocol v{proto_version}: {e:#}\n{}", compute.log_tail(40));
    }
    drop(compute);
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}
