//! Processes the benchmarks run: safekeepers, the walproposer binary, PostgreSQL 15
//! clusters and its client programs, plus what is read about them (`/proc` RSS).
//!
//! Owns: every child process of the harness. Must never: leave one running (each holder
//! stops its process on drop) or bind anything but 127.0.0.1.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use utils::Lsn;

/// The PostgreSQL binaries (Debian's layout, else `pg_config --bindir`).
pub fn pg_bin(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian.join(name);
    }
    let dir = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|| debian.to_path_buf());
    dir.join(name)
}

/// The workspace binaries sit next to this one (`target/release`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("exe dir").join(name)
}

/// A free loopback port (the kernel picks it).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A server-side PostgreSQL program, run as `postgres` when we are root.
pub fn pg_server_cmd(name: &str) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

/// Gives `path` (recursively) to the `postgres` user when root.
pub fn give_to_pg(path: &Path) -> anyhow::Result<()> {
    if running_as_root() {
        run(Command::new("chown").arg("-R").arg("postgres:").arg(path))?;
    }
    Ok(())
}

/// The program and its arguments, shell-like, for messages and the report.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    if s == "runuser" {
        s.clear();
    }
    let mut skip = if s.is_empty() { 3 } else { 0 };
    for a in cmd.get_args() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let a = a.to_string_lossy();
        if !s.is_empty() {
            s.push(' ');
        }
        if a.contains(' ') || a.contains('\'') || a.is_empty() {
            s.push('"');
            s.push_str(&a);
            s.push('"');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs to completion; stdout, or an error with stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run_unchecked(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs to completion with stdin closed.
pub fn run_unchecked(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))
}

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16, timeout: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} does not accept on port {port} after {timeout:?}")
}

/// Resident set size of a process in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size (`VmHWM`) in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

/// Threads of a process (`Threads:`), 0 if it is gone.
pub fn thread_count(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

fn status_field(pid: u32, field: &str) -> u64 {
    let Ok(f) = File::open(format!("/proc/{pid}/status")) else {
        return 0;
    };
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix(field) {
            return rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
        }
    }
    0
}

/// Stops a child: SIGTERM, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process killed on drop.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let f = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&cmd)))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("{} exited ({st}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `safekeeper` process on free ports.
pub struct Safekeeper {
    /// The process.
    pub proc: Proc,
    /// PostgreSQL-protocol port.
    pub port: u16,
}

impl Safekeeper {
    /// Starts safekeeper `id` on `datadir` (fsync on) and waits until it listens.
    pub fn start(id: u64, datadir: &Path) -> anyhow::Result<Safekeeper> {
        Safekeeper::start_with_args(id, datadir, &[])
    }

    /// Like [`Safekeeper::start`], with `extra` flags on the command line.
    pub fn start_with_args(id: u64, datadir: &Path, extra: &[&str]) -> anyhow::Result<Safekeeper> {
        std::fs::create_dir_all(datadir)?;
        let port = free_port()?;
        let http = free_port()?;
        let mut cmd = Command::new(workspace_bin("safekeeper"));
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("-D")
            .arg(datadir)
            .arg("--listen-pg")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--listen-http")
            .arg(format!("127.0.0.1:{http}"))
            .args(extra)
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(
            &format!("safekeeper {id}"),
            cmd,
            &datadir.with_extension("log"),
        )?;
        if let Err(e) = wait_port(port, Duration::from_secs(120), "safekeeper") {
            proc.check_alive()?;
            return Err(e);
        }
        Ok(Safekeeper { proc, port })
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `a,b,c` of the safekeepers' addresses.
pub fn sk_list(sks: &[Safekeeper]) -> String {
    sks.iter()
        .map(Safekeeper::addr)
        .collect::<Vec<_>>()
        .join(",")
}

/// A PostgreSQL 15 cluster run as `postgres`, stopped on drop.
pub struct PgCluster {
    /// Data directory.
    pub data: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    running: bool,
}

impl PgCluster {
    /// initdb (trust, replication allowed) with `conf` appended to postgresql.conf.
    pub fn init(data: &Path, conf: &[String]) -> anyhow::Result<PgCluster> {
        let parent = data.parent().context("data dir has a parent")?;
        std::fs::create_dir_all(parent)?;
        give_to_pg(parent)?;
        run(pg_server_cmd("initdb").arg("-D").arg(data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]))
        .context("initdb")?;
        PgCluster::configured(data, conf)
    }

    /// A cluster from a base backup of `primary` (a standby), with `conf` appended.
    pub fn standby_of(
        primary: &PgCluster,
        data: &Path,
        conf: &[String],
    ) -> anyhow::Result<PgCluster> {
        run(pg_server_cmd("pg_basebackup")
            .arg("-D")
            .arg(data)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-X", "stream", "-R", "--no-sync", "-c", "fast"]))
        .context("pg_basebackup")?;
        PgCluster::configured(data, conf)
    }

    /// The cluster whose data directory was just made, on a free port, with `conf`.
    fn configured(data: &Path, conf: &[String]) -> anyhow::Result<PgCluster> {
        let port = free_port()?;
        let c = PgCluster {
            data: data.to_path_buf(),
            port,
            running: false,
        };
        c.write_conf(port, conf)?;
        Ok(c)
    }

    fn write_conf(&self, port: u16, extra: &[String]) -> anyhow::Result<()> {
        let sock = self.data.parent().expect("parent").display().to_string();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{sock}'"),
            "log_line_prefix = '%m [%p] '".into(),
        ];
        conf.extend(extra.iter().cloned());
        let path = self.data.join("postgresql.conf");
        let mut s = std::fs::read_to_string(&path)?;
        for l in conf {
            s.push_str(&l);
            s.push('\n');
        }
        std::fs::write(&path, s)?;
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        give_to_pg(&self.data)?;
        Ok(())
    }

    /// Starts the server.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = self.data.with_extension("log");
        run(pg_server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "start"]))
        .with_context(|| {
            format!(
                "pg_ctl start; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast).
    pub fn stop(&mut self) {
        if self.running {
            let _ = run(pg_server_cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]));
            self.running = false;
        }
    }

    /// `host=127.0.0.1 port=… user=postgres`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// psql -Atc on database `postgres`; the output trimmed.
    pub fn sql(&self, q: &str) -> anyhow::Result<String> {
        Ok(run(Command::new(pg_bin("psql"))
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", q]))?
        .trim()
        .to_string())
    }

    /// Waits until `q` returns `t`.
    pub fn wait_sql(&self, q: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sql(q).is_ok_and(|s| s == "t") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for: {q}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Column `col` (0-based: 1 commit_lsn, 9 backup_lsn) of `TIMELINE_STATUS` of the only
/// timeline of the safekeeper on `port`.
pub fn timeline_status_lsn(port: u16, col: usize) -> anyhow::Result<Lsn> {
    let out = run(Command::new(pg_bin("psql"))
        .arg("-XAt")
        .arg(format!("host=127.0.0.1 port={port} replication=1"))
        .args(["-c", "TIMELINE_STATUS"]))?;
    let cell = out
        .trim()
        .split('|')
        .nth(col)
        .context("TIMELINE_STATUS columns")?;
    cell.parse()
        .with_context(|| format!("TIMELINE_STATUS column {col}: {cell:?}"))
}

/// Waits (up to 10 min) until the backup_lsn of the safekeeper on `port` reaches `want`.
pub fn wait_backup(port: u16, want: Lsn) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    loop {
        let b = timeline_status_lsn(port, 9)?;
        if b >= want {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("backup_lsn {b} after 10 min, want {want}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The end of the `wal: A .. B` line `walproposer generate` prints.
pub fn generated_end(report: &str) -> anyhow::Result<Lsn> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("wal:"))
        .and_then(|l| l.split("..").nth(1))
        .context("no wal: line in generate's report")?
        .trim()
        .parse()
        .context("the end of generate's wal: line")
}
