//! Decoder tests on synthetic WAL laid out by [`WalGenerator`]: record placement across
//! pages and segments, XLOG_SWITCH, and one test per check the decoder makes.

use bytes::BytesMut;

use super::*;
use crate::xlog::RM_LOGICALMSG_ID;
use crate::xlog::writer::{GeneratedRecord, WalGenerator};

/// 1 MiB segments keep multi-segment tests small.
pub(super) const SEG: u32 = 1 << 20;
pub(super) const SYSID: u64 = 0xABCD_0001;
/// Right after the long header of segment 1.
pub(super) const START: Lsn = Lsn(0x10_0028);

pub(super) fn cfg() -> DecoderConfig {
    DecoderConfig {
        pg_major: 15,
        wal_seg_size: SEG,
        system_id: Some(SYSID),
    }
}

/// Generated WAL: the bytes from `start` and where each record landed.
pub(super) struct Wal {
    pub start: Lsn,
    pub bytes: BytesMut,
    pub records: Vec<GeneratedRecord>,
    pub g: WalGenerator,
}

impl Wal {
    pub fn new(start: Lsn) -> Self {
        let g = WalGenerator::new(start, SYSID, SEG, 15).unwrap();
        Wal {
            start,
            bytes: BytesMut::new(),
            records: Vec::new(),
            g,
        }
    }

    /// Appends a record with a body of `body_len` bytes.
    pub fn record(&mut self, body_len: usize) -> GeneratedRecord {
        let body: Vec<u8> = (0..body_len).map(|i| (i * 7 + 3) as u8).collect();
        let r = self
            .g
            .append_record(RM_LOGICALMSG_ID, 0, 9, &body, &mut self.bytes)
            .unwrap();
        self.records.push(r);
        r
    }

    /// Appends a record ending exactly at `target` (on the current page, ≥ 24 bytes away).
    pub fn record_ending_at(&mut self, target: Lsn) -> GeneratedRecord {
        let len = target.distance_from(self.g.position()).unwrap() as usize;
        let r = self.record(len - 24);
        assert_eq!(r.end_lsn, target);
        r
    }

    pub fn switch(&mut self) -> GeneratedRecord {
        let r = self.g.append_switch(&mut self.bytes).unwrap().unwrap();
        self.records.push(r);
        r
    }

    /// Index into `bytes` of an LSN.
    pub fn at(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start.0) as usize
    }
}

/// Feeds `bytes` in chunks of `chunk` bytes; returns the records and the error, if any.
pub(super) fn decode(
    mut d: WalStreamDecoder,
    bytes: &[u8],
    chunk: usize,
) -> (Vec<DecodedRecord>, Option<DecodeError>) {
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece);
        loop {
            match d.next_record() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn starts_and_ends(recs: &[DecodedRecord]) -> Vec<(Lsn, Lsn, u32)> {
    recs.iter()
        .map(|r| (r.start_lsn, r.end_lsn, r.total_len))
        .collect()
}

fn expected(wal: &Wal) -> Vec<(Lsn, Lsn, u32)> {
    wal.records
        .iter()
        .map(|r| (r.start_lsn, r.end_lsn, r.total_len))
        .collect()
}

fn assert_decodes(wal: &Wal, chunk: usize) {
    let (recs, err) = decode(WalStreamDecoder::new(wal.start, cfg()), &wal.bytes, chunk);
    assert_eq!(err, None);
    assert_eq!(starts_and_ends(&recs), expected(wal), "chunk {chunk}");
}

#[test]
fn one_byte_at_a_time_across_pages_and_segments() {
    let mut wal = Wal::new(START);
    for len in [0, 1, 7, 100, 8000, 20000, 300, 1_500_000, 16, 9000] {
        wal.record(len);
    }
    assert!(wal.g.position().segment_number(SEG) >= 2);
    for chunk in [1, 7, 8192, 100_000, usize::MAX] {
        assert_decodes(&wal, chunk);
    }
    let (recs, _) = decode(WalStreamDecoder::new(START, cfg()), &wal.bytes, 1);
    assert!(
        recs.iter()
            .all(|r| r.xl_rmid == RM_LOGICALMSG_ID && r.xl_xid == 9 && !r.is_switch)
    );
    assert_eq!(recs[1].xl_prev, recs[0].start_lsn);
}

#[test]
fn record_spanning_two_segment_boundaries() {
    let mut wal = Wal::new(START);
    let big = wal.record(2 * SEG as usize + 5000);
    let next = wal.record(10);
    assert_eq!(big.end_lsn.segment_number(SEG), 3);
    let mut d = WalStreamDecoder::new(START, cfg());
    d.feed(&wal.bytes);
    assert_eq!(d.next_record().unwrap().unwrap().end_lsn, big.end_lsn);
    assert_eq!(d.last_record_end(), big.end_lsn);
    assert_eq!(d.next_record().unwrap().unwrap().start_lsn, next.start_lsn);
    assert_eq!(d.next_record(), Ok(None));
    assert_eq!(d.position(), next.end_lsn);
}

#[test]
fn record_header_split_across_page_and_segment_boundaries() {
    for back in [8u64, 16] {
        let mut across_page = Wal::new(START);
        across_page.record_ending_at(Lsn(0x10_2000 - back));
        let split = across_page.record(50);
        assert_eq!(split.start_lsn, Lsn(0x10_2000 - back));
        across_page.record(10);

        let mut across_segment = Wal::new(Lsn(0x1F_E028));
        across_segment.record_ending_at(Lsn(0x20_0000 - back));
        let split = across_segment.record(0);
        assert_eq!(split.start_lsn, Lsn(0x20_0000 - back));
        across_segment.record(10);

        for chunk in [1, 3, 8192] {
            assert_decodes(&across_page, chunk);
            assert_decodes(&across_segment, chunk);
        }
    }
}

#[test]
fn starts_mid_page_at_page_start_and_at_segment_start() {
    for start in [
        Lsn(0x10_0100),
        Lsn(0x10_2000),
        Lsn(0x10_2018),
        Lsn(0x20_0000),
    ] {
        let mut wal = Wal::new(start);
        wal.record(10);
        wal.record(10_000);
        assert_decodes(&wal, 1);
        let d = WalStreamDecoder::new(start, cfg());
        assert_eq!(d.last_record_end(), start);
        assert_eq!(d.first_record_lsn(), Some(wal.records[0].start_lsn));
    }
}

#[test]
fn xlog_switch_ends_at_next_segment_and_skips_the_rest() {
    let mut wal = Wal::new(START);
    wal.record(100);
    let sw = wal.switch();
    assert_eq!(sw.end_lsn, Lsn(0x20_0000));
    let after = wal.record(10);
    assert_eq!(after.start_lsn, Lsn(0x20_0028));
    // The padding is not validated: make it garbage (Postgres zeroes it, headers included).
    let pad = wal.at(sw.start_lsn) + 24;
    let pad_end = wal.at(sw.end_lsn);
    wal.bytes[pad..pad_end].fill(0xEE);
    for chunk in [1, 4096, usize::MAX] {
        let (recs, err) = decode(WalStreamDecoder::new(START, cfg()), &wal.bytes, chunk);
        assert_eq!(err, None);
        assert_eq!(starts_and_ends(&recs), expected(&wal));
        assert!(recs[1].is_switch && recs[1].xl_rmid == 0 && recs[1].xl_info == 0x40);
    }
}

#[test]
fn xlog_switch_straddling_a_segment_boundary_consumes_the_next_segment() {
    let mut wal = Wal::new(Lsn(0x1F_E028));
    wal.record_ending_at(Lsn(0x20_0000 - 8));
    let sw = wal.switch();
    assert_eq!(sw.start_lsn, Lsn(0x20_0000 - 8));
    assert_eq!(sw.end_lsn, Lsn(0x30_0000));
    wal.record(5);
    assert_decodes(&wal, 1);
    assert_decodes(&wal, 65536);
}

#[test]
fn segment_start_mode_skips_a_continuation_over_several_pages() {
    // A record from segment 1 that ends on page 3 of segment 2.
    let mut wal = Wal::new(Lsn(0x1F_E028));
    let straddler = wal.record(8192 * 4);
    let next = wal.record(100);
    wal.record(5);
    let seg2 = Lsn(0x20_0000);
    assert!(straddler.end_lsn > Lsn(seg2.0 + 2 * 0x2000));
    let tail = &wal.bytes[wal.at(seg2)..];
    for chunk in [1, 8192] {
        let (recs, err) = decode(
            WalStreamDecoder::new_at_segment_start(seg2, cfg()),
            tail,
            chunk,
        );
        assert_eq!(err, None);
        assert_eq!(starts_and_ends(&recs), expected(&wal)[1..].to_vec());
    }
    let mut d = WalStreamDecoder::new_at_segment_start(seg2, cfg());
    assert_eq!(
        (d.first_record_lsn(), d.last_record_end()),
        (None, Lsn::INVALID)
    );
    d.feed(&tail[..40]);
    assert_eq!(d.first_record_lsn(), None);
    d.feed(&tail[40..]);
    assert_eq!(d.first_record_lsn(), Some(next.start_lsn));
    assert_eq!(d.last_record_end(), next.start_lsn);
}

#[test]
fn segment_start_mode_continuation_ending_at_a_page_end() {
    let seg2 = Lsn(0x20_0000);
    let target = Lsn(seg2.0 + 0x6000);
    let mut wal = Wal::new(Lsn(0x1F_E028));
    // Grow the record until it ends exactly at `target`.
    let mut body = 8192 * 3;
    loop {
        let mut probe = WalGenerator::new(wal.start, SYSID, SEG, 15).unwrap();
        let r = probe
            .append_record(0, 0, 0, &vec![0; body], &mut BytesMut::new())
            .unwrap();
        if r.end_lsn == target {
            break;
        }
        let deficit = target
            .0
            .checked_sub(r.end_lsn.0)
            .expect("record overshot the page end");
        body += deficit as usize;
    }
    wal.record(body);
    let next = wal.record(10);
    assert_eq!(next.start_lsn, Lsn(target.0 + 24));
    let tail = &wal.bytes[wal.at(seg2)..];
    let (recs, err) = decode(WalStreamDecoder::new_at_segment_start(seg2, cfg()), tail, 1);
    assert_eq!((recs.len(), err), (1, None));
    assert_eq!(recs[0].start_lsn, next.start_lsn);
    // And a segment without a continuation: the first record follows the long header.
    let mut wal = Wal::new(seg2);
    wal.record(10);
    let d = decode(
        WalStreamDecoder::new_at_segment_start(seg2, cfg()),
        &wal.bytes,
        1,
    );
    assert_eq!(d.0[0].start_lsn, Lsn(seg2.0 + 40));
}
