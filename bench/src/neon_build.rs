//! Neon's compute build (its PostgreSQL 17 fork with the `neon` and `neon_rmgr`
//! extensions) for the `neon` section: finding and unpacking it ([`NeonDist::find`]), its
//! programs run as the `postgres` OS user, and clusters made by copying one stopped
//! template ([`ForkNode`]): the compute, a plain primary, or a streaming standby.
//!
//! Owns: the unpacked build and every fork cluster of the section. Must never: leave a
//! cluster running (stopped immediately on drop) or listen beyond 127.0.0.1.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procs::{free_port, give_to_pg, run};

/// The variable naming the build (a `.tar.zst` or an unpacked directory with `bin/postgres`).
pub const DIST_VAR: &str = "NEON_COMPUTE_DIST";

/// Where the build is looked for when the variable is unset, relative to the repository.
pub const DIST_DEFAULT: &str = "../shared/neon-compute/neon-compute-pg17.tar.zst";

/// An unpacked build.
#[derive(Clone, Debug)]
pub struct NeonDist {
    /// `…/neon-compute-pg17/bin`.
    pub bin: PathBuf,
}

/// The uid and gid of the `postgres` OS user when we are root (None otherwise).
pub fn pg_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

impl NeonDist {
    /// The build named by `NEON_COMPUTE_DIST` (else [`DIST_DEFAULT`]), unpacked under
    /// `scratch` when it is a tarball; `None` when there is none (the caller skips).
    pub fn find(scratch: &Path) -> anyhow::Result<Option<NeonDist>> {
        let dist = std::env::var_os(DIST_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DIST_DEFAULT));
        if !dist.exists() {
            return Ok(None);
        }
        if let Some(root) = find_root(&dist) {
            return Ok(Some(NeonDist {
                bin: root.join("bin"),
            }));
        }
        std::fs::create_dir_all(scratch)?;
        run(Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&dist)
            .arg("-C")
            .arg(scratch))
        .with_context(|| format!("unpack {}", dist.display()))?;
        let root =
            find_root(scratch).with_context(|| format!("no bin/postgres in {}", dist.display()))?;
        give_to_pg(scratch)?;
        Ok(Some(NeonDist {
            bin: root.join("bin"),
        }))
    }

    /// A program of the build run as `postgres` (directly, by uid: no `runuser` in
    /// between, so that its start-up is what is timed).
    pub fn server(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = pg_ids() {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// A client program of the build (`psql`, `pgbench`).
    pub fn client(&self, name: &str) -> Command {
        Command::new(self.bin.join(name))
    }

    /// `initdb` into `data` (superuser `cloud_admin`, trust), then `conf` appended.
    pub fn initdb(&self, data: &Path, conf: &[String]) -> anyhow::Result<ForkNode> {
        let parent = data.parent().context("data dir has a parent")?;
        std::fs::create_dir_all(parent)?;
        give_to_pg(parent)?;
        run(self.server("initdb").arg("-D").arg(data).args([
            "-U",
            "cloud_admin",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]))
        .context("initdb (fork)")?;
        ForkNode::configured(self, data, conf)
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

/// A cluster of the fork, stopped (immediately) on drop.
pub struct ForkNode {
    dist: NeonDist,
    /// Data directory.
    pub data: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    running: bool,
}

impl ForkNode {
    /// A copy of the stopped cluster `template` at `data` (`cp -a`), on a free port,
    /// with `conf` appended to its postgresql.conf.
    pub fn copy_of(
        dist: &NeonDist,
        template: &Path,
        data: &Path,
        conf: &[String],
    ) -> anyhow::Result<ForkNode> {
        std::fs::create_dir_all(data.parent().context("parent")?)?;
        give_to_pg(data.parent().context("parent")?)?;
        run(Command::new("cp").arg("-a").arg(template).arg(data))?;
        ForkNode::configured(dist, data, conf)
    }

    fn configured(dist: &NeonDist, data: &Path, conf: &[String]) -> anyhow::Result<ForkNode> {
        let port = free_port()?;
        let sock = data.parent().expect("parent").display().to_string();
        let mut s = std::fs::read_to_string(data.join("postgresql.conf"))?;
        for l in [
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{sock}'"),
            "log_line_prefix = '%m [%p] '".into(),
        ]
        .iter()
        .chain(conf)
        {
            s.push_str(l);
            s.push('\n');
        }
        std::fs::write(data.join("postgresql.conf"), s)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        give_to_pg(data)?;
        Ok(ForkNode {
            dist: dist.clone(),
            data: data.to_path_buf(),
            port,
            running: false,
        })
    }

    /// Makes it a standby of `primary` named `name` (`standby.signal`, `primary_conninfo`).
    pub fn make_standby(&self, primary: &ForkNode, name: &str) -> anyhow::Result<()> {
        std::fs::write(self.data.join("standby.signal"), "")?;
        let mut s = std::fs::read_to_string(self.data.join("postgresql.conf"))?;
        s.push_str(&format!(
            "primary_conninfo = '{} application_name={name}'\n",
            primary.conninfo()
        ));
        std::fs::write(self.data.join("postgresql.conf"), s)?;
        give_to_pg(&self.data)
    }

    /// Its log file (next to the data directory).
    pub fn log(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// `pg_ctl start -w`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = self.log();
        run(self
            .dist
            .server("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "start"]))
        .with_context(|| {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = l.lines().collect();
            format!(
                "pg_ctl start (fork); log:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        })?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`).
    pub fn stop(&mut self, mode: &str) {
        if self.running {
            let _ = run(self
                .dist
                .server("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "stop"]));
            self.running = false;
        }
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let s = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        Ok(s.lines().next().unwrap_or("").trim().parse()?)
    }

    /// `host=127.0.0.1 port=… user=cloud_admin`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=cloud_admin", self.port)
    }

    /// `psql -XAt -c q` on database `postgres` (killed after 120 s, so that a commit that
    /// waits forever for a standby fails instead); the output trimmed.
    pub fn sql(&self, q: &str) -> anyhow::Result<String> {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(self.dist.bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("{} dbname=postgres", self.conninfo()))
            .args(["-c", q]);
        Ok(run(&mut c)?.trim().to_string())
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

impl Drop for ForkNode {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

/// CPU time (user + system, with reaped children's) of `root` and all its descendants, in
/// seconds, from `/proc/*/stat`.
pub fn tree_cpu_secs(root: u32) -> f64 {
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
        let ppid = num(1) as u32;
        let ticks = num(11) + num(12) + num(13) + num(14);
        procs.push((pid, ppid, ticks));
    }
    let mut inside = vec![root];
    let mut total = 0u64;
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &procs {
            if !inside.contains(pid) && inside.contains(ppid) {
                inside.push(*pid);
                grew = true;
            }
        }
    }
    for (pid, _, t) in &procs {
        if inside.contains(pid) {
            total += t;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    total as f64 / hz
}
