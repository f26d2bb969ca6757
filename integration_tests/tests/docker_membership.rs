//! Replacing a safekeeper without downtime, in containers (docker-compose.yml with its
//! `spare` profile, images from scripts/docker/build): pgbench runs through the compute
//! (PostgreSQL 15 and `walproposer bridge`, started without ids) while the spare `sk4` is
//! started and `walproposer membership`, run inside the compute container so that every
//! address it hands out is a service name of the compose network, moves the timeline from
//! {1,2,3} to {1,2,4}. No transaction fails; the commit stall (the longest pgbench
//! transaction and the p99, from pgbench's per-transaction log) and the change's duration
//! are measured and printed; sk1, sk2 and sk4 reach the primary's flush LSN with
//! byte-identical WAL; every member holds generation N+2 with members {1,2,4}; then sk2 and
//! sk4 alone carry a commit. The same with sk3 stopped before the change starts.
//!
//! Owns: these two scenarios. Must never: leave a project behind (each is a
//! [`docker_util::Stack`], removed with `down -v` when it ends, failed or not) or run beside
//! another docker scenario ([`docker_util::serial`]). They skip, loudly, only when
//! `docker info` fails; every step is bounded in time.
//!
//! Knobs: `SK_DOCKER_MEMBERSHIP_SECONDS` (pgbench duration, default 24).

// Shared with docker_faults, which uses the rest of it.
#[allow(dead_code)]
mod docker_util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use docker_util::{
    Stack, docker, docker_unavailable, ensure_images, knob, pgbench_ok, run_bounded, serial,
    sweep_stale_projects,
};
use integration_tests::prometheus::http_get;
use utils::Lsn;

/// Runs one scenario on a fresh project with the `spare` profile, or skips when docker is
/// unusable. On failure the error carries the containers' last log lines.
fn scenario(
    name: &str,
    salt: u32,
    body: impl FnOnce(&Stack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(why) = docker_unavailable() {
        eprintln!(
            "\n!!!!!!!! SKIPPED docker_membership::{name}: `docker info` fails, so the \
             membership change was NOT tested in containers !!!!!!!!\n{why}\n"
        );
        return Ok(());
    }
    let _one_at_a_time = serial()?;
    sweep_stale_projects();
    ensure_images()?;
    let started = Instant::now();
    let short: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let stack = Stack::with_profiles(&short, salt, &["spare"])?;
    let res = body(&stack);
    eprintln!("docker_membership::{name}: {:.1?}", started.elapsed());
    res.map_err(|e| {
        let logs = stack.logs();
        e.context(format!(
            "{name} failed; the containers' last log lines:\n{logs}\n"
        ))
    })
}

/// The ids and addresses of the safekeepers on the compose network.
fn members(ids: &[u64]) -> String {
    ids.iter()
        .map(|i| format!("{i}@sk{i}:5454"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The timeline's configuration on safekeeper `i` (0-based; 3 is `sk4`): generation,
/// member ids, whether it is joint.
fn mconf(s: &Stack, i: usize, path: &str) -> anyhow::Result<(u64, Vec<u64>, bool)> {
    let (code, body) = http_get(&s.http_addr(i), path)?;
    ensure!(code == 200, "sk{}: HTTP {code}: {body}", i + 1);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let m = &v["mconf"];
    let ids = m["members"]
        .as_array()
        .with_context(|| format!("no members in {body}"))?
        .iter()
        .filter_map(|x| x["id"].as_u64())
        .collect();
    Ok((
        m["generation"].as_u64().context("generation")?,
        ids,
        !m["new_members"].is_null(),
    ))
}

/// Waits until safekeeper `i`'s HTTP API answers.
fn wait_http(s: &Stack, i: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match http_get(&s.http_addr(i), "/v1/status") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "sk{}'s HTTP API does not answer after {limit:?}: {e:#}",
                    i + 1
                )
            }
            Err(_) => sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until safekeepers `which` (0-based) have flushed and committed `lsn`.
fn wait_at(s: &Stack, which: &[usize], lsn: Lsn, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let behind: Vec<String> = which
            .iter()
            .filter_map(|&i| match s.status(i) {
                Ok(st) if st.commit_lsn >= lsn && st.flush_lsn >= lsn => None,
                Ok(st) => Some(format!("sk{}: {st:?}", i + 1)),
                Err(e) => Some(format!("sk{}: {e:#}", i + 1)),
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not at {lsn} after {limit:?}: {behind:#?}");
        }
        sleep(Duration::from_millis(200));
    }
}

/// Transaction latencies from pgbench's per-transaction logs under `dir`: (end time in µs
/// since the epoch, latency in ms) per transaction.
fn pgbench_latencies(dir: &Path) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir)? {
        for line in std::fs::read_to_string(f?.path())?.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(us), Ok(sec), Ok(usec)) = (
                f[2].parse::<f64>(),
                f[4].parse::<u64>(),
                f[5].parse::<u64>(),
            ) else {
                continue;
            };
            out.push((sec * 1_000_000 + usec, us / 1000.0));
        }
    }
    ensure!(!out.is_empty(), "no pgbench transaction log in {dir:?}");
    Ok(out)
}

/// Now, in µs since the epoch (the clock of pgbench's log, which runs on this machine).
fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// {1,2,3} → {1,2,4} under pgbench, sk3 alive or stopped before the change.
fn replace_under_pgbench(s: &Stack, sk3_dead: bool) -> anyhow::Result<()> {
    s.up_only(&["sk1", "sk2", "sk3", "compute"])?;
    run_bounded(
        &mut s.pgbench(&["-i", "-s", "1", "-q"]),
        Duration::from_secs(120),
    )?;
    let (tenant, timeline) = s.timeline_ids()?;
    let path = format!("/v1/tenant/{tenant}/timeline/{timeline}");
    let (base, members_before, _) = mconf(s, 0, &path)?;
    eprintln!("before: generation {base}, members {members_before:?}");
    if sk3_dead {
        docker(&["stop", "--time", "10", &s.container("sk3")?])?;
        // A commit without it, so the change starts from a quorum of two.
        s.sql_within("INSERT INTO probe VALUES (0)", Duration::from_secs(30))?;
    }

    let seconds = knob("SK_DOCKER_MEMBERSHIP_SECONDS", 24).max(8);
    let logs = tempfile::tempdir()?;
    let bench = s
        .pgbench(&["-T", &seconds.to_string(), "-c", "4", "-j", "2", "--log"])
        .arg(format!("--log-prefix={}", logs.path().join("tx").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    sleep(Duration::from_secs(seconds / 4));

    // The spare comes up under load, then the change, from inside the compute container.
    s.compose(&["up", "-d", "sk4"])?;
    wait_http(s, 3, Duration::from_secs(30))?;
    let compute = s.container("compute")?;
    let http = (1..=4)
        .map(|i| format!("{i}=http://sk{i}:7676"))
        .collect::<Vec<_>>()
        .join(",");
    let (t0, started) = (epoch_us(), Instant::now());
    let change = docker(&[
        "exec",
        &compute,
        "walproposer",
        "membership",
        "--tenant-id",
        &tenant.to_string(),
        "--timeline-id",
        &timeline.to_string(),
        "--from",
        &members(&[1, 2, 3]),
        "--to",
        &members(&[1, 2, 4]),
        "--http",
        &http,
        "--catch-up-timeout",
        "60",
    ])
    .context("walproposer membership")?;
    let (took, t1) = (started.elapsed(), epoch_us());
    eprintln!("{change}");
    // Its own figure, without `docker exec`'s start-up.
    let own = change
        .lines()
        .find_map(|l| l.split_once("the change took ").map(|(_, t)| t.trim()))
        .unwrap_or("?")
        .to_string();

    let summary = pgbench_ok(bench, Duration::from_secs(seconds + 120))?;
    let lat = pgbench_latencies(logs.path())?;
    let after = lat.iter().filter(|(end, _)| *end > t1).count();
    ensure!(
        after > 0,
        "no transaction ended after the change (it took {took:?}): raise \
         SK_DOCKER_MEMBERSHIP_SECONDS ({seconds})"
    );
    let mut ms: Vec<f64> = lat.iter().map(|(_, l)| *l).collect();
    ms.sort_by(f64::total_cmp);
    let p99 = ms[ms.len() * 99 / 100];
    let longest = ms[ms.len() - 1];
    // The transactions that were open while the change ran (ended after its start, began
    // before its end).
    let during = lat
        .iter()
        .filter(|(end, l)| *end >= t0 && end.saturating_sub((*l * 1000.0) as u64) <= t1)
        .map(|(_, l)| *l)
        .fold(0.0, f64::max);
    let tps = summary
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .trim();
    println!(
        "docker compose, {{1,2,3}} → {{1,2,4}}{} under pgbench (4 clients, {seconds} s): the \
         change took {own} ({took:.1?} with `docker exec`); {} transactions, 0 failed ({tps}); longest commit {longest:.1} \
         ms (longest open during the change {during:.1} ms), p99 {p99:.1} ms",
        if sk3_dead { " with sk3 stopped" } else { "" },
        ms.len(),
    );

    // sk1, sk2, sk4 hold the primary's WAL, sk4 byte for byte as sk1.
    let flush = s.primary_flush()?;
    wait_at(s, &[0, 1, 3], flush, Duration::from_secs(60))?;
    let end = s.assert_identical_wal_of(&[0, 1, 3], flush)?;
    eprintln!("sk1, sk2, sk4: identical WAL up to {end} (primary flush {flush})");

    // Generation N+2, members {1,2,4}, on every member (and on sk3 if it is alive).
    let mut check = vec![0, 1, 3];
    if !sk3_dead {
        check.push(2);
    }
    for i in check {
        let (generation, ids, joint) = mconf(s, i, &path)?;
        ensure!(
            generation == base + 2 && ids == [1, 2, 4] && !joint,
            "sk{}: generation {generation}, members {ids:?}, joint {joint}; expected generation \
             {} with members [1, 2, 4]",
            i + 1,
            base + 2
        );
    }
    // `docker logs` replays the container's stderr (the bridge's) on its own stderr.
    let log = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(format!("docker logs --tail 400 {compute} 2>&1")),
        Duration::from_secs(60),
    )?;
    let followed = format!("membership generation {}", base + 2);
    ensure!(
        log.contains(&followed),
        "the bridge did not follow the change (no {followed:?} in the compute's log)"
    );

    // The new set alone carries commits: sk2 and sk4 are a majority of {1,2,4}.
    for victim in ["sk1", "sk3"] {
        docker(&["stop", "--time", "10", &s.container(victim)?])?;
    }
    s.sql_within("INSERT INTO probe VALUES (1)", Duration::from_secs(60))
        .context("a commit on sk2 and sk4 alone")?;
    Ok(())
}

/// pgbench through the compute while sk4 is started and `walproposer membership` moves
/// {1,2,3} → {1,2,4}: no failed transaction, the stall printed, sk4's WAL identical to
/// sk1's, generation N+2 with members {1,2,4} everywhere.
#[test]
fn sk3_is_replaced_by_sk4_under_pgbench_without_a_failed_transaction() -> anyhow::Result<()> {
    scenario("replace_live", 11, |s| replace_under_pgbench(s, false))
}

/// The same with sk3 stopped (`docker stop`) before the change starts.
#[test]
fn a_stopped_sk3_is_replaced_by_sk4_under_pgbench() -> anyhow::Result<()> {
    scenario("replace_dead", 12, |s| replace_under_pgbench(s, true))
}
