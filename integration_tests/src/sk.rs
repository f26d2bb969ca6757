//! Safekeeper and walproposer processes for tests: the workspace's own binaries, started
//! on free loopback ports with data in temp dirs, logs kept for failure messages.
//!
//! Owns: those child processes. Must never: leave one running (Drop kills it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use utils::{Lsn, TenantTimelineId, Term};

use crate::pg::free_port;
use crate::pg_tools::{pg_bin, run};

/// Path of one of the workspace's binaries (`safekeeper`, `walproposer`), built once per
/// test process if needed (`cargo build -p <name> --bin <name>`, same profile as the
/// tests). Each binary is built on its own, so a test of one does not depend on the other
/// compiling.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Both binaries are named after their package.
        cmd.args(["build", "-p", name, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // `cargo test` sets these for the test process; build scripts that watch them
        // (ring's does) would otherwise rerun here and again in the next outer build,
        // rebuilding ring and everything above it each time.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
            {
                cmd.env_remove(&*k);
            }
        }
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binary");
        assert!(status.success(), "cargo build of the {name} binary failed");
        built.push(name.to_string());
    }
    dir.join(name)
}

/// The `wal: A .. B` range `walproposer generate` prints: (start, end).
pub fn generated_wal_range(stdout: &str) -> anyhow::Result<(Lsn, Lsn)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wal:"))
        .with_context(|| format!("no wal: line in {stdout}"))?;
    let (a, b) = line.split_once("..").context("wal: A .. B")?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

/// A `safekeeper` process.
pub struct Safekeeper {
    /// Node id.
    pub id: u64,
    datadir: PathBuf,
    /// Port of the PostgreSQL protocol listener.
    pub pg_port: u16,
    /// Port of the HTTP listener.
    pub http_port: u16,
    child: Option<Child>,
    log: PathBuf,
    no_sync: bool,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Safekeeper {
    /// Starts a safekeeper with its data in `datadir` (created if missing) and waits until
    /// it accepts connections. `--no-sync` unless `sync` (tests that kill processes do not
    /// need fsync: the page cache survives a process crash).
    pub fn start(id: u64, datadir: &Path, sync: bool) -> anyhow::Result<Safekeeper> {
        Safekeeper::start_with_args(id, datadir, sync, &[])
    }

    /// Like [`Safekeeper::start`], with `extra` flags added to the command line on every
    /// (re)start (e.g. `["--max-connections", "1200"]`).
    pub fn start_with_args(
        id: u64,
        datadir: &Path,
        sync: bool,
        extra: &[&str],
    ) -> anyhow::Result<Safekeeper> {
        Safekeeper::start_with_env(id, datadir, sync, extra, &[])
    }

    /// Like [`Safekeeper::start_with_args`], with environment variables set on every
    /// (re)start (e.g. the credentials of a test bucket).
    pub fn start_with_env(
        id: u64,
        datadir: &Path,
        sync: bool,
        extra: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<Safekeeper> {
        std::fs::create_dir_all(datadir)?;
        let mut sk = Safekeeper {
            id,
            datadir: datadir.to_path_buf(),
            pg_port: 0,
            http_port: 0,
            child: None,
            log: datadir.with_extension("log"),
            no_sync: !sync,
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
            env: env.to_vec(),
        };
        sk.restart()?;
        Ok(sk)
    }

    /// `GET path` on its HTTP listener: the status code and the body.
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status line in {head:?}"))?;
        Ok((code, body.to_string()))
    }

    /// `127.0.0.1:<pg port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    /// `<id>@127.0.0.1:<pg port>`: its entry in `walproposer --safekeepers` when the
    /// proposer is to send a membership configuration.
    pub fn member(&self) -> String {
        format!("{}@{}", self.id, self.addr())
    }

    /// The data directory.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// The directory of a timeline's files.
    pub fn timeline_dir(&self, ttid: &TenantTimelineId) -> PathBuf {
        self.datadir
            .join(ttid.tenant_id.to_string())
            .join(ttid.timeline_id.to_string())
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if any thread of the process panicked so far (a panic in a
    /// connection task only ends that connection, so tests could otherwise miss it).
    pub fn assert_no_panics(&self) {
        let log = self.log();
        assert!(
            !log.contains("panicked at"),
            "safekeeper {} panicked; log:\n{log}",
            self.id
        );
    }

    /// The process id, while it runs (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// (Re)starts the process on fresh ports if it is not running.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        for _ in 0..5 {
            self.pg_port = free_port()?;
            self.http_port = free_port()?;
            self.spawn()?;
            if self.wait_ready(Duration::from_secs(20)).is_ok() {
                return Ok(());
            }
            let _ = self.kill();
        }
        bail!("safekeeper {} did not start; log:\n{}", self.id, self.log())
    }

    /// Restarts on the same ports (for clients that remember them). Fails if they got taken.
    pub fn restart_same_ports(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready(Duration::from_secs(20))
            .with_context(|| format!("safekeeper {} restart; log:\n{}", self.id, self.log()))
    }

    /// Spawns the process on the current ports, logging to the log file.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(workspace_bin("safekeeper"));
        cmd.arg("--id")
            .arg(self.id.to_string())
            .arg("-D")
            .arg(&self.datadir)
            .arg("--listen-pg")
            .arg(self.addr())
            .arg("--listen-http")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.no_sync {
            cmd.arg("--no-sync");
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().context("spawn safekeeper")?);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!("safekeeper exited");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("safekeeper not listening after {timeout:?}")
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.stop_within(Duration::from_secs(30))
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL and an error after that);
    /// returns the exit status.
    pub fn stop_within(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("not running");
        };
        // SAFETY: kill(2) with a pid we own.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!(
                    "safekeeper did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Libpq connection string for `psql` in replication mode.
    pub fn conninfo(&self, ttid: Option<&TenantTimelineId>) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user=postgres replication=1 sslmode=disable",
            self.pg_port
        );
        if let Some(t) = ttid {
            s.push_str(&format!(
                " options='-c tenant_id={} timeline_id={}'",
                t.tenant_id, t.timeline_id
            ));
        }
        s
    }

    /// Runs one command with the real `psql` and returns its unaligned output.
    pub fn psql(&self, ttid: Option<&TenantTimelineId>, command: &str) -> anyhow::Result<String> {
        run(Command::new(pg_bin("psql"))
            .arg(self.conninfo(ttid))
            .args(["-X", "-A", "-t", "-F", "|", "-c", command]))
    }

    /// `TIMELINE_STATUS` of a timeline, parsed.
    pub fn timeline_status(&self, ttid: &TenantTimelineId) -> anyhow::Result<TimelineStatus> {
        let out = self.psql(Some(ttid), "TIMELINE_STATUS")?;
        let line = out
            .lines()
            .next()
            .context("TIMELINE_STATUS returned no row")?;
        let f: Vec<&str> = line.split('|').collect();
        let lsn = |i: usize| -> anyhow::Result<Lsn> {
            f.get(i)
                .context("missing column")?
                .parse()
                .with_context(|| format!("bad LSN in {line:?}"))
        };
        Ok(TimelineStatus {
            flush_lsn: lsn(0)?,
            commit_lsn: lsn(1)?,
            term: Term(f.get(2).context("missing term")?.parse()?),
            last_log_term: Term(f.get(3).context("missing term")?.parse()?),
            timeline_start_lsn: lsn(4)?,
        })
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// What `TIMELINE_STATUS` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineStatus {
    /// End of durable WAL.
    pub flush_lsn: Lsn,
    /// Commit LSN.
    pub commit_lsn: Lsn,
    /// Acceptor term.
    pub term: Term,
    /// Term of the last WAL.
    pub last_log_term: Term,
    /// Where the timeline starts.
    pub timeline_start_lsn: Lsn,
}

/// A `walproposer bridge` process.
pub struct Bridge {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
}

impl Bridge {
    /// Starts `walproposer bridge --primary <conninfo> --safekeepers <addrs>` with extra
    /// arguments; its output goes to `log`.
    pub fn start(
        primary: &str,
        safekeepers: &str,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Bridge> {
        let mut args = vec![
            "bridge".to_string(),
            "--primary".into(),
            primary.to_string(),
            "--safekeepers".into(),
            safekeepers.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut b = Bridge {
            child: None,
            log: log.to_path_buf(),
            args,
        };
        b.restart()?;
        Ok(b)
    }

    /// Starts it again (after [`Bridge::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        self.child = Some(
            Command::new(workspace_bin("walproposer"))
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn walproposer bridge")?,
        );
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
