//! Item 7: getting WAL back out of the archive, from a local S3-protocol server (moto):
//! `safekeeper archive restore` MB/s with 1, 4 and 8 workers, and the `restore_command`
//! calls of a recovery (`safekeeper archive get %f %p`, one process per segment, in
//! order, as PostgreSQL makes them) with prefetch and without.
//!
//! The archive is filled by a safekeeper offloading `walproposer generate`'s WAL with
//! `--backup-compression none`, so every object is a full 16 MiB (generated WAL
//! compresses far better than real WAL; uncompressed objects make the transfer volume
//! honest). Every figure is the median of `reps` runs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use utils::Lsn;

use crate::baseline::{median, median_ratio};
use crate::procs::{
    PgCluster, Proc, Safekeeper, free_port, generated_end, give_to_pg, pg_bin, pg_server_cmd, run,
    wait_backup, workspace_bin,
};
use crate::report::mb_s;
use crate::serving::start_bridge;
use crate::{Ctx, fresh_dir, new_ids};

const SEG: u64 = 16 << 20;
const SECTION: &str = "7. Restore from the archive (moto S3 server on loopback)";

/// `PUT /<bucket>` on the S3 server: creates the bucket.
fn create_bucket(port: u16, bucket: &str) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    if !r.starts_with("HTTP/1.1 200") {
        bail!(
            "creating bucket {bucket}: {}",
            r.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// Starts moto_server on a free port and waits until it answers.
fn start_moto(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let p = Proc::spawn("moto_server", cmd, &dir.join("moto.log"))
        .context("moto_server (pip install 'moto[server]'; scripts/test installs it)")?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("moto_server did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((p, port))
}

/// Item 7.
pub fn restore(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let work = fresh_dir(&ctx.work.join("restore"))?;
    let (moto, port) = start_moto(&work)?;
    let bucket = format!("sk-bench-{}", std::process::id());
    create_bucket(port, &bucket)?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    for (k, v) in env {
        // SAFETY: set before any thread of this section starts; the children inherit it.
        unsafe { std::env::set_var(k, v) };
    }
    let url = format!("s3://{bucket}/bench");

    // Fill the archive.
    let total = p.ingest_total;
    let sk = Safekeeper::start_with_args(
        1,
        &work.join("sk1"),
        &["--remote-storage", &url, "--backup-compression", "none"],
    )?;
    let (tenant, timeline) = new_ids();
    let out = run(Command::new(workspace_bin("walproposer"))
        .arg("generate")
        .args(["--safekeepers", &sk.addr()])
        .args(["--tenant-id", &tenant, "--timeline-id", &timeline])
        .args([
            "--bytes",
            &format!("{}M", total >> 20),
            "--record-size",
            "8k",
        ])
        .env("RUST_LOG", "warn"))?;
    let end = generated_end(&out)?;
    let to = Lsn(end.0 / SEG * SEG);
    wait_backup(sk.port, to)?;
    drop(sk);
    let from = Lsn(SEG);
    let segments = to.0 / SEG - 1;
    let mb = (to.0 - from.0) as f64 / 1e6;
    let ids = [
        "--remote-storage".to_string(),
        url.clone(),
        "--tenant-id".into(),
        tenant.clone(),
        "--timeline-id".into(),
        timeline.clone(),
    ];

    // Restore with 1, 4, 8 workers.
    let mut by_workers = Vec::new();
    for workers in [1usize, 4, 8] {
        let mut rates = Vec::new();
        for _ in 0..p.reps {
            let dir = fresh_dir(&work.join("out"))?;
            let t = Instant::now();
            run(Command::new(workspace_bin("safekeeper"))
                .arg("archive")
                .arg("restore")
                .args(&ids)
                .args(["--from", &from.to_string(), "--to", &to.to_string()])
                .arg("-D")
                .arg(&dir)
                .args(["--parallel", &workers.to_string()]))?;
            rates.push(mb / t.elapsed().as_secs_f64());
        }
        eprintln!("  restore, {workers} workers: {:.0} MB/s", median(&rates));
        by_workers.push((workers, rates));
    }
    let one = by_workers[0].1.clone();
    for (workers, rates) in &by_workers {
        let r = median_ratio(rates, &one);
        ctx.report.row(
            SECTION,
            format!("archive restore, {workers} worker(s), {segments} segments of 16 MiB"),
            mb_s(median(rates)),
            format!("{} (1 worker)", mb_s(median(&one))),
            Some(r),
            "—",
            format!(
                "safekeeper archive restore --remote-storage s3://<bucket>/bench --tenant-id <T> --timeline-id <TL> --from {from} --to {to} -D <dir> --parallel {workers}"
            ),
        );
    }

    // restore_command's calls, in order, each a process.
    let mut secs = [Vec::new(), Vec::new()];
    for _ in 0..p.reps {
        for (i, prefetch) in [0u64, 8].into_iter().enumerate() {
            let dir = fresh_dir(&work.join("pg_wal"))?;
            let t = Instant::now();
            for segno in 1..=segments {
                let name = utils::xlog::xlog_file_name(1, segno, SEG as u32);
                run(Command::new(workspace_bin("safekeeper"))
                    .arg("archive")
                    .arg("get")
                    .args(&ids)
                    .args(["--prefetch", &prefetch.to_string()])
                    .arg(&name)
                    .arg(dir.join("RECOVERYXLOG")))?;
            }
            secs[i].push(t.elapsed().as_secs_f64());
        }
    }
    let r = median_ratio(&secs[1], &secs[0]);
    eprintln!(
        "  restore_command sequence: {:.1} s without prefetch, {:.1} s with 8",
        median(&secs[0]),
        median(&secs[1])
    );
    ctx.report.row(
        SECTION,
        format!("restore_command calls of a recovery ({segments} segments, in order), prefetch 8"),
        format!("{:.1} s", median(&secs[1])),
        format!("{:.1} s (no prefetch)", median(&secs[0])),
        Some(r),
        "< 1: faster",
        "for each segment in order: safekeeper archive get --remote-storage s3://<bucket>/bench --tenant-id <T> --timeline-id <TL> --prefetch 8|0 <WAL file> <dir>/RECOVERYXLOG",
    );
    recovery(ctx, &work, &url, &env)?;
    ctx.report.notes.push(
        "Restore: the restore_command figure times the calls PostgreSQL makes during a recovery from the archive (one process per segment, in order), not PostgreSQL's replay; objects are stored uncompressed (`--backup-compression none`), 16 MiB each, in a moto server on the same 2-vCPU machine, which is itself CPU-bound.".into(),
    );
    drop(moto);
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// A real PostgreSQL recovery from the archive: a base backup taken before a pgbench load
/// goes through the bridge into one safekeeper offloading to the store; then copies of the
/// backup recover with `restore_command` alone (`recovery.signal`, no hot standby), with
/// prefetch and without: timed from `pg_ctl start` until the server is out of recovery
/// (it replayed the archive to its end and promoted).
fn recovery(ctx: &mut Ctx, work: &Path, url: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let dir = fresh_dir(&work.join("recovery"))?;
    give_to_pg(&dir)?;
    let mut primary = PgCluster::init(
        &dir.join("primary"),
        &[
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "synchronous_standby_names = 'walproposer'".into(),
            "wal_keep_size = '4GB'".into(),
        ],
    )?;
    primary.start()?;
    let sk = Safekeeper::start_with_args(
        1,
        &dir.join("sk1"),
        &["--remote-storage", url, "--backup-compression", "none"],
    )?;
    let (tenant, timeline) = new_ids();
    let bridge = start_bridge(&dir, &primary, &sk.addr(), &tenant, &timeline)?;
    primary.sql("CREATE TABLE probe(x int)")?;
    let base = dir.join("base");
    run(pg_server_cmd("pg_basebackup")
        .arg("-D")
        .arg(&base)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-X", "none", "--no-sync", "-c", "fast"]))
    .context("pg_basebackup")?;
    run(Command::new(pg_bin("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-q", "-s", &p.pgbench_scale.to_string(), "postgres"]))?;
    primary.sql("SELECT pg_switch_wal()")?;
    primary.sql("INSERT INTO probe VALUES (1)")?;
    let end: Lsn = primary.sql("SELECT pg_current_wal_insert_lsn()")?.parse()?;
    let want = Lsn(end.0 / SEG * SEG);
    wait_backup(sk.port, want)?;
    drop(bridge);
    drop(sk);
    primary.stop();
    let segments = want.0 / SEG - 1;
    let envs: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let mut secs = [Vec::new(), Vec::new()];
    for _ in 0..p.reps {
        for (i, prefetch) in [0u64, 8].into_iter().enumerate() {
            let data = dir.join(format!("recover{i}"));
            let _ = std::fs::remove_dir_all(&data);
            run(Command::new("cp").arg("-a").arg(&base).arg(&data))?;
            std::fs::write(data.join("recovery.signal"), "")?;
            let restore = format!(
                "env {envs}{} archive get --remote-storage {url} --tenant-id {tenant} --timeline-id {timeline} --prefetch {prefetch} %f %p",
                workspace_bin("safekeeper").display()
            );
            let port = free_port()?;
            let sock = dir.display().to_string();
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
            conf.push_str(&format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\nhot_standby = off\nrestore_command = '{restore}'\n"
            ));
            std::fs::write(data.join("postgresql.conf"), conf)?;
            give_to_pg(&data)?;
            let log = dir.join(format!("recover{i}.log"));
            let t = Instant::now();
            run(pg_server_cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "600", "start"]))
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
            // pg_ctl may return before archive recovery ends: done when the server answers
            // and is out of recovery.
            loop {
                let out = Command::new(pg_bin("psql"))
                    .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .args([
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-c",
                        "SELECT pg_is_in_recovery()",
                    ])
                    .output()?;
                if String::from_utf8_lossy(&out.stdout).trim() == "f" {
                    break;
                }
                if t.elapsed() > Duration::from_secs(600) {
                    bail!("recovery did not end in 10 min");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            secs[i].push(t.elapsed().as_secs_f64());
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let restored = text.matches("restored log file").count();
            if restored < segments as usize / 2 {
                bail!("the recovery restored {restored} of {segments} segments; log:\n{text}");
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let restored = text.matches("restored log file").count();
            if restored < segments as usize / 2 {
                bail!("the recovery restored {restored} of {segments} segments; log:\n{text}");
            }
            let _ = run(pg_server_cmd("pg_ctl").arg("-D").arg(&data).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]));
            std::fs::remove_dir_all(&data)?;
        }
    }
    eprintln!(
        "  PostgreSQL recovery from the archive: {:.1} s without prefetch, {:.1} s with 8",
        median(&secs[0]),
        median(&secs[1])
    );
    ctx.report.row(
        SECTION,
        format!(
            "PostgreSQL 15 archive recovery ({segments} segments of pgbench -i -s {}), restore_command with prefetch 8",
            p.pgbench_scale
        ),
        format!("{:.1} s", median(&secs[1])),
        format!("{:.1} s (no prefetch)", median(&secs[0])),
        Some(median_ratio(&secs[1], &secs[0])),
        "< 1: faster",
        "base backup + recovery.signal + restore_command = 'safekeeper archive get … --prefetch 8|0 %f %p'; pg_ctl start, then until pg_is_in_recovery() is false",
    );
    Ok(())
}
