//! The Neon section's rows and notes (see `neon`): the TPS and single-client latency
//! figures of each variant beside its baseline, with the ratios and targets, each run's
//! figures and the CPU each side spent.

use crate::Ctx;
use crate::baseline::{median, median_ratio};
use crate::neon::RunResult;
use crate::report::{target_ge, target_le};

fn cell_tps(v: &[RunResult]) -> f64 {
    median(&v.iter().map(|r| r.tps).collect::<Vec<_>>())
}

/// Writes the rows and notes of `res` (runs per variant, in the order 3 safekeepers,
/// 3 standbys, 1 safekeeper, 1 standby, bridge) and `local` (no standby) into `section`.
pub fn rows(ctx: &mut Ctx, section: &'static str, res: &[Vec<RunResult>], local: &RunResult) {
    let p = ctx.params.clone();
    let [sk3, q3, sk1, s1, br] = [0, 1, 2, 3, 4].map(|i| res[i].clone());
    let cmd_tps = format!(
        "pgbench -c 8 -j 2 -T {} (scale {}), fork's binaries, fsync on",
        p.neon_secs, p.pgbench_scale
    );
    let cmd_lat = format!(
        "pgbench -n -c 1 -T {} -f insert.sql --log (INSERT INTO lat VALUES (1)), fsync on",
        p.neon_latency_secs
    );
    let tps_of = |v: &[RunResult]| v.iter().map(|r| r.tps).collect::<Vec<_>>();
    fn p50_of(v: &[RunResult]) -> Vec<f64> {
        v.iter().map(|r| r.p50).collect()
    }
    fn p99_of(v: &[RunResult]) -> Vec<f64> {
        v.iter().map(|r| r.p99).collect()
    }
    let tps = |x: f64| format!("{x:.0} TPS");
    let msf = |x: f64| format!("{x:.3} ms");

    // (figure, ours, baseline, the target ratio if any, the configurations compared)
    let tps_rows = [
        (
            "TPS: compute → 3 safekeepers vs 3 standbys, ANY 2 (s1,s2,s3)",
            sk3.as_slice(),
            q3.as_slice(),
            Some(1.2),
            "neon.safekeepers = sk1,sk2,sk3 vs synchronous_standby_names = 'ANY 2 (s1,s2,s3)'",
        ),
        (
            "TPS: compute → 1 safekeeper vs 1 synchronous standby",
            sk1.as_slice(),
            s1.as_slice(),
            Some(1.0),
            "neon.safekeepers = sk1 vs synchronous_standby_names = 's1'",
        ),
        (
            "TPS: plain primary → walproposer bridge → 3 safekeepers vs 3 standbys, ANY 2",
            br.as_slice(),
            q3.as_slice(),
            None,
            "synchronous_standby_names = 'walproposer' (walproposer bridge --primary … --safekeepers sk1,sk2,sk3)",
        ),
    ];
    for (name, ours, base, want, how) in tps_rows {
        let r = median_ratio(&tps_of(ours), &tps_of(base));
        ctx.report.row(
            section,
            name,
            tps(cell_tps(ours)),
            tps(cell_tps(base)),
            Some(r),
            want.map(|w| target_ge(r, w)).unwrap_or_default(),
            format!("{cmd_tps}; {how}"),
        );
    }
    // (figure, ours, baseline, p50 or p99, whether the ≤ 1.0 target applies)
    type Pick = fn(&[RunResult]) -> Vec<f64>;
    let (p50, p99): (Pick, Pick) = (p50_of, p99_of);
    let latency_rows = [
        (
            "p50, 1 safekeeper vs 1 standby",
            sk1.as_slice(),
            s1.as_slice(),
            p50,
            true,
        ),
        (
            "p50, 3 safekeepers vs 3 standbys, ANY 2",
            sk3.as_slice(),
            q3.as_slice(),
            p50,
            true,
        ),
        (
            "p99, 1 safekeeper vs 1 standby",
            sk1.as_slice(),
            s1.as_slice(),
            p99,
            true,
        ),
        (
            "p99, 3 safekeepers vs 3 standbys, ANY 2",
            sk3.as_slice(),
            q3.as_slice(),
            p99,
            true,
        ),
        (
            "p50, bridge → 3 safekeepers vs 3 standbys, ANY 2",
            br.as_slice(),
            q3.as_slice(),
            p50,
            false,
        ),
        (
            "p99, bridge → 3 safekeepers vs 3 standbys, ANY 2",
            br.as_slice(),
            q3.as_slice(),
            p99,
            false,
        ),
    ];
    for (name, ours, base, pick, targeted) in latency_rows {
        let r = median_ratio(&pick(ours), &pick(base));
        ctx.report.row(
            section,
            format!("single-client commit latency {name}"),
            msf(median(&pick(ours))),
            msf(median(&pick(base))),
            Some(r),
            if targeted {
                target_le(r, 1.0)
            } else {
                String::new()
            },
            cmd_lat.clone(),
        );
    }
    let fmt_runs = |v: &[RunResult]| {
        v.iter()
            .map(|r| format!("{:.0} TPS / p50 {:.3} / p99 {:.3} ms", r.tps, r.p50, r.p99))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let cpu = |v: &[RunResult]| {
        format!(
            "receivers {:.3} s, primary {:.3} s",
            median(&v.iter().map(|r| r.replica_cpu_per_k).collect::<Vec<_>>()),
            median(&v.iter().map(|r| r.primary_cpu_per_k).collect::<Vec<_>>())
        )
    };
    ctx.report.notes.push(format!(
        "Neon section, each run (TPS / single-client p50 / p99): 3 safekeepers [{}]; 3 standbys \
         [{}]; 1 safekeeper [{}]; 1 standby [{}]; bridge → 3 safekeepers [{}]; no standby \
         (local commit only, context) {:.0} TPS / p50 {:.3} / p99 {:.3} ms.",
        fmt_runs(&sk3),
        fmt_runs(&q3),
        fmt_runs(&sk1),
        fmt_runs(&s1),
        fmt_runs(&br),
        local.tps,
        local.p50,
        local.p99
    ));
    ctx.report.notes.push(format!(
        "Neon section, CPU seconds per 1000 pgbench transactions (8 clients; /proc utime+stime \
         of the process trees, medians): 3 safekeepers: {}; 3 standbys: {}; 1 safekeeper: {}; \
         1 standby: {}; bridge → 3 safekeepers: {}; no standby: primary {:.3} s. The machine has \
         2 CPUs shared by the primary, the receivers and pgbench.",
        cpu(&sk3),
        cpu(&q3),
        cpu(&sk1),
        cpu(&s1),
        cpu(&br),
        local.primary_cpu_per_k
    ));
}
