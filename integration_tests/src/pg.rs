//! A throwaway PostgreSQL 15 cluster for tests: initdb in a temp dir, a free port on
//! 127.0.0.1, replication allowed, trust authentication.
//!
//! Owns: the cluster's directory and server process. Must never: outlive the test (Drop
//! stops the server with `pg_ctl stop -m immediate` and removes the directory) or bind
//! anything but 127.0.0.1 and a socket inside its own directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use tempfile::TempDir;
use utils::Lsn;

use crate::pg_tools::{give_to_pg_user, pg_bin, run, run_unchecked, server_command};

/// The superuser created by initdb and used by every client helper.
pub const PG_SUPERUSER: &str = "postgres";

/// How many times `start` retries with another port when the chosen one got taken.
const PORT_ATTEMPTS: usize = 5;

/// How a cluster is set up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Lines appended to `postgresql.conf` after the harness's own (so they win).
    pub extra_conf: Vec<String>,
    /// `fsync`; off by default: test clusters need speed, not crash safety.
    pub fsync: bool,
    /// initdb's `--wal-segsize` in MiB; `None` keeps the default 16.
    pub wal_segsize_mb: Option<u32>,
}

/// A PostgreSQL 15 cluster in a temporary directory; see the module documentation.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds the data directory, the socket and the server log.
    dir: TempDir,
    data: PathBuf,
    port: u16,
    running: bool,
}

/// A port nobody listens on right now (the kernel picks it), and never handed out before
/// by this process: the kernel may give a port just released to the next `bind(0)`, and
/// tests running in parallel would then start two servers on one port (one fails to bind,
/// and its readiness check sees the other one listening).
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no unused port after 1000 tries")
}

impl PgCluster {
    /// Creates the cluster (not started): initdb with trust authentication, replication
    /// settings (`wal_level=replica`, `max_wal_senders=10`, `max_replication_slots=10`),
    /// WAL kept (`wal_keep_size=1GB`), `pg_hba.conf` trusting local and 127.0.0.1 for all
    /// databases and `replication`.
    pub fn init(opts: PgOptions) -> anyhow::Result<PgCluster> {
        let dir = tempfile::Builder::new().prefix("pgcluster-").tempdir()?;
        // When root, initdb runs as `postgres`, which must be able to create the data dir
        // (and later the socket and log) inside this directory.
        give_to_pg_user(dir.path())?;
        let data = dir.path().join("data");
        let mut initdb = server_command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path());
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        run(&mut initdb).context("initdb")?;
        let port = free_port()?;
        let cluster = PgCluster {
            dir,
            data,
            port,
            running: false,
        };
        let socket_dir = cluster.socket_dir().display().to_string();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{socket_dir}'"),
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "wal_keep_size = '1GB'".into(),
            format!("fsync = {}", if opts.fsync { "on" } else { "off" }),
            "log_line_prefix = '%m [%p] '".into(),
        ];
        conf.extend(opts.extra_conf);
        cluster.append_conf(&conf)?;
        let hba = "local all all trust\n\
                   local replication all trust\n\
                   host all all 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n";
        std::fs::write(cluster.data.join("pg_hba.conf"), hba).context("write pg_hba.conf")?;
        Ok(cluster)
    }

    /// Appends lines to `postgresql.conf`; they take effect at the next start (or reload).
    pub fn append_conf(&self, lines: &[String]) -> anyhow::Result<()> {
        let path = self.data.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        for line in lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections. If the port was taken
    /// meanwhile, retries with another one.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        for attempt in 1..=PORT_ATTEMPTS {
            let log_len = std::fs::metadata(self.log_file())
                .map(|m| m.len())
                .unwrap_or(0);
            let mut cmd = self.pg_ctl(&["start", "-w", "-t", "60", "-l"]);
            cmd.arg(self.log_file());
            let out = run_unchecked(&mut cmd)?;
            if out.status.success() {
                self.running = true;
                return Ok(());
            }
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            let new_log = log.get(log_len as usize..).unwrap_or(&log);
            if attempt < PORT_ATTEMPTS && new_log.contains("could not bind") {
                self.port = free_port()?;
                self.append_conf(&[format!("port = {}", self.port)])?;
                continue;
            }
            bail!(
                "pg_ctl start failed ({}): {}\nserver log:\n{new_log}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        bail!("pg_ctl start: no free port after {PORT_ATTEMPTS} attempts")
    }

    /// Stops the server cleanly (`-m fast`: a shutdown checkpoint is written).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_mode("fast")
    }

    /// Stops the server without a shutdown checkpoint (`-m immediate`, like a crash).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.stop_mode("immediate")
    }

    /// Stops (fast) and starts the server.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start()
    }

    fn stop_mode(&mut self, mode: &str) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        run(&mut self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode]))
            .with_context(|| format!("pg_ctl stop -m {mode}"))?;
        self.running = false;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(args)
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs SQL through `psql -X -At -q -v ON_ERROR_STOP=1`, fed on stdin so statements
    /// run one by one as from a file (VACUUM and friends work), and returns its output
    /// without the final newline.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.client("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-f",
            "-",
        ]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = || format!("psql: {}", abbreviate(sql));
        let mut child = cmd.spawn().with_context(what)?;
        let mut stdin = child.stdin.take().context("psql stdin")?;
        let input = sql.to_string();
        // Written from another thread: psql may fill its stdout pipe before reading all
        // of its input, and we only drain stdout in wait_with_output.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().with_context(what)?;
        let _ = writer.join();
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                what(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8(out.stdout).with_context(what)?;
        Ok(stdout.trim_end_matches('\n').to_string())
    }

    /// `psql -X -At -v ON_ERROR_STOP=1 -c sql` started in the background (stdout and
    /// stderr piped).
    pub fn spawn_psql(&self, sql: &str) -> anyhow::Result<std::process::Child> {
        Ok(self
            .client("psql")
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Runs `sql` ([`PgCluster::spawn_psql`]) and fails if it does not return within
    /// `limit` (a commit stuck waiting for its synchronous standby; psql is killed then);
    /// its output, trimmed.
    pub fn psql_within(&self, sql: &str, limit: std::time::Duration) -> anyhow::Result<String> {
        let mut child = self.spawn_psql(sql)?;
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{sql:?} did not return within {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `pgbench <args> postgres` against the cluster; returns its stdout.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.client("pgbench");
        cmd.args(args).arg("postgres");
        run(&mut cmd).with_context(|| format!("pgbench {}", args.join(" ")))
    }

    /// A client program (`psql`, `pgbench`, `pg_receivewal`, …) with host, port and user
    /// set; it runs as the current user.
    pub fn client(&self, name: &str) -> Command {
        let mut cmd = Command::new(pg_bin(name));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            PG_SUPERUSER,
        ]);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The server's current WAL insert position (`pg_current_wal_insert_lsn()`).
    pub fn current_wal_insert_lsn(&self) -> anyhow::Result<Lsn> {
        let s = self.psql("select pg_current_wal_insert_lsn()")?;
        s.parse().with_context(|| format!("not an LSN: {s:?}"))
    }

    /// A libpq connection string for the superuser and database `postgres`.
    pub fn connstr(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={PG_SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True between a successful `start` and `stop`/`kill`.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The WAL directory (`pg_wal` in the data directory).
    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    /// The directory of the Unix socket (the cluster's temp dir).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The database system identifier, from `pg_controldata` (works stopped or running).
    pub fn system_id(&self) -> anyhow::Result<u64> {
        let out = run(Command::new(pg_bin("pg_controldata"))
            .arg("-D")
            .arg(&self.data))?;
        out.lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .and_then(|v| v.trim().parse().ok())
            .context("pg_controldata printed no database system identifier")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = run(&mut self.pg_ctl(&["stop", "-w", "-t", "30", "-m", "immediate"]));
        }
    }
}

/// The first line of `sql`, cut to 200 characters, for error messages.
fn abbreviate(sql: &str) -> String {
    let first = sql.lines().next().unwrap_or_default();
    let mut s: String = first.chars().take(200).collect();
    if s.len() < sql.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_lifecycle() -> anyhow::Result<()> {
        let mut pg = PgCluster::init(PgOptions {
            extra_conf: vec!["work_mem = '5MB'".into()],
            ..PgOptions::default()
        })?;
        let dir = pg.socket_dir().to_path_buf();
        assert!(!pg.is_running());
        pg.start()?;
        assert_eq!(pg.psql("select 1; select 2")?, "1\n2");
        assert_eq!(pg.psql("show wal_level")?, "replica");
        assert_eq!(pg.psql("show fsync")?, "off");
        assert_eq!(pg.psql("show work_mem")?, "5MB");
        let err = pg.psql("select * from no_such_table").unwrap_err();
        assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
        assert!(pg.current_wal_insert_lsn()?.is_valid());
        assert!(pg.system_id()? != 0);
        assert!(pg.wal_dir().join("000000010000000000000001").exists());
        assert!(pg.connstr().contains(&format!("port={}", pg.port())));
        let replication = run(pg.client("psql").args([
            "-X",
            "-At",
            "-d",
            "replication=1",
            "-c",
            "IDENTIFY_SYSTEM",
        ]))?;
        assert!(
            replication.starts_with(&pg.system_id()?.to_string()),
            "{replication}"
        );
        pg.kill()?;
        pg.start()?;
        pg.restart()?;
        assert_eq!(pg.psql("select 3")?, "3");
        drop(pg);
        assert!(!dir.exists());
        Ok(())
    }
}
