//! A hot standby for tests: made with `pg_basebackup -X none` of a primary, its
//! `primary_conninfo` pointing wherever the test wants WAL to come from (a safekeeper),
//! run as the PostgreSQL OS user when root; and [`output_within`], a child process with a
//! time limit.
//!
//! Owns: the standby's directory and server (stopped on drop).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use utils::Lsn;

use crate::pg::{PgCluster, free_port};
use crate::pg_tools::{give_to_pg_user, pg_bin, run, run_unchecked, server_command};

/// Runs `cmd` to completion, killing it after `limit` (a hung client fails the test
/// instead of hanging it).
pub fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped
            // (the waiting thread is still blocked in wait).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx.recv().context("waiting for the killed child")??;
            bail!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

/// A hot standby made with pg_basebackup, run as the postgres OS user when root.
pub struct Standby {
    base: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    running: bool,
}

impl Standby {
    /// `pg_basebackup -X none` of `primary` (no WAL: the standby gets it from the
    /// safekeeper). Returns the standby and the backup's start LSN.
    pub fn basebackup(primary: &PgCluster) -> anyhow::Result<(Standby, Lsn)> {
        let base = tempfile::Builder::new().prefix("standby-").tempdir()?;
        give_to_pg_user(base.path())?;
        let data = base.path().join("data");
        run(server_command("pg_basebackup")
            .current_dir(base.path())
            .args(["-h", "127.0.0.1", "-p", &primary.port().to_string()])
            .args([
                "-U",
                "postgres",
                "-X",
                "none",
                "-c",
                "fast",
                "--no-sync",
                "-D",
            ])
            .arg(&data))
        .context("pg_basebackup")?;
        let label = std::fs::read_to_string(data.join("backup_label"))?;
        let start = label
            .lines()
            .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
            .and_then(|l| l.split_whitespace().next())
            .context("no START WAL LOCATION in backup_label")?
            .parse()?;
        Ok((
            Standby {
                base,
                data,
                port: free_port()?,
                running: false,
            },
            start,
        ))
    }

    /// Points the standby at `primary_conninfo` (hot standby, feedback on).
    pub fn configure(&self, primary_conninfo: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        writeln!(
            f,
            "port = {}\nunix_socket_directories = '{}'\nhot_standby = on\n\
             hot_standby_feedback = on\nwal_receiver_status_interval = '1s'\n\
             wal_retrieve_retry_interval = '500ms'\nprimary_conninfo = '{}'",
            self.port,
            self.base.path().display(),
            primary_conninfo.replace('\'', "''"),
        )?;
        std::fs::write(self.data.join("standby.signal"), "")?;
        Ok(())
    }

    /// Makes it a standby fed by `restore_command` alone (no `primary_conninfo`): it
    /// replays what the archive holds and keeps asking for more.
    pub fn configure_restore(&self, restore_command: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        writeln!(
            f,
            "port = {}\nunix_socket_directories = '{}'\nhot_standby = on\n\
             wal_retrieve_retry_interval = '1s'\nrestore_command = '{}'",
            self.port,
            self.base.path().display(),
            restore_command.replace('\'', "''"),
        )?;
        std::fs::write(self.data.join("standby.signal"), "")?;
        Ok(())
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// Its server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.path().join("standby.log")).unwrap_or_default()
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let out = run_unchecked(
            server_command("pg_ctl")
                .current_dir(self.base.path())
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.base.path().join("standby.log"))
                .args(["start", "-w", "-t", "40"]),
        )?;
        self.running = true;
        if !out.status.success() {
            bail!(
                "the standby did not start: {}\nstandby log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// Runs one SQL command on it; the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        Ok(run(Command::new(pg_bin("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-c", sql,
            ]))?
        .trim()
        .to_string())
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if self.running {
            let _ = run_unchecked(
                server_command("pg_ctl")
                    .current_dir(self.base.path())
                    .arg("-D")
                    .arg(&self.data)
                    .args(["stop", "-w", "-t", "30", "-m", "immediate"]),
            );
        }
    }
}
