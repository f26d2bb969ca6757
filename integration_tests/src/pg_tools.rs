//! Running PostgreSQL 15 programs from tests: where the binaries are, how to run a server
//! side program when the tests run as root, commands with error messages that include
//! stderr, and `pg_waldump` with its output parsed.
//!
//! Owns: process spawning for Postgres tools. Must never: leave a process running (every
//! helper here waits for its child) or hide a failure's stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use utils::Lsn;

/// Where the PostgreSQL 15 binaries are when `pg_config` is absent.
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// The OS user that runs server-side programs when the tests run as root.
pub const PG_OS_USER: &str = "postgres";

/// The directory of the PostgreSQL binaries: `pg_config --bindir`, else the Debian path.
pub fn pg_bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| PathBuf::from(s.trim()))
            .filter(|p| p.join("initdb").exists());
        from_pg_config.unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR))
    })
}

/// The path of a PostgreSQL program (`psql`, `pg_waldump`, …).
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bindir().join(name)
}

/// True when the tests run as root, so server-side programs must run as [`PG_OS_USER`].
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of [`PG_OS_USER`].
pub fn pg_os_user_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = run(Command::new("id").args([flag, PG_OS_USER])).with_context(|| {
            format!("PostgreSQL refuses to run as root and user {PG_OS_USER:?} is missing")
        })?;
        out.trim()
            .parse()
            .with_context(|| format!("unexpected `id {flag}` output {out:?}"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// A command for a server-side program (`initdb`, `pg_ctl`, `postgres`, `pg_basebackup`
/// writing a data directory): run through `runuser -u postgres --` when the tests run as
/// root, directly otherwise. Directories it writes must be owned by that user (see
/// [`give_to_pg_user`]).
pub fn server_command(name: &str) -> Command {
    server_command_in(pg_bindir(), name)
}

/// [`server_command`] for the program `name` of another PostgreSQL build's `bindir`
/// (e.g. Neon's compute).
pub fn server_command_in(bindir: &Path, name: &str) -> Command {
    let program = bindir.join(name);
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_OS_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Makes `path` owned by the user server-side programs run as (a no-op unless root).
pub fn give_to_pg_user(path: &Path) -> anyhow::Result<()> {
    if running_as_root() {
        let (uid, gid) = pg_os_user_ids()?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to {PG_OS_USER}", path.display()))?;
    }
    Ok(())
}

/// Runs `cmd` to completion; its stdout, or an error naming the command, its exit status
/// and its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run_unchecked(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\nstderr: {}\nstdout: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", describe(cmd)))
}

/// Runs `cmd` to completion with stdin closed, whatever its exit status.
pub fn run_unchecked(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))
}

/// The program and arguments of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// One record line of `pg_waldump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaldumpRecord {
    /// Resource manager name (`XLOG`, `Heap`, `LogicalMessage`, …).
    pub rmgr: String,
    /// Length of the record without block images.
    pub rec_len: u32,
    /// `xl_tot_len`.
    pub tot_len: u32,
    /// `xl_xid`.
    pub xid: u32,
    /// Start LSN of the record.
    pub lsn: Lsn,
    /// `xl_prev`.
    pub prev: Lsn,
    /// Everything after `desc: `.
    pub desc: String,
}

/// Parses a record line such as `rmgr: XLOG len (rec/tot): 24/ 24, tx: 0, lsn: 0/01000028,
/// prev 0/00000000, desc: SWITCH`; `None` for any other line.
pub fn parse_waldump_line(line: &str) -> Option<WaldumpRecord> {
    let rest = line.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(" len (rec/tot):")?;
    let (lens, rest) = rest.split_once(", tx:")?;
    let (rec_len, tot_len) = lens.split_once('/')?;
    let (xid, rest) = rest.split_once(", lsn:")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (prev, desc) = rest.split_once(", desc:")?;
    Some(WaldumpRecord {
        rmgr: rmgr.trim().to_string(),
        rec_len: rec_len.trim().parse().ok()?,
        tot_len: tot_len.trim().parse().ok()?,
        xid: xid.trim().parse().ok()?,
        lsn: lsn.trim().parse().ok()?,
        prev: prev.trim().parse().ok()?,
        desc: desc.trim().to_string(),
    })
}

/// What `pg_waldump` printed.
#[derive(Debug, Clone)]
pub struct Waldump {
    /// Every record line, in order.
    pub records: Vec<WaldumpRecord>,
    /// Its stderr: at the end of WAL, normally an "invalid record length" error.
    pub stderr: String,
    /// Whether it exited with status 0.
    pub success: bool,
}

/// Runs `pg_waldump -p <wal_dir> <extra_args…> <first_segment> [<last_segment>]` and
/// parses its output. A non-zero exit is not an error here: `pg_waldump` ends that way when
/// it reaches the end of valid WAL; callers look at `stderr`.
pub fn pg_waldump(
    wal_dir: &Path,
    first_segment: &str,
    last_segment: Option<&str>,
    extra_args: &[&str],
) -> anyhow::Result<Waldump> {
    let mut cmd = Command::new(pg_bin("pg_waldump"));
    cmd.arg("-p")
        .arg(wal_dir)
        .args(extra_args)
        .arg(first_segment);
    cmd.args(last_segment);
    let out = run_unchecked(&mut cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(Waldump {
        records: stdout.lines().filter_map(parse_waldump_line).collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_waldump_lines() {
        let line = "rmgr: Heap        len (rec/tot):     54/   150, tx:        735, \
                    lsn: 0/01A8F190, prev 0/01A8F158, desc: INSERT off 3 flags 0x00, \
                    blkref #0: rel 1663/5/16384 blk 0 FPW";
        let r = parse_waldump_line(line).unwrap();
        assert_eq!(r.rmgr, "Heap");
        assert_eq!((r.rec_len, r.tot_len, r.xid), (54, 150, 735));
        assert_eq!((r.lsn, r.prev), (Lsn(0x1A8F190), Lsn(0x1A8F158)));
        assert!(r.desc.starts_with("INSERT off 3") && r.desc.ends_with("FPW"));
        let sw = "rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, \
                  lsn: 0/0300C0B8, prev 0/0300C080, desc: SWITCH ";
        assert_eq!(parse_waldump_line(sw).unwrap().desc, "SWITCH");
        assert_eq!(
            parse_waldump_line("pg_waldump: error: error in WAL record"),
            None
        );
    }

    #[test]
    fn describes_commands() {
        let mut c = Command::new("psql");
        c.args(["-X", "-c", "select 1"]);
        assert_eq!(describe(&c), "psql -X -c select 1");
        assert!(
            run(&mut Command::new("false"))
                .unwrap_err()
                .to_string()
                .contains("false failed")
        );
    }
}
