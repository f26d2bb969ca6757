//! Real WAL for tests: a throwaway PostgreSQL 15 makes some, and this module hands out
//! the complete segments, the first record boundary to start a timeline at, and the
//! record starts `pg_waldump` reports for them.
//!
//! Owns: nothing beyond its cluster. Must never: hand out the segment still being
//! written (only segments below the current insert position are complete).

use std::path::Path;

use anyhow::{Context, ensure};
use bytes::{Bytes, BytesMut};
use utils::xlog::{DecoderConfig, WalGenerator, WalStreamDecoder, xlog_file_name};
use utils::{Lsn, SegNo};

use crate::pg::{PgCluster, PgOptions};
use crate::pg_tools::pg_waldump;
use crate::test_proposer::Cluster;

/// WAL made by a real server.
pub struct RealWal {
    /// The server (kept running: tests may make more WAL or connect standbys).
    pub pg: PgCluster,
    /// What a proposer must say about it.
    pub cluster: Cluster,
    /// First complete segment handed out.
    pub first_segno: SegNo,
    /// Last complete segment handed out.
    pub last_segno: SegNo,
    /// First record boundary in `first_segno`: where a timeline can start.
    pub start: Lsn,
    /// The bytes from `start` to the end of `last_segno`.
    pub wal: Bytes,
    /// Record starts in `[start, end)` as `pg_waldump` lists them.
    pub record_starts: Vec<Lsn>,
    /// End of the last complete record in the bytes (the decoder's view).
    pub end_of_records: Lsn,
}

/// Segment size of the test clusters.
pub const SEG: u32 = 16 * 1024 * 1024;

/// The complete segments `first..=last` of `primary` (timeline 1), read from its pg_wal.
pub fn read_segments(primary: &PgCluster, first: SegNo, last: SegNo) -> anyhow::Result<BytesMut> {
    let mut buf = BytesMut::new();
    for segno in first..=last {
        let path = primary.wal_dir().join(xlog_file_name(1, segno, SEG));
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        ensure!(bytes.len() == SEG as usize, "{} is short", path.display());
        buf.extend_from_slice(&bytes);
    }
    Ok(buf)
}

/// `primary`'s WAL of segments `first..=last` from the first record that begins in `first`:
/// the cluster a proposer announces, that record's LSN (where a timeline can start), and
/// the bytes from it to the end of `last`.
pub fn primary_wal_from(
    primary: &PgCluster,
    first: SegNo,
    last: SegNo,
) -> anyhow::Result<(Cluster, Lsn, Bytes)> {
    let buf = read_segments(primary, first, last)?;
    let pg_version: u32 = primary.psql("SHOW server_version_num")?.trim().parse()?;
    let cluster = Cluster {
        pg_version,
        system_id: primary.system_id()?,
        wal_seg_size: SEG,
    };
    let seg_start = Lsn(first * u64::from(SEG));
    let mut d = WalStreamDecoder::new_at_segment_start(
        seg_start,
        DecoderConfig::new(pg_version, SEG, cluster.system_id),
    );
    d.feed(&buf[..8192]);
    let start = d
        .first_record_lsn()
        .context("no record on the first page")?;
    let wal = buf.freeze().slice((start.0 - seg_start.0) as usize..);
    Ok((cluster, start, wal))
}

impl RealWal {
    /// Makes at least `segments` complete segments of varied WAL (pgbench tables, wide
    /// rows spanning pages, a logical message spanning a segment boundary) and hands them
    /// out starting with the second segment the server wrote (so the timeline starts
    /// mid-stream, as a compute started from a basebackup does).
    pub fn generate(segments: usize) -> anyhow::Result<RealWal> {
        let mut pg = PgCluster::init(PgOptions::default())?;
        pg.start()?;
        let system_id = pg.system_id()?;
        let pg_version: u32 = pg.psql("SHOW server_version_num")?.trim().parse()?;
        pg.psql("SELECT pg_switch_wal()")?;
        let first_segno = pg.current_wal_insert_lsn()?.segment_number(SEG);
        pg.pgbench(&["-i", "-s", "1", "-q"])?;
        pg.psql("CREATE TABLE wide (id int, v text)")?;
        while pg.current_wal_insert_lsn()?.segment_number(SEG) < first_segno + segments as u64 {
            pg.psql(
                "INSERT INTO wide SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 2000) g;\
                 SELECT pg_logical_emit_message(false, 'test', repeat('m', 3000000))",
            )?;
        }
        pg.psql("SELECT pg_switch_wal()")?;
        let last_segno = pg.current_wal_insert_lsn()?.segment_number(SEG) - 1;
        let mut buf = BytesMut::new();
        for segno in first_segno..=last_segno {
            let path = pg.wal_dir().join(xlog_file_name(1, segno, SEG));
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            ensure!(
                bytes.len() == SEG as usize,
                "{} is not a full segment",
                path.display()
            );
            buf.extend_from_slice(&bytes);
        }
        let seg_start = Lsn(first_segno * u64::from(SEG));
        let cfg = DecoderConfig::new(pg_version, SEG, system_id);
        let mut d = WalStreamDecoder::new_at_segment_start(seg_start, cfg);
        d.feed(&buf);
        let mut end_of_records = seg_start;
        while let Ok(Some(r)) = d.next_record() {
            end_of_records = r.end_lsn;
        }
        let start = d
            .first_record_lsn()
            .context("no record in the first segment")?;
        let wal = buf.freeze().slice((start.0 - seg_start.0) as usize..);
        let dump = pg_waldump(
            &pg.wal_dir(),
            &xlog_file_name(1, first_segno, SEG),
            Some(&xlog_file_name(1, last_segno, SEG)),
            &[],
        )?;
        let record_starts = dump
            .records
            .iter()
            .map(|r| r.lsn)
            .filter(|&l| l >= start)
            .collect();
        Ok(RealWal {
            pg,
            cluster: Cluster {
                pg_version,
                system_id,
                wal_seg_size: SEG,
            },
            first_segno,
            last_segno,
            start,
            wal,
            record_starts,
            end_of_records,
        })
    }

    /// True if `lsn` is a record boundary in this WAL: a record start `pg_waldump` lists,
    /// the page boundary right before one (a record that ended exactly at a page end), or
    /// the end of the last complete record.
    pub fn is_record_boundary(&self, lsn: Lsn) -> bool {
        if lsn == self.end_of_records || self.record_starts.binary_search(&lsn).is_ok() {
            return true;
        }
        lsn.is_page_start() && {
            let hdr = utils::xlog::page::page_header_size_at(lsn, SEG) as u64;
            self.record_starts.binary_search(&Lsn(lsn.0 + hdr)).is_ok()
        }
    }

    /// The primary's bytes of `[from, to)` (inside the handed-out range).
    pub fn bytes(&self, from: Lsn, to: Lsn) -> &[u8] {
        let off = (from.0 - self.start.0) as usize;
        &self.wal[off..off + (to.0 - from.0) as usize]
    }
}

/// The bytes of `[from, to)` read from the segment files in `dir` (`.partial` or full).
pub fn read_wal_range(dir: &Path, from: Lsn, to: Lsn) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity((to.0 - from.0) as usize);
    let mut pos = from;
    while pos < to {
        let segno = pos.segment_number(SEG);
        let name = xlog_file_name(1, segno, SEG);
        let partial = dir.join(format!("{name}.partial"));
        let path = if partial.exists() {
            partial
        } else {
            dir.join(&name)
        };
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let off = pos.segment_offset(SEG);
        let n = ((to.0 - pos.0) as usize).min(SEG as usize - off);
        ensure!(bytes.len() >= off + n, "{} is short", path.display());
        out.extend_from_slice(&bytes[off..off + n]);
        pos = Lsn(pos.0 + n as u64);
    }
    Ok(out)
}

/// WAL made by [`WalGenerator`] (valid page headers, CRCs and `xl_prev` chain): for tests
/// that need WAL the acceptor accepts but not a PostgreSQL server, or WAL that diverges
/// from a real server's.
#[derive(Debug, Clone)]
pub struct GeneratedWal {
    /// LSN of the first byte.
    pub start: Lsn,
    /// The bytes.
    pub wal: Bytes,
    /// End of every record, in order (the record boundaries a flush_lsn may be).
    pub record_ends: Vec<Lsn>,
}

impl GeneratedWal {
    /// Appends logical-message records to `generator` until at least `min_bytes` are out.
    /// Message sizes cycle from a few bytes to 300 kB, so records span pages, segments'
    /// worth of pages and several AppendRequests.
    pub fn generate(generator: &mut WalGenerator, min_bytes: usize) -> anyhow::Result<Self> {
        const SIZES: [usize; 6] = [10, 3_000, 20_000, 100, 300_000, 9_000];
        let start = generator.position();
        let mut out = BytesMut::new();
        let mut record_ends = Vec::new();
        let mut i = 0;
        while out.len() < min_bytes {
            let size = SIZES[i % SIZES.len()];
            let body: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            let rec = generator.append_logical_message("acceptor_test", &body, &mut out)?;
            record_ends.push(rec.end_lsn);
            i += 1;
        }
        Ok(GeneratedWal {
            start,
            wal: out.freeze(),
            record_ends,
        })
    }

    /// End of the last record (= end of the bytes).
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.wal.len() as u64)
    }

    /// True if `lsn` is the start or the end of a record of this WAL.
    pub fn is_record_boundary(&self, lsn: Lsn) -> bool {
        lsn == self.start || self.record_ends.binary_search(&lsn).is_ok()
    }
}

/// Copies segments `first..=last` of a safekeeper's timeline directory into a new
/// directory under their final names (`.partial` preferred), where `pg_waldump -p` can
/// read them.
pub fn segments_for_waldump(
    dir: &Path,
    first: SegNo,
    last: SegNo,
) -> anyhow::Result<tempfile::TempDir> {
    let copy = tempfile::tempdir()?;
    for segno in first..=last {
        let name = xlog_file_name(1, segno, SEG);
        let partial = dir.join(format!("{name}.partial"));
        let src = if partial.exists() {
            partial
        } else {
            dir.join(&name)
        };
        std::fs::copy(&src, copy.path().join(&name))
            .with_context(|| format!("copy {}", src.display()))?;
    }
    Ok(copy)
}
