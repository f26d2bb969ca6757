//! Items 1 and 2: ingest throughput by append size into one and three safekeepers, beside
//! the disk's sequential write + fdatasync bandwidth; commit latency of isolated small
//! records, beside one fdatasync + one loopback round trip.
//!
//! Every figure is the median of `reps` runs, and each repetition measures the baseline
//! and ours back to back, so a ratio compares neighbours in time.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::baseline::{self, median, median_ratio, percentile};
use crate::procs::{Safekeeper, describe, rss_kib, run, sk_list, workspace_bin};
use crate::report::{IngestPoint, LatencySeries, mb_s, ms, target_ge, target_le};
use crate::{Ctx, fresh_dir, new_ids};

/// What `walproposer generate` printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenOut {
    /// MB/s.
    pub throughput: f64,
    /// Commit latency percentiles.
    pub p50: Duration,
    /// p99.
    pub p99: Duration,
    /// p99.9.
    pub p999: Duration,
    /// max.
    pub max: Duration,
}

/// Parses `throughput: X MB/s` and `commit latency: p50 A ms, p99 B ms, p99.9 C ms, max D ms`.
pub fn parse_generate(out: &str) -> anyhow::Result<GenOut> {
    let mut g = GenOut::default();
    let mut seen = (false, false);
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("throughput:") {
            let v = rest.trim().trim_end_matches("MB/s").trim();
            g.throughput = v.parse().with_context(|| format!("throughput {v:?}"))?;
            seen.0 = true;
        }
        if let Some(rest) = line.strip_prefix("commit latency:") {
            let mut vals = Vec::new();
            for part in rest.split(',') {
                let num = part
                    .split_whitespace()
                    .nth(1)
                    .with_context(|| format!("latency part {part:?}"))?;
                let v: f64 = num.parse().with_context(|| format!("latency {num:?}"))?;
                vals.push(Duration::from_secs_f64(v / 1e3));
            }
            if vals.len() != 4 {
                bail!("expected p50, p99, p99.9 and max in {line:?}");
            }
            (g.p50, g.p99, g.p999, g.max) = (vals[0], vals[1], vals[2], vals[3]);
            seen.1 = true;
        }
    }
    if !(seen.0 && seen.1) {
        bail!("no throughput/latency lines in generate's output:\n{out}");
    }
    Ok(g)
}

/// The generate command line as shown in the report (placeholders for ports and ids).
fn shown(n: usize, args: &[String]) -> String {
    let sks = (1..=n)
        .map(|i| format!("<sk{i}>"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "walproposer generate --safekeepers {sks} --tenant-id <T> --timeline-id <TL> {}",
        args.join(" ")
    )
}

/// Starts `n` fresh safekeepers under `dir` and runs generate with `args` against them.
/// `rss_peak`, if given, receives the highest RSS (KiB) of the first safekeeper seen
/// while the load ran.
fn generate_on_fresh(
    ctx: &Ctx,
    n: usize,
    args: &[String],
    rss_peak: Option<&AtomicU64>,
) -> anyhow::Result<GenOut> {
    let dir = fresh_dir(&ctx.work.join("ingest"))?;
    let sks = (1..=n)
        .map(|i| Safekeeper::start(i as u64, &dir.join(format!("sk{i}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (tenant, timeline) = new_ids();
    let mut cmd = Command::new(workspace_bin("walproposer"));
    cmd.arg("generate")
        .args(["--safekeepers", &sk_list(&sks)])
        .args(["--tenant-id", &tenant, "--timeline-id", &timeline])
        .args(args)
        .env("RUST_LOG", "warn");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_peak.map(|_| {
        let pid = sks[0].proc.pid();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    });
    let out = run(&mut cmd);
    stop.store(true, Ordering::Relaxed);
    if let (Some(h), Some(peak)) = (sampler, rss_peak) {
        peak.fetch_max(h.join().unwrap_or(0), Ordering::Relaxed);
    }
    let out = out.with_context(|| {
        format!(
            "{}\nsafekeeper log:\n{}",
            describe(&cmd),
            sks[0].proc.log_tail()
        )
    })?;
    drop(sks);
    std::fs::remove_dir_all(&dir)?;
    parse_generate(&out)
}

/// Item 1.
pub fn ingest(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let total = p.ingest_total;
    let base_dir = fresh_dir(&ctx.work.join("disk"))?;
    let rss_peak = AtomicU64::new(0);
    for &kib in &p.sizes_kib {
        let chunk = (kib * 1024) as usize;
        let args: Vec<String> = [
            "--bytes",
            &format!("{}M", total >> 20),
            "--record-size",
            "8k",
            "--append-size",
            &format!("{kib}k"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (mut disk, mut one, mut three) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..p.reps {
            disk.push(baseline::seq_write_fdatasync(&base_dir, total, chunk)?);
            let peak = (kib == 128).then_some(&rss_peak);
            one.push(generate_on_fresh(ctx, 1, &args, peak)?.throughput);
            three.push(generate_on_fresh(ctx, 3, &args, None)?.throughput);
            eprintln!(
                "  ingest {kib:>3} KiB rep {rep}: disk {:.0}, 1 sk {:.0}, 3 sk {:.0} MB/s",
                disk[rep], one[rep], three[rep]
            );
        }
        let pt = IngestPoint {
            kib,
            disk: median(&disk),
            one: median(&one),
            three: median(&three),
        };
        let dd = format!(
            "dd if=/dev/zero of=<datadir fs>/f bs={kib}k count={} conv=fdatasync",
            total / chunk as u64
        );
        let r1 = median_ratio(&one, &disk);
        ctx.report.row(
            "1. Ingest (fsync on)",
            format!("{kib} KiB appends → 1 safekeeper"),
            mb_s(pt.one),
            format!("{} (disk: seq write + fdatasync)", mb_s(pt.disk)),
            Some(r1),
            target_ge(r1, 0.9),
            format!("{}  vs  {dd}", shown(1, &args)),
        );
        let thirds: Vec<f64> = disk.iter().map(|d| d / 3.0).collect();
        let r3 = median_ratio(&three, &thirds);
        ctx.report.row(
            "1. Ingest (fsync on)",
            format!("{kib} KiB appends → 3 safekeepers, one disk"),
            mb_s(pt.three),
            format!("{} (disk / 3)", mb_s(pt.disk / 3.0)),
            Some(r3),
            target_ge(r3, 0.8),
            shown(3, &args),
        );
        ctx.report.ingest.push(pt);
    }
    ctx.load_rss_kib = rss_peak.load(Ordering::Relaxed);
    std::fs::remove_dir_all(&base_dir)?;
    Ok(())
}

/// Item 2.
pub fn latency(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let n = p.commits;
    const RECORD: usize = 100;
    let args: Vec<String> = [
        "--sequential",
        "--records",
        &n.to_string(),
        "--record-size",
        &RECORD.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let base_dir = fresh_dir(&ctx.work.join("disk"))?;
    let mut runs3 = Vec::new();
    let mut runs1 = Vec::new();
    let mut fsync_all = Vec::new();
    let mut floor3_all = Vec::new();
    let mut rtt_all = Vec::new();
    // Host CPU steal during each kind of run (see `baseline::steal_time`).
    let (mut steal_base, mut steal3, mut steal1) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let stolen = |f: &mut dyn FnMut() -> anyhow::Result<()>, acc: &mut Duration| {
        let before = baseline::steal_time();
        let r = f();
        if let (Some(a), Some(b)) = (before, baseline::steal_time()) {
            *acc += b.saturating_sub(a);
        }
        r
    };
    for rep in 0..p.reps {
        // A logical message of 100 bytes is a ~160-byte record: what one commit writes.
        let (mut f, mut f3, mut r) = (Vec::new(), Vec::new(), Vec::new());
        stolen(
            &mut || {
                f = baseline::fdatasync_latencies(&base_dir, n, 160)?;
                f3 = baseline::second_of_three_fdatasyncs(&base_dir, n, 160)?;
                r = baseline::loopback_rtts(n, 128)?;
                Ok(())
            },
            &mut steal_base,
        )?;
        stolen(
            &mut || {
                runs3.push(generate_on_fresh(ctx, 3, &args, None)?);
                Ok(())
            },
            &mut steal3,
        )?;
        stolen(
            &mut || {
                runs1.push(generate_on_fresh(ctx, 1, &args, None)?);
                Ok(())
            },
            &mut steal1,
        )?;
        eprintln!(
            "  latency rep {rep}: fdatasync p50 {}, 2nd of 3 {}, rtt p50 {}, 3 sk p50 {}, 1 sk p50 {}",
            ms(percentile(&f, 50.0)),
            ms(percentile(&f3, 50.0)),
            ms(percentile(&r, 50.0)),
            ms(runs3[rep].p50),
            ms(runs1[rep].p50)
        );
        fsync_all.push(f);
        floor3_all.push(f3);
        rtt_all.push(r);
    }
    std::fs::remove_dir_all(&base_dir)?;
    // Medians over repetitions of each percentile.
    let med = |v: Vec<Duration>| {
        Duration::from_secs_f64(median(
            &v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        ))
    };
    let pct = |runs: &[Vec<Duration>], q: f64| med(runs.iter().map(|r| percentile(r, q)).collect());
    let base = |q: f64| pct(&fsync_all, q) + pct(&rtt_all, q);
    let floor3 = |q: f64| pct(&floor3_all, q) + pct(&rtt_all, q);
    let ours3 = |f: fn(&GenOut) -> Duration| med(runs3.iter().map(f).collect());
    let ours1 = |f: fn(&GenOut) -> Duration| med(runs1.iter().map(f).collect());
    let cmd3 = shown(3, &args);
    let cmd1 = shown(1, &args);
    let sec = "2. Commit latency (one 100-byte record at a time, fsync on)";
    for (label, q, o3, o1) in [
        ("p50", 50.0, ours3(|g| g.p50), ours1(|g| g.p50)),
        ("p99", 99.0, ours3(|g| g.p99), ours1(|g| g.p99)),
        ("p99.9", 99.9, ours3(|g| g.p999), ours1(|g| g.p999)),
    ] {
        let b = base(q);
        let ratio = o3.as_secs_f64() / b.as_secs_f64();
        ctx.report.row(
            sec,
            format!("{label}, quorum of 3 ({n} commits)"),
            ms(o3),
            format!(
                "{} (fdatasync {} + loopback RTT {})",
                ms(b),
                ms(pct(&fsync_all, q)),
                ms(pct(&rtt_all, q))
            ),
            Some(ratio),
            if label == "p50" {
                target_le(ratio, 1.5)
            } else {
                String::new()
            },
            cmd3.clone(),
        );
        let f3 = floor3(q);
        ctx.report.row(
            sec,
            format!("{label}, quorum of 3, against one disk's floor for three"),
            ms(o3),
            format!(
                "{} (2nd of 3 concurrent fdatasyncs {} + loopback RTT {})",
                ms(f3),
                ms(pct(&floor3_all, q)),
                ms(pct(&rtt_all, q))
            ),
            Some(o3.as_secs_f64() / f3.as_secs_f64()),
            "",
            cmd3.clone(),
        );
        let ratio1 = o1.as_secs_f64() / b.as_secs_f64();
        ctx.report.row(
            sec,
            format!("{label}, one safekeeper"),
            ms(o1),
            ms(b),
            Some(ratio1),
            if label == "p50" {
                target_le(ratio1, 1.5)
            } else {
                String::new()
            },
            cmd1.clone(),
        );
    }
    let tail1 = ours1(|g| g.p999).as_secs_f64() / ours1(|g| g.p50).as_secs_f64();
    let tail3 = ours3(|g| g.p999).as_secs_f64() / ours3(|g| g.p50).as_secs_f64();
    ctx.report.row(
        sec,
        "p99.9 / p50, one safekeeper",
        format!("{tail1:.1}"),
        "—",
        None,
        target_le(tail1, 5.0),
        cmd1.clone(),
    );
    ctx.report.row(
        sec,
        "p99.9 / p50, quorum of 3",
        format!("{tail3:.1}"),
        "—",
        None,
        target_le(tail3, 5.0),
        cmd3.clone(),
    );
    ctx.report.notes.push(format!(
        "Host CPU steal (`/proc/stat`) during the latency runs, over {} repetitions: \
         baselines {} ms, quorum of 3 {} ms, one safekeeper {} ms. The VM loses its CPUs for \
         ~10 ms about every 100 ms when both vCPUs are busy; a commit in flight then takes \
         that long, whatever it was doing (see \"Where the targets are missed\").",
        p.reps,
        steal_base.as_millis(),
        steal3.as_millis(),
        steal1.as_millis()
    ));
    ctx.report.latency = vec![
        LatencySeries {
            name: "quorum of 3 safekeepers".into(),
            points: vec![
                ("p50", ours3(|g| g.p50)),
                ("p99", ours3(|g| g.p99)),
                ("p99.9", ours3(|g| g.p999)),
                ("max", ours3(|g| g.max)),
            ],
        },
        LatencySeries {
            name: "one safekeeper".into(),
            points: vec![
                ("p50", ours1(|g| g.p50)),
                ("p99", ours1(|g| g.p99)),
                ("p99.9", ours1(|g| g.p999)),
                ("max", ours1(|g| g.max)),
            ],
        },
        LatencySeries {
            name: "floor for 3 on one disk: 2nd of 3 fdatasyncs + RTT".into(),
            points: vec![
                ("p50", floor3(50.0)),
                ("p99", floor3(99.0)),
                ("p99.9", floor3(99.9)),
                ("max", floor3(100.0)),
            ],
        },
        LatencySeries {
            name: "baseline: fdatasync + loopback RTT".into(),
            points: vec![
                ("p50", base(50.0)),
                ("p99", base(99.0)),
                ("p99.9", base(99.9)),
                ("max", base(100.0)),
            ],
        },
    ];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generate_output() {
        let out = "term:            1\nthroughput:      523.4 MB/s\n\
                   commit latency:  p50 0.250 ms, p99 1.500 ms, p99.9 3.000 ms, max 9.000 ms\n";
        let g = parse_generate(out).unwrap();
        assert_eq!(g.throughput, 523.4);
        assert_eq!(g.p50, Duration::from_micros(250));
        assert_eq!(g.max, Duration::from_millis(9));
        assert!(parse_generate("nothing").is_err());
    }
}
