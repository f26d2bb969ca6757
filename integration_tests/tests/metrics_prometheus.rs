//! `GET /metrics` scraped by a real Prometheus (Debian's package): after WAL is pushed with
//! `walproposer generate`, read back by a reader and a bad command is refused, Prometheus's
//! query API shows our series with the values the server must have: bytes received, written
//! and sent at least what was generated, a histogram quantile of fdatasync latency, the
//! error counted by SQLSTATE, the timeline active, process metrics; and the target `up`
//! with no scrape error (the exposition is accepted as OpenMetrics).

use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use integration_tests::prometheus::{Prometheus, query, targets, wait_for};
use integration_tests::run;
use integration_tests::sk::{Safekeeper, workspace_bin};
use pq_client::Conninfo;
use utils::{TenantId, TenantTimelineId, TimelineId};

/// Longest we wait for Prometheus to show something (a failure's deadline).
const LIMIT: Duration = Duration::from_secs(60);

fn one(samples: &[integration_tests::prometheus::Sample]) -> f64 {
    samples.first().map_or(f64::NAN, |s| s.value)
}

#[test]
fn prometheus_scrapes_our_series_with_the_expected_values() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Real fdatasyncs, so the fsync histogram has observations.
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), true)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let out = run(Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &sk.addr()])
        .args(["--tenant-id", &ttid.tenant_id.to_string()])
        .args(["--timeline-id", &ttid.timeline_id.to_string()])
        .args(["--bytes", "4M", "--record-size", "2k"]))?;
    let (start, end) = integration_tests::sk::generated_wal_range(&out)?;
    let generated = (end.0 - start.0) as f64;
    ensure!(generated >= 4.0 * 1024.0 * 1024.0, "{out}");

    // A reader fetches it all back (term mode), and an unknown command is refused (0A000).
    let term = sk.timeline_status(&ttid)?.term;
    let ci = Conninfo::for_timeline(&sk.addr(), ttid.tenant_id, ttid.timeline_id, "metrics-test");
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(pq_client::fetch_wal(&ci, start, end, term))?;
    ensure!(fetched.len() as f64 == generated);
    ensure!(sk.psql(None, "NO SUCH COMMAND").is_err());

    let prom = Prometheus::start(&[format!("127.0.0.1:{}", sk.http_port)])?;
    let at_least = |v: f64| move |s: &[_]| one(s) >= v;
    let check = || -> anyhow::Result<()> {
        for name in [
            "safekeeper_wal_received_bytes_total",
            "safekeeper_wal_written_bytes_total",
            "safekeeper_wal_sent_bytes_total",
        ] {
            wait_for(&prom.addr, name, LIMIT, at_least(generated))?;
        }
        // fdatasyncs happened and were measured: a quantile over the buckets is a number.
        wait_for(
            &prom.addr,
            "safekeeper_wal_fsync_seconds_count",
            LIMIT,
            at_least(1.0),
        )?;
        let p99 = query(
            &prom.addr,
            "histogram_quantile(0.99, sum by (le) (safekeeper_wal_fsync_seconds_bucket))",
        )?;
        ensure!(
            one(&p99).is_finite() && one(&p99) > 0.0,
            "fsync p99: {p99:?}"
        );
        wait_for(
            &prom.addr,
            // Every flush covers at least one append, so the mean is >= 1.
            // (histogram_quantile would interpolate inside the first bucket,
            // [0, 1], and answer less than 1 when most flushes carry one.)
            "safekeeper_ingest_flush_appends_sum / safekeeper_ingest_flush_appends_count",
            LIMIT,
            |s| one(s) >= 1.0,
        )?;
        wait_for(
            &prom.addr,
            r#"safekeeper_client_errors_total{sqlstate="0A000"}"#,
            LIMIT,
            at_least(1.0),
        )?;
        wait_for(
            &prom.addr,
            r#"safekeeper_timelines{state="active"}"#,
            LIMIT,
            |s| one(s) == 1.0,
        )?;
        // Everything is committed on a quorum of one: nothing lags.
        wait_for(&prom.addr, "safekeeper_commit_lag_bytes_max", LIMIT, |s| {
            one(s) == 0.0
        })?;
        wait_for(&prom.addr, "process_resident_memory_bytes", LIMIT, |s| {
            one(s) > 0.0
        })?;
        wait_for(&prom.addr, "process_threads", LIMIT, at_least(2.0))?;
        wait_for(&prom.addr, "process_open_fds", LIMIT, at_least(3.0))?;
        wait_for(&prom.addr, "process_start_time_seconds", LIMIT, |s| {
            one(s) > 1.0e9
        })?;
        wait_for(&prom.addr, r#"up{job="safekeeper"}"#, LIMIT, |s| {
            one(s) == 1.0
        })?;
        let t = targets(&prom.addr)?;
        ensure!(
            t.len() == 1 && t[0].health == "up" && t[0].last_error.is_empty(),
            "targets: {t:?}"
        );
        ensure!(t[0].scrape_url.ends_with("/metrics"), "targets: {t:?}");
        Ok(())
    };
    check().map_err(|e| e.context(format!("prometheus log:\n{}", prom.log())))?;
    sk.assert_no_panics();
    Ok(())
}
