//! Where the single-client commit time goes: one extra (unreported) latency run each with
//! one safekeeper and with one standby, with `strace -f -T` attached to both ends of the
//! replication stream (the compute's walproposer or the primary's walsender; the
//! safekeeper or the standby's walreceiver): per commit, how many of each syscall and how
//! long they took. strace slows every call it sees: the counts are exact, the times are
//! upper bounds, the commit latency of the traced run is not a figure of the section.
//!
//! Owns: those runs and the parser of strace's `-T` lines. Must never: feed a figure.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::baseline::median;
use crate::neon::{Setup, Variant, commit_latencies, quantile};
use crate::neon_build::NeonDist;
use crate::procs::Proc;
use crate::{Ctx, fresh_dir};

const TRACED: &str = "trace=fdatasync,fsync,pwrite64,pwritev,write,writev,sendto,recvfrom,read";

/// Per syscall name: the durations (seconds) of `strace -T` lines.
pub fn parse_t(out: &str) -> BTreeMap<String, Vec<f64>> {
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in out.lines() {
        // "1234 fdatasync(7) = 0 <0.000321>"; skip "<unfinished ...>" halves.
        let Some(rest) = line.split_once(' ').map(|(_, r)| r) else {
            continue;
        };
        let name = match rest.strip_prefix("<... ") {
            Some(r) => r.split_whitespace().next().unwrap_or(""),
            None => rest.split_once('(').map_or("", |(n, _)| n),
        };
        if name.is_empty() {
            continue;
        }
        let Some(t) = rest
            .rsplit_once('<')
            .and_then(|(_, t)| t.strip_suffix('>'))
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        m.entry(name.to_string()).or_default().push(t);
    }
    m
}

/// A child of `parent` whose command line (process title) starts with `title`.
fn child_titled(parent: u32, title: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == parent && cmd.starts_with(title)).then_some(pid)
    })
}

fn attach(pid: u32, out: &Path) -> anyhow::Result<Proc> {
    let mut c = Command::new("strace");
    c.args(["-f", "-T", "-e", TRACED, "-p", &pid.to_string(), "-o"])
        .arg(out);
    let p = Proc::spawn("strace", c, &out.with_extension("log"))?;
    // Let it attach before the load starts.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(p)
}

fn summary(what: &str, trace: &str, commits: usize) -> String {
    let m = parse_t(trace);
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| v.len() >= commits / 4)
        .map(|(name, v)| {
            format!(
                "{name} {:.2}/commit, median {:.3} ms, {:.3} ms/commit in all",
                v.len() as f64 / commits as f64,
                median(v) * 1e3,
                v.iter().sum::<f64>() * 1e3 / commits as f64
            )
        })
        .collect();
    format!("{what}: {}", parts.join("; "))
}

fn one(
    ctx: &Ctx,
    dist: &NeonDist,
    template: &Path,
    dir: &Path,
    v: Variant,
) -> anyhow::Result<String> {
    let d = fresh_dir(&dir.join(format!("profile-{v:?}")))?;
    let setup = Setup::start(dist, template, &d, v)?;
    let (sender, receiver) = match v {
        // The walproposer is a background worker that pg_stat_activity does not list.
        Variant::Sk1 => (
            child_titled(setup.primary.postmaster_pid()?, "postgres: WAL proposer")
                .context("no WAL proposer process")?,
            setup.sks[0].proc.pid(),
        ),
        Variant::Standby1 => (
            setup
                .primary
                .sql("SELECT pid FROM pg_stat_replication")?
                .parse()
                .context("walsender pid")?,
            setup.standbys[0]
                .sql("SELECT pid FROM pg_stat_wal_receiver")?
                .parse()
                .context("walreceiver pid")?,
        ),
        _ => bail!("no profile for {v:?}"),
    };
    let (st, rt) = (d.join("sender.strace"), d.join("receiver.strace"));
    let mut s = attach(sender, &st)?;
    let mut r = attach(receiver, &rt)?;
    let lat = commit_latencies(
        dist,
        &setup.primary,
        &d,
        ctx.params.neon_latency_secs.min(10),
    )?;
    s.stop();
    r.stop();
    let n = lat.len();
    let (sender_name, receiver_name) = match v {
        Variant::Sk1 => ("compute's walproposer", "safekeeper (all threads)"),
        _ => ("primary's walsender", "standby's walreceiver"),
    };
    let text = format!(
        "{v:?} ({n} commits, traced p50 {:.3} ms): {}. {}.",
        quantile(&lat, 0.5),
        summary(sender_name, &std::fs::read_to_string(&st)?, n),
        summary(receiver_name, &std::fs::read_to_string(&rt)?, n)
    );
    drop(setup);
    std::fs::remove_dir_all(&d)?;
    Ok(text)
}

/// The profile notes (one per variant); a failure becomes the note.
pub fn profile(
    ctx: &Ctx,
    dist: &NeonDist,
    template: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for v in [Variant::Sk1, Variant::Standby1] {
        let t =
            one(ctx, dist, template, dir, v).unwrap_or_else(|e| format!("{v:?}: failed: {e:#}"));
        eprintln!("  profile {t}");
        notes.push(format!(
            "Neon single-client commit path, profiled (`strace -f -T -e {TRACED}` on both \
             ends of the stream; counts exact, times inflated by strace): {t}"
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_t_lines() {
        let out = "10 fdatasync(7) = 0 <0.000400>\n\
                   11 sendto(9, \"x\", 1, 0, NULL, 0) = 1 <0.000020>\n\
                   10 fdatasync(7 <unfinished ...>\n\
                   10 <... fdatasync resumed>) = 0 <0.000600>\n\
                   12 +++ exited with 0 +++\n";
        let m = parse_t(out);
        assert_eq!(m["fdatasync"], vec![0.0004, 0.0006]);
        assert_eq!(m["sendto"].len(), 1);
        assert_eq!(m.len(), 2);
    }
}
