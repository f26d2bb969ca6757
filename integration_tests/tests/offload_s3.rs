//! WAL offload to an S3-protocol server (moto, behind a fault proxy) under a real
//! workload: a PostgreSQL 15 primary, `walproposer bridge`, three safekeepers with a
//! membership configuration, pgbench. Along the way uploads are cut in the middle, the
//! offloader is killed (another member takes over, then it comes back) and the store is
//! down for 30 s (ingest goes on, nothing is removed, the backlog and a disk warning are
//! shown, and the offloader catches up when the store is back). At the end every complete
//! segment is in the bucket exactly once, decompressing to the primary's WAL byte for
//! byte; local complete segments are gone; `pg_receivewal` from the first segment and a
//! standby from a base backup taken at the start get their WAL from the archive.
//!
//! `SK_OFFLOAD_SECONDS` sets the pgbench duration (default 60).

mod offload_util;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg::PgCluster;
use integration_tests::pg_tools::pg_bin;
use integration_tests::proxy::TcpProxy;
use integration_tests::s3::TestBucket;
use integration_tests::sk::Safekeeper;
use integration_tests::standby::{Standby, output_within};
use offload_util::{
    PgQuorum, SEG, backup_reaches, local_complete_segments, lsn, offloader, status, wait_for,
};
use safekeeper::remote::format::decode_zstd;
use utils::xlog::{parse_xlog_file_name, xlog_file_name};
use utils::{Lsn, SegNo, TenantTimelineId};

/// A libpq connection string for a reader of the timeline on `sk`.
fn sk_connstr(sk: &Safekeeper, ttid: &TenantTimelineId) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable options='-c tenant_id={} timeline_id={}'",
        sk.pg_port, ttid.tenant_id, ttid.timeline_id
    )
}

fn spawn_pgbench(pg: &PgCluster, seconds: u64) -> anyhow::Result<Child> {
    Ok(pg
        .client("pgbench")
        .args(["-T", &seconds.to_string(), "-c", "4", "-j", "2", "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn running(sks: &mut [Safekeeper]) -> Vec<usize> {
    (0..sks.len()).filter(|&i| sks[i].is_running()).collect()
}

fn commit_of(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Lsn> {
    lsn(&status(sk, ttid)?, "commit_lsn")
}

fn backup_of(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Lsn> {
    lsn(&status(sk, ttid)?, "backup_lsn")
}

#[test]
fn offload_to_s3_through_a_kill_cut_uploads_and_an_outage() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SK_OFFLOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let bucket = TestBucket::new()?;
    let target = bucket
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = TcpProxy::start(&target)?;
    // Until the bulk load is done every connection to the store is cut after 64 KiB sent:
    // uploads fail in the middle of an object.
    proxy.cut_after(64 << 10);
    let env = bucket.env_with_endpoint(&proxy.endpoint());
    let dir = tempfile::tempdir()?;
    let url = bucket.url("wal");
    let args = [
        "--remote-storage",
        &url,
        "--peer-status-interval",
        "1",
        // Every disk is "low": the warning shows whenever WAL waits for offload.
        "--low-disk-warning",
        "1000TB",
    ];
    let PgQuorum {
        pg,
        mut sks,
        bridge,
        ttid,
    } = PgQuorum::start(dir.path(), &args, &env)?;
    // A base backup now: the standby started at the end needs WAL from here.
    let (mut standby, standby_start) = Standby::basebackup(&pg)?;
    pg.pgbench(&["-i", "-s", "10", "-q"])?;
    let cut_error = wait_for("a failed upload", Duration::from_secs(60), || {
        for s in &sks {
            if let Some(e) = status(s, &ttid)?["offload"]["last_error"].as_str() {
                return Ok(Ok(e.to_string()));
            }
        }
        Ok(Err("no error shown".into()))
    })?;
    eprintln!("while uploads are cut: {cut_error}");
    // Nothing half-written is visible: whatever is listed is whole.
    let prefix = format!("wal/{}/{}", ttid.tenant_id, ttid.timeline_id);
    for (path, _) in bucket.list_blocking(&prefix)? {
        let obj = bucket.get_blocking(&path)?;
        decode_zstd(&obj, &path, SEG as usize)
            .with_context(|| format!("{path} after cut uploads"))?;
    }
    proxy.pass();
    let started = Instant::now();
    let pgbench = spawn_pgbench(&pg, seconds)?;

    // The offloader dies: another member takes over.
    let chosen = wait_for("an offloader", Duration::from_secs(30), || {
        let o = offloader(&sks[0], &ttid)?;
        Ok(o.ok_or_else(|| "none yet".to_string()))
    })?;
    let dead = sks
        .iter()
        .position(|s| s.id == chosen)
        .context("offloader id")?;
    sks[dead].kill()?;
    let at_kill = running(&mut sks)
        .into_iter()
        .map(|i| backup_of(&sks[i], &ttid))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or_default();
    let alive = running(&mut sks);
    let successor = wait_for("another offloader", Duration::from_secs(30), || {
        let mut named = Vec::new();
        for &i in &alive {
            named.push(offloader(&sks[i], &ttid)?);
        }
        Ok(match named[0] {
            Some(o) if o != chosen && named.iter().all(|n| *n == Some(o)) => Ok(o),
            _ => Err(format!("offloaders named {named:?}")),
        })
    })?;
    // It moves backup_lsn on as far as the WAL allows.
    let commit_now = commit_of(&sks[alive[0]], &ttid)?;
    if commit_now.segment_lsn(SEG) > at_kill {
        wait_for("backup by the successor", Duration::from_secs(60), || {
            let b = backup_of(&sks[alive[0]], &ttid)?;
            Ok(if b > at_kill {
                Ok(())
            } else {
                Err(format!("backup_lsn {b}"))
            })
        })?;
    }
    sks[dead].restart_same_ports()?;
    eprintln!("offloader {chosen} killed at backup_lsn {at_kill}; {successor} took over");

    // The store is down for 30 s.
    proxy.refuse();
    let outage = Instant::now();
    let commit_down = commit_of(&sks[0], &ttid)?;
    std::thread::sleep(Duration::from_secs(5));
    let backup_down: Vec<Lsn> = sks
        .iter()
        .map(|s| backup_of(s, &ttid))
        .collect::<anyhow::Result<_>>()?;
    let local_down: Vec<Vec<SegNo>> = sks
        .iter()
        .map(|s| local_complete_segments(&s.timeline_dir(&ttid)))
        .collect::<anyhow::Result<_>>()?;
    let mut saw_error = false;
    let mut saw_warning = false;
    let mut saw_backlog = false;
    while outage.elapsed() < Duration::from_secs(30) {
        for s in &sks {
            let st = status(s, &ttid)?;
            saw_error |= st["offload"]["last_error"].is_string();
            saw_warning |= st["offload"]["disk_warning"].is_string();
            saw_backlog |= st["offload"]["backlog_segments"].as_u64() > Some(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, s) in sks.iter().enumerate() {
        // Nothing uploaded, nothing removed while the store is down.
        ensure!(
            backup_of(s, &ttid)? == backup_down[i],
            "safekeeper {}: backup_lsn moved while the store was down",
            s.id
        );
        let now = local_complete_segments(&s.timeline_dir(&ttid))?;
        // (Segments offloaded before the outage may still go.)
        for segno in local_down[i]
            .iter()
            .filter(|&&n| Lsn(n * u64::from(SEG)) >= backup_down[i])
        {
            ensure!(
                now.contains(segno),
                "safekeeper {} removed segment {segno} while the store was down",
                s.id
            );
        }
    }
    let commit_up = commit_of(&sks[0], &ttid)?;
    if started.elapsed() < Duration::from_secs(seconds) {
        ensure!(
            commit_up > commit_down,
            "ingest stood still while the store was down ({commit_down})"
        );
    }
    proxy.pass();
    let pgbench_out = pgbench.wait_with_output()?;
    ensure!(
        pgbench_out.status.success(),
        "pgbench: {}\n{}",
        String::from_utf8_lossy(&pgbench_out.stdout),
        String::from_utf8_lossy(&pgbench_out.stderr)
    );
    let backlog_seen = saw_error && saw_warning && saw_backlog;

    // Catch-up: everything below the commit position's segment is offloaded on all, and
    // removed locally.
    let end = pg.current_wal_insert_lsn()?;
    let commit = wait_for(
        "the quorum to commit the end",
        Duration::from_secs(60),
        || {
            let c = commit_of(&sks[0], &ttid)?;
            Ok(if c >= end {
                Ok(c)
            } else {
                Err(format!("commit_lsn {c} < {end}"))
            })
        },
    )?;
    backup_reaches(
        &sks,
        &ttid,
        commit.segment_lsn(SEG),
        Duration::from_secs(300),
    )?;
    for s in &sks {
        wait_for(
            &format!("safekeeper {} to remove offloaded segments", s.id),
            Duration::from_secs(60),
            || {
                let left = local_complete_segments(&s.timeline_dir(&ttid))?;
                Ok(if left.len() <= 2 {
                    Ok(())
                } else {
                    Err(format!("{left:?}; status {}", status(s, &ttid)?))
                })
            },
        )?;
    }
    ensure!(
        backlog_seen,
        "no error, disk warning or backlog shown while the store was down"
    );

    // The bucket: every complete segment exactly once, equal to the primary's WAL.
    let tl_start = lsn(&status(&sks[0], &ttid)?, "timeline_start_lsn")?;
    let first = tl_start.segment_number(SEG);
    let last = commit.segment_number(SEG); // exclusive
    let mut objects: BTreeMap<SegNo, Vec<String>> = BTreeMap::new();
    for (path, _) in bucket.list_blocking(&prefix)? {
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        let base = name.trim_end_matches(".zst");
        let (_, segno, partial) =
            parse_xlog_file_name(base, SEG).with_context(|| format!("object {path}"))?;
        ensure!(!partial, "a partial object {path} (partial backup is off)");
        objects.entry(segno).or_default().push(name);
    }
    let want: Vec<SegNo> = (first..last).collect();
    let have: Vec<SegNo> = objects.keys().copied().collect();
    ensure!(
        have == want,
        "objects for segments {have:?}, expected {want:?}"
    );
    for (segno, names) in &objects {
        let name = xlog_file_name(1, *segno, SEG);
        ensure!(
            names == &vec![format!("{name}.zst")],
            "segment {name}: {names:?}"
        );
        let obj = bucket.get_blocking(&format!("{prefix}/{name}.zst"))?;
        let (meta, data) = decode_zstd(&obj, &name, SEG as usize)?;
        let primary = std::fs::read(pg.wal_dir().join(&name))?;
        let from = if *segno == first {
            tl_start.segment_offset(SEG)
        } else {
            0
        };
        ensure!(
            data[from..] == primary[from..],
            "archived {name} differs from the primary's"
        );
        ensure!(meta.end_lsn == Lsn((segno + 1) * u64::from(SEG)));
    }

    // pg_receivewal from the first segment, gone locally: served from the archive.
    let out = tempfile::tempdir()?;
    let first_name = xlog_file_name(1, first, SEG);
    ensure!(!sks[0].timeline_dir(&ttid).join(&first_name).exists());
    std::fs::write(
        out.path().join(format!("{first_name}.partial")),
        vec![0u8; SEG as usize],
    )?;
    let o = output_within(
        Command::new(pg_bin("pg_receivewal"))
            .arg("-d")
            .arg(sk_connstr(&sks[0], &ttid))
            .arg("-D")
            .arg(out.path())
            .arg(format!("--endpos={}", Lsn(commit.0 - 1)))
            .args(["--no-loop", "--no-sync", "--no-password"]),
        Duration::from_secs(120),
    )?;
    if !o.status.success() {
        bail!(
            "pg_receivewal: {}\nsafekeeper log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            sks[0].log()
        );
    }
    for segno in first..last {
        let name = xlog_file_name(1, segno, SEG);
        let got = std::fs::read(out.path().join(&name))
            .with_context(|| format!("pg_receivewal wrote no {name}"))?;
        let primary = std::fs::read(pg.wal_dir().join(&name))?;
        let from = if segno == first {
            tl_start.segment_offset(SEG)
        } else {
            0
        };
        ensure!(
            got[from..] == primary[from..],
            "pg_receivewal's {name} differs"
        );
    }
    ensure!(
        sks[0].log().contains("read back from the archive"),
        "no archive download logged"
    );

    // A standby from the base backup of the start replays everything.
    ensure!(
        !sks[1]
            .timeline_dir(&ttid)
            .join(xlog_file_name(1, standby_start.segment_number(SEG), SEG))
            .exists()
    );
    standby.configure(&sk_connstr(&sks[1], &ttid))?;
    standby.start()?;
    let want_rows = pg.psql("SELECT count(*) FROM pgbench_history")?;
    wait_for(
        "the standby to replay all",
        Duration::from_secs(180),
        || {
            let got = standby.psql("SELECT count(*) FROM pgbench_history");
            Ok(match got {
                Ok(n) if n == want_rows => Ok(()),
                other => Err(format!("{other:?}, want {want_rows}")),
            })
        },
    )
    .with_context(|| format!("standby log:\n{}", standby.log()))?;
    // The counters and the histogram of offload, on the offloader's /metrics.
    let mut text = String::new();
    for s in &sks {
        text.push_str(&s.http_get("/metrics")?.1);
    }
    for series in [
        "safekeeper_backup_segments_total{outcome=\"uploaded\"}",
        "safekeeper_backup_segments_total{outcome=\"error\"}",
        "safekeeper_backup_seconds_bucket",
        "safekeeper_backup_bytes_total",
        "safekeeper_backup_backlog_segments",
        "safekeeper_removed_segments_total",
        "safekeeper_archive_downloads_total",
    ] {
        ensure!(text.contains(series), "no {series} in /metrics");
    }
    let removed: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("safekeeper_removed_segments_total "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    ensure!(removed > 0.0, "no removal counted");
    for s in &sks {
        s.assert_no_panics();
    }
    drop(bridge);
    Ok(())
}
