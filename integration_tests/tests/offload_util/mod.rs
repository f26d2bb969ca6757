//! Helpers of the offload tests: timeline status over HTTP, local segment listings, and
//! waiting for positions.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg::{PgCluster, PgOptions};
use integration_tests::sk::{Bridge, Safekeeper};
use serde_json::Value;
use utils::xlog::parse_xlog_file_name;
use utils::{Lsn, SegNo, TenantTimelineId};
use walproposer::bridge::derived_ids;

/// The WAL segment size of the tests.
pub const SEG: u32 = 16 << 20;

/// The HTTP status of a timeline.
pub fn status(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Value> {
    let (code, body) = sk.http_get(&format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    ensure!(code == 200, "status {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// An LSN field of a status.
pub fn lsn(v: &Value, key: &str) -> anyhow::Result<Lsn> {
    v[key]
        .as_str()
        .with_context(|| format!("no {key} in {v}"))?
        .parse()
        .with_context(|| format!("{key} in {v}"))
}

/// Who the safekeeper says offloads the timeline.
pub fn offloader(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Option<u64>> {
    Ok(status(sk, ttid)?["offload"]["offloader"].as_u64())
}

/// The complete (not `.partial`) segment files in a timeline directory.
pub fn local_complete_segments(dir: &Path) -> anyhow::Result<Vec<SegNo>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        if let Some((_, segno, false)) = name.to_str().and_then(|n| parse_xlog_file_name(n, SEG)) {
            out.push(segno);
        }
    }
    out.sort();
    Ok(out)
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `limit` with the
/// last state it described.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(state)) => last = state,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what}: not within {limit:?}; last: {last}")
}

/// Waits until every safekeeper's backup_lsn is at least `want`.
pub fn backup_reaches(
    sks: &[Safekeeper],
    ttid: &TenantTimelineId,
    want: Lsn,
    limit: Duration,
) -> anyhow::Result<()> {
    wait_for(&format!("backup_lsn {want} on all"), limit, || {
        let mut got = Vec::new();
        for sk in sks {
            got.push(lsn(&status(sk, ttid)?, "backup_lsn")?);
        }
        Ok(if got.iter().all(|&b| b >= want) {
            Ok(())
        } else {
            Err(format!("backup_lsn {got:?}"))
        })
    })
}

/// The `wal:` range a `walproposer generate` report prints.
pub fn generated_range(report: &str) -> anyhow::Result<(Lsn, Lsn)> {
    integration_tests::sk::generated_wal_range(report)
}

/// A PostgreSQL 15 primary whose synchronous standby is `walproposer bridge` in front of
/// three safekeepers with a membership configuration (`ID@host:port`).
pub struct PgQuorum {
    /// The primary (keeps 4 GB of WAL, for comparisons).
    pub pg: PgCluster,
    /// Safekeepers 1..=3.
    pub sks: Vec<Safekeeper>,
    /// The bridge.
    pub bridge: Bridge,
    /// The primary's timeline on the safekeepers.
    pub ttid: TenantTimelineId,
}

impl PgQuorum {
    /// Starts it all under `dir`, the safekeepers with `args` and `env`, and commits a
    /// first transaction through it (`CREATE TABLE probe(x int)`).
    pub fn start(dir: &Path, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut pg = PgCluster::init(PgOptions {
            extra_conf: vec![
                "synchronous_standby_names = 'walproposer'".into(),
                "synchronous_commit = on".into(),
                "wal_keep_size = '4GB'".into(),
            ],
            ..Default::default()
        })?;
        pg.start()?;
        let sks = (1..=3)
            .map(|i| Safekeeper::start_with_env(i, &dir.join(format!("sk{i}")), false, args, env))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let members = sks
            .iter()
            .map(Safekeeper::member)
            .collect::<Vec<_>>()
            .join(",");
        let (tenant, timeline) = derived_ids(pg.system_id()?);
        let bridge = Bridge::start(
            &format!("host=127.0.0.1 port={} user=postgres", pg.port()),
            &members,
            &dir.join("bridge.log"),
            &[],
        )?;
        pg.psql("CREATE TABLE probe(x int)")
            .with_context(|| format!("first commit; bridge log:\n{}", bridge.log()))?;
        Ok(PgQuorum {
            pg,
            sks,
            bridge,
            ttid: TenantTimelineId::new(tenant, timeline),
        })
    }
}
