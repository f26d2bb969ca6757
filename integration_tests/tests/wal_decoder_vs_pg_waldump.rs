//! `utils::xlog` against PostgreSQL 15's own WAL reader (`pg_waldump`):
//! * WAL written by a real server (pgbench, wide rows, logical messages, switches, one
//!   record made to straddle a segment boundary) decodes to exactly the records
//!   `pg_waldump` lists, and a flipped byte is reported as a CRC mismatch at the same
//!   record by both;
//! * WAL written by `WalGenerator` after a `first_segment_image` is accepted by `pg_waldump`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use bytes::BytesMut;
use integration_tests::{PgCluster, PgOptions, Waldump, pg_waldump};
use utils::xlog::page::page_header_size_at;
use utils::xlog::{
    DEFAULT_WAL_SEG_SIZE, DecodeError, DecodedRecord, DecoderConfig, RM_LOGICALMSG_ID,
    SIZE_OF_XLOG_LONG_PHD, WalGenerator, WalStreamDecoder, first_segment_image,
    parse_xlog_file_name, xlog_file_name,
};
use utils::{Lsn, SegNo};

const SEG: u32 = DEFAULT_WAL_SEG_SIZE;

/// Consecutive complete segments of a WAL directory, from the lowest, with their bytes.
fn read_segments(dir: &Path) -> anyhow::Result<Vec<(SegNo, Vec<u8>)>> {
    let mut found: Vec<(SegNo, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((1, segno, false)) = parse_xlog_file_name(&name, SEG) {
            found.push((segno, entry.path()));
        }
    }
    found.sort();
    let mut out: Vec<(SegNo, Vec<u8>)> = Vec::new();
    for (segno, path) in found {
        if out.last().is_some_and(|(prev, _)| *prev + 1 != segno) {
            break;
        }
        out.push((segno, fs::read(&path)?));
    }
    ensure!(!out.is_empty(), "no WAL segments in {}", dir.display());
    Ok(out)
}

/// Decodes segments from the first record of the first one until the first error.
fn decode_segments(
    segments: &[(SegNo, Vec<u8>)],
    cfg: DecoderConfig,
) -> (Vec<DecodedRecord>, Option<DecodeError>) {
    let start = Lsn(segments[0].0 * u64::from(SEG));
    let mut d = WalStreamDecoder::new_at_segment_start(start, cfg);
    let mut records = Vec::new();
    for (_, bytes) in segments {
        for chunk in bytes.chunks(128 * 1024) {
            d.feed(chunk);
            loop {
                match d.next_record() {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => break,
                    Err(e) => return (records, Some(e)),
                }
            }
        }
    }
    (records, None)
}

/// Runs `pg_waldump` over all of `segments` in `dir`.
fn waldump_segments(dir: &Path, segments: &[(SegNo, Vec<u8>)]) -> anyhow::Result<Waldump> {
    let first = xlog_file_name(1, segments[0].0, SEG);
    let last = xlog_file_name(1, segments[segments.len() - 1].0, SEG);
    pg_waldump(dir, &first, Some(&last), &[])
}

/// Emits a logical message sized to cross the next segment boundary by about 3000 bytes.
/// Another backend's record slipping in between the size computation and the insert can
/// push the message past the boundary; then it is tried again.
fn emit_straddling_message(pg: &PgCluster) -> anyhow::Result<()> {
    for _ in 0..3 {
        let out = pg.psql(
            "with m as (select ((16777216 - ((pg_current_wal_insert_lsn() - '0/0'::pg_lsn) \
             % 16777216)) + 3000)::int as n) \
             select n, pg_logical_emit_message(false, 'straddle', repeat('s', n)) from m",
        )?;
        let (len, end) = out.split_once('|').context("psql output")?;
        let (len, end): (usize, Lsn) = (len.parse()?, end.parse()?);
        // The function returns the end of the record; if fewer bytes than the message
        // precede it in its segment, the record began in the previous one.
        if end.segment_offset(SEG) < len {
            return Ok(());
        }
    }
    anyhow::bail!("could not place a logical message across a segment boundary")
}

/// True if `r` is an ordinary record whose bytes span a segment boundary.
fn straddles(r: &DecodedRecord) -> bool {
    !r.is_switch && r.start_lsn.segment_number(SEG) != Lsn(r.end_lsn.0 - 1).segment_number(SEG)
}

#[test]
fn decoder_agrees_with_pg_waldump_on_real_wal() -> anyhow::Result<()> {
    let mut pg = PgCluster::init(PgOptions {
        // Deterministic end of WAL: fresh, zero-filled segments, never recycled ones.
        extra_conf: vec!["wal_recycle = off".into(), "autovacuum = off".into()],
        ..PgOptions::default()
    })?;
    pg.start()?;
    pg.pgbench(&["-i", "-s", "2", "-q"])?;
    pg.psql(
        "create table wide (id int, payload text);
         alter table wide alter column payload set storage external;
         insert into wide select g, repeat(md5(g::text), 200) from generate_series(1, 300) g;
         select pg_switch_wal();
         insert into wide values (0, repeat('w', 7000));
         select pg_logical_emit_message(false, 'big', repeat('m', 50000));
         select pg_switch_wal();
         insert into wide select g, repeat('y', 3000) from generate_series(1, 20) g;",
    )?;
    emit_straddling_message(&pg)?;
    pg.psql(
        "insert into wide select g, repeat('z', 2500) from generate_series(1, 50) g;
         select pg_switch_wal();
         checkpoint;",
    )?;
    let sysid = pg.system_id()?;
    pg.stop()?;

    let wal_dir = pg.wal_dir();
    let segments = read_segments(&wal_dir)?;
    let cfg = DecoderConfig {
        pg_major: 15,
        wal_seg_size: SEG,
        system_id: Some(sysid),
    };
    let (records, err) = decode_segments(&segments, cfg);
    let dump = waldump_segments(&wal_dir, &segments)?;
    eprintln!(
        "{} segments, decoder: {} records, stopped by {err:?}; pg_waldump: {} records, {}",
        segments.len(),
        records.len(),
        dump.records.len(),
        dump.stderr.trim()
    );

    // Same records, in order, up to where both stop (the end of WAL, zeros after it).
    ensure!(dump.records.len() > 1000, "too little WAL: {}", dump.stderr);
    let common = records.len().min(dump.records.len());
    for (i, (ours, theirs)) in records.iter().zip(&dump.records).enumerate() {
        ensure!(
            (ours.start_lsn, ours.total_len, ours.xl_prev, ours.xl_xid)
                == (theirs.lsn, theirs.tot_len, theirs.prev, theirs.xid),
            "record #{i} differs: ours {ours:?}, pg_waldump {theirs:?}"
        );
        ensure!(ours.is_switch == (theirs.rmgr == "XLOG" && theirs.desc.starts_with("SWITCH")));
    }
    ensure!(
        records.len() == dump.records.len(),
        "decoder found {} records, pg_waldump {} (first {common} agree); decoder stopped by \
         {err:?}, pg_waldump by: {}",
        records.len(),
        dump.records.len(),
        dump.stderr.trim()
    );
    match err {
        Some(DecodeError::InvalidRecordLength { lsn, len: 0 }) => {
            ensure!(
                Some(lsn) == records.last().map(|r| r.end_lsn),
                "end of WAL at {lsn}"
            );
        }
        other => anyhow::bail!("decoder did not stop at zeroed space: {other:?}"),
    }
    ensure!(
        dump.stderr.contains("invalid record length"),
        "pg_waldump: {}",
        dump.stderr
    );

    // The interesting shapes are really there.
    let straddler = records
        .iter()
        .find(|r| straddles(r) && r.xl_rmid == RM_LOGICALMSG_ID)
        .context("the logical message does not span a segment boundary")?;
    ensure!(
        straddler.start_lsn.segment_offset(SEG) > 8192,
        "{straddler:?} starts too early"
    );
    let others = records.iter().filter(|r| straddles(r)).count() - 1;
    eprintln!("message spanning a segment boundary: {straddler:?} (and {others} other records)");
    let switches: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].is_switch)
        .collect();
    ensure!(
        switches.len() >= 3,
        "expected XLOG_SWITCH records, found {}",
        switches.len()
    );
    for &i in &switches {
        let sw = &records[i];
        ensure!(
            sw.end_lsn.is_segment_start(SEG),
            "switch {sw:?} does not end at a segment"
        );
        if let Some(next) = records.get(i + 1) {
            ensure!(next.start_lsn == Lsn(sw.end_lsn.0 + SIZE_OF_XLOG_LONG_PHD as u64));
        }
    }

    // A flipped byte: inside a record that fits in one page, then in the second segment's
    // part of the straddling record. Both tools report that record.
    let small = records
        .iter()
        .skip(10)
        .find(|r| r.total_len >= 64 && r.start_lsn.page_offset() + (r.total_len as usize) < 8000)
        .context("no small record")?;
    // The record's last bytes are past the next segment's long header (the end is at least
    // one MAXALIGNed step past it), and its raw end is within 8 bytes of `end_lsn`.
    let far_part = Lsn(straddler.end_lsn.0 - 8);
    for (victim, byte) in [(small, Lsn(small.start_lsn.0 + 30)), (straddler, far_part)] {
        check_flipped_byte(&segments, cfg, victim, byte)?;
    }
    Ok(())
}

/// Copies the segments with the byte at `byte` flipped; decoder and pg_waldump must both
/// report a CRC mismatch at `victim`, after decoding every record before it.
fn check_flipped_byte(
    segments: &[(SegNo, Vec<u8>)],
    cfg: DecoderConfig,
    victim: &DecodedRecord,
    byte: Lsn,
) -> anyhow::Result<()> {
    ensure!(
        byte.page_offset() >= page_header_size_at(byte, SEG),
        "{byte} is in a page header"
    );
    let mut copy = segments.to_vec();
    let seg = copy
        .iter_mut()
        .find(|(segno, _)| *segno == byte.segment_number(SEG))
        .context("segment of the byte")?;
    seg.1[byte.segment_offset(SEG)] ^= 0x20;
    let (records, err) = decode_segments(&copy, cfg);
    ensure!(
        err == Some(DecodeError::CrcMismatch {
            lsn: victim.start_lsn
        }),
        "flipping {byte}: expected a CRC mismatch at {}, got {err:?}",
        victim.start_lsn
    );
    ensure!(
        records
            .last()
            .is_some_and(|r| r.end_lsn <= victim.start_lsn)
    );

    let dir = tempfile::tempdir()?;
    for (segno, bytes) in &copy {
        fs::write(dir.path().join(xlog_file_name(1, *segno, SEG)), bytes)?;
    }
    let dump = waldump_segments(dir.path(), &copy)?;
    let want = format!(
        "incorrect resource manager data checksum in record at {}",
        victim.start_lsn
    );
    ensure!(
        dump.stderr.contains(&want),
        "pg_waldump said: {}",
        dump.stderr
    );
    Ok(())
}

#[test]
fn pg_waldump_accepts_generated_wal_after_the_first_segment_image() -> anyhow::Result<()> {
    let sysid = 7_234_567_890_123_456_789;
    // Late in segment 1, past a page header: the image pretends a continuation record.
    let start = Lsn(0x1FF_A000 + 0x238);
    let image = first_segment_image(start, SEG, sysid, 15)?;
    let mut wal = BytesMut::from(&image[..]);
    let mut g = WalGenerator::new(start, sysid, SEG, 15)?;
    let mut written = Vec::new();
    for size in [0, 10, 300, 5000, 8200, 40_000, 100] {
        written.push(g.append_logical_message("gen", &vec![b'g'; size], &mut wal)?);
    }
    written.extend(g.append_switch(&mut wal)?);
    for size in [1, 20_000, 7] {
        written.push(g.append_logical_message("after-switch", &vec![b'h'; size], &mut wal)?);
    }
    let end = g.position();
    ensure!(end.segment_number(SEG) == 3, "generated WAL ends at {end}");

    let dir = tempfile::tempdir()?;
    wal.resize(3 * SEG as usize, 0);
    for (i, segment) in wal.chunks(SEG as usize).enumerate() {
        fs::write(
            dir.path().join(xlog_file_name(1, 1 + i as u64, SEG)),
            segment,
        )?;
    }
    let dump = pg_waldump(
        dir.path(),
        &xlog_file_name(1, 1, SEG),
        Some(&xlog_file_name(1, 3, SEG)),
        &["-s", &start.to_string()],
    )?;
    let theirs: Vec<(Lsn, u32)> = dump.records.iter().map(|r| (r.lsn, r.tot_len)).collect();
    let ours: Vec<(Lsn, u32)> = written.iter().map(|r| (r.start_lsn, r.total_len)).collect();
    ensure!(
        theirs == ours,
        "pg_waldump read {theirs:?}\nwe wrote {ours:?}\n{}",
        dump.stderr
    );
    ensure!(
        dump.records
            .iter()
            .filter(|r| r.rmgr == "LogicalMessage")
            .count()
            == ours.len() - 1
    );
    ensure!(
        dump.stderr.contains("invalid record length"),
        "{}",
        dump.stderr
    );

    // Our decoder, from the segment start, finds the first record exactly at `start`.
    let segments: Vec<(SegNo, Vec<u8>)> = wal
        .chunks(SEG as usize)
        .enumerate()
        .map(|(i, s)| (1 + i as u64, s.to_vec()))
        .collect();
    let cfg = DecoderConfig {
        pg_major: 15,
        wal_seg_size: SEG,
        system_id: Some(sysid),
    };
    let (records, err) = decode_segments(&segments, cfg);
    let decoded: Vec<(Lsn, u32)> = records.iter().map(|r| (r.start_lsn, r.total_len)).collect();
    ensure!(decoded == ours, "decoded {decoded:?}");
    ensure!(
        matches!(err, Some(DecodeError::InvalidRecordLength { len: 0, .. })),
        "{err:?}"
    );
    Ok(())
}
