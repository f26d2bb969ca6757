//! The quorum in containers (docker-compose.yml, images from scripts/docker/build), with
//! faults across hosts: a safekeeper container stopped, one cut off the network, two cut
//! off, the compute killed; and the `monitoring` profile's Prometheus scraping the three. Each scenario is its own compose project (own network, volumes,
//! loopback ports and subnet), removed with `down -v` when it ends, failed or not.
//!
//! They skip, loudly, only when `docker info` fails. They run one at a time (see
//! [`docker_util::serial`]), each bounded in time by its steps' limits.
//!
//! Knobs: `SK_DOCKER_ROUNDS` (fault rounds per scenario, default 1), `SK_DOCKER_OUTAGE_SECONDS`
//! (how long each fault lasts, default 4), `SK_CHECK_SECONDS` (pgbench of the acceptance
//! check, default 20).

mod docker_util;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use docker_util::{
    SAFEKEEPERS, Stack, docker, docker_unavailable, ensure_images, knob, pgbench_ok, repo_root,
    run_bounded, serial, sweep_stale_projects, wait_bounded,
};
use pq_client::Conninfo;

/// Runs one scenario on a fresh project, or skips when docker is unusable. On failure the
/// error carries the containers' last log lines.
fn scenario(
    name: &str,
    salt: u32,
    body: impl FnOnce(&Stack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    scenario_on(name, salt, Stack::new, body)
}

/// [`scenario`] on a project made by `new` (e.g. [`Stack::with_monitoring`]).
fn scenario_on(
    name: &str,
    salt: u32,
    new: fn(&str, u32) -> anyhow::Result<Stack>,
    body: impl FnOnce(&Stack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(why) = docker_unavailable() {
        eprintln!(
            "\n!!!!!!!! SKIPPED docker_faults::{name}: `docker info` fails, so the quorum was NOT \
             tested in containers !!!!!!!!\n{why}\n"
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
    let stack = new(&short, salt)?;
    let res = body(&stack);
    eprintln!("docker_faults::{name}: {:.1?}", started.elapsed());
    res.map_err(|e| {
        let logs = stack.logs();
        e.context(format!(
            "{name} failed; the containers' last log lines:\n{logs}\n"
        ))
    })
}

fn rounds() -> u64 {
    knob("SK_DOCKER_ROUNDS", 1).max(1)
}

fn outage() -> Duration {
    Duration::from_secs(knob("SK_DOCKER_OUTAGE_SECONDS", 4).max(1))
}

/// How long a safekeeper may take to catch up after a fault: TCP's retransmission backoff
/// across a partition grows with its length, so a connection may resume that much later.
fn catch_up_limit() -> Duration {
    Duration::from_secs(60) + 2 * outage()
}

fn pgbench_init(s: &Stack) -> anyhow::Result<()> {
    run_bounded(
        &mut s.pgbench(&["-i", "-s", "1", "-q"]),
        Duration::from_secs(120),
    )?;
    Ok(())
}

/// pgbench commits keep completing over `outage` (with one safekeeper gone).
fn commits_continue(s: &Stack, what: &str) -> anyhow::Result<()> {
    let before = s.pgbench_commits()?;
    sleep(outage());
    let after = s.pgbench_commits()?;
    ensure!(
        after > before,
        "no pgbench commit in {:?} with {what}: {before} before, {after} after",
        outage()
    );
    eprintln!("  {what}: {} commits in {:?}", after - before, outage());
    Ok(())
}

/// How one safekeeper is taken away and given back.
#[derive(Clone, Copy, Debug)]
enum OneDown {
    /// `docker stop` / `docker start`.
    Stopped,
    /// `docker network disconnect` / `connect` (same address and name).
    Disconnected,
}

/// pgbench runs while one safekeeper after the other (one per round) is taken away: no
/// transaction fails, commits continue while it is away, and once it is back all three
/// catch up to the same bytes.
fn one_safekeeper_away(s: &Stack, how: OneDown) -> anyhow::Result<()> {
    s.up()?;
    pgbench_init(s)?;
    let away = outage();
    for round in 0..rounds() {
        let victim = SAFEKEEPERS[(2 + round as usize) % 3];
        // Long enough to cover: 2 s before, the fault, the outage, the return, 3 s after.
        let bench = s.spawn_pgbench(away.as_secs() + 8)?;
        sleep(Duration::from_secs(2));
        let what = format!("{victim} {how:?}");
        match how {
            OneDown::Stopped => {
                let id = s.container(victim)?;
                docker(&["stop", "--time", "10", &id])?;
                commits_continue(s, &what)?;
                docker(&["start", &id])?;
            }
            OneDown::Disconnected => {
                let cut = s.disconnect(victim)?;
                commits_continue(s, &what)?;
                s.reconnect(&cut)?;
            }
        }
        pgbench_ok(bench, Duration::from_secs(away.as_secs() + 120))
            .with_context(|| format!("pgbench around {what}"))?;
        s.wait_converged(catch_up_limit())
            .with_context(|| format!("catching up after {what}"))?;
    }
    let flush = s.primary_flush()?;
    s.wait_converged(Duration::from_secs(60))?;
    s.assert_identical_wal(flush)?;
    Ok(())
}

/// The acceptance check, exactly as run by hand: `scripts/docker/check` brings the project
/// up, runs pgbench through the compute for 20 s, and passes when the three safekeepers
/// report one commit_lsn at or above the primary's final flush LSN.
#[test]
fn check_script_three_safekeepers_agree_after_pgbench() -> anyhow::Result<()> {
    scenario("check_script", 1, |s| {
        let seconds = knob("SK_CHECK_SECONDS", 20);
        let mut cmd = Command::new(repo_root().join("scripts/docker/check"));
        cmd.envs(s.env())
            .env("SK_CHECK_SECONDS", seconds.to_string());
        let out = run_bounded(&mut cmd, Duration::from_secs(seconds + 300))?;
        ensure!(
            out.contains("OK: all three safekeepers report commit_lsn"),
            "scripts/docker/check did not report OK:\n{out}"
        );
        // The table: three safekeeper rows with one commit_lsn, the primary's flush LSN.
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() == 4 && f[0].starts_with("sk"))
            .collect();
        ensure!(rows.len() == 3, "expected three safekeeper rows:\n{out}");
        ensure!(
            rows.iter().all(|r| r[3] == rows[0][3]),
            "the commit_lsns differ:\n{out}"
        );
        eprintln!("{out}");
        Ok(())
    })
}

/// `docker stop` one safekeeper container under pgbench: commits continue on the other
/// two; `docker start` it and it catches up to identical WAL.
#[test]
fn stopped_safekeeper_commits_continue_then_it_catches_up() -> anyhow::Result<()> {
    scenario("stopped_one", 2, |s| {
        one_safekeeper_away(s, OneDown::Stopped)
    })
}

/// `docker network disconnect` one safekeeper under pgbench: commits continue; reconnected
/// (a healed partition: same address and name), it catches up to identical WAL.
#[test]
fn disconnected_safekeeper_commits_continue_then_it_catches_up() -> anyhow::Result<()> {
    scenario("disconnected_one", 3, |s| {
        one_safekeeper_away(s, OneDown::Disconnected)
    })
}

/// Two safekeepers cut off the network under pgbench: commits stall and none is reported
/// committed (the waiting INSERT does not return and is not visible, pgbench's count does
/// not move, neither the reachable safekeeper's commit_lsn nor the bridge's report to the
/// primary passes the primary's flush LSN at the cut). Reconnected, everything completes and
/// the three converge to identical WAL.
#[test]
fn two_safekeepers_cut_off_commits_stall_then_all_three_converge() -> anyhow::Result<()> {
    scenario("cut_off_two", 4, |s| {
        s.up()?;
        pgbench_init(s)?;
        let away = outage();
        for round in 0..rounds() {
            let kept = round as usize % 3;
            let victims: Vec<&str> = (0..3)
                .filter(|&i| i != kept)
                .map(|i| SAFEKEEPERS[i])
                .collect();
            let bench = s.spawn_pgbench(away.as_secs() + 10)?;
            sleep(Duration::from_secs(2));
            let cuts = victims
                .iter()
                .map(|v| s.disconnect(v))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Let what was acknowledged before the cut become visible.
            sleep(Duration::from_secs(1));
            let cut_flush = s.primary_flush()?;
            let commits = s.pgbench_commits()?;
            let marker = 1000 + round;
            let mut insert = s.spawn_sql(&format!("INSERT INTO probe VALUES ({marker})"))?;
            sleep(away);

            ensure!(
                insert.try_wait()?.is_none(),
                "a commit returned with {victims:?} cut off"
            );
            ensure!(
                s.pgbench_commits()? == commits,
                "pgbench transactions committed with {victims:?} cut off"
            );
            ensure!(
                s.sql(&format!("SELECT count(*) FROM probe WHERE x = {marker}"))? == "0",
                "the waiting INSERT is visible with {victims:?} cut off"
            );
            let left = s.status(kept)?;
            ensure!(
                left.commit_lsn <= cut_flush,
                "{} reports commit_lsn {} beyond the primary's flush {cut_flush} at the cut",
                SAFEKEEPERS[kept],
                left.commit_lsn
            );
            let reported: utils::Lsn = s
                .sql(
                    "SELECT flush_lsn FROM pg_stat_replication \
                     WHERE application_name = 'walproposer'",
                )?
                .parse()
                .context("the bridge's flush_lsn in pg_stat_replication")?;
            ensure!(
                reported <= cut_flush,
                "the bridge reported {reported} to the primary, beyond {cut_flush} at the cut"
            );
            eprintln!(
                "  {victims:?} cut off for {away:?}: no commit; {} at commit_lsn {}",
                SAFEKEEPERS[kept], left.commit_lsn
            );

            for cut in &cuts {
                s.reconnect(cut)?;
            }
            let out = wait_bounded(insert, catch_up_limit(), "the waiting INSERT")
                .context("the INSERT did not complete once the quorum was back")?;
            ensure!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("INSERT 0 1"),
                "the waiting INSERT failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            pgbench_ok(bench, Duration::from_secs(away.as_secs() + 120))?;
            s.wait_converged(catch_up_limit())?;
        }
        let flush = s.primary_flush()?;
        s.wait_converged(Duration::from_secs(60))?;
        let end = s.assert_identical_wal(flush)?;
        eprintln!("  the three hold identical WAL up to {end}");
        Ok(())
    })
}

/// Inserts 1, 2, 3, … (plus `base`) into `acked`, one commit at a time, until the
/// connection fails; `last` is the last id whose commit was acknowledged.
struct AckedWriter {
    last: Arc<AtomicU64>,
    thread: JoinHandle<String>,
}

impl AckedWriter {
    fn start(port: u16, base: u64) -> anyhow::Result<AckedWriter> {
        let ci = Conninfo::parse(&format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres"
        ))?;
        let last = Arc::new(AtomicU64::new(base));
        let shared = last.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let mut conn = match pq_client::connect(&ci).await {
                    Ok(c) => c,
                    Err(e) => return format!("connect: {e}"),
                };
                let mut id = base;
                loop {
                    id += 1;
                    let q = format!("INSERT INTO acked VALUES ({id})");
                    match tokio::time::timeout(
                        Duration::from_secs(60),
                        pq_client::simple_query(&mut conn, &q),
                    )
                    .await
                    {
                        Ok(Ok(_)) => shared.store(id, Ordering::SeqCst),
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return format!("{q} took over 60 s"),
                    }
                }
            })
        });
        Ok(AckedWriter { last, thread })
    }

    fn acked(&self, base: u64) -> u64 {
        self.last.load(Ordering::SeqCst) - base
    }
}

/// `docker kill` the compute (PostgreSQL and the bridge) while pgbench and a writer of
/// numbered rows are committing, then `docker start` it: every commit that was acknowledged
/// is there after the restart; the bridge comes back with the compute, wins a new term and
/// the three safekeepers converge to identical WAL.
#[test]
fn compute_killed_mid_stream_and_restarted_loses_no_committed_transaction() -> anyhow::Result<()> {
    scenario("compute_killed", 5, |s| {
        s.up()?;
        pgbench_init(s)?;
        s.sql("CREATE TABLE acked(id bigint PRIMARY KEY)")?;
        let rounds = rounds();
        for round in 0..rounds {
            let base = (round + 1) * 1_000_000;
            let bench = s.spawn_pgbench(120)?;
            let writer = AckedWriter::start(s.compute_port(), base)?;
            let started = Instant::now();
            while writer.acked(base) < 100 || started.elapsed() < Duration::from_secs(3) {
                ensure!(
                    !writer.thread.is_finished() && started.elapsed() < Duration::from_secs(60),
                    "the writer got {} commits acknowledged in {:?}",
                    writer.acked(base),
                    started.elapsed()
                );
                sleep(Duration::from_millis(50));
            }
            let compute = s.container("compute")?;
            docker(&["kill", &compute])?;
            let why = writer
                .thread
                .join()
                .map_err(|_| anyhow::anyhow!("the writer panicked"))?;
            let last = writer.last.load(Ordering::SeqCst);
            // pgbench ends with an error: its connections were cut.
            let _ = wait_bounded(bench, Duration::from_secs(60), "pgbench");
            eprintln!(
                "  compute killed after {} acknowledged commits of the writer ({why})",
                last - base
            );

            docker(&["start", &compute])?;
            s.wait_ready().context("the compute after its restart")?;
            let found: u64 = s
                .sql(&format!(
                    "SELECT count(*) FROM acked WHERE id BETWEEN {} AND {last}",
                    base + 1
                ))?
                .parse()?;
            ensure!(
                found == last - base,
                "{} of {} acknowledged commits are missing after the compute's restart",
                last - base - found,
                last - base
            );
        }
        let flush = s.primary_flush()?;
        let statuses = s.wait_converged(Duration::from_secs(60))?;
        ensure!(
            statuses.iter().all(|st| st.term > rounds),
            "each restarted bridge wins a new term: {statuses:?}"
        );
        s.assert_identical_wal(flush)?;
        Ok(())
    })
}

/// The `monitoring` profile: the deployment's own Prometheus (Debian's binary in a FROM
/// scratch image) scrapes the three safekeepers by service name; its query API shows each
/// `up`, WAL received by each after a commit through the quorum, and the timeline active on
/// all three.
#[test]
fn monitoring_profile_prometheus_scrapes_the_three_safekeepers() -> anyhow::Result<()> {
    use integration_tests::prometheus::{targets, wait_for};
    scenario_on("monitoring", 6, Stack::with_monitoring, |s| {
        docker(&["image", "inspect", "--format", "{{.Id}}", "safekeeper-prometheus:local"])
            .context("the Prometheus image (scripts/docker/build builds it when /usr/bin/prometheus is installed)")?;
        s.up()?;
        let addr = s.prometheus_addr();
        let limit = Duration::from_secs(90);
        let three_ones = |v: &[integration_tests::prometheus::Sample]| {
            v.len() == 3 && v.iter().all(|x| x.value == 1.0)
        };
        let up = wait_for(&addr, r#"up{job="safekeeper"}"#, limit, three_ones)?;
        let mut instances: Vec<_> = up.iter().filter_map(|x| x.label("instance")).collect();
        instances.sort();
        ensure!(
            instances == ["sk1:7676", "sk2:7676", "sk3:7676"],
            "instances: {instances:?}"
        );
        wait_for(
            &addr,
            "count(safekeeper_wal_received_bytes_total > 0)",
            limit,
            |v| v.first().is_some_and(|x| x.value == 3.0),
        )?;
        wait_for(
            &addr,
            r#"sum(safekeeper_timelines{state="active"})"#,
            limit,
            |v| v.first().is_some_and(|x| x.value == 3.0),
        )?;
        let t = targets(&addr)?;
        ensure!(
            t.len() == 3
                && t.iter()
                    .all(|x| x.health == "up" && x.last_error.is_empty()),
            "targets: {t:?}"
        );
        Ok(())
    })
}
