//! Item 3 (and the readers of item 5): the same stored WAL served by a safekeeper and by
//! PostgreSQL's own walsender, to the same clients: `pg_receivewal` catching up, our own
//! XLogData reader, and 100 of our readers at once.
//!
//! Setup: a PostgreSQL 15 primary, one safekeeper fed by `walproposer bridge`, a physical
//! slot on the primary so it keeps the WAL too, then `total` bytes of logical messages.
//! Both servers then hold byte-identical WAL; every client starts at the same segment
//! start (the segment after the safekeeper's first) and stops at the same end LSN.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pq_client::Conninfo;
use pq_proto::backend::BeMessage;
use pq_proto::replication::ReplicationServerMessage;
use utils::Lsn;

use crate::baseline::{median, median_ratio};
use crate::procs::{
    PgCluster, Proc, Safekeeper, pg_bin, rss_kib, run, timeline_status_lsn, workspace_bin,
};
use crate::report::{mb_s, mib, target_ge};
use crate::{Ctx, fresh_dir, new_ids};

const SEG: u64 = 16 << 20;

/// Reads WAL `[start, end)` with START_REPLICATION and drops it: bytes read.
async fn read_stream(port: u16, start: Lsn, end: Lsn) -> anyhow::Result<u64> {
    let mut ci = Conninfo::default();
    ci.set("host", "127.0.0.1")
        .set("port", port.to_string())
        .set("user", "postgres")
        .set("replication", "true")
        .set("application_name", "sk-bench-reader");
    let mut conn = pq_client::connect(&ci).await?;
    pq_client::start_copy(&mut conn, &format!("START_REPLICATION {start} TIMELINE 1")).await?;
    let mut pos = start;
    while pos < end {
        match pq_client::read(&mut conn).await? {
            BeMessage::CopyData(p) => match ReplicationServerMessage::decode(p) {
                Ok(ReplicationServerMessage::XLogData(x)) => {
                    if x.wal_start != pos {
                        bail!("XLogData at {} where {pos} was expected", x.wal_start);
                    }
                    pos = Lsn(pos.0 + x.data.len() as u64);
                }
                Ok(ReplicationServerMessage::Keepalive(_)) => {}
                Err(e) => bail!("bad replication message: {e}"),
            },
            BeMessage::CopyDone => break,
            other => bail!("unexpected {other:?} in a WAL stream"),
        }
    }
    if pos < end {
        bail!("stream ended at {pos} before {end}");
    }
    Ok(end.0 - start.0)
}

/// `readers` concurrent streams of `[start, end)`: aggregate MB/s.
fn read_many(port: u16, start: Lsn, end: Lsn, readers: usize) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..readers {
            set.spawn(read_stream(port, start, end));
        }
        let mut bytes = 0u64;
        while let Some(r) = set.join_next().await {
            bytes += r??;
        }
        Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
    })
}

/// pg_receivewal from `port` into a fresh directory, starting at `start_seg` (a dummy
/// complete segment before it makes pg_receivewal begin there) up to `end`: MB/s.
fn receivewal(dir: &Path, port: u16, start_seg: u64, end: Lsn) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let dummy = dir.join(utils::xlog::xlog_file_name(1, start_seg - 1, SEG as u32));
    std::fs::File::create(&dummy)?.set_len(SEG)?;
    let t = Instant::now();
    run(Command::new(pg_bin("pg_receivewal"))
        .args(["-d", &format!("host=127.0.0.1 port={port} user=postgres")])
        .arg("-D")
        .arg(dir)
        .arg(format!("--endpos={end}"))
        .args(["--no-loop", "--no-password"]))?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir)?;
    Ok((end.0 - start_seg * SEG) as f64 / 1e6 / secs)
}

/// Starts `walproposer bridge` and waits for its election.
pub fn start_bridge(
    dir: &Path,
    pg: &PgCluster,
    sks: &str,
    tenant: &str,
    timeline: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(workspace_bin("walproposer"));
    cmd.arg("bridge")
        .args(["--primary", &pg.conninfo()])
        .args(["--safekeepers", sks])
        .args(["--tenant-id", tenant, "--timeline-id", timeline]);
    let mut bridge = Proc::spawn("bridge", cmd, &dir.join("bridge.log"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&bridge.log).unwrap_or_default();
        if log.contains("elected in term") {
            return Ok(bridge);
        }
        bridge.check_alive()?;
        if Instant::now() > deadline {
            bail!("bridge not elected after 60 s:\n{}", bridge.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 3, and the 100 readers of item 5.
pub fn serving(ctx: &mut Ctx) -> anyhow::Result<()> {
    let p = ctx.params.clone();
    let dir = fresh_dir(&ctx.work.join("serving"))?;
    let mut pg = PgCluster::init(
        &dir.join("pg").join("data"),
        &[
            "wal_level = replica".into(),
            "max_wal_senders = 120".into(),
            "max_replication_slots = 10".into(),
            "fsync = on".into(),
            "max_wal_size = 4GB".into(),
        ],
    )?;
    pg.start()?;
    pg.sql("SELECT pg_create_physical_replication_slot('bench', true)")?;
    let sk = Safekeeper::start(1, &dir.join("sk1"))?;
    let (tenant, timeline) = new_ids();
    let bridge = start_bridge(&dir, &pg, &sk.addr(), &tenant, &timeline)?;
    // The WAL: `total` MiB of 1 MiB logical messages (plus two segments of slack for the
    // skipped first segment).
    let msgs = (p.serve_total >> 20) + 32;
    pg.sql(&format!(
        "SELECT count(pg_logical_emit_message(false, 'bench', repeat('x', 1048576))) \
         FROM generate_series(1, {msgs})"
    ))?;
    let end: Lsn = pg.sql("SELECT pg_current_wal_insert_lsn()")?.parse()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while timeline_status_lsn(sk.port, 1)? < end {
        if Instant::now() > deadline {
            bail!("the safekeeper did not commit {end} in 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(bridge);
    // The safekeeper's first segment holds the synthetic start; begin at the next one.
    let first = run(Command::new(pg_bin("psql"))
        .arg("-XAt")
        .arg(format!("host=127.0.0.1 port={} replication=1", sk.port))
        .args(["-c", "READ_REPLICATION_SLOT bench"]))?;
    let first: Lsn = first
        .trim()
        .split('|')
        .nth(1)
        .context("READ_REPLICATION_SLOT")?
        .parse()?;
    let start_seg = first.0 / SEG + 1;
    let start = Lsn(start_seg * SEG);
    let end = Lsn(end.0.min(start.0 + p.serve_total));
    let bytes = end.0 - start.0;
    eprintln!("  serving {} MiB: {start} .. {end}", bytes >> 20);

    let recv_dir = dir.join("recv");
    let (mut rs, mut rp, mut os, mut op) = (vec![], vec![], vec![], vec![]);
    for rep in 0..p.reps {
        rs.push(receivewal(&recv_dir, sk.port, start_seg, end)?);
        rp.push(receivewal(&recv_dir, pg.port, start_seg, end)?);
        os.push(read_many(sk.port, start, end, 1)?);
        op.push(read_many(pg.port, start, end, 1)?);
        eprintln!(
            "  serving rep {rep}: pg_receivewal sk {:.0} pg {:.0}; reader sk {:.0} pg {:.0} MB/s",
            rs[rep], rp[rep], os[rep], op[rep]
        );
    }
    let sec = "3. Serving stored WAL (same WAL, same client)";
    let (s, b, r) = (median(&rs), median(&rp), median_ratio(&rs, &rp));
    ctx.report.row(
        sec,
        format!("pg_receivewal catch-up of {} MiB", bytes >> 20),
        mb_s(s),
        format!("{} (PostgreSQL walsender)", mb_s(b)),
        Some(r),
        target_ge(r, 1.0),
        format!("pg_receivewal -d \"host=<sk> port=<port>\" -D <empty dir + dummy segment> --endpos={end} --no-loop"),
    );
    let (s, b, r) = (median(&os), median(&op), median_ratio(&os, &op));
    ctx.report.row(
        sec,
        format!("raw XLogData, our reader, {} MiB", bytes >> 20),
        mb_s(s),
        format!("{} (PostgreSQL walsender)", mb_s(b)),
        Some(r),
        target_ge(r, 1.0),
        format!("sk-bench reader: START_REPLICATION {start} TIMELINE 1, read to {end}"),
    );

    // 100 concurrent readers of the same range, on both servers.
    let per = Lsn(start.0 + p.reader_bytes.min(bytes));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pid, stop) = (sk.proc.pid(), stop.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let idle_rss = rss_kib(sk.proc.pid());
    let many_sk = read_many(sk.port, start, per, p.readers)?;
    stop.store(true, Ordering::Relaxed);
    let peak = AtomicU64::new(sampler.join().unwrap_or(0));
    let many_pg = read_many(pg.port, start, per, p.readers)?;
    eprintln!(
        "  {} readers: sk {many_sk:.0} pg {many_pg:.0} MB/s",
        p.readers
    );
    ctx.report.row(
        "5. Memory and scale",
        format!(
            "{} concurrent readers × {} MiB: aggregate",
            p.readers,
            (per.0 - start.0) >> 20
        ),
        mb_s(many_sk),
        format!("{} (PostgreSQL walsender)", mb_s(many_pg)),
        Some(many_sk / many_pg),
        "",
        format!(
            "sk-bench: {} × START_REPLICATION {start}, read to {per}",
            p.readers
        ),
    );
    ctx.report.row(
        "5. Memory and scale",
        format!("safekeeper RSS, peak during {} readers", p.readers),
        mib(peak.load(Ordering::Relaxed)),
        format!("{} (same process before)", mib(idle_rss)),
        None,
        "",
        "VmRSS from /proc/<pid>/status every 50 ms",
    );
    drop(sk);
    pg.stop();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
