//! Replacing a safekeeper without downtime: an unmodified PostgreSQL 15 primary writes
//! through `walproposer bridge` to safekeepers {1,2,3} under pgbench while
//! `walproposer membership` moves the timeline to {1,2,4} (pull_timeline onto 4, the joint
//! configuration, catch-up, the final one). No transaction fails; the longest commit
//! during the change is measured and printed; every member of the new set holds the
//! primary's WAL byte for byte; afterwards the new set alone carries commits. The same
//! with safekeeper 3 dead before the change starts.
//!
//! `SK_MEMBERSHIP_SECONDS` sets the pgbench duration (default 14).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg::{PgCluster, PgOptions};
use integration_tests::real_wal::read_wal_range;
use integration_tests::sk::{Bridge, Safekeeper, workspace_bin};
use utils::{Lsn, TenantTimelineId};
use walproposer::bridge::derived_ids;

struct Setup {
    dir: tempfile::TempDir,
    pg: PgCluster,
    /// Safekeepers 1 to 4 (index 0 to 3); 4 is not a member at first.
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
        let sks = (1..=4)
            .map(|i| Safekeeper::start(i, &dir.path().join(format!("sk{i}")), false))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let members = sks[..3]
            .iter()
            .map(Safekeeper::member)
            .collect::<Vec<_>>()
            .join(",");
        let (tenant, timeline) = derived_ids(pg.system_id()?);
        let bridge = Bridge::start(
            &format!("host=127.0.0.1 port={} user=postgres", pg.port()),
            &members,
            &dir.path().join("bridge.log"),
            &[],
        )?;
        let s = Setup {
            dir,
            pg,
            sks,
            bridge,
            ttid: TenantTimelineId::new(tenant, timeline),
        };
        s.commit_within(
            "CREATE TABLE IF NOT EXISTS probe(x int)",
            Duration::from_secs(60),
        )?;
        s.pg.pgbench(&["-i", "-s", "1", "-q"])?;
        Ok(s)
    }

    /// Runs SQL on the primary; fails if it does not return within `limit`.
    fn commit_within(&self, sql: &str, limit: Duration) -> anyhow::Result<()> {
        self.pg
            .psql_within(sql, limit)
            .with_context(|| format!("bridge log:\n{}", self.bridge.log()))?;
        Ok(())
    }

    /// pgbench for `seconds` with a per-transaction log under `logs`.
    fn spawn_pgbench(&self, seconds: u64, logs: &Path) -> anyhow::Result<Child> {
        Ok(self
            .pg
            .client("pgbench")
            .args(["-T", &seconds.to_string(), "-c", "4", "-j", "2", "--log"])
            .arg(format!("--log-prefix={}", logs.join("tx").display()))
            .arg("postgres")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// `walproposer membership` from {1,2,3} to {1,2,4}; its output.
    fn change(&self) -> anyhow::Result<String> {
        let list = |ids: &[usize]| {
            ids.iter()
                .map(|&i| self.sks[i - 1].member())
                .collect::<Vec<_>>()
                .join(",")
        };
        let http = self
            .sks
            .iter()
            .map(|s| format!("{}=http://127.0.0.1:{}", s.id, s.http_port))
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new(workspace_bin("walproposer"))
            .args(["membership", "--tenant-id"])
            .arg(self.ttid.tenant_id.to_string())
            .arg("--timeline-id")
            .arg(self.ttid.timeline_id.to_string())
            .args(["--from", &list(&[1, 2, 3]), "--to", &list(&[1, 2, 4])])
            .args(["--http", &http, "--catch-up-timeout", "60"])
            .stdin(Stdio::null())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "walproposer membership failed:\n{text}\nbridge log:\n{}",
            self.bridge.log()
        );
        Ok(text)
    }

    /// The timeline's generation and member ids on safekeeper `i` (1-based).
    fn mconf(&self, i: usize) -> anyhow::Result<(u64, Vec<u64>, bool)> {
        let (code, body) = self.sks[i - 1].http_get(&format!(
            "/v1/tenant/{}/timeline/{}",
            self.ttid.tenant_id, self.ttid.timeline_id
        ))?;
        ensure!(code == 200, "safekeeper {i}: HTTP {code}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let m = &v["mconf"];
        let ids = m["members"]
            .as_array()
            .context("members")?
            .iter()
            .filter_map(|x| x["id"].as_u64())
            .collect();
        Ok((
            m["generation"].as_u64().context("generation")?,
            ids,
            !m["new_members"].is_null(),
        ))
    }

    /// Waits until safekeepers `ids` have `lsn` flushed and committed.
    fn wait_at(&self, ids: &[usize], lsn: Lsn, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let behind: Vec<_> = ids
                .iter()
                .filter(|&&i| {
                    !self.sks[i - 1]
                        .timeline_status(&self.ttid)
                        .is_ok_and(|st| st.commit_lsn >= lsn && st.flush_lsn >= lsn)
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("safekeepers {behind:?} not at {lsn} after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The WAL of safekeepers `ids` equals the primary's from the timeline start to `end`.
    fn assert_wal_is_the_primarys(&self, ids: &[usize], end: Lsn) -> anyhow::Result<()> {
        let start = self.sks[0].timeline_status(&self.ttid)?.timeline_start_lsn;
        let primary = read_wal_range(&self.pg.wal_dir(), start, end)?;
        for &i in ids {
            let ours = read_wal_range(&self.sks[i - 1].timeline_dir(&self.ttid), start, end)?;
            ensure!(
                ours == primary,
                "safekeeper {i}'s WAL differs from the primary's below {end}"
            );
        }
        Ok(())
    }
}

/// pgbench finished with no failed transaction; the longest and the 99th-percentile
/// transaction latency from its per-transaction logs, in milliseconds.
fn pgbench_ok(child: Child, logs: &Path) -> anyhow::Result<(f64, f64, usize)> {
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
    let mut lat = Vec::new();
    for f in std::fs::read_dir(logs)? {
        for line in std::fs::read_to_string(f?.path())?.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            if let Some(us) = line.split(' ').nth(2).and_then(|t| t.parse::<f64>().ok()) {
                lat.push(us / 1000.0);
            }
        }
    }
    ensure!(!lat.is_empty(), "no pgbench transaction log");
    lat.sort_by(f64::total_cmp);
    let p99 = lat[lat.len() * 99 / 100];
    Ok((lat[lat.len() - 1], p99, lat.len()))
}

fn replace_under_pgbench(sk3_dead: bool) -> anyhow::Result<()> {
    let mut s = Setup::new()?;
    let seconds: u64 = std::env::var("SK_MEMBERSHIP_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14);
    if sk3_dead {
        s.sks[2].kill()?;
    }
    let logs = s.dir.path().join("pgbench-logs");
    std::fs::create_dir(&logs)?;
    let bench = s.spawn_pgbench(seconds, &logs)?;
    std::thread::sleep(Duration::from_secs(seconds / 3));
    let t = Instant::now();
    let out = s.change()?;
    let took = t.elapsed();
    let (max_ms, p99_ms, n) = pgbench_ok(bench, &logs)?;
    println!("{out}");
    println!(
        "membership change {{1,2,3}} → {{1,2,4}}{} under pgbench (4 clients): change took \
         {took:?}; {n} transactions, 0 failed; longest commit {max_ms:.1} ms, p99 {p99_ms:.1} ms",
        if sk3_dead { " with 3 dead" } else { "" }
    );

    // The new set holds the primary's WAL; every member of it knows the configuration.
    let flush: Lsn = s.pg.psql("SELECT pg_current_wal_flush_lsn()")?.parse()?;
    s.wait_at(&[1, 2, 4], flush, Duration::from_secs(60))?;
    s.assert_wal_is_the_primarys(&[1, 2, 4], flush)?;
    for i in [1, 2, 4] {
        let (generation, members, joint) = s.mconf(i)?;
        ensure!(
            generation == 3 && members == [1, 2, 4] && !joint,
            "safekeeper {i}: generation {generation}, members {members:?}, joint {joint}"
        );
    }
    if !sk3_dead {
        let (generation, _, _) = s.mconf(3)?;
        ensure!(
            generation == 3,
            "the removed safekeeper holds generation {generation}"
        );
    }
    ensure!(
        s.bridge.log().contains("membership generation 3"),
        "the bridge did not follow the change:\n{}",
        s.bridge.log()
    );

    // The new set alone carries commits: 1 and 3 down, 2 and 4 are a majority of it.
    s.sks[2].kill()?;
    s.sks[0].kill()?;
    s.commit_within("INSERT INTO probe VALUES (1)", Duration::from_secs(30))?;
    for sk in &s.sks {
        sk.assert_no_panics();
    }
    Ok(())
}

#[test]
fn a_member_is_replaced_under_pgbench_without_a_failed_transaction() -> anyhow::Result<()> {
    replace_under_pgbench(false)
}

#[test]
fn a_dead_member_is_replaced_under_pgbench() -> anyhow::Result<()> {
    replace_under_pgbench(true)
}
