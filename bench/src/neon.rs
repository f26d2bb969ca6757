//! Item 8: Neon's compute (the fork's PostgreSQL 17 with the `neon` extension, fsync on)
//! through our safekeepers beside PostgreSQL's own synchronous replication with the same
//! binaries: pgbench TPS (8 clients) and single-client commit latency (one-row INSERT per
//! transaction, `pgbench --log`) through three safekeepers vs a quorum of three streaming
//! standbys (`ANY 2 (s1,s2,s3)`), one safekeeper vs one synchronous standby, and our
//! `walproposer bridge` → three safekeepers; then the compute's cold-start step
//! (`postgres --sync-safekeepers`, see `neon_start`) and a profile of the commit path
//! (`neon_profile`).
//!
//! Every run starts from a copy of one stopped template cluster (pgbench -i), with fresh
//! safekeepers and a fresh timeline, so no run inherits another's state; the variants are
//! rotated over the rounds so a drift of the machine's load favours none.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::neon_build::{ForkNode, NeonDist, tree_cpu_secs};
use crate::procs::{Proc, Safekeeper, run, sk_list, workspace_bin};
use crate::{Ctx, fresh_dir, new_ids};

const SECTION: &str =
    "8. Neon compute (PG 17 fork, fsync on) vs PostgreSQL's synchronous standbys, same binaries";

/// What receives the compute's WAL in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The compute's walproposer → three safekeepers.
    Sk3,
    /// Three streaming standbys, `ANY 2 (s1,s2,s3)`.
    Quorum3,
    /// The compute's walproposer → one safekeeper.
    Sk1,
    /// One streaming standby, `s1`.
    Standby1,
    /// A plain primary, `walproposer bridge` → three safekeepers.
    Bridge,
    /// No standby (local commit only), for context.
    Local,
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// pgbench TPS, 8 clients.
    pub tps: f64,
    /// Single-client commit latency percentiles, ms.
    pub p50: f64,
    /// p99, ms.
    pub p99: f64,
    /// CPU seconds of the receivers (safekeepers, standbys, bridge) per 1000 transactions.
    pub replica_cpu_per_k: f64,
    /// CPU seconds of the primary's process tree per 1000 transactions.
    pub primary_cpu_per_k: f64,
}

/// The lines every primary gets, whatever receives its WAL (the README's settings for a
/// compute, with fsync on).
fn primary_conf() -> Vec<String> {
    [
        "shared_preload_libraries = 'neon'",
        "neon.pageserver_connstring = ''",
        "wal_level = logical",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "wal_log_hints = off",
        "fsync = on",
        "synchronous_commit = on",
        "restart_after_crash = off",
        "wal_sender_timeout = 5s",
        "wal_keep_size = 0",
        "max_replication_write_lag = 15MB",
        "max_replication_flush_lag = 10GB",
        "max_wal_size = 2GB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A standby's lines: the fork's heap writes Neon's WAL records, which need `neon_rmgr`.
fn standby_conf() -> Vec<String> {
    [
        "shared_preload_libraries = 'neon_rmgr'",
        "hot_standby = on",
        "fsync = on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The template: initdb, pgbench -i, the latency table, stopped cleanly.
fn template(dist: &NeonDist, dir: &Path, scale: u32) -> anyhow::Result<std::path::PathBuf> {
    let mut t = dist.initdb(&dir.join("template"), &primary_conf())?;
    t.start()?;
    run(dist
        .client("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &t.port.to_string(),
            "-U",
            "cloud_admin",
        ])
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]))
    .context("pgbench -i (fork)")?;
    t.sql("CREATE TABLE lat (x int)")?;
    t.stop("fast");
    // The copies get their own port and socket lines appended after these.
    Ok(t.data.clone())
}

/// `pgbench … -c 8 -j 2 -T secs`: (TPS, transactions).
fn pgbench_tps(dist: &NeonDist, pg: &ForkNode, secs: u64) -> anyhow::Result<(f64, f64)> {
    let out = run(dist
        .client("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "cloud_admin",
        ])
        .args(["-c", "8", "-j", "2", "-T", &secs.to_string(), "postgres"]))?;
    let tps = crate::e2e::parse_tps(&out)?;
    let n = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next()?.parse().ok())
        .unwrap_or(tps * secs as f64);
    Ok((tps, n))
}

/// The pgbench command of the latency figure (one client, one-row INSERT per transaction,
/// `--log` into `dir/lat.*`).
pub fn latency_cmd(dist: &NeonDist, pg: &ForkNode, dir: &Path, secs: u64) -> Command {
    let script = dir.join("insert.sql");
    let _ = std::fs::write(&script, "INSERT INTO lat VALUES (1);\n");
    let mut c = dist.client("pgbench");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "cloud_admin",
    ])
    .args(["-n", "-c", "1", "-j", "1", "-T", &secs.to_string()])
    .arg("-f")
    .arg(&script)
    .arg("--log")
    .arg(format!("--log-prefix={}", dir.join("lat").display()))
    .arg("postgres");
    c
}

/// Runs [`latency_cmd`]; the per-transaction latencies of its log, ms.
pub fn commit_latencies(
    dist: &NeonDist,
    pg: &ForkNode,
    dir: &Path,
    secs: u64,
) -> anyhow::Result<Vec<f64>> {
    run(&mut latency_cmd(dist, pg, dir, secs))?;
    let mut lat = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("lat.") {
            lat.extend(parse_pgbench_log(&std::fs::read_to_string(e.path())?));
            std::fs::remove_file(e.path())?;
        }
    }
    if lat.is_empty() {
        bail!("no transactions in the pgbench log");
    }
    Ok(lat)
}

/// `client_id transaction_no time_us script_no epoch epoch_us`: the latencies, ms.
pub fn parse_pgbench_log(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}

/// The `q`-quantile (0..1) of `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// What runs for one variant: the primary (or compute), and what receives its WAL.
pub struct Setup {
    /// The primary or the compute.
    pub primary: ForkNode,
    /// Standbys (standby variants).
    pub standbys: Vec<ForkNode>,
    /// Safekeepers (safekeeper and bridge variants).
    pub sks: Vec<Safekeeper>,
    /// The bridge.
    pub bridge: Option<Proc>,
}

impl Setup {
    /// Starts `v` from copies of `template` under `dir`, ready: a first commit went
    /// through the synchronous replica.
    pub fn start(
        dist: &NeonDist,
        template: &Path,
        dir: &Path,
        v: Variant,
    ) -> anyhow::Result<Setup> {
        let mut conf = primary_conf();
        let mut sks = Vec::new();
        let n_sk = match v {
            Variant::Sk3 | Variant::Bridge => 3,
            Variant::Sk1 => 1,
            _ => 0,
        };
        for i in 1..=n_sk {
            sks.push(Safekeeper::start(i, &dir.join(format!("sk{i}")))?);
        }
        let (tenant, timeline) = new_ids();
        match v {
            Variant::Sk3 | Variant::Sk1 => conf.extend([
                format!("neon.safekeepers = '{}'", sk_list(&sks)),
                format!("neon.tenant_id = '{tenant}'"),
                format!("neon.timeline_id = '{timeline}'"),
                "neon.safekeeper_proto_version = 3".to_string(),
                "synchronous_standby_names = 'walproposer'".to_string(),
            ]),
            Variant::Bridge => conf.push("synchronous_standby_names = 'walproposer'".into()),
            Variant::Quorum3 => conf.push("synchronous_standby_names = 'ANY 2 (s1,s2,s3)'".into()),
            Variant::Standby1 => conf.push("synchronous_standby_names = 's1'".into()),
            Variant::Local => conf.push("synchronous_standby_names = ''".into()),
        }
        let mut primary = ForkNode::copy_of(dist, template, &dir.join("primary/data"), &conf)?;
        let n_standby = match v {
            Variant::Quorum3 => 3,
            Variant::Standby1 => 1,
            _ => 0,
        };
        let mut standbys = Vec::new();
        for i in 1..=n_standby {
            let s = ForkNode::copy_of(
                dist,
                template,
                &dir.join(format!("s{i}/data")),
                &standby_conf(),
            )?;
            s.make_standby(&primary, &format!("s{i}"))?;
            standbys.push(s);
        }
        // The copies are written back before anything is measured.
        run(&mut Command::new("sync"))?;
        primary.start()?;
        for s in &mut standbys {
            s.start()?;
        }
        let mut bridge = None;
        if v == Variant::Bridge {
            let mut cmd = Command::new(workspace_bin("walproposer"));
            cmd.arg("bridge")
                .args(["--primary", &primary.conninfo()])
                .args(["--safekeepers", &sk_list(&sks)])
                .args(["--tenant-id", &tenant, "--timeline-id", &timeline]);
            let b = Proc::spawn("bridge", cmd, &dir.join("bridge.log"))?;
            bridge = Some(b);
        }
        if n_standby > 0 {
            primary.wait_sql(
                &format!(
                    "SELECT count(*) = {n_standby} FROM pg_stat_replication WHERE state = 'streaming'"
                ),
                Duration::from_secs(120),
            )?;
        }
        let mut setup = Setup {
            primary,
            standbys,
            sks,
            bridge,
        };
        if let Err(e) = setup.primary.sql("INSERT INTO lat VALUES (0)") {
            if let Some(b) = &mut setup.bridge {
                b.check_alive()?;
            }
            bail!(
                "{v:?}: the first commit did not go through: {e:#}\n{}",
                std::fs::read_to_string(setup.primary.log()).unwrap_or_default()
            );
        }
        Ok(setup)
    }

    /// CPU seconds so far of everything that receives WAL.
    pub fn replica_cpu(&self) -> f64 {
        let mut t: f64 = self.sks.iter().map(|s| tree_cpu_secs(s.proc.pid())).sum();
        t += self
            .standbys
            .iter()
            .filter_map(|s| s.postmaster_pid().ok())
            .map(tree_cpu_secs)
            .sum::<f64>();
        if let Some(b) = &self.bridge {
            t += tree_cpu_secs(b.pid());
        }
        t
    }

    /// CPU seconds so far of the primary's process tree.
    pub fn primary_cpu(&self) -> f64 {
        self.primary
            .postmaster_pid()
            .map(tree_cpu_secs)
            .unwrap_or(0.0)
    }
}

/// One run of `v`: latency, then TPS.
fn one_run(
    ctx: &Ctx,
    dist: &NeonDist,
    template: &Path,
    dir: &Path,
    v: Variant,
    round: usize,
    cold: Option<&mut Vec<crate::neon_start::Sample>>,
) -> anyhow::Result<RunResult> {
    let p = &ctx.params;
    let run_dir = fresh_dir(&dir.join(format!("round{round}-{v:?}")))?;
    let mut setup = Setup::start(dist, template, &run_dir, v)?;
    let lat = commit_latencies(dist, &setup.primary, &run_dir, p.neon_latency_secs)?;
    let (r0, c0) = (setup.replica_cpu(), setup.primary_cpu());
    let (tps, n) = pgbench_tps(dist, &setup.primary, p.neon_secs)?;
    let (r1, c1) = (setup.replica_cpu(), setup.primary_cpu());
    let res = RunResult {
        tps,
        p50: quantile(&lat, 0.5),
        p99: quantile(&lat, 0.99),
        replica_cpu_per_k: (r1 - r0) / n * 1000.0,
        primary_cpu_per_k: (c1 - c0) / n * 1000.0,
    };
    eprintln!(
        "  neon round {round} {v:?}: {tps:.0} tps; 1 client p50 {:.3} ms p99 {:.3} ms ({} commits); \
         CPU per 1000 tx: replicas {:.3} s, primary {:.3} s",
        res.p50,
        res.p99,
        lat.len(),
        res.replica_cpu_per_k,
        res.primary_cpu_per_k
    );
    if let Some(samples) = cold {
        // The compute stops; its timeline on the three safekeepers is caught up.
        setup.primary.stop("fast");
        samples.extend(crate::neon_start::measure(
            dist,
            &setup.primary.data,
            p.neon_cold_runs,
        )?);
    }
    drop(setup);
    std::fs::remove_dir_all(&run_dir)?;
    Ok(res)
}

/// Item 8.
pub fn neon(ctx: &mut Ctx) -> anyhow::Result<()> {
    let dir = fresh_dir(&ctx.work.join("neon"))?;
    let Some(dist) = NeonDist::find(&dir.join("dist"))? else {
        let msg = format!(
            "Section `neon` skipped: no Neon compute build ({} unset and {} absent).",
            crate::neon_build::DIST_VAR,
            crate::neon_build::DIST_DEFAULT
        );
        eprintln!("   {msg}");
        ctx.report.notes.push(msg);
        return Ok(());
    };
    let p = ctx.params.clone();
    let template = template(&dist, &dir.join("tmpl"), p.pgbench_scale)?;
    let order = [
        Variant::Sk3,
        Variant::Quorum3,
        Variant::Sk1,
        Variant::Standby1,
        Variant::Bridge,
    ];
    let mut res: Vec<Vec<RunResult>> = vec![Vec::new(); order.len()];
    let mut cold = Vec::new();
    for round in 0..p.neon_rounds {
        for k in 0..order.len() {
            let i = (k + round) % order.len();
            let v = order[i];
            let c = (v == Variant::Sk3).then_some(&mut cold);
            let r = one_run(ctx, &dist, &template, &dir, v, round, c)?;
            res[i].push(r);
        }
    }
    let local = one_run(ctx, &dist, &template, &dir, Variant::Local, 0, None)?;
    let profile = crate::neon_profile::profile(ctx, &dist, &template, &dir)?;
    let breakdown = crate::neon_start::breakdown(&dist, &template, &dir, &ctx.params)?;

    crate::neon_report::rows(ctx, SECTION, &res, &local);
    crate::neon_start::rows(ctx, SECTION, &cold, &breakdown);
    ctx.report.notes.extend(profile);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_log_and_quantiles() {
        let log = "0 0 512 0 1733400000 123\n0 1 1500 0 1733400000 999\n";
        let v = parse_pgbench_log(log);
        assert_eq!(v, vec![0.512, 1.5]);
        assert_eq!(quantile(&v, 0.5), 0.512);
        assert_eq!(quantile(&v, 0.99), 1.5);
        let w: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&w, 0.99), 99.0);
    }
}
