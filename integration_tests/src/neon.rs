//! Neon's compute (its PostgreSQL 17 fork with the `neon` extension's walproposer) as a
//! test client: finding the build ([`NeonBuild::from_env`], `NEON_COMPUTE_DIST`: the
//! `.tar.zst` or an unpacked directory holding `bin/postgres`), making a data directory
//! ([`NeonBuild::initdb`]) and running a compute pointed at safekeepers ([`NeonCompute`]).
//!
//! Also the checks the Neon tests share: the compute's own `postgres --sync-safekeepers`
//! ([`NeonBuild::sync_safekeepers`]), pgbench with a safekeeper killed mid-run
//! ([`pgbench_with_a_kill`]), waiting for every safekeeper to reach the compute's flush
//! position ([`wait_all_at_compute_flush`]), and reading a timeline back from each
//! safekeeper with the build's `pg_receivewal`, decoding it with its `pg_waldump` and
//! comparing the copies byte for byte ([`check_wal_copies`]).
//!
//! Owns: the unpacked build and the compute's data directory, in the caller's scratch
//! directory. Must never: leave a compute running (stopped, immediately, on drop).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantTimelineId};

use crate::http::Api;
use crate::pg::free_port;
use crate::pg_tools::{
    PG_OS_USER, WaldumpRecord, describe, give_to_pg_user, parse_waldump_line, run, running_as_root,
    server_command_in,
};
use crate::sk::{Safekeeper, TimelineStatus};
use crate::standby::output_within;

/// The variable setting how long pgbench runs in the Neon tests (seconds).
pub const PGBENCH_SECONDS_VAR: &str = "SK_NEON_PGBENCH_SECONDS";

/// Seconds of pgbench in the Neon tests: `SK_NEON_PGBENCH_SECONDS`, default 10.
pub fn pgbench_seconds() -> u64 {
    std::env::var(PGBENCH_SECONDS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(10)
}

/// WAL segment size of the compute's clusters (initdb's default).
pub const SEG: u32 = 16 * 1024 * 1024;

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

    /// `postgres --sync-safekeepers` on `data` (its `postgresql.conf` must already hold the
    /// safekeeper settings, see [`NeonDataDir::append_conf`]; the compute must not be
    /// running): the election and recovery alone. Returns the LSN it printed, and its
    /// stderr (the walproposer's log). Fails if it does not exit 0 within 120 s.
    pub fn sync_safekeepers(&self, data: &NeonDataDir) -> anyhow::Result<(Lsn, String)> {
        let mut cmd = self.server("postgres");
        cmd.arg("--sync-safekeepers")
            .arg("-D")
            .arg(&data.pgdata)
            .env("PGDATA", &data.pgdata);
        let what = describe(&cmd);
        let out = output_within(&mut cmd, Duration::from_secs(120))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        let line = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .with_context(|| format!("{what} printed nothing; stderr: {stderr}"))?;
        let lsn = line
            .parse()
            .with_context(|| format!("{what} printed {line:?}, not an LSN; stderr: {stderr}"))?;
        Ok((lsn, stderr))
    }

    /// Copies the timeline `ttid` from `sk` with the build's `pg_receivewal` into `dir`
    /// (created), from the timeline's first segment (a slot name makes it ask
    /// `READ_REPLICATION_SLOT`) up to `end`, which must be the safekeeper's commit_lsn or
    /// below it. The last segment (`.partial`, zero-padded to full size by `pg_receivewal`)
    /// gets its full name, so that `pg_waldump` finds it.
    pub fn receive_wal(
        &self,
        sk: &Safekeeper,
        ttid: &TenantTimelineId,
        dir: &Path,
        end: Lsn,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = self.client("pg_receivewal");
        cmd.arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable \
                 options='-c tenant_id={} timeline_id={}'",
                sk.pg_port, ttid.tenant_id, ttid.timeline_id
            ))
            .arg("-D")
            .arg(dir)
            .arg("--slot=copy")
            // It stops once it received WAL beyond --endpos.
            .arg(format!("--endpos={}", Lsn(end.0 - 1)))
            .args(["--no-loop", "--no-sync", "--no-password"]);
        let out = output_within(&mut cmd, Duration::from_secs(120))?;
        ensure!(
            out.status.success(),
            "pg_receivewal from safekeeper {} failed ({}): {}",
            sk.id,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(full) = path
                .to_str()
                .and_then(|p| p.strip_suffix(".partial"))
                .map(PathBuf::from)
            {
                std::fs::rename(&path, full)?;
            }
        }
        Ok(())
    }

    /// The build's `pg_waldump -p dir -s start -e end`, parsed.
    pub fn waldump(&self, dir: &Path, start: Lsn, end: Lsn) -> anyhow::Result<ForkWaldump> {
        let out = self
            .client("pg_waldump")
            .arg("-p")
            .arg(dir)
            .arg("-s")
            .arg(start.to_string())
            .arg("-e")
            .arg(end.to_string())
            .output()
            .context("running pg_waldump")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (records, ends) = stdout.lines().filter_map(parse_waldump17_line).unzip();
        Ok(ForkWaldump {
            records,
            ends,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
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

/// What the build's (PostgreSQL 17) `pg_waldump` printed.
#[derive(Debug, Clone)]
pub struct ForkWaldump {
    /// Every record line, in order.
    pub records: Vec<WaldumpRecord>,
    /// The end of each record (MAXALIGNed, as PostgreSQL 17 prints it), in the same order.
    pub ends: Vec<Lsn>,
    /// Its stderr.
    pub stderr: String,
    /// Whether it exited with status 0.
    pub success: bool,
}

/// Parses a PostgreSQL 17 record line, which has `, end: X/X` between the LSN and `prev`
/// (`… lsn: 0/01481B58, end: 0/01481BD0 prev 0/01481B10, desc: …`): the record and its end.
pub fn parse_waldump17_line(line: &str) -> Option<(WaldumpRecord, Lsn)> {
    let (head, rest) = line.split_once(", end: ")?;
    let (end, tail) = rest.split_once(" prev ")?;
    let record = parse_waldump_line(&format!("{head}, prev {tail}"))?;
    Some((record, end.trim().parse().ok()?))
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

impl NeonDataDir {
    /// Appends `lines` to `postgresql.conf` (later lines win over earlier ones).
    pub fn append_conf(&self, lines: &[String]) -> anyhow::Result<()> {
        let conf_path = self.pgdata.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path)?;
        all.push('\n');
        all.push_str(&lines.join("\n"));
        all.push('\n');
        std::fs::write(&conf_path, all)?;
        Ok(())
    }
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

    /// The same with `neon.safekeeper_proto_version = version`.
    pub fn with_proto_version(self, version: u32) -> ComputeSettings {
        ComputeSettings {
            proto_version: version,
            ..self
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
        data.append_conf(&lines)?;
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

/// Starts safekeepers 1..=n with data in `scratch/sk<id>` and `extra` flags.
pub fn start_safekeepers(
    scratch: &Path,
    n: u64,
    extra: &[&str],
) -> anyhow::Result<Vec<Safekeeper>> {
    (1..=n)
        .map(|i| Safekeeper::start_with_args(i, &scratch.join(format!("sk{i}")), false, extra))
        .collect()
}

/// The pg ports of `sks`, in order.
pub fn pg_ports(sks: &[Safekeeper]) -> Vec<u16> {
    sks.iter().map(|sk| sk.pg_port).collect()
}

/// `GET /v1/tenant/{t}/timeline/{tl}` on `sk` (must answer 200): the timeline's status with
/// its term history (`term_history`), `pg_version` and positions.
pub fn timeline_info(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Value> {
    let a = Api::new(sk.http_port).get(&format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    ensure!(
        a.status == 200,
        "timeline status of safekeeper {}: {a:?}",
        sk.id
    );
    Ok(a.json())
}

/// Runs `pgbench -c 4 -j 2 -T seconds` on `compute` while SIGKILLing `victim` a third of
/// the way in and restarting it (on the same ports, which the compute remembers) at two
/// thirds; fails unless pgbench reports `number of failed transactions: 0`. Returns
/// pgbench's output.
pub fn pgbench_with_a_kill(
    compute: &NeonCompute,
    victim: &mut Safekeeper,
    seconds: u64,
) -> anyhow::Result<String> {
    let third = Duration::from_millis(seconds * 1000 / 3);
    let t = seconds.to_string();
    let (out, killed) = std::thread::scope(|s| {
        let bench = s.spawn(|| compute.pgbench(&["-c", "4", "-j", "2", "-T", &t]));
        let killed = (|| -> anyhow::Result<()> {
            std::thread::sleep(third);
            victim.kill()?;
            std::thread::sleep(third);
            victim.restart_same_ports()
        })();
        let out = bench
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the pgbench thread panicked")));
        (out, killed)
    });
    killed.with_context(|| format!("killing and restarting safekeeper {}", victim.id))?;
    let out = out?;
    ensure!(
        out.contains("number of failed transactions: 0"),
        "pgbench with safekeeper {} killed mid-run: {out}",
        victim.id
    );
    Ok(out)
}

/// Waits (up to 120 s) until every safekeeper's flush_lsn and commit_lsn equal the running
/// compute's flush position (the same before and after the statuses were read, so that the
/// compute wrote nothing meanwhile). Returns that position and the statuses.
pub fn wait_all_at_compute_flush(
    compute: &NeonCompute,
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
) -> anyhow::Result<(Lsn, Vec<TimelineStatus>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = compute.flush_lsn()?;
        let st: Vec<TimelineStatus> = sks
            .iter()
            .map(|sk| sk.timeline_status(ttid))
            .collect::<anyhow::Result<_>>()?;
        let after = compute.flush_lsn()?;
        if before == after
            && st
                .iter()
                .all(|s| s.flush_lsn == after && s.commit_lsn == after)
        {
            return Ok((after, st));
        }
        if Instant::now() > deadline {
            bail!("the safekeepers did not reach the compute's flush position {after}: {st:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to 120 s) until every safekeeper's flush_lsn and commit_lsn equal `lsn`;
/// returns the statuses.
pub fn wait_all_at(
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
    lsn: Lsn,
) -> anyhow::Result<Vec<TimelineStatus>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st: Vec<TimelineStatus> = sks
            .iter()
            .map(|sk| sk.timeline_status(ttid))
            .collect::<anyhow::Result<_>>()?;
        if st.iter().all(|s| s.flush_lsn == lsn && s.commit_lsn == lsn) {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("the safekeepers did not reach {lsn}: {st:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads the timeline `[start, end)` back from every safekeeper with the build's
/// `pg_receivewal` (into `scratch/copy-<id>`), checks that the build's `pg_waldump`
/// decodes every copy from `start` to `end` with no error, and that the copies are
/// byte-identical over `[start, end)`. `end` must be every safekeeper's commit_lsn.
/// Returns what `pg_waldump` printed for the first copy.
pub fn check_wal_copies(
    build: &NeonBuild,
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
    start: Lsn,
    end: Lsn,
    scratch: &Path,
) -> anyhow::Result<ForkWaldump> {
    ensure!(end > start, "no WAL to compare: {start}..{end}");
    let mut first: Option<(u64, Vec<u8>, ForkWaldump)> = None;
    for sk in sks {
        let dir = scratch.join(format!("copy-{}-{}", sk.id, end.0));
        build.receive_wal(sk, ttid, &dir, end)?;
        let dump = build.waldump(&dir, start, end)?;
        ensure!(
            dump.success && !dump.stderr.contains("error"),
            "pg_waldump of safekeeper {}'s copy {start}..{end}: {}",
            sk.id,
            dump.stderr
        );
        let last_end = dump.ends.last().copied();
        let last = dump.records.last().with_context(|| {
            format!(
                "no records in safekeeper {}'s copy ({}) {start}..{end}: {}",
                sk.id,
                dir.display(),
                dump.stderr
            )
        })?;
        ensure!(
            last.lsn < end && last_end == Some(end),
            "safekeeper {}: the last record decoded starts at {} and ends at {last_end:?}, \
             not at {end}",
            sk.id,
            last.lsn
        );
        let bytes = wal_bytes(&dir, start, end)?;
        match &first {
            None => first = Some((sk.id, bytes, dump)),
            Some((id, b, _)) => {
                if let Some(at) = b.iter().zip(&bytes).position(|(x, y)| x != y) {
                    bail!(
                        "safekeepers {id} and {} differ at {}",
                        sk.id,
                        Lsn(start.0 + at as u64)
                    );
                }
            }
        }
    }
    Ok(first.context("no safekeepers")?.2)
}

/// The bytes `[from, to)` of the WAL segment files (`NAME` or `NAME.partial`) in `dir`.
pub fn wal_bytes(dir: &Path, from: Lsn, to: Lsn) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::with_capacity(to.0.saturating_sub(from.0) as usize);
    let mut pos = from;
    while pos < to {
        let name = xlog_file_name(1, pos.segment_number(SEG), SEG);
        let path = [name.clone(), format!("{name}.partial")]
            .into_iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .with_context(|| format!("no segment {name} in {}", dir.display()))?;
        let n = (to.0 - pos.0).min(pos.remaining_in_segment(SEG)) as usize;
        let mut buf = vec![0; n];
        std::fs::File::open(&path)?
            .read_exact_at(&mut buf, pos.segment_offset(SEG) as u64)
            .with_context(|| format!("reading {} at {pos}", path.display()))?;
        out.extend_from_slice(&buf);
        pos = Lsn(pos.0 + n as u64);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg17_waldump_lines() {
        let line = "rmgr: XLOG        len (rec/tot):     30/    30, tx:          0, \
                    lsn: 0/01481C08, end: 0/01481C28 prev 0/01481BD0, desc: NEXTOID 24576";
        let (r, end) = parse_waldump17_line(line).unwrap();
        assert_eq!(
            (r.lsn, r.prev, end),
            (Lsn(0x1481C08), Lsn(0x1481BD0), Lsn(0x1481C28))
        );
        assert_eq!((r.rmgr.as_str(), r.tot_len), ("XLOG", 30));
        assert_eq!(r.desc, "NEXTOID 24576");
        assert_eq!(parse_waldump17_line("pg_waldump: error: x"), None);
    }
}
