//! `walproposer bridge`: an unmodified PostgreSQL 15 primary whose synchronous standby is
//! the bridge in front of three `safekeeper` processes. Commits return only once a
//! majority of safekeepers has the WAL; the safekeepers' WAL is the primary's, byte for
//! byte; failures of safekeepers, of the bridge and of the primary are survived.
//!
//! `SK_BRIDGE_SECONDS` sets the pgbench duration of the main test (default 30).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg::{PgCluster, PgOptions};
use integration_tests::real_wal::read_wal_range;
use integration_tests::sk::{Bridge, Safekeeper};
use utils::{Lsn, TenantTimelineId};
use walproposer::bridge::derived_ids;

struct Setup {
    _dir: tempfile::TempDir,
    pg: PgCluster,
    sks: Vec<Safekeeper>,
    bridge: Bridge,
    ttid: TenantTimelineId,
}

impl Setup {
    fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        let mut pg = PgCluster::init(PgOptions {
            extra_conf: vec![
                "synchronous_standby_names = 'walproposer'".into(),
                "synchronous_commit = on".into(),
                "wal_keep_size = '2GB'".into(),
            ],
            ..Default::default()
        })?;
        pg.start()?;
        let sks = (1..=3)
            .map(|i| Safekeeper::start(i, &dir.path().join(format!("sk{i}")), false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addrs = sks
            .iter()
            .map(Safekeeper::addr)
            .collect::<Vec<_>>()
            .join(",");
        let (tenant, timeline) = derived_ids(pg.system_id()?);
        let bridge = Bridge::start(
            &format!("host=127.0.0.1 port={} user=postgres", pg.port()),
            &addrs,
            &dir.path().join("bridge.log"),
            &[],
        )?;
        let s = Setup {
            _dir: dir,
            pg,
            sks,
            bridge,
            ttid: TenantTimelineId::new(tenant, timeline),
        };
        // The first commit through the bridge proves the chain works.
        s.psql_bounded(
            "CREATE TABLE IF NOT EXISTS probe(x int)",
            Duration::from_secs(60),
        )?;
        Ok(s)
    }

    /// Runs SQL and fails if it does not return within `limit` (a stuck commit).
    fn psql_bounded(&self, sql: &str, limit: Duration) -> anyhow::Result<String> {
        self.pg
            .psql_within(sql, limit)
            .with_context(|| format!("bridge log:\n{}", self.bridge.log()))
    }

    fn spawn_pgbench(&self, seconds: u64, clients: u32) -> anyhow::Result<Child> {
        Ok(self
            .pg
            .client("pgbench")
            .args([
                "-T",
                &seconds.to_string(),
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "postgres",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// The commit LSN a majority of safekeepers reports.
    fn quorum_commit(&self) -> Lsn {
        let mut commits: Vec<Lsn> = self
            .sks
            .iter()
            .map(|s| {
                s.timeline_status(&self.ttid)
                    .map(|st| st.commit_lsn)
                    .unwrap_or_default()
            })
            .collect();
        commits.sort();
        commits[commits.len() / 2]
    }

    fn primary_flush(&self) -> anyhow::Result<Lsn> {
        Ok(self.pg.psql("SELECT pg_current_wal_flush_lsn()")?.parse()?)
    }

    /// Waits until every running safekeeper has `lsn` flushed and committed.
    fn wait_all_at(&mut self, lsn: Lsn, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let behind: Vec<_> = self
                .sks
                .iter()
                .filter_map(|s| match s.timeline_status(&self.ttid) {
                    Ok(st) if st.commit_lsn >= lsn && st.flush_lsn >= lsn => None,
                    other => Some((s.id, other.map_err(|e| e.to_string()))),
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "safekeepers not at {lsn} after {limit:?}: {behind:?}\nbridge log:\n{}",
                    self.bridge.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every safekeeper's WAL equals the primary's from the timeline start to `end`.
    fn assert_wal_is_the_primarys(&self, end: Lsn) -> anyhow::Result<()> {
        let start = self.sks[0].timeline_status(&self.ttid)?.timeline_start_lsn;
        let primary = read_wal_range(&self.pg.wal_dir(), start, end)?;
        for sk in &self.sks {
            let ours = read_wal_range(&sk.timeline_dir(&self.ttid), start, end)?;
            if ours != primary {
                let at = ours
                    .iter()
                    .zip(&primary)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!(
                    "safekeeper {}'s WAL differs from the primary's at {}",
                    sk.id,
                    Lsn(start.0 + at as u64)
                );
            }
        }
        Ok(())
    }
}

fn pgbench_ok(child: Child) -> anyhow::Result<String> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "pgbench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("number of failed transactions: 0"),
        "pgbench reports failed transactions: {stdout}"
    );
    Ok(stdout)
}

#[test]
fn pgbench_through_the_quorum_is_byte_identical() -> anyhow::Result<()> {
    let mut s = Setup::new()?;
    let seconds: u64 = std::env::var("SK_BRIDGE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    s.pg.pgbench(&["-i", "-s", "2", "-q"])?;
    let out = pgbench_ok(s.spawn_pgbench(seconds, 4)?)?;
    println!(
        "{}",
        out.lines()
            .filter(|l| l.starts_with("tps"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let flush = s.primary_flush()?;
    s.wait_all_at(flush, Duration::from_secs(60))?;
    let commit = s.quorum_commit();
    ensure!(
        flush <= commit,
        "primary flush {flush} above the quorum commit {commit}"
    );
    s.assert_wal_is_the_primarys(commit)?;
    // The primary sees the bridge as its synchronous standby at the quorum's commit.
    let row = s.pg.psql(
        "SELECT application_name, sync_state FROM pg_stat_replication WHERE application_name = 'walproposer'",
    )?;
    assert_eq!(row, "walproposer|sync");
    Ok(())
}

#[test]
fn commits_survive_one_safekeeper_and_wait_for_two() -> anyhow::Result<()> {
    let mut s = Setup::new()?;
    s.pg.pgbench(&["-i", "-s", "1", "-q"])?;
    // One safekeeper down in the middle of pgbench: no transaction fails.
    let bench = s.spawn_pgbench(12, 4)?;
    std::thread::sleep(Duration::from_secs(3));
    s.sks[2].kill()?;
    std::thread::sleep(Duration::from_secs(4));
    s.sks[2].restart_same_ports()?;
    pgbench_ok(bench)?;
    // The restarted one catches up to the same bytes.
    let flush = s.primary_flush()?;
    s.wait_all_at(flush, Duration::from_secs(60))?;
    s.assert_wal_is_the_primarys(s.quorum_commit())?;

    // Two down: a commit waits and is not reported.
    s.sks[1].kill()?;
    s.sks[2].kill()?;
    let mut insert = s.pg.spawn_psql("INSERT INTO probe VALUES (42)")?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        insert.try_wait()?.is_none(),
        "a commit returned with two of three safekeepers down"
    );
    // One back: a majority again, the commit completes.
    s.sks[1].restart_same_ports()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while insert.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "the commit did not complete with a majority back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = insert.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("INSERT 0 1"));
    Ok(())
}

#[test]
fn bridge_killed_and_restarted_mid_pgbench_loses_nothing() -> anyhow::Result<()> {
    let mut s = Setup::new()?;
    s.pg.pgbench(&["-i", "-s", "1", "-q"])?;
    let bench = s.spawn_pgbench(12, 4)?;
    std::thread::sleep(Duration::from_secs(4));
    s.bridge.kill()?;
    std::thread::sleep(Duration::from_secs(1));
    s.bridge.restart()?;
    pgbench_ok(bench)?;
    let flush = s.primary_flush()?;
    s.wait_all_at(flush, Duration::from_secs(60))?;
    // No gap, no duplicate: the WAL is exactly the primary's.
    s.assert_wal_is_the_primarys(s.quorum_commit())?;
    let terms: Vec<_> = s
        .sks
        .iter()
        .map(|sk| sk.timeline_status(&s.ttid).map(|st| st.term.0))
        .collect::<Result<_, _>>()?;
    ensure!(
        terms.iter().all(|&t| t >= 2),
        "the restarted bridge won a new term: {terms:?}"
    );
    Ok(())
}

#[test]
fn bridge_reconnects_after_the_primary_restarts() -> anyhow::Result<()> {
    let mut s = Setup::new()?;
    s.psql_bounded("INSERT INTO probe VALUES (1)", Duration::from_secs(30))?;
    let port = s.pg.port();
    s.pg.restart()?;
    ensure!(s.pg.port() == port, "the primary came back on another port");
    s.psql_bounded("INSERT INTO probe VALUES (2)", Duration::from_secs(60))
        .context("commit after the primary's restart")?;
    let flush = s.primary_flush()?;
    s.wait_all_at(flush, Duration::from_secs(60))?;
    s.assert_wal_is_the_primarys(s.quorum_commit())?;
    Ok(())
}
