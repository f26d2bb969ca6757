//! `sk-bench`: measures ingest, commit latency, serving, end-to-end TPS and memory of the
//! safekeeper beside what users would run instead, in one run on this machine, and writes
//! `benchmarks.md` and its SVG plots. Run it through `scripts/bench [--quick]`, which
//! builds the release binaries it starts.
//!
//! Owns: the order of the measurements and the report. Must never: assert on timings (it
//! reports them), or run against anything but 127.0.0.1.

mod baseline;
mod crowd;
mod e2e;
mod ingest;
mod merge;
mod neon;
mod neon_build;
mod neon_profile;
mod neon_report;
mod neon_start;
mod offload;
mod plot;
mod procs;
mod report;
mod restore;
mod scale;
mod serving;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::report::Report;

/// Benchmarks of the safekeeper beside their baselines.
#[derive(Parser, Debug)]
#[command(about)]
struct Cli {
    /// Smoke run: fewer sizes, smaller totals, one repetition (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Scratch directory for data (on the filesystem to measure); wiped.
    #[arg(long, default_value = "target/bench-work")]
    work_dir: PathBuf,
    /// Where benchmarks.md and bench/*.svg go (default: docs/, or target/bench-quick
    /// with --quick).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Sections to run (ingest, latency, serving, e2e, scale, offload, restore, neon); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Repetitions of each ingest/latency/serving measurement (default 3, 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
}

/// The sizes of a run.
#[derive(Clone, Debug)]
pub struct Params {
    /// Append sizes for ingest, KiB.
    pub sizes_kib: Vec<u64>,
    /// WAL per ingest run.
    pub ingest_total: u64,
    /// Repetitions (medians are reported).
    pub reps: usize,
    /// Sequential commits for the latency figure.
    pub commits: usize,
    /// WAL stored and served.
    pub serve_total: u64,
    /// Concurrent readers.
    pub readers: usize,
    /// WAL each concurrent reader reads.
    pub reader_bytes: u64,
    /// pgbench duration per run, s.
    pub pgbench_secs: u64,
    /// pgbench scale.
    pub pgbench_scale: u32,
    /// Rounds over the three standby variants.
    pub e2e_rounds: usize,
    /// Timelines for the idle-RSS figure.
    pub timelines: usize,
    /// Proposers streaming at once into one safekeeper, one crowd per entry.
    pub crowds: Vec<usize>,
    /// Neon section: pgbench TPS duration per run, s.
    pub neon_secs: u64,
    /// Neon section: single-client latency run per run, s.
    pub neon_latency_secs: u64,
    /// Neon section: rounds over the variants.
    pub neon_rounds: usize,
    /// Neon section: `--sync-safekeepers` runs per three-safekeeper run.
    pub neon_cold_runs: usize,
    /// Neon section: strace-d `--sync-safekeepers` runs for the breakdown.
    pub neon_trace_runs: usize,
}

impl Params {
    fn new(quick: bool) -> Self {
        if quick {
            Params {
                sizes_kib: vec![8, 128],
                ingest_total: 256 << 20,
                reps: 1,
                commits: 1000,
                serve_total: 256 << 20,
                readers: 100,
                reader_bytes: 16 << 20,
                pgbench_secs: 10,
                pgbench_scale: 10,
                e2e_rounds: 1,
                timelines: 100,
                crowds: vec![1000],
                neon_secs: 8,
                neon_latency_secs: 5,
                neon_rounds: 1,
                neon_cold_runs: 5,
                neon_trace_runs: 3,
            }
        } else {
            Params {
                sizes_kib: vec![8, 16, 32, 64, 128],
                ingest_total: 1 << 30,
                reps: 3,
                commits: 10_000,
                serve_total: 1 << 30,
                readers: 100,
                reader_bytes: 64 << 20,
                pgbench_secs: 60,
                pgbench_scale: 10,
                e2e_rounds: 3,
                timelines: 1000,
                crowds: vec![1000, 10_000],
                neon_secs: 30,
                neon_latency_secs: 15,
                neon_rounds: 2,
                neon_cold_runs: 15,
                neon_trace_runs: 5,
            }
        }
    }
}

/// State shared by the sections.
pub struct Ctx {
    /// Sizes.
    pub params: Params,
    /// Scratch directory.
    pub work: PathBuf,
    /// What was found.
    pub report: Report,
    /// Peak safekeeper RSS under the ingest load (KiB; 0 = not measured).
    pub load_rss_kib: u64,
}

/// Empties (or creates) `dir` and returns it.
pub fn fresh_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// A new (tenant, timeline) pair of 32-hex ids, unique within the run.
pub fn new_ids() -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let salt = std::process::id() as u64;
    (
        format!("{:016x}{:016x}", 0xbe4c_0000_u64 + salt, n),
        format!("{:016x}{:016x}", 0x7117_0000_u64 + salt, n),
    )
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine, as the report states it.
fn machine(work: &Path) -> String {
    let w = work.display();
    let mut s = String::new();
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| CPUs (`nproc`) | {} |", sh("nproc"));
    let _ = writeln!(
        s,
        "| CPU | {} |",
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    );
    let _ = writeln!(
        s,
        "| memory | {} |",
        sh("free -h | awk '/^Mem:/ {print $2}'")
    );
    let _ = writeln!(s, "| kernel | {} |", sh("uname -sr"));
    let _ = writeln!(
        s,
        "| data filesystem | {} |",
        sh(&format!(
            "findmnt -n -o SOURCE,FSTYPE,OPTIONS -T {w} | head -1"
        ))
    );
    let _ = writeln!(
        s,
        "| `df -h` of the data dir | `{}` |",
        sh(&format!("df -h {w} | tail -1"))
    );
    let _ = writeln!(
        s,
        "| PostgreSQL | {} |",
        sh(&format!(
            "{} --version",
            procs::pg_bin("postgres").display()
        ))
    );
    let _ = writeln!(s, "| rustc | {} |", sh("rustc --version"));
    let _ = writeln!(s, "| git | {} |", sh("git rev-parse --short HEAD; git status --porcelain | wc -l | xargs printf '(+%s uncommitted files)'").replace('\n', " "));
    s
}

fn load() -> String {
    sh("cut -d' ' -f1-3 /proc/loadavg")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut params = Params::new(cli.quick);
    if let Some(r) = cli.reps {
        params.reps = r.max(1);
    }
    let out_dir = cli.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from(if cli.quick {
            "target/bench-quick"
        } else {
            "docs"
        })
    });
    std::fs::create_dir_all(&cli.work_dir)?;
    let work = cli.work_dir.canonicalize()?;
    let sections: Vec<&str> = if cli.only.is_empty() {
        vec![
            "ingest", "latency", "serving", "e2e", "scale", "offload", "restore", "neon",
        ]
    } else {
        cli.only.iter().map(String::as_str).collect()
    };
    let started = Instant::now();
    let load_before = load();
    let machine = machine(&work);
    let mut ctx = Ctx {
        params: params.clone(),
        work: work.clone(),
        report: Report::default(),
        load_rss_kib: 0,
    };
    let mut timings = Vec::new();
    for s in &sections {
        let t = Instant::now();
        eprintln!("== {s} (load {})", load());
        let r = match *s {
            "ingest" => ingest::ingest(&mut ctx),
            "latency" => ingest::latency(&mut ctx),
            "serving" => serving::serving(&mut ctx),
            "e2e" => e2e::e2e(&mut ctx),
            "scale" => scale::scale(&mut ctx),
            "offload" => offload::offload(&mut ctx),
            "restore" => restore::restore(&mut ctx),
            "neon" => neon::neon(&mut ctx),
            other => Err(anyhow::anyhow!("unknown section {other}")),
        };
        if let Err(e) = r {
            eprintln!("   section {s} FAILED: {e:#}");
            ctx.report
                .notes
                .push(format!("Section `{s}` failed in this run: {e:#}"));
        }
        timings.push(format!("{s} {:.0} s", t.elapsed().as_secs_f64()));
    }
    let load_after = load();
    let elapsed = started.elapsed();

    let plots = out_dir.join("bench");
    std::fs::create_dir_all(&plots)?;
    plot::ingest(&plots.join("ingest_throughput.svg"), &ctx.report.ingest)?;
    plot::latency(&plots.join("commit_latency.svg"), &ctx.report.latency)?;
    let mut tables = ctx.report.table();
    let mut notes = ctx.report.notes.clone();
    let previous = std::fs::read_to_string(out_dir.join("benchmarks.md")).ok();
    if let (false, Some(old)) = (cli.only.is_empty(), previous) {
        // Only some sections ran: keep the others' tables and notes from the last report.
        let mut prefixes: Vec<String> = sections.iter().map(|s| format!("Section `{s}`")).collect();
        if sections.contains(&"neon") {
            prefixes.push("Neon".into());
        }
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let new = merge::Results {
            tables: merge::parse(&format!("\n## Results\n{tables}")).tables,
            notes,
        };
        let (t, n) = merge::merge(&merge::parse(&old), &new, &prefixes);
        tables = t;
        notes = n;
        timings.push(format!(
            "the other sections' figures are kept from the previous report, whose run line was: \"{}\"",
            old.lines().find(|l| l.starts_with("Run: ")).unwrap_or("?").trim_end_matches('.')
        ));
    }
    let md = render(
        &cli,
        &params,
        (&tables, &notes),
        &machine,
        &load_before,
        &load_after,
        elapsed,
        &timings,
    );
    std::fs::write(out_dir.join("benchmarks.md"), md)?;
    eprintln!(
        "wrote {} in {:.0} s",
        out_dir.join("benchmarks.md").display(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    cli: &Cli,
    p: &Params,
    (tables, notes): (&str, &[String]),
    machine: &str,
    load_before: &str,
    load_after: &str,
    elapsed: std::time::Duration,
    timings: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `scripts/bench{}` (the `sk-bench` binary of the `bench` crate); do not edit \
         by hand, rerun it. Every figure is measured in one run on one machine, each beside its \
         baseline measured in the same run on the same filesystem; with repetitions, the figure \
         is the median, each repetition runs ours and the baseline back to back, and the ratio \
         is the median of the repetitions' own ratios (neighbours in time). The machine \
         is a shared 2-vCPU VM: read the ratios, not the absolute numbers, and treat ±20 % as \
         noise.\n",
        if cli.quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        s,
        "Run: {:.0} s ({}); load average (1/5/15 min) before: {load_before}, after: {load_after}. \
         Repetitions: {}; ingest {} MiB per run; {} sequential commits; {} MiB served; pgbench {} s × {} rounds.\n",
        elapsed.as_secs_f64(),
        timings.join(", "),
        p.reps,
        p.ingest_total >> 20,
        p.commits,
        p.serve_total >> 20,
        p.pgbench_secs,
        p.e2e_rounds
    );
    let _ = writeln!(s, "## Machine\n\n{machine}");
    let _ = writeln!(s, "## Results");
    s.push_str(tables);
    if !notes.is_empty() {
        let _ = writeln!(s, "\n### Notes from this run\n");
        for n in notes {
            let _ = writeln!(s, "* {n}");
        }
    }
    let _ = writeln!(s, "\n## Plots\n");
    let _ = writeln!(
        s,
        "![ingest throughput by append size](bench/ingest_throughput.svg)\n"
    );
    let _ = writeln!(
        s,
        "![commit latency percentiles](bench/commit_latency.svg)\n"
    );
    s.push_str(include_str!("method.md"));
    s
}
