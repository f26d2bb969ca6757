//! Neon's compute (its PostgreSQL 17 fork with the `neon` extension's walproposer) as the
//! client, started the way Neon's control plane starts computes: with a safekeeper
//! generation (`neon.safekeepers = 'g#1:…'`) after the timeline was created on each member
//! with `POST /v1/tenant/timeline`. pgbench runs through the quorum; all three safekeepers
//! end at the compute's flush position.
//!
//! The build comes from `NEON_COMPUTE_DIST` (the `.tar.zst` or an unpacked directory holding
//! `bin/postgres`); without it the test prints one line naming the variable and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use integration_tests::http::Api;
use integration_tests::pg::free_port;
use integration_tests::pg_tools::{
    PG_OS_USER, give_to_pg_user, run, running_as_root, server_command_in,
};
use integration_tests::sk::Safekeeper;
use serde_json::json;
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

/// The unpacked build's root (holding `bin/`), unpacking a tarball into `scratch`.
fn neon_dist(scratch: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(dist) = std::env::var_os("NEON_COMPUTE_DIST").map(PathBuf::from) else {
        return Ok(None);
    };
    if dist.join("bin/postgres").exists() {
        return Ok(Some(dist));
    }
    if let Some(inner) = find_root(&dist) {
        return Ok(Some(inner));
    }
    ensure!(
        dist.is_file(),
        "NEON_COMPUTE_DIST={} is neither a build nor a tarball",
        dist.display()
    );
    run(Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&dist)
        .arg("-C")
        .arg(scratch))?;
    find_root(scratch)
        .with_context(|| format!("no bin/postgres in {}", dist.display()))
        .map(Some)
}

/// `dir` or one of its subdirectories holding `bin/postgres`.
fn find_root(dir: &Path) -> Option<PathBuf> {
    if dir.join("bin/postgres").exists() {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("bin/postgres").exists())
}

/// A server-side program of the build, run as the PostgreSQL OS user when root.
fn server(root: &Path, name: &str) -> Command {
    server_command_in(&root.join("bin"), name)
}

/// Makes `dir` and everything under it owned by the PostgreSQL OS user (when root).
fn give_tree(dir: &Path) -> anyhow::Result<()> {
    if running_as_root() {
        run(Command::new("chown").args(["-R", PG_OS_USER]).arg(dir))?;
    }
    Ok(())
}

fn pg_controldata_field(root: &Path, pgdata: &Path, field: &str) -> anyhow::Result<String> {
    let out = run(server(root, "pg_controldata").arg(pgdata))?;
    out.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim_start_matches(':').trim().to_string())
        .with_context(|| format!("no {field:?} in pg_controldata's output"))
}

#[test]
fn a_neon_compute_with_a_generation_streams_through_three_safekeepers() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-").tempdir()?;
    // Readable by the PostgreSQL OS user, who runs the build's programs from here.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let Some(root) = neon_dist(scratch.path())? else {
        println!("NEON_COMPUTE_DIST is not set: skipping the Neon compute test");
        return Ok(());
    };
    give_tree(scratch.path())?;

    let sks: Vec<Safekeeper> = (1..=3)
        .map(|i| Safekeeper::start(i, &scratch.path().join(format!("sk{i}")), false))
        .collect::<anyhow::Result<_>>()?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());

    let pgdata = scratch.path().join("pgdata");
    std::fs::create_dir(&pgdata)?;
    give_to_pg_user(&pgdata)?;
    run(server(&root, "initdb")
        .arg("-D")
        .arg(&pgdata)
        .args(["-U", "cloud_admin"]))?;
    let system_id: u64 =
        pg_controldata_field(&root, &pgdata, "Database system identifier")?.parse()?;
    let start: Lsn =
        pg_controldata_field(&root, &pgdata, "Latest checkpoint's REDO location")?.parse()?;

    // What Neon's storage controller does first: create the timeline on every member.
    let members: Vec<_> = sks
        .iter()
        .map(|sk| json!({"id": sk.id, "host": "127.0.0.1", "pg_port": sk.pg_port}))
        .collect();
    let body = json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "mconf": {"generation": 1, "members": members, "new_members": null},
        "pg_version": 170000,
        "system_id": system_id,
        "wal_seg_size": 16 * 1024 * 1024,
        "start_lsn": start.to_string(),
        "commit_lsn": null,
    });
    for sk in &sks {
        let a = Api::new(sk.http_port).post_json("/v1/tenant/timeline", &body)?;
        ensure!(a.status == 201, "create on safekeeper {}: {a:?}", sk.id);
    }

    let port = free_port()?;
    let list = sks
        .iter()
        .map(|sk| format!("127.0.0.1:{}", sk.pg_port))
        .collect::<Vec<_>>()
        .join(",");
    let conf = format!(
        "shared_preload_libraries = 'neon'\n\
         neon.pageserver_connstring = ''\n\
         neon.safekeepers = 'g#1:{list}'\n\
         neon.tenant_id = '{}'\n\
         neon.timeline_id = '{}'\n\
         neon.safekeeper_proto_version = 3\n\
         synchronous_standby_names = 'walproposer'\n\
         wal_level = logical\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_log_hints = off\n\
         fsync = off\n\
         restart_after_crash = off\n\
         wal_sender_timeout = 5s\n\
         wal_keep_size = 0\n\
         port = {port}\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\n",
        ttid.tenant_id,
        ttid.timeline_id,
        scratch.path().display()
    );
    let conf_path = pgdata.join("postgresql.conf");
    let mut all = std::fs::read_to_string(&conf_path)?;
    all.push_str(&conf);
    std::fs::write(&conf_path, all)?;
    let log = scratch.path().join("compute.log");
    std::fs::write(&log, "")?;
    give_to_pg_user(&log)?;
    run(server(&root, "pg_ctl")
        .arg("-D")
        .arg(&pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "start"]))?;
    let stop = || {
        let _ =
            run(server(&root, "pg_ctl")
                .arg("-D")
                .arg(&pgdata)
                .args(["-m", "immediate", "stop"]));
    };
    let result = (|| -> anyhow::Result<()> {
        let conn = format!("host=127.0.0.1 port={port} user=cloud_admin dbname=postgres");
        let pgbench =
            |args: &[&str]| run(Command::new(root.join("bin/pgbench")).args(args).arg(&conn));
        pgbench(&["-i", "-s", "2", "-q"])?;
        let out = pgbench(&["-c", "4", "-j", "2", "-T", "5"])?;
        ensure!(out.contains("number of failed transactions: 0"), "{out}");
        let flush: Lsn = run(Command::new(root.join("bin/psql")).arg(&conn).args([
            "-X",
            "-A",
            "-t",
            "-c",
            "select pg_current_wal_flush_lsn()",
        ]))?
        .trim()
        .parse()?;
        // Every commit waited for a quorum; all three reach the compute's flush position.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st: Vec<_> = sks
                .iter()
                .map(|sk| sk.timeline_status(&ttid))
                .collect::<anyhow::Result<_>>()?;
            if st
                .iter()
                .all(|s| s.commit_lsn >= flush && s.flush_lsn == st[0].flush_lsn)
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "safekeepers did not reach {flush}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    stop();
    if let Err(e) = result {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        anyhow::bail!(
            "{e:#}\ncompute log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}
