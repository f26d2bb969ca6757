//! Damaged WAL on disk is never sent: a byte flipped in a complete segment or in the
//! `.partial` below commit_lsn ends the stream with `XX001` naming the segment and the
//! record's LSN, once every byte before the damaged record has gone out; the safekeeper
//! logs it at ERROR and counts it; streams that do not reach the damage go on. With the
//! `safekeeper` binary, a raw replication client and a real `pg_receivewal`.

mod send_wal_util;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use integration_tests::pg_tools::pg_bin;
use integration_tests::real_wal::SEG;
use integration_tests::sk::Safekeeper;
use integration_tests::standby::output_within;
use integration_tests::test_proposer::TestProposer;
use pq_proto::backend::SqlState;
use send_wal_util::{
    CLUSTER, Frame, GEN_START, GenWal, ReplStream, append_with_commit, error_fields, new_ttid,
    plain_log,
};
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantTimelineId, Term};

const T: Duration = Duration::from_secs(30);

/// A safekeeper holding `wal` (a segment and a half from [`GEN_START`]), all committed.
async fn filled() -> anyhow::Result<(tempfile::TempDir, Safekeeper, TenantTimelineId, GenWal)> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk"), false)?;
    let ttid = new_ttid();
    let wal = GenWal::new(GEN_START, SEG as usize + (8 << 20));
    let mut p = TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    let flush = append_with_commit(&mut p, Term(1), GEN_START, &wal.wal, wal.end()).await?;
    ensure!(flush == wal.end(), "flushed to {flush}, not {}", wal.end());
    let st = sk.timeline_status(&ttid)?;
    ensure!(st.commit_lsn == wal.end(), "commit_lsn {}", st.commit_lsn);
    Ok((dir, sk, ttid, wal))
}

/// A record of `wal` in segment `segno` near `frac` of the segment: its start and end. It
/// begins well inside its page (not right after a page header) and does not cross a
/// 128 KiB boundary of the segment, so a stream from the segment start reads it in one
/// chunk.
fn record(wal: &GenWal, segno: u64, frac: f64) -> (Lsn, Lsn) {
    const CHUNK: u64 = 128 * 1024;
    let target = Lsn(segno * u64::from(SEG) + (f64::from(SEG) * frac) as u64);
    wal.record_ends
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|&(s, e)| {
            s >= target
                && s.page_offset() >= 64
                && s.page_offset() < 4096
                && s.0 / CHUNK == (e.0 - 1) / CHUNK
        })
        .expect("a record starts there")
}

/// Flips one byte 40 bytes into the record at `rec` (in its body, on the same page), in
/// the segment file `file` of the timeline.
fn damage(sk: &Safekeeper, ttid: &TenantTimelineId, file: &str, rec: Lsn) -> anyhow::Result<()> {
    let path = sk.timeline_dir(ttid).join(file);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let at = rec.segment_offset(SEG) as u64 + 40;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0x5a;
    f.write_all_at(&b, at)?;
    Ok(())
}

/// Reads a stream from `from` until the server ends it; returns the WAL received and the
/// error that ended it.
async fn read_until_error(
    r: &mut ReplStream,
    from: Lsn,
) -> anyhow::Result<(Vec<u8>, anyhow::Error)> {
    let mut got = Vec::new();
    loop {
        match r.next(T).await {
            Ok(Frame::Data(x)) => {
                ensure!(
                    x.wal_start == Lsn(from.0 + got.len() as u64),
                    "XLogData at {}, expected {}",
                    x.wal_start,
                    Lsn(from.0 + got.len() as u64)
                );
                got.extend_from_slice(&x.data);
            }
            Ok(Frame::Keepalive(_)) => {}
            Ok(other) => bail!("{other:?} while waiting for the error"),
            Err(e) => return Ok((got, e)),
        }
    }
}

/// The stream ended with XX001 naming `segment` and `rec`.
fn check_xx001(e: &anyhow::Error, segment: &str, rec: Lsn) -> anyhow::Result<()> {
    let f = error_fields(e).with_context(|| format!("not an ErrorResponse: {e:#}"))?;
    ensure!(f.code == SqlState::DATA_CORRUPTED, "{f:?}");
    ensure!(
        f.message.contains(segment) && f.message.contains(&rec.to_string()),
        "the message names neither {segment} nor {rec}: {}",
        f.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_a_complete_segment_is_never_sent() -> anyhow::Result<()> {
    let (_dir, sk, ttid, wal) = filled().await?;
    let (victim, _) = record(&wal, 1, 0.5);
    let segment = xlog_file_name(1, 1, SEG);
    damage(&sk, &ttid, &segment, victim)?;

    // A replica from the start of the segment: everything before the damaged record, then
    // XX001; not a byte of the record.
    let seg_start = GEN_START.segment_lsn(SEG);
    let mut r = ReplStream::start(
        &sk,
        Some(&ttid),
        "replica",
        &format!("START_REPLICATION PHYSICAL {seg_start} TIMELINE 1"),
    )
    .await?;
    let (got, e) = read_until_error(&mut r, seg_start).await?;
    check_xx001(&e, &segment, victim)?;
    let end = Lsn(seg_start.0 + got.len() as u64);
    ensure!(
        end == victim,
        "received up to {end}, the damage is at {victim}"
    );
    ensure!(
        got[(GEN_START.0 - seg_start.0) as usize..] == *wal.bytes(GEN_START, victim),
        "the WAL before the damage differs"
    );
    let log = plain_log(&sk);
    ensure!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("is corrupt at") && l.contains(&segment)),
        "no ERROR line naming the damage:\n{log}"
    );
    let (_, metrics) = sk.http_get("/metrics")?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "safekeeper_wal_corruption_detected_total 1"),
        "the corruption is not counted:\n{metrics}"
    );

    // A reader that starts past the damage is unaffected.
    let seg2 = Lsn(2 * u64::from(SEG));
    let mut r2 = ReplStream::start(
        &sk,
        Some(&ttid),
        "after",
        &format!("START_REPLICATION PHYSICAL {seg2} TIMELINE 1"),
    )
    .await?;
    let got = r2.read_wal(seg2, wal.end(), T).await?;
    ensure!(
        got[..] == *wal.bytes(seg2, wal.end()),
        "WAL after the damage differs"
    );
    sk.assert_no_panics();
    Ok(())
}

/// Runs pg_receivewal from an empty directory (it starts at the segment of the server's
/// position) until `endpos`; returns its exit status and stderr.
fn pg_receivewal(
    sk: &Safekeeper,
    ttid: &TenantTimelineId,
    out: &Path,
    endpos: Lsn,
) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new(pg_bin("pg_receivewal"));
    cmd.arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable options='-c tenant_id={} timeline_id={}'",
            sk.pg_port, ttid.tenant_id, ttid.timeline_id
        ))
        .arg("-D")
        .arg(out)
        .arg(format!("--endpos={endpos}"))
        .args(["--no-loop", "--no-sync", "--verbose", "--no-password"]);
    let o = output_within(&mut cmd, Duration::from_secs(60))?;
    Ok((
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_partial_segment_below_commit_is_never_sent() -> anyhow::Result<()>
{
    let (dir, sk, ttid, wal) = filled().await?;
    let (victim, victim_end) = record(&wal, 2, 0.25);
    ensure!(victim_end < wal.end());
    let segment = xlog_file_name(1, 2, SEG);
    damage(&sk, &ttid, &format!("{segment}.partial"), victim)?;

    // A pageserver-like reader starting at a record boundary in the middle of a page
    // before the damage (its page is checked from the page start). Its chunks do not
    // start at 128 KiB boundaries, so the damaged record may begin in a chunk that went
    // out whole: it gets at most the record's beginning, never its end.
    let (from, _) = record(&wal, 2, 0.1);
    let mut r = ReplStream::start(
        &sk,
        Some(&ttid),
        "pageserver",
        &format!("START_REPLICATION PHYSICAL {from}"),
    )
    .await?;
    let (got, e) = read_until_error(&mut r, from).await?;
    check_xx001(&e, &segment, victim)?;
    let end = Lsn(from.0 + got.len() as u64);
    ensure!(
        victim <= end && end < victim_end,
        "received up to {end}, the damaged record is {victim}..{victim_end}"
    );
    ensure!(
        got[..(victim.0 - from.0) as usize] == *wal.bytes(from, victim),
        "the WAL before differs"
    );

    // A real pg_receivewal fails with the server's message, and the file it wrote holds
    // nothing of the damaged record.
    let out = dir.path().join("received");
    std::fs::create_dir(&out)?;
    let (ok, stderr) = pg_receivewal(&sk, &ttid, &out, wal.end())?;
    ensure!(!ok, "pg_receivewal succeeded over damaged WAL:\n{stderr}");
    ensure!(
        stderr.contains("is corrupt at") && stderr.contains(&victim.to_string()),
        "pg_receivewal does not report the damage:\n{stderr}"
    );
    let partial = std::fs::read(out.join(format!("{segment}.partial")))?;
    let off = victim.segment_offset(SEG);
    ensure!(
        partial[..off] == *wal.bytes(Lsn(2 * u64::from(SEG)), victim),
        "pg_receivewal's copy before the damage differs"
    );
    ensure!(
        partial[off..].iter().all(|&b| b == 0),
        "pg_receivewal received bytes of the damaged record or after it"
    );
    sk.assert_no_panics();
    Ok(())
}
