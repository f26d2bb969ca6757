//! Item 4: pgbench TPS on one PostgreSQL 15 primary (synchronous_commit = on, fsync on)
//! whose synchronous standby is, in turn, (a) `walproposer bridge` → three safekeepers,
//! (b) a vanilla PostgreSQL 15 standby, (c) `pg_receivewal --synchronous`, (d) the bridge →
//! one safekeeper (what the quorum of three on one disk costs); and, for context, no
//! standby at all.
//!
//! Only the standby being measured is running during its pgbench run; the variants are
//! rotated over the rounds so a drift of the machine's load does not favour one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::baseline::{median, median_ratio};
use crate::procs::{PgCluster, Proc, Safekeeper, pg_bin, run, sk_list};
use crate::report::target_ge;
use crate::serving::start_bridge;
use crate::{Ctx, fresh_dir, new_ids};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Bridge,
    Bridge1,
    Standby,
    Receivewal,
    Local,
}

impl Variant {
    fn app_name(self) -> &'static str {
        match self {
            Variant::Bridge | Variant::Bridge1 => "walproposer",
            Variant::Standby => "standby1",
            Variant::Receivewal => "receivewal",
            Variant::Local => "",
        }
    }
}

/// `tps = 1234.5 (without initial connection time)`.
pub fn parse_tps(out: &str) -> anyhow::Result<f64> {
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let v = rest.split_whitespace().next().unwrap_or("");
            return v.parse().with_context(|| format!("tps {v:?}"));
        }
    }
    bail!("no tps line in pgbench output:\n{out}")
}

fn pgbench_cmd(pg: &PgCluster, secs: u64) -> Command {
    let mut c = Command::new(pg_bin("pgbench"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
    ])
    .args(["-c", "8", "-j", "2", "-T", &secs.to_string(), "postgres"]);
    c
}

fn set_sync_standby(pg: &PgCluster, name: &str) -> anyhow::Result<()> {
    pg.sql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{name}'"
    ))?;
    pg.sql("SELECT pg_reload_conf()")?;
    if !name.is_empty() {
        pg.wait_sql(
            &format!(
                "SELECT count(*) = 1 FROM pg_stat_replication \
                 WHERE application_name = '{name}' AND sync_state = 'sync' \
                 AND flush_lsn >= pg_current_wal_flush_lsn() - 1048576"
            ),
            Duration::from_secs(300),
        )?;
    }
    Ok(())
}

/// One pgbench run with `v` as the synchronous standby: TPS.
fn one_run(
    dir: &Path,
    pg: &PgCluster,
    standby: &mut PgCluster,
    v: Variant,
    secs: u64,
    round: usize,
) -> anyhow::Result<f64> {
    // What runs for this variant; dropped (stopped) at the end.
    let mut holders: Vec<Proc> = Vec::new();
    let mut sks: Vec<Safekeeper> = Vec::new();
    let run_dir = fresh_dir(&dir.join(format!("round{round}-{v:?}")))?;
    match v {
        Variant::Bridge | Variant::Bridge1 => {
            let n = if v == Variant::Bridge { 3 } else { 1 };
            for i in 1..=n {
                sks.push(Safekeeper::start(i, &run_dir.join(format!("sk{i}")))?);
            }
            let (t, tl) = new_ids();
            holders.push(start_bridge(&run_dir, pg, &sk_list(&sks), &t, &tl)?);
        }
        Variant::Standby => standby.start()?,
        Variant::Receivewal => {
            let mut cmd = Command::new(pg_bin("pg_receivewal"));
            cmd.args([
                "-d",
                &format!("{} application_name=receivewal", pg.conninfo()),
            ])
            .arg("-D")
            .arg(run_dir.join("wal"))
            .args(["--synchronous", "--no-password"]);
            std::fs::create_dir_all(run_dir.join("wal"))?;
            holders.push(Proc::spawn(
                "pg_receivewal",
                cmd,
                &run_dir.join("receivewal.log"),
            )?);
        }
        Variant::Local => {}
    }
    set_sync_standby(pg, v.app_name())?;
    let out = run(&mut pgbench_cmd(pg, secs));
    set_sync_standby(pg, "")?;
    for h in &mut holders {
        h.stop();
    }
    drop(holders);
    drop(sks);
    if v == Variant::Standby {
        standby.stop();
    }
    if matches!(v, Variant::Bridge | Variant::Bridge1) {
        pg.sql("SELECT pg_drop_replication_slot('walproposer')")?;
    }
    std::fs::remove_dir_all(&run_dir)?;
    let tps = parse_tps(&out?)?;
    eprintln!("  e2e round {round} {v:?}: {tps:.0} tps");
    Ok(tps)
}

/// Item 4.
pub fn e2e(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let dir = fresh_dir(&ctx.work.join("e2e"))?;
    let conf: Vec<String> = [
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "fsync = on",
        "synchronous_commit = on",
        "max_wal_size = 2GB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut pg = PgCluster::init(&dir.join("primary").join("data"), &conf)?;
    pg.start()?;
    run(Command::new(pg_bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-q", "-s", &p.pgbench_scale.to_string(), "postgres"]))
    .context("pgbench -i")?;
    let standby_dir = dir.join("standby");
    std::fs::create_dir_all(&standby_dir)?;
    crate::procs::give_to_pg(&standby_dir)?;
    let mut standby =
        PgCluster::standby_of(&pg, &standby_dir.join("data"), &["fsync = on".into()])?;
    // pg_basebackup -R wrote a primary_conninfo; name the standby so the primary can list it.
    let auto = standby.data.join("postgresql.auto.conf");
    let mut s = std::fs::read_to_string(&auto)?;
    s.push_str(&format!(
        "primary_conninfo = '{} application_name=standby1'\n",
        pg.conninfo()
    ));
    std::fs::write(&auto, s)?;
    crate::procs::give_to_pg(&standby.data)?;

    let order = [
        Variant::Bridge,
        Variant::Standby,
        Variant::Receivewal,
        Variant::Bridge1,
    ];
    let (mut bridge, mut vanilla, mut recv, mut bridge1) = (vec![], vec![], vec![], vec![]);
    for round in 0..p.e2e_rounds {
        for k in 0..order.len() {
            let v = order[(k + round) % order.len()];
            let tps = one_run(&dir, &pg, &mut standby, v, p.pgbench_secs, round)?;
            match v {
                Variant::Bridge => bridge.push(tps),
                Variant::Bridge1 => bridge1.push(tps),
                Variant::Standby => vanilla.push(tps),
                Variant::Receivewal => recv.push(tps),
                Variant::Local => {}
            }
        }
    }
    let local = one_run(&dir, &pg, &mut standby, Variant::Local, p.pgbench_secs, 0)?;
    let sec = "4. End-to-end pgbench (8 clients, synchronous_commit = on)";
    let secs = p.pgbench_secs;
    let cmd = format!(
        "pgbench -c 8 -j 2 -T {secs} (scale {}), synchronous_standby_names = ",
        p.pgbench_scale
    );
    let (b, v, r, b1) = (
        median(&bridge),
        median(&vanilla),
        median(&recv),
        median(&bridge1),
    );
    // The ratio: the median of each round's, whose runs were close in time.
    let bv = median_ratio(&bridge, &vanilla);
    let tps = |x: f64| format!("{x:.0} TPS");
    ctx.report.row(
        sec,
        "(a) bridge → 3 safekeepers vs (b) vanilla PG 15 standby",
        tps(b),
        tps(v),
        Some(bv),
        target_ge(bv, 0.8),
        format!("{cmd}'walproposer' (walproposer bridge --primary … --safekeepers sk1,sk2,sk3) vs 'standby1'"),
    );
    ctx.report.row(
        sec,
        "(a) bridge → 3 safekeepers vs (c) pg_receivewal --synchronous",
        tps(b),
        tps(r),
        Some(median_ratio(&bridge, &recv)),
        "",
        format!("{cmd}'receivewal' (pg_receivewal --synchronous -D <dir>)"),
    );
    ctx.report.row(
        sec,
        "(d) bridge → 1 safekeeper vs (b) vanilla PG 15 standby",
        tps(b1),
        tps(v),
        Some(median_ratio(&bridge1, &vanilla)),
        "",
        format!(
            "{cmd}'walproposer' (walproposer bridge --primary … --safekeepers sk1) vs 'standby1'"
        ),
    );
    ctx.report.row(
        sec,
        "(a) bridge → 3 safekeepers vs no standby (synchronous_commit = on, local only)",
        tps(b),
        tps(local),
        Some(b / local),
        "",
        format!("{cmd}''"),
    );
    ctx.report.notes.push(format!(
        "End-to-end runs per variant (TPS): bridge → 3 safekeepers {bridge:.0?}, bridge → 1 \
         safekeeper {bridge1:.0?}, vanilla standby {vanilla:.0?}, pg_receivewal --synchronous \
         {recv:.0?}, no standby {local:.0}."
    ));
    standby.stop();
    pg.stop();
    drop(standby);
    drop(pg);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_tps() {
        let out = "latency average = 4.1 ms\ntps = 1950.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(out).unwrap(), 1950.123456);
        assert!(parse_tps("nothing").is_err());
    }
}
