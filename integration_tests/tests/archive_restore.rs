//! Getting WAL back out of the archive with `safekeeper archive`: a PostgreSQL 15 primary
//! pushes through `walproposer bridge` into three safekeepers that offload to a `file://`
//! archive; a standby made from a base backup taken at the start, with only
//! `restore_command = 'safekeeper archive get … %f %p'` (no primary_conninfo), replays to
//! the archived end and has the primary's rows. `archive restore` of the timeline's range is
//! byte-identical to the primary's WAL, completes when run again after being killed, and
//! fails naming the segment when one is missing and the object when one is corrupt;
//! `archive list` shows the timeline and its gap.

mod offload_util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use integration_tests::pg::PgCluster;
use integration_tests::sk::workspace_bin;
use integration_tests::standby::Standby;
use offload_util::{PgQuorum, SEG, backup_reaches, lsn, status, wait_for};
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantTimelineId};

/// `safekeeper archive <args>`: (success, stdout, stderr).
fn archive(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(workspace_bin("safekeeper"))
        .arg("archive")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn ids(ttid: &TenantTimelineId) -> [String; 4] {
    [
        "--tenant-id".into(),
        ttid.tenant_id.to_string(),
        "--timeline-id".into(),
        ttid.timeline_id.to_string(),
    ]
}

/// The restored segments `first..last` equal the primary's (from `tl_start` in the first).
fn same_as_primary(
    dir: &Path,
    pg: &PgCluster,
    first: u64,
    last: u64,
    tl_start: Lsn,
) -> anyhow::Result<()> {
    for segno in first..last {
        let name = xlog_file_name(1, segno, SEG);
        let got = std::fs::read(dir.join(&name)).with_context(|| format!("restored {name}"))?;
        let primary = std::fs::read(pg.wal_dir().join(&name))?;
        let from = if segno == first {
            tl_start.segment_offset(SEG)
        } else {
            0
        };
        ensure!(got.len() == SEG as usize, "{name} is short");
        ensure!(
            got[from..] == primary[from..],
            "restored {name} differs from the primary's"
        );
    }
    Ok(())
}

#[test]
fn a_standby_recovers_from_the_archive_and_restores_are_exact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let archive_dir = dir.path().join("archive");
    let url = format!("file://{}", archive_dir.display());
    let args = ["--remote-storage", &url, "--peer-status-interval", "1"];
    let PgQuorum {
        pg,
        sks,
        bridge,
        ttid,
    } = PgQuorum::start(dir.path(), &args, &[])?;
    let (mut standby, _) = Standby::basebackup(&pg)?;
    pg.pgbench(&["-i", "-s", "5", "-q"])?;
    pg.pgbench(&["-T", "10", "-c", "4", "-j", "2"])?;
    // Complete the last segment so the archive holds everything.
    pg.psql("SELECT pg_switch_wal()")?;
    pg.psql("INSERT INTO probe VALUES (1)")?;
    let end = pg.current_wal_insert_lsn()?;
    let commit = wait_for(
        "the quorum to commit the end",
        Duration::from_secs(60),
        || {
            let c = lsn(&status(&sks[0], &ttid)?, "commit_lsn")?;
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
        Duration::from_secs(120),
    )?;
    let tl_start = lsn(&status(&sks[0], &ttid)?, "timeline_start_lsn")?;
    let first = tl_start.segment_number(SEG);
    let last = commit.segment_number(SEG); // exclusive: the segment holding the end

    // A standby with restore_command alone replays everything archived.
    let restore_command = format!(
        "{} archive get --remote-storage {url} --tenant-id {} --timeline-id {} --prefetch 4 %f %p",
        workspace_bin("safekeeper").display(),
        ttid.tenant_id,
        ttid.timeline_id
    );
    standby.configure_restore(&restore_command)?;
    standby.start()?;
    let want_rows = pg.psql("SELECT count(*) FROM pgbench_history")?;
    wait_for(
        "the standby to replay the archive",
        Duration::from_secs(180),
        || {
            Ok(match standby.psql("SELECT count(*) FROM pgbench_history") {
                Ok(n) if n == want_rows => Ok(()),
                other => Err(format!("{other:?}, want {want_rows}")),
            })
        },
    )
    .with_context(|| format!("standby log:\n{}", standby.log()))?;
    ensure!(
        standby
            .data_dir()
            .join("pg_wal/safekeeper_prefetch")
            .is_dir(),
        "no prefetch spool"
    );

    // A restore of the whole range is the primary's WAL.
    let from = tl_start.to_string();
    let to = Lsn(last * u64::from(SEG)).to_string();
    let out1 = dir.path().join("restore1");
    let mut restore_args: Vec<String> =
        vec!["restore".into(), "--remote-storage".into(), url.clone()];
    restore_args.extend(ids(&ttid));
    restore_args.extend(["--from".into(), from.clone(), "--to".into(), to.clone()]);
    let with_dir = |d: &Path, parallel: &str| -> Vec<String> {
        let mut a = restore_args.clone();
        a.extend([
            "-D".into(),
            d.display().to_string(),
            "--parallel".into(),
            parallel.into(),
        ]);
        a
    };
    let a = with_dir(&out1, "4");
    let (ok, stdout, stderr) = archive(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(ok, "restore failed: {stderr}");
    ensure!(stdout.contains("restored"), "{stdout}");
    same_as_primary(&out1, &pg, first, last, tl_start)?;

    // Killed midway, then run again: it completes, keeping what was whole.
    let out2 = dir.path().join("restore2");
    let a = with_dir(&out2, "1");
    let mut child = Command::new(workspace_bin("safekeeper"))
        .arg("archive")
        .args(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let second = out2.join(xlog_file_name(1, first + 1, SEG));
    wait_for("a restore under way", Duration::from_secs(60), || {
        Ok(if second.exists() {
            Ok(())
        } else {
            Err("not yet".into())
        })
    })?;
    child.kill()?;
    child.wait()?;
    for e in std::fs::read_dir(&out2)? {
        let e = e?;
        let name = e.file_name().into_string().unwrap_or_default();
        if !name.starts_with('.') {
            ensure!(
                e.metadata()?.len() == u64::from(SEG),
                "{name} under its final name is not whole"
            );
        }
    }
    let (ok, stdout, stderr) = archive(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(ok, "rerun failed: {stderr}");
    ensure!(
        !stdout.contains("(0 already present)"),
        "the rerun found nothing to keep: {stdout}"
    );
    same_as_primary(&out2, &pg, first, last, tl_start)?;

    // `archive list` names the timeline; with a segment gone it shows the gap, and a
    // restore fails naming the segment.
    let mut list_args = vec!["list".to_string(), "--remote-storage".into(), url.clone()];
    list_args.extend(ids(&ttid));
    let list_args: Vec<&str> = list_args.iter().map(String::as_str).collect();
    let (ok, listing, stderr) = archive(&list_args)?;
    ensure!(ok, "list: {stderr}");
    ensure!(
        listing.contains(&ttid.timeline_id.to_string()) && listing.contains(" none"),
        "{listing}"
    );
    let tl_archive = archive_dir
        .join(ttid.tenant_id.to_string())
        .join(ttid.timeline_id.to_string());
    let gone = xlog_file_name(1, first + 2, SEG);
    std::fs::remove_file(tl_archive.join(format!("{gone}.zst")))?;
    let (_, listing, _) = archive(&list_args)?;
    ensure!(listing.contains(&format!("MISSING {gone}")), "{listing}");
    let a = with_dir(&dir.path().join("restore3"), "4");
    let (ok, _, stderr) = archive(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(
        !ok && stderr.contains(&gone) && stderr.contains("not in the archive"),
        "{stderr}"
    );

    // A corrupt object fails the restore, naming it.
    let bad = xlog_file_name(1, first + 1, SEG);
    let path = tl_archive.join(format!("{bad}.zst"));
    let mut bytes = std::fs::read(&path)?;
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&path, bytes)?;
    // (A range that stops before the gap.)
    let mut a: Vec<String> = vec!["restore".into(), "--remote-storage".into(), url.clone()];
    a.extend(ids(&ttid));
    a.extend([
        "--from".into(),
        from.clone(),
        "--to".into(),
        Lsn((first + 2) * u64::from(SEG)).to_string(),
        "-D".into(),
        dir.path().join("restore4").display().to_string(),
    ]);
    let (ok, _, stderr) = archive(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(
        !ok && stderr.contains(&bad) && stderr.contains("corrupt"),
        "{stderr}"
    );
    if stderr.contains("panicked") {
        bail!("{stderr}");
    }
    for s in &sks {
        s.assert_no_panics();
    }
    drop(bridge);
    Ok(())
}
