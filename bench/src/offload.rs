//! Item 6: WAL offload. Ingest into three safekeepers (one disk) with offload to a
//! `file://` archive on the same filesystem beside the same ingest without it, back to
//! back in each repetition; and how fast one safekeeper uploads a backlog (WAL written
//! without offload, then the safekeeper restarted with `--remote-storage`), with the
//! compression ratio zstd reaches on that WAL.
//!
//! Every figure is the median of `reps` runs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use utils::Lsn;

use crate::baseline::{median, median_ratio};
use crate::ingest::parse_generate;
use crate::procs::{Safekeeper, describe, generated_end, run, wait_backup, workspace_bin};
use crate::report::{mb_s, target_ge};
use crate::{Ctx, fresh_dir, new_ids};

const SEG: u64 = 16 << 20;

fn generate_args(total: u64) -> Vec<String> {
    [
        "--bytes",
        &format!("{}M", total >> 20),
        "--record-size",
        "8k",
        "--append-size",
        "128k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `1@addr,2@addr,…`: a membership configuration, so peers find each other.
fn members(sks: &[Safekeeper]) -> String {
    sks.iter()
        .enumerate()
        .map(|(i, s)| format!("{}@{}", i + 1, s.addr()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs generate against `sks`; its output.
fn generate(sks: &[Safekeeper], list: &str, total: u64) -> anyhow::Result<String> {
    let (tenant, timeline) = new_ids();
    let mut cmd = Command::new(workspace_bin("walproposer"));
    cmd.arg("generate")
        .args(["--safekeepers", list])
        .args(["--tenant-id", &tenant, "--timeline-id", &timeline])
        .args(generate_args(total))
        .env("RUST_LOG", "warn");
    run(&mut cmd).with_context(|| {
        format!(
            "{}\nsafekeeper log:\n{}",
            describe(&cmd),
            sks[0].proc.log_tail()
        )
    })
}

/// Ingest MB/s into three fresh safekeepers, with or without offload.
fn three(work: &Path, total: u64, offload: bool) -> anyhow::Result<f64> {
    let dir = fresh_dir(&work.join("offload"))?;
    let url = format!("file://{}", dir.join("archive").display());
    let mut extra = vec!["--peer-status-interval", "1"];
    if offload {
        extra.extend(["--remote-storage", &url]);
    }
    let sks = (1..=3)
        .map(|i| Safekeeper::start_with_args(i, &dir.join(format!("sk{i}")), &extra))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = generate(&sks, &members(&sks), total)?;
    drop(sks);
    std::fs::remove_dir_all(&dir)?;
    Ok(parse_generate(&out)?.throughput)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// Uploads of a backlog: (MB/s of WAL, compressed/original).
fn catch_up(work: &Path, total: u64, compression: &str) -> anyhow::Result<(f64, f64)> {
    let dir = fresh_dir(&work.join("offload"))?;
    let data = dir.join("sk1");
    let sk = Safekeeper::start(1, &data)?;
    let out = generate(std::slice::from_ref(&sk), &sk.addr(), total)?;
    drop(sk);
    let end = generated_end(&out)?;
    let archive = dir.join("archive");
    let url = format!("file://{}", archive.display());
    let sk = Safekeeper::start_with_args(
        1,
        &data,
        &[
            "--remote-storage",
            &url,
            "--backup-compression",
            compression,
        ],
    )?;
    let t = Instant::now();
    let want = Lsn(end.0 / SEG * SEG);
    wait_backup(sk.port, want)?;
    let secs = t.elapsed().as_secs_f64();
    drop(sk);
    // The first segment starts at the timeline start (0/1000000 for generate).
    let wal = want.0 - SEG;
    let stored = dir_bytes(&archive);
    std::fs::remove_dir_all(&dir)?;
    Ok((wal as f64 / 1e6 / secs, stored as f64 / wal as f64))
}

/// Item 6.
pub fn offload(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let total = p.ingest_total;
    let (mut off, mut on, mut up, mut ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut plain = Vec::new();
    for rep in 0..p.reps {
        // Alternating which goes first, so neither always gets the warmer (or the
        // noisier) slot.
        if rep % 2 == 0 {
            off.push(three(&ctx.work, total, false)?);
            on.push(three(&ctx.work, total, true)?);
        } else {
            on.push(three(&ctx.work, total, true)?);
            off.push(three(&ctx.work, total, false)?);
        }
        let (mbs, r) = catch_up(&ctx.work, total, "zstd")?;
        up.push(mbs);
        ratio.push(r);
        plain.push(catch_up(&ctx.work, total, "none")?.0);
        eprintln!(
            "  offload rep {rep}: ingest off {:.0}, on {:.0} MB/s; backlog upload zstd {:.0} MB/s (stored {:.4} of the WAL), plain {:.0} MB/s",
            off[rep], on[rep], up[rep], ratio[rep], plain[rep]
        );
    }
    let r = median_ratio(&on, &off);
    let args = generate_args(total).join(" ");
    ctx.report.row(
        "6. Offload (fsync on, file:// archive on the same disk)",
        "ingest, 128 KiB appends → 3 safekeepers with offload",
        mb_s(median(&on)),
        format!("{} (the same without offload)", mb_s(median(&off))),
        Some(r),
        target_ge(r, 0.9),
        format!(
            "walproposer generate --safekeepers 1@<sk1>,2@<sk2>,3@<sk3> {args}; safekeepers with and without --remote-storage file://<dir>"
        ),
    );
    ctx.report.row(
        "6. Offload (fsync on, file:// archive on the same disk)",
        "upload of a backlog by one safekeeper (zstd level 3, 4 workers)",
        mb_s(median(&up)),
        "—",
        None,
        "—",
        format!(
            "walproposer generate {args} into one safekeeper, then it restarts with --remote-storage file://<dir>; time until backup_lsn reaches the last complete segment"
        ),
    );
    ctx.report.row(
        "6. Offload (fsync on, file:// archive on the same disk)",
        "upload of a backlog by one safekeeper, uncompressed (4 workers)",
        mb_s(median(&plain)),
        "—",
        None,
        "—",
        "the same with --backup-compression none: every byte of WAL is read and written again",
    );
    ctx.report.notes.push(format!(
        "Offload: with zstd the archive held {:.4} bytes per byte of WAL: `walproposer generate`'s synthetic records repeat, so the zstd upload figure is an upper bound of the pipeline (read, checksum, compress, store), not what real WAL gets; the uncompressed figure is the one to plan with.",
        median(&ratio)
    ));
    Ok(())
}
