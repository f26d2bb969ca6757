//! The compute's cold-start step: the wall time of `postgres --sync-safekeepers` against
//! three safekeepers on a caught-up timeline, beside the time to start a process of the
//! same binary at all (`postgres --version`), alternated run by run; and where the time
//! goes, from `strace -f -ttt` of the compute process: its sends and receives on each
//! safekeeper connection, walked message by message (PostgreSQL protocol framing), give
//! the moment a quorum (2 of 3) answered each step.
//!
//! Owns: those measurements and the strace parser. Must never: run the compute itself
//! (the caller stops it first; `--sync-safekeepers` refuses a running data directory).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Params;
use crate::baseline::median;
use crate::neon::{Setup, Variant};
use crate::neon_build::{NeonDist, pg_ids};
use crate::{Ctx, fresh_dir};

/// One alternation: a `--sync-safekeepers` and a `--version` of the same binary.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall time of `postgres --sync-safekeepers` (spawn → exit).
    pub sync: Duration,
    /// Wall time of `postgres --version` (spawn → exit).
    pub exec: Duration,
}

fn timed(mut cmd: Command) -> anyhow::Result<(Duration, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().context("spawn postgres")?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "postgres {:?} failed ({}): {}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((d, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

fn sync_cmd(dist: &NeonDist, pgdata: &Path) -> Command {
    let mut c = dist.server("postgres");
    c.arg("--sync-safekeepers").env("PGDATA", pgdata);
    c
}

/// One warm-up, then `n` alternations on the stopped compute's `pgdata`.
pub fn measure(dist: &NeonDist, pgdata: &Path, n: usize) -> anyhow::Result<Vec<Sample>> {
    let (_, lsn) = timed(sync_cmd(dist, pgdata))?;
    eprintln!("  sync-safekeepers: quorum at {lsn}");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (sync, _) = timed(sync_cmd(dist, pgdata))?;
        let mut ver = dist.server("postgres");
        ver.arg("--version");
        let (exec, _) = timed(ver)?;
        v.push(Sample { sync, exec });
    }
    Ok(v)
}

/// The moments (seconds since the compute's `execve`) a step was reached, per phase.
#[derive(Clone, Debug, Default)]
pub struct Milestones {
    /// `openat` of `neon.so` (the preloaded library; before it: exec, the binary's own
    /// libraries, locale, configuration).
    pub neon_so: f64,
    /// The next library of the installation opened after `neon.so` (`neon.so` and the
    /// shared libraries it pulls in are loaded and initialised by then).
    pub neon_so_done: f64,
    /// Shared libraries opened in between (what `neon.so` links).
    pub neon_so_deps: usize,
    /// The first `connect` to a safekeeper.
    pub first_connect: f64,
    /// A quorum of connections answered START_WAL_PUSH (CopyBothResponse).
    pub connected: f64,
    /// A quorum of AcceptorGreetings arrived.
    pub greeted: f64,
    /// A quorum of VoteResponses arrived (the safekeepers made the vote durable first).
    pub voted: f64,
    /// The last message from a safekeeper (after ProposerElected: the append exchange).
    pub last_recv: f64,
    /// `exit_group`.
    pub exit: f64,
}

/// The strace breakdown: milestones of each traced run.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// One per traced run.
    pub runs: Vec<Milestones>,
}

#[derive(Default)]
struct Conn {
    started: bool,
    pending: Vec<u8>,
    copy_in: usize,
    got_w: Option<f64>,
    greeting: Option<f64>,
    vote: Option<f64>,
}

/// Decodes strace's `-xx` string ("\x64\x00…") into bytes.
fn unhex(s: &str) -> Vec<u8> {
    s.split("\\x")
        .filter_map(|h| u8::from_str_radix(h.get(..2)?, 16).ok())
        .collect()
}

/// The `q`-th (1-based) smallest of `v`, or NaN.
fn nth(mut v: Vec<f64>, q: usize) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(q.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// Parses `strace -f -ttt -xx -s N -e trace=execve,openat,connect,sendto,recvfrom,exit_group`
/// output of one `--sync-safekeepers` run.
pub fn parse_strace(out: &str) -> anyhow::Result<Milestones> {
    let mut t0 = None;
    let mut m = Milestones {
        first_connect: f64::NAN,
        ..Default::default()
    };
    let mut conns: HashMap<String, Conn> = HashMap::new();
    for line in out.lines() {
        let mut w = line.splitn(3, ' ');
        let (Some(_pid), Some(ts), Some(call)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let t = ts - *t0.get_or_insert(ts);
        if call.starts_with("exit_group(") || call.starts_with("+++ exited") {
            if m.exit == 0.0 {
                m.exit = t;
            }
            continue;
        }
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let fd = args.split(',').next().unwrap_or("").to_string();
        match name {
            "openat" => {
                let path = String::from_utf8_lossy(&unhex(args.split('"').nth(1).unwrap_or("")))
                    .into_owned();
                if path.ends_with("/lib/postgresql/neon.so") {
                    m.neon_so = t;
                } else if m.neon_so > 0.0 && m.neon_so_done == 0.0 {
                    if path.contains("/lib/postgresql/") {
                        m.neon_so_done = t;
                    } else if path.contains(".so") && !call.contains("ENOENT") {
                        m.neon_so_deps += 1;
                    }
                }
            }
            "connect" if call.contains("AF_INET") => {
                if m.first_connect.is_nan() {
                    m.first_connect = t;
                }
                conns.insert(fd, Conn::default());
            }
            "sendto" => {
                // After the startup packet; the answer to an SSLRequest or GSSENCRequest
                // is one unframed byte, skipped.
                let buf = unhex(args.split('"').nth(1).unwrap_or(""));
                let negotiation = buf.get(4..8).is_some_and(|c| {
                    c == [0x04, 0xd2, 0x16, 0x2f] || c == [0x04, 0xd2, 0x16, 0x30]
                });
                if let Some(c) = conns.get_mut(&fd)
                    && !negotiation
                {
                    c.started = true;
                }
            }
            "recvfrom" => {
                let Some(c) = conns.get_mut(&fd) else {
                    continue;
                };
                if !c.started {
                    continue;
                }
                let Some(buf) = args.split('"').nth(1) else {
                    continue;
                };
                c.pending.extend(unhex(buf));
                m.last_recv = t;
                // Walk whole messages: type byte, then a length that counts itself.
                while c.pending.len() >= 5 {
                    let len = u32::from_be_bytes(c.pending[1..5].try_into().unwrap()) as usize;
                    if c.pending.len() < 1 + len {
                        break;
                    }
                    match c.pending[0] {
                        b'W' => c.got_w = c.got_w.or(Some(t)),
                        b'd' => {
                            c.copy_in += 1;
                            match c.copy_in {
                                1 => c.greeting = Some(t),
                                2 => c.vote = Some(t),
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                    c.pending.drain(..1 + len);
                }
            }
            _ => {}
        }
    }
    if conns.is_empty() {
        bail!("no connection to a safekeeper in the trace");
    }
    let q = conns.len() / 2 + 1;
    let at = |f: fn(&Conn) -> Option<f64>| nth(conns.values().filter_map(f).collect(), q);
    m.connected = at(|c| c.got_w);
    m.greeted = at(|c| c.greeting);
    m.voted = at(|c| c.vote);
    Ok(m)
}

/// A fresh compute → three safekeepers, a few commits, stopped; `runs` traced
/// `--sync-safekeepers` after a warm-up.
pub fn breakdown(
    dist: &NeonDist,
    template: &Path,
    dir: &Path,
    p: &Params,
) -> anyhow::Result<Breakdown> {
    let d = fresh_dir(&dir.join("cold-trace"))?;
    let mut setup = Setup::start(dist, template, &d, Variant::Sk3)?;
    setup
        .primary
        .sql("INSERT INTO lat SELECT generate_series(1, 100)")?;
    setup.primary.stop("fast");
    timed(sync_cmd(dist, &setup.primary.data))?;
    let mut b = Breakdown::default();
    for i in 0..p.neon_trace_runs {
        let out = d.join(format!("strace-{i}.txt"));
        let mut c = Command::new("strace");
        c.args(["-f", "-ttt", "-xx", "-s", "4096"])
            .args([
                "-e",
                "trace=execve,openat,connect,sendto,recvfrom,exit_group",
            ])
            .arg("-o")
            .arg(&out);
        if pg_ids().is_some() {
            c.args(["-u", "postgres"]);
        }
        c.arg(dist.bin.join("postgres"))
            .arg("--sync-safekeepers")
            .env("PGDATA", &setup.primary.data);
        timed(c).context("strace postgres --sync-safekeepers")?;
        b.runs.push(parse_strace(&std::fs::read_to_string(&out)?)?);
    }
    drop(setup);
    std::fs::remove_dir_all(&d)?;
    Ok(b)
}

/// The rows: the wall time against the target, the process-start floor, the breakdown.
pub fn rows(ctx: &mut Ctx, section: &'static str, samples: &[Sample], b: &Breakdown) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let sync = median(&samples.iter().map(|s| ms(s.sync)).collect::<Vec<_>>());
    let exec = median(&samples.iter().map(|s| ms(s.exec)).collect::<Vec<_>>());
    let min = samples
        .iter()
        .map(|s| ms(s.sync))
        .fold(f64::INFINITY, f64::min);
    ctx.report.row(
        section,
        format!(
            "cold start: `postgres --sync-safekeepers`, 3 safekeepers, caught-up timeline ({} runs; min {min:.1} ms)",
            samples.len()
        ),
        format!("{sync:.1} ms"),
        format!("{exec:.1} ms (`postgres --version`: starting the process at all)"),
        None,
        crate::report::met(sync <= 10.0, "≤ 10 ms"),
        "PGDATA=<stopped compute> postgres --sync-safekeepers (as postgres, spawned directly; alternated with postgres --version)",
    );
    let ph =
        |f: fn(&Milestones) -> f64| median(&b.runs.iter().map(|m| f(m) * 1e3).collect::<Vec<_>>());
    let phases = [
        (
            "exec, the binary's libraries, locale, postgresql.conf, to opening neon.so",
            ph(|m| m.neon_so),
        ),
        (
            "loading neon.so and the shared libraries it links (libcurl, krb5, gnutls, …)",
            ph(|m| m.neon_so_done - m.neon_so),
        ),
        (
            "the rest of start-up, to the first connect",
            ph(|m| m.first_connect - m.neon_so_done),
        ),
        (
            "connections (TCP, startup, START_WAL_PUSH) to a quorum",
            ph(|m| m.connected - m.first_connect),
        ),
        (
            "greeting exchange (quorum)",
            ph(|m| m.greeted - m.connected),
        ),
        (
            "vote (quorum; each safekeeper persists its term first)",
            ph(|m| m.voted - m.greeted),
        ),
        (
            "after the vote, to the last reply (ProposerElected and appends only when the timeline needs recovery)",
            ph(|m| m.last_recv - m.voted),
        ),
        ("exit", ph(|m| m.exit - m.last_recv)),
    ];
    let total = ph(|m| m.exit);
    let text = phases
        .iter()
        .map(|(n, v)| format!("{n} {v:.2} ms"))
        .collect::<Vec<_>>()
        .join("; ");
    let deps = median(
        &b.runs
            .iter()
            .map(|m| m.neon_so_deps as f64)
            .collect::<Vec<_>>(),
    );
    ctx.report.notes.push(format!(
        "Neon cold start, where the time goes (`strace -f -ttt` of the compute process, medians \
         of {} traced runs; strace slows every traced syscall, so the traced total is {total:.2} ms \
         against {sync:.1} ms untraced): {text}. A step is done when 2 of the 3 safekeepers \
         answered it. `neon.so` pulled in {deps:.0} shared libraries.",
        b.runs.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("\\x{x:02x}")).collect()
    }

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend(((body.len() + 4) as u32).to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn milestones_are_the_quorums() {
        let mut s = String::from("1 100.000000 execve(\"/x/postgres\", [], []) = 0\n");
        for (t, path) in [
            (0.002, "/i/lib/postgresql/neon.so"),
            (0.003, "/lib/libcurl.so.4"),
            (0.005, "/i/lib/postgresql/neon_rmgr.so"),
        ] {
            s += &format!(
                "1 {:.6} openat(AT_FDCWD, \"{}\", O_RDONLY) = 5\n",
                100.0 + t,
                hex(path.as_bytes())
            );
        }
        for (fd, base) in [(5, 0.010), (6, 0.011), (7, 0.030)] {
            s += &format!(
                "1 {:.6} connect({fd}, {{sa_family=AF_INET, sin_port=htons(1)}}, 16) = -1\n",
                100.0 + base
            );
            s += &format!(
                "1 {:.6} sendto({fd}, \"{}\", 8, 0, NULL, 0) = 8\n",
                100.0 + base,
                hex(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
            );
            s += &format!(
                "1 {:.6} recvfrom({fd}, \"\\x4e\", 4096, 0, NULL, NULL) = 1\n",
                100.0 + base
            );
            s += &format!(
                "1 {:.6} sendto({fd}, \"\\x00\", 1, 0, NULL, 0) = 1\n",
                100.0 + base + 0.001
            );
            let mut first = msg(b'R', &[0, 0, 0, 0]);
            first.extend(msg(b'W', &[0, 0, 0]));
            // The greeting arrives split over two reads.
            let g = msg(b'd', b"greeting");
            first.extend(&g[..3]);
            s += &format!(
                "1 {:.6} recvfrom({fd}, \"{}\", 4096, 0, NULL, NULL) = 9\n",
                100.0 + base + 0.002,
                hex(&first)
            );
            s += &format!(
                "1 {:.6} recvfrom({fd}, \"{}\", 4096, 0, NULL, NULL) = 9\n",
                100.0 + base + 0.003,
                hex(&g[3..])
            );
            s += &format!(
                "1 {:.6} recvfrom({fd}, \"{}\", 4096, 0, NULL, NULL) = 9\n",
                100.0 + base + 0.005,
                hex(&msg(b'd', b"vote"))
            );
        }
        s += "1 100.050000 exit_group(0) = ?\n";
        let m = parse_strace(&s).unwrap();
        assert!((m.neon_so - 0.002).abs() < 1e-9);
        assert!((m.neon_so_done - 0.005).abs() < 1e-9);
        assert_eq!(m.neon_so_deps, 1);
        assert!((m.first_connect - 0.010).abs() < 1e-9);
        assert!((m.connected - 0.013).abs() < 1e-9);
        assert!((m.greeted - 0.014).abs() < 1e-9);
        assert!((m.voted - 0.016).abs() < 1e-9);
        assert!((m.last_recv - 0.035).abs() < 1e-9);
        assert!((m.exit - 0.050).abs() < 1e-9);
    }
}
