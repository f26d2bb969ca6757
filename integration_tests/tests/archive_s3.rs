//! `safekeeper archive` against an S3-protocol server (moto) through a fault proxy, with the
//! same URL and environment as the server: a restore that starts while the store refuses
//! connections retries and completes, byte-identical; `archive list` shows the timeline;
//! `archive get` delivers a segment, prefetches the next ones into its spool (the following
//! call takes its segment from there), and exits 1 for a segment or history file the
//! archive does not have.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::proxy::TcpProxy;
use integration_tests::s3::TestBucket;
use integration_tests::sk::workspace_bin;
use safekeeper::remote::SegmentMeta;
use safekeeper::remote::format::encode_zstd;
use utils::xlog::{WalGenerator, xlog_file_name};
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

const SEG: u32 = 16 << 20;
const SEGMENTS: u64 = 4;

fn archive_cmd(env: &[(String, String)], args: &[String]) -> Command {
    let mut c = Command::new(workspace_bin("safekeeper"));
    c.arg("archive")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    c
}

#[test]
fn restore_list_and_get_from_s3_through_an_outage() -> anyhow::Result<()> {
    let bucket = TestBucket::new()?;
    let target = bucket
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = TcpProxy::start(&target)?;
    let env = bucket.env_with_endpoint(&proxy.endpoint());
    let url = bucket.url("arch");
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());

    // Segments 1..=4 of generated WAL, stored the way the offloader stores them.
    let seg = u64::from(SEG);
    let mut g = WalGenerator::new(Lsn(seg), 7_123_456_789, SEG, 15)?;
    let mut wal = BytesMut::new();
    let mut n = 0u32;
    while wal.len() < (SEGMENTS * seg) as usize {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
        g.append_logical_message("s3", &n.to_le_bytes().repeat(500), &mut wal)?;
    }
    let wal = wal.freeze();
    let segment = |segno: u64| wal.slice(((segno - 1) * seg) as usize..(segno * seg) as usize);
    for segno in 1..=SEGMENTS {
        let data = segment(segno);
        let meta = SegmentMeta::of(&data, Lsn(segno * seg), Lsn((segno + 1) * seg));
        let obj = encode_zstd(&data, &meta, 3)?;
        let name = xlog_file_name(1, segno, SEG);
        bucket.put_blocking(
            &format!("arch/{}/{}/{name}.zst", ttid.tenant_id, ttid.timeline_id),
            Bytes::from(obj),
        )?;
    }
    let ids = vec![
        "--remote-storage".to_string(),
        url.clone(),
        "--tenant-id".into(),
        ttid.tenant_id.to_string(),
        "--timeline-id".into(),
        ttid.timeline_id.to_string(),
    ];

    // The store is down when the restore starts, and back two seconds later.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("restored");
    let mut args = vec!["restore".to_string()];
    args.extend(ids.clone());
    args.extend([
        "--from".into(),
        Lsn(seg).to_string(),
        "--to".into(),
        Lsn((SEGMENTS + 1) * seg).to_string(),
        "-D".into(),
        out.display().to_string(),
        "--parallel".into(),
        "2".into(),
    ]);
    proxy.refuse();
    let child = archive_cmd(&env, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    proxy.pass();
    let o = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.success(), "restore: {stderr}");
    ensure!(stderr.contains("retrying"), "no retry reported:\n{stderr}");
    for segno in 1..=SEGMENTS {
        let name = xlog_file_name(1, segno, SEG);
        let got = std::fs::read(out.join(&name)).with_context(|| name.clone())?;
        ensure!(got == segment(segno), "restored {name} differs");
    }

    // The listing.
    let mut args = vec!["list".to_string()];
    args.extend(ids[..2].iter().cloned());
    let o = archive_cmd(&env, &args).output()?;
    let listing = String::from_utf8_lossy(&o.stdout);
    ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ensure!(
        listing.contains(&ttid.timeline_id.to_string())
            && listing.contains(&xlog_file_name(1, 1, SEG))
            && listing.contains(&xlog_file_name(1, SEGMENTS, SEG))
            && listing.contains(" none"),
        "{listing}"
    );

    // restore_command's side.
    let pg_wal = dir.path().join("pg_wal");
    std::fs::create_dir_all(&pg_wal)?;
    let get = |file: &str| -> anyhow::Result<(bool, String)> {
        let mut args = vec!["get".to_string()];
        args.extend(ids.clone());
        args.extend(["--prefetch".into(), "2".into(), file.to_string()]);
        args.push(pg_wal.join("RECOVERYXLOG").display().to_string());
        let o = archive_cmd(&env, &args).output()?;
        Ok((
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    };
    let (ok, err) = get(&xlog_file_name(1, 2, SEG))?;
    ensure!(ok, "get: {err}");
    ensure!(std::fs::read(pg_wal.join("RECOVERYXLOG"))? == segment(2));
    let spool = pg_wal.join("safekeeper_prefetch");
    for segno in [3, 4] {
        ensure!(
            spool.join(xlog_file_name(1, segno, SEG)).exists(),
            "segment {segno} not prefetched"
        );
    }
    // The next call is served from the spool: even with the store down.
    proxy.refuse();
    let (ok, err) = get(&xlog_file_name(1, 3, SEG))?;
    proxy.pass();
    ensure!(ok, "get from the spool: {err}");
    ensure!(std::fs::read(pg_wal.join("RECOVERYXLOG"))? == segment(3));
    ensure!(
        !spool.join(xlog_file_name(1, 3, SEG)).exists(),
        "a used spool entry stays"
    );
    // The end of the archive, and files PostgreSQL asks for that are never there.
    for absent in [
        xlog_file_name(1, SEGMENTS + 1, SEG),
        "00000002.history".to_string(),
    ] {
        let (ok, err) = get(&absent)?;
        ensure!(!ok && err.contains("not in the archive"), "{absent}: {err}");
    }
    Ok(())
}
