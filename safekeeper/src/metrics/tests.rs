//! The exposition after exercising each kind of series: families, types, labels, values,
//! and what the storage seam records on a real filesystem.

use std::sync::Arc;

use bytes::Bytes;
use pq_proto::backend::SqlState;
use utils::Lsn;

use super::process::{parse_boot_time, parse_max_fds, parse_stat};
use super::*;
use crate::durability::SyncMode;
use crate::wal_storage::{SegmentEnv, WalStorage};

/// The value of the sample line `name` (with its labels, exactly), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

fn has_type(text: &str, family: &str, kind: &str) -> bool {
    text.lines().any(|l| l == format!("# TYPE {family} {kind}"))
}

#[test]
fn every_family_is_exposed_with_its_type_and_the_text_ends_with_eof() {
    let m = Metrics::new();
    let text = m.encode();
    for (family, kind) in [
        ("safekeeper_wal_received_bytes", "counter"),
        ("safekeeper_wal_written_bytes", "counter"),
        ("safekeeper_wal_sent_bytes", "counter"),
        ("safekeeper_wal_corruption_detected", "counter"),
        ("safekeeper_peer_recoveries", "counter"),
        ("safekeeper_peer_recovery_errors", "counter"),
        ("safekeeper_peer_recovery_bytes", "counter"),
        ("safekeeper_wal_write_seconds", "histogram"),
        ("safekeeper_wal_fsync_seconds", "histogram"),
        ("safekeeper_ingest_flush_appends", "histogram"),
        ("safekeeper_ingest_flush_seconds", "histogram"),
        ("safekeeper_proposer_connections", "gauge"),
        ("safekeeper_sender_streams", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_threads", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            has_type(&text, family, kind),
            "{family} {kind} missing:\n{text}"
        );
    }
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics needs the EOF marker"
    );
    // Process series have real values: this test's process is running and has threads.
    assert!(sample(&text, "process_threads").unwrap() >= 1.0);
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&text, "process_open_fds").unwrap() >= 3.0);
    let start = sample(&text, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start > 1.0e9 && start <= now + 1.0,
        "start {start}, now {now}"
    );
    assert!(sample(&text, "process_cpu_seconds_total").is_some());
}

#[test]
fn client_errors_are_counted_by_sqlstate() {
    let m = Metrics::new();
    m.client_error(SqlState::PROTOCOL_VIOLATION);
    m.client_error(SqlState::PROTOCOL_VIOLATION);
    m.client_error(SqlState::ADMIN_SHUTDOWN);
    let text = m.encode();
    assert_eq!(
        sample(&text, r#"safekeeper_client_errors_total{sqlstate="08P01"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"safekeeper_client_errors_total{sqlstate="57P01"}"#),
        Some(1.0)
    );
    assert_eq!(m.client_errors(SqlState::PROTOCOL_VIOLATION), 2);
}

#[test]
fn counters_and_histograms_show_what_was_recorded() {
    let m = Metrics::new();
    m.wal_received_bytes.inc_by(8192);
    m.wal_sent_bytes.inc_by(100);
    m.ingest_flush_appends.observe(3.0);
    m.ingest_flush_appends.observe(5.0);
    let text = m.encode();
    assert_eq!(
        sample(&text, "safekeeper_wal_received_bytes_total"),
        Some(8192.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_wal_sent_bytes_total"),
        Some(100.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_ingest_flush_appends_count"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_ingest_flush_appends_sum"),
        Some(8.0)
    );
    assert_eq!(
        sample(&text, r#"safekeeper_ingest_flush_appends_bucket{le="4.0"}"#),
        Some(1.0)
    );
}

#[test]
fn segment_writes_and_fdatasyncs_are_measured_at_the_storage_seam() {
    let m = Metrics::new();
    let dir = tempfile::tempdir().unwrap();
    let seg = 1u32 << 20;
    let env = SegmentEnv {
        io: m.wal_io.clone(),
        ..SegmentEnv::plain(SyncMode::Sync)
    };
    let start = Lsn(u64::from(seg));
    let mut s = WalStorage::open(dir.path(), seg, start, env);
    s.write(start, Bytes::from(vec![7u8; 5000])).unwrap();
    s.write(Lsn(start.0 + 5000), Bytes::from(vec![8u8; 3000]))
        .unwrap();
    s.flush().unwrap();
    let text = m.encode();
    assert_eq!(
        sample(&text, "safekeeper_wal_written_bytes_total"),
        Some(8000.0)
    );
    // Both appends went out in one batch, synced once.
    assert_eq!(
        sample(&text, "safekeeper_wal_write_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_wal_fsync_seconds_count"),
        Some(1.0)
    );
    // Nothing new to sync: no observation.
    s.flush().unwrap();
    assert_eq!(
        sample(&m.encode(), "safekeeper_wal_fsync_seconds_count"),
        Some(1.0)
    );
}

struct Fixed(TimelineStats);

impl TimelineSource for Fixed {
    fn timeline_stats(&self) -> TimelineStats {
        self.0
    }
}

#[test]
fn timelines_by_state_and_lags_are_computed_at_scrape_time() {
    let mut stats = TimelineStats::default();
    stats.count(TimelineState::Active);
    stats.count(TimelineState::Active);
    stats.count(TimelineState::Unavailable);
    // flush 1000, commit 900; readers at 900 (caught up) and 400.
    stats.add_active(1000, 900, [900, 400].into_iter());
    // flush 50, commit 20, no readers.
    stats.add_active(50, 20, std::iter::empty());
    assert_eq!(stats.commit_lag_max, 100);
    assert_eq!(stats.commit_lag_sum, 130);
    assert_eq!(stats.reader_lag_max, 500);

    let m = Metrics::new();
    let source: Arc<dyn TimelineSource> = Arc::new(Fixed(stats));
    m.watch_timelines(Arc::downgrade(&source));
    let text = m.encode();
    assert!(has_type(&text, "safekeeper_timelines", "gauge"));
    for (state, n) in [
        ("active", 2.0),
        ("creating", 0.0),
        ("deleting", 0.0),
        ("unavailable", 1.0),
    ] {
        let line = format!(r#"safekeeper_timelines{{state="{state}"}}"#);
        assert_eq!(sample(&text, &line), Some(n), "{line}");
    }
    assert_eq!(
        sample(&text, "safekeeper_commit_lag_bytes_max"),
        Some(100.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_commit_lag_bytes_sum"),
        Some(130.0)
    );
    assert_eq!(
        sample(&text, "safekeeper_reader_lag_bytes_max"),
        Some(500.0)
    );
    assert!(text.ends_with("# EOF\n"));

    // The registry gone (server shut down): its series are left out, nothing fails.
    drop(source);
    let text = m.encode();
    assert!(!text.contains("safekeeper_timelines"));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn proc_files_are_parsed_as_proc5_describes() {
    // A command name with spaces and parentheses: fields are counted after the last `)`.
    let stat = "4242 (sk (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 21 0 \
                123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
    let s = parse_stat(stat).unwrap();
    assert_eq!(s.cpu_ticks, 200);
    assert_eq!(s.threads, 21);
    assert_eq!(s.start_ticks, 123456);
    assert_eq!(s.vsize, 987654321);
    assert_eq!(s.rss_pages, 2500);
    assert_eq!(parse_stat("4242 (truncated"), None);

    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max processes             63711                63711                processes \n\
                  Max open files            1024                 1048576              files     \n";
    assert_eq!(parse_max_fds(limits), Some(1024));
    assert_eq!(
        parse_max_fds("Max open files            unlimited            unlimited            files"),
        None
    );
    assert_eq!(
        parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
        Some(1700000000)
    );
}
