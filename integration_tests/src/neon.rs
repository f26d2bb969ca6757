//! Neon's compute (its PostgreSQL 17 fork with the `neon` extension's walproposer) as a
//! test client: finding the build ([`NeonBuild::from_env`], `NEON_COMPUTE_DIST`: the
//! `.tar.zst` or an unpacked directory holding `bin/postgres`), making a data directory
//! ([`NeonBuild::initdb`]) and running a compute pointed at safekeepers ([`NeonCompute`]).
//!
//! Owns: the unpacked build and the compute's data directory, in the caller's scratch
//! directory. Must never: leave a compute running (stopped, immediately, on drop).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use utils::{Lsn, TenantTimelineId};

use crate::pg::free_port;
use crate::pg_tools::{PG_OS_USER, give_to_pg_user, run, running_as_root, server_command_in};

/// The variable naming the build.
pub const DIST_VAR: &str = "NEON_COMPUTE_DIST";

/// An unpacked build of Neon's compute.
#[derive(Debug, Clone)]
pub struct NeonBuild {
    root: PathBuf,
}

/// What `initdb` made: the data directory and the identity of the new cluster.
#[derive(Debug, Clone)]
pub struct NeonDataDir {
    /// The data directory (owned by the PostgreSQL OS user when root).
    pub pgdata: PathBuf,
    /// `Database system identifier` of `pg_controldata`.
    pub system_id: u64,
    /// `Latest checkpoint's REDO location`: where a new timeline starts.
    pub start_lsn: Lsn,
}

impl NeonBuild {
    /// The build named by `NEON_COMPUTE_DIST`, unpacked into `scratch` when it is a tarball;
    /// `None` (after printing one line naming the variable) when it is unset, so that the
    /// caller can skip. `scratch` is made readable by the PostgreSQL OS user.
    pub fn from_env(scratch: &Path) -> anyhow::Result<Option<NeonBuild>> {
        let Some(dist) = std::env::var_os(DIST_VAR).map(PathBuf::from) else {
            println!("{DIST_VAR} is not set: skipping the Neon compute test");
            return Ok(None);
        };
        std::fs::set_permissions(scratch, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let root = if let Some(root) = find_root(&dist) {
            root
        } else {
            ensure!(
                dist.is_file(),
                "{DIST_VAR}={} is neither a build nor a tarball",
                dist.display()
            );
            run(Command::new("tar")
                .arg("--zstd")
                .arg("-xf")
                .arg(&dist)
                .arg("-C")
                .arg(scratch))?;
            let root = find_root(scratch)
                .with_context(|| format!("no bin/postgres in {}", dist.display()))?;
            give_tree(scratch)?;
            root
        };
        Ok(Some(NeonBuild { root }))
    }

    /// The build's `bin` directory.
    pub fn bindir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// A client program of the build (`psql`, `pgbench`, `pg_waldump`, `pg_receivewal`).
    pub fn client(&self, name: &str) -> Command {
        Command::new(self.bindir().join(name))
    }

    /// A server-side program of the build, run as the PostgreSQL OS user when root.
    pub fn server(&self, name: &str) -> Command {
        server_command_in(&self.bindir(), name)
    }

    /// `initdb -U cloud_admin` into `pgdata` (created), with the cluster's identity.
    pub fn initdb(&self, pgdata: &Path) -> anyhow::Result<NeonDataDir> {
        std::fs::create_dir_all(pgdata)?;
        give_to_pg_user(pgdata)?;
        run(self
            .server("initdb")
            .arg("-D")
            .arg(pgdata)
            .args(["-U", "cloud_admin"]))?;
        Ok(NeonDataDir {
            pgdata: pgdata.to_path_buf(),
            system_id: self
                .controldata_field(pgdata, "Database system identifier")?
                .parse()?,
            start_lsn: self
                .controldata_field(pgdata, "Latest checkpoint's REDO location")?
                .parse()?,
        })
    }

    /// One field of `pg_controldata PGDATA`.
    pub fn controldata_field(&self, pgdata: &Path, field: &str) -> anyhow::Result<String> {
        let out = run(self.server("pg_controldata").arg(pgdata))?;
        out.lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim_start_matches(':').trim().to_string())
            .with_context(|| format!("no {field:?} in pg_controldata's output"))
    }
}

/// The settings of a compute that streams to safekeepers: the ones Neon's own test harness
/// writes for a primary with safekeepers, with no pageserver (local storage; the
/// walproposer still streams every record and commits wait for a quorum).
#[derive(Debug, Clone)]
pub struct ComputeSettings {
    /// The timeline the compute writes.
    pub ttid: TenantTimelineId,
    /// `neon.safekeepers` as written: `host:port,...` or `g#N:host:port,...`.
    pub safekeepers: String,
    /// `neon.safekeeper_proto_version` (3 or 2).
    pub proto_version: u32,
    /// More `postgresql.conf` lines.
    pub extra: Vec<String>,
}

impl ComputeSettings {
    /// The plain list (`host:port,...`), protocol v3.
    pub fn plain(ttid: TenantTimelineId, pg_ports: &[u16]) -> ComputeSettings {
        ComputeSettings {
            ttid,
            safekeepers: list(pg_ports),
            proto_version: 3,
            extra: Vec::new(),
        }
    }

    /// With a generation (`g#N:host:port,...`), protocol v3.
    pub fn generation(
        ttid: TenantTimelineId,
        generation: u32,
        pg_ports: &[u16],
    ) -> ComputeSettings {
        ComputeSettings {
            safekeepers: format!("g#{generation}:{}", list(pg_ports)),
            ..ComputeSettings::plain(ttid, pg_ports)
        }
    }

    /// The `postgresql.conf` lines (without `port` and the socket directory).
    pub fn conf_lines(&self) -> Vec<String> {
        let mut lines = vec![
            "shared_preload_libraries = 'neon'".to_string(),
            "neon.pageserver_connstring = ''".to_string(),
            format!("neon.safekeepers = '{}'", self.safekeepers),
            format!("neon.tenant_id = '{}'", self.ttid.tenant_id),
            format!("neon.timeline_id = '{}'", self.ttid.timeline_id),
            format!("neon.safekeeper_proto_version = {}", self.proto_version),
            "synchronous_standby_names = 'walproposer'".to_string(),
            "wal_level = logical".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "wal_log_hints = off".to_string(),
            "fsync = off".to_string(),
            "restart_after_crash = off".to_string(),
            "wal_sender_timeout = 5s".to_string(),
            "wal_keep_size = 0".to_string(),
            "listen_addresses = '127.0.0.1'".to_string(),
        ];
        lines.extend(self.extra.iter().cloned());
        lines
    }
}

fn list(pg_ports: &[u16]) -> String {
    pg_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A running compute (`pg_ctl start`), stopped immediately on drop.
#[derive(Debug)]
pub struct NeonCompute {
    build: NeonBuild,
    pgdata: PathBuf,
    log: PathBuf,
    port: u16,
    running: bool,
}

impl NeonCompute {
    /// Appends `settings` (and a free loopback port, sockets in `scratch`) to the data
    /// directory's `postgresql.conf` and starts the compute (`pg_ctl -w`, 60 s).
    pub fn start(
        build: &NeonBuild,
        data: &NeonDataDir,
        settings: &ComputeSettings,
        scratch: &Path,
    ) -> anyhow::Result<NeonCompute> {
        let port = free_port()?;
        let mut lines = settings.conf_lines();
        lines.push(format!("port = {port}"));
        lines.push(format!("unix_socket_directories = '{}'", scratch.display()));
        let conf_path = data.pgdata.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path)?;
        all.push('\n');
        all.push_str(&lines.join("\n"));
        all.push('\n');
        std::fs::write(&conf_path, all)?;
        let log = scratch.join(format!("compute-{port}.log"));
        std::fs::write(&log, "")?;
        give_to_pg_user(&log)?;
        let mut compute = NeonCompute {
            build: build.clone(),
            pgdata: data.pgdata.clone(),
            log,
            port,
            running: false,
        };
        compute.pg_ctl_start()?;
        Ok(compute)
    }

    fn pg_ctl_start(&mut self) -> anyhow::Result<()> {
        let started = run(self
            .build
            .server("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]));
        self.running = started.is_ok();
        started
            .map(|_| ())
            .with_context(|| format!("starting the compute; {}", self.log_tail(40)))
    }

    /// The compute's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string to the `postgres` database as `cloud_admin`.
    pub fn connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=cloud_admin dbname=postgres",
            self.port
        )
    }

    /// `psql -XAt -c sql`, its output trimmed.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        Ok(run(self.build.client("psql").arg(self.connstr()).args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))?
        .trim()
        .to_string())
    }

    /// `pgbench ARGS CONNSTR` with the build's pgbench; its stdout.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.build.client("pgbench").args(args).arg(self.connstr()))
    }

    /// `pg_current_wal_flush_lsn()`.
    pub fn flush_lsn(&self) -> anyhow::Result<Lsn> {
        Ok(self.psql("select pg_current_wal_flush_lsn()")?.parse()?)
    }

    /// The last `n` lines of the compute's log, newest last, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "compute log ({}), last lines:\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`).
    pub fn stop(&mut self, mode: &str) -> anyhow::Result<()> {
        if self.running {
            self.running = false;
            run(self
                .build
                .server("pg_ctl")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", mode, "-w", "stop"]))?;
        }
        Ok(())
    }
}

impl Drop for NeonCompute {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
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

/// Makes `dir` and everything under it owned by the PostgreSQL OS user (when root).
fn give_tree(dir: &Path) -> anyhow::Result<()> {
    if running_as_root() {
        run(Command::new("chown").args(["-R", PG_OS_USER]).arg(dir))?;
    }
    Ok(())
}
