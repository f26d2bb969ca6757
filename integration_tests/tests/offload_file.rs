//! WAL offload to a `file://` archive, uncompressed, with partial segments: three
//! safekeepers with a membership configuration, WAL pushed by `walproposer generate`.
//! Every complete segment is stored once as a plain WAL file with a `.meta` sidecar, byte
//! for byte what the safekeepers hold; after a quiet second the partial segment is stored
//! too (zeros above the commit position), and it is deleted once the complete segment
//! supersedes it.

mod offload_util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use integration_tests::pg_tools::run;
use integration_tests::sk::{Safekeeper, workspace_bin};
use offload_util::{SEG, backup_reaches, generated_range, lsn, status, wait_for};
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

fn generate(sks: &[Safekeeper], ttid: &TenantTimelineId, bytes: u64) -> anyhow::Result<(Lsn, Lsn)> {
    let members = sks
        .iter()
        .map(Safekeeper::member)
        .collect::<Vec<_>>()
        .join(",");
    let out = run(Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &members, "--bytes"])
        .arg(bytes.to_string())
        .args(["--record-size", "8k", "--tenant-id"])
        .arg(ttid.tenant_id.to_string())
        .arg("--timeline-id")
        .arg(ttid.timeline_id.to_string()))?;
    generated_range(&out)
}

/// The metadata sidecar of a plain object: its start and end LSN and checksum.
fn meta(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn plain_segments_and_partial_ones_in_a_file_archive() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("archive");
    let url = format!("file://{}", archive.display());
    let args = [
        "--remote-storage",
        &url,
        "--backup-compression",
        "none",
        "--peer-status-interval",
        "1",
        "--partial-backup-timeout",
        "1",
        "--wal-retention",
        "1GB",
    ];
    let sks = (1..=3)
        .map(|i| Safekeeper::start_with_args(i, &dir.path().join(format!("sk{i}")), false, &args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let (start, end) = generate(&sks, &ttid, 40 << 20)?;
    let tl_archive = archive
        .join(ttid.tenant_id.to_string())
        .join(ttid.timeline_id.to_string());
    let first = start.segment_number(SEG);
    let last_seg = end.segment_number(SEG);
    backup_reaches(&sks, &ttid, end.segment_lsn(SEG), Duration::from_secs(60))?;

    // Every complete segment once, plain, equal to the safekeepers' copy.
    let local = sks[0].timeline_dir(&ttid);
    for segno in first..last_seg {
        let name = xlog_file_name(1, segno, SEG);
        let stored = std::fs::read(tl_archive.join(&name))
            .with_context(|| format!("{name} is not in the archive"))?;
        let mine = std::fs::read(local.join(&name))?;
        ensure!(stored == mine, "{name} differs from the local segment");
        let m = meta(&tl_archive.join(format!("{name}.meta")))?;
        ensure!(m["format_version"] == 1, "{m}");
        ensure!(
            lsn(&m, "end_lsn")? == Lsn((segno + 1) * u64::from(SEG)),
            "{name}: {m}"
        );
        ensure!(!tl_archive.join(format!("{name}.zst")).exists());
    }

    // The quiet tail: stored as a partial object up to the commit position.
    let tail = xlog_file_name(1, last_seg, SEG);
    let partial = tl_archive.join(format!("{tail}.partial"));
    wait_for("the partial segment", Duration::from_secs(60), || {
        let st = status(&sks[0], &ttid)?;
        let off = st["offload"]["partial_uploaded_lsn"]
            .as_str()
            .map(str::to_string);
        for sk in &sks {
            if let Some(p) = status(sk, &ttid)?["offload"]["partial_uploaded_lsn"].as_str() {
                return Ok(Ok(p.to_string()));
            }
        }
        Ok(Err(format!("partial_uploaded_lsn {off:?}")))
    })?;
    let m = meta(&tl_archive.join(format!("{tail}.partial.meta")))?;
    ensure!(
        lsn(&m, "end_lsn")? == end,
        "partial ends at {m}, WAL at {end}"
    );
    let stored = std::fs::read(&partial)?;
    let mine = std::fs::read(local.join(format!("{tail}.partial")))?;
    let upto = end.segment_offset(SEG);
    ensure!(stored.len() == SEG as usize);
    ensure!(stored[..upto] == mine[..upto], "partial bytes differ");
    ensure!(
        stored[upto..].iter().all(|&b| b == 0),
        "bytes above the commit position"
    );

    // More WAL completes that segment: the complete object supersedes the partial one.
    let (_, end2) = generate(&sks, &ttid, 20 << 20)?;
    ensure!(end2.segment_number(SEG) > last_seg);
    backup_reaches(&sks, &ttid, end2.segment_lsn(SEG), Duration::from_secs(60))?;
    ensure!(
        tl_archive.join(&tail).exists(),
        "{tail} not stored complete"
    );
    wait_for(
        "the superseded partial object gone",
        Duration::from_secs(30),
        || {
            Ok(
                if partial.exists() || tl_archive.join(format!("{tail}.partial.meta")).exists() {
                    Err("still there".to_string())
                } else {
                    Ok(())
                },
            )
        },
    )?;
    // Retention kept every local segment.
    ensure!(local.join(xlog_file_name(1, first, SEG)).exists() || first == 0);
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}
