//! Decoder tests of each check: CRC, page headers, long headers, continuations, the end
//! of WAL, unusable starts and configurations, LSN overflow.

use bytes::BytesMut;

use super::tests::{SEG, START, SYSID, Wal, cfg, decode};
use super::*;
use crate::xlog::page::{XLogLongPageHeader, XLogPageHeader};
use crate::xlog::{XLOG_BLCKSZ, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};

#[test]
fn flipped_byte_is_a_crc_mismatch_at_the_record_start() {
    let mut wal = Wal::new(START);
    wal.record(50);
    let victim = wal.record(20_000);
    wal.record(50);
    // A body byte on the record's second page, then a header byte (xl_prev).
    for at in [
        wal.at(victim.start_lsn) + 9000,
        wal.at(victim.start_lsn) + 9,
    ] {
        let mut bytes = wal.bytes.clone();
        bytes[at] ^= 0x01;
        for chunk in [1, 8192] {
            let (recs, err) = decode(WalStreamDecoder::new(START, cfg()), &bytes, chunk);
            assert_eq!(recs.len(), 1);
            assert_eq!(
                err,
                Some(DecodeError::CrcMismatch {
                    lsn: victim.start_lsn
                })
            );
        }
    }
}

/// Rewrites the page header at `page` of `wal` with `edit`.
fn edit_header(wal: &Wal, page: Lsn, edit: impl Fn(&mut XLogLongPageHeader)) -> BytesMut {
    let mut bytes = wal.bytes.clone();
    let at = wal.at(page);
    let mut h = XLogLongPageHeader::decode(&bytes[at..]).unwrap();
    edit(&mut h);
    let len = if page.is_segment_start(SEG) { 40 } else { 24 };
    let raw = h.to_bytes();
    bytes[at..at + len].copy_from_slice(&raw[..len]);
    bytes
}

/// Decodes whole and one byte at a time; both must stop with `want`.
fn assert_fails(start: Lsn, cfg: DecoderConfig, bytes: &[u8], want: DecodeError) {
    for chunk in [1, usize::MAX] {
        let (_, err) = decode(WalStreamDecoder::new(start, cfg), bytes, chunk);
        assert_eq!(err.as_ref(), Some(&want), "chunk {chunk}");
    }
}

#[test]
fn page_header_checks() {
    let mut wal = Wal::new(Lsn(0x10_0000));
    wal.record(30_000); // continues onto pages 1, 2 and 3
    wal.record(10);
    let page1 = Lsn(0x10_2000);
    let seg0 = Lsn(0x10_0000);
    let bad = edit_header(&wal, page1, |h| h.std.pageaddr = Lsn(0x0F_2000));
    let want = DecodeError::UnexpectedPageAddr {
        lsn: page1,
        seg_size: SEG,
        pageaddr: Lsn(0x0F_2000),
    };
    assert_fails(seg0, cfg(), &bad, want);

    let bad = edit_header(&wal, page1, |h| h.std.magic = 0xD10D);
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::InvalidMagic {
            lsn: page1,
            seg_size: SEG,
            magic: 0xD10D,
        },
    );
    let pg16 = DecoderConfig {
        pg_major: 16,
        ..cfg()
    };
    assert_fails(
        seg0,
        pg16,
        &wal.bytes,
        DecodeError::InvalidMagic {
            lsn: seg0,
            seg_size: SEG,
            magic: 0xD110,
        },
    );
    // Unknown version: the first page's magic is adopted, then held.
    let any = DecoderConfig {
        pg_major: 0,
        ..cfg()
    };
    assert_eq!(
        decode(WalStreamDecoder::new(seg0, any), &wal.bytes, 1).1,
        None
    );
    assert_fails(
        seg0,
        any,
        &bad,
        DecodeError::InvalidMagic {
            lsn: page1,
            seg_size: SEG,
            magic: 0xD10D,
        },
    );

    let bad = edit_header(&wal, page1, |h| h.std.info |= 0x10);
    let info = XLP_FIRST_IS_CONTRECORD | 0x10;
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::InvalidInfoBits {
            lsn: page1,
            seg_size: SEG,
            info,
        },
    );
    let bad = edit_header(&wal, page1, |h| h.std.info |= XLP_LONG_HEADER);
    let info = XLP_FIRST_IS_CONTRECORD | XLP_LONG_HEADER;
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::InvalidInfoBits {
            lsn: page1,
            seg_size: SEG,
            info,
        },
    );
    let bad = edit_header(&wal, seg0, |h| h.std.info = 0);
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::InvalidInfoBits {
            lsn: seg0,
            seg_size: SEG,
            info: 0,
        },
    );
    // XLP_BKP_REMOVABLE is set on most real pages.
    let ok = edit_header(&wal, page1, |h| h.std.info |= XLP_BKP_REMOVABLE);
    assert_eq!(decode(WalStreamDecoder::new(seg0, cfg()), &ok, 1).1, None);
}

#[test]
fn long_header_checks() {
    let mut wal = Wal::new(Lsn(0x10_0000));
    wal.record(10);
    let seg0 = Lsn(0x10_0000);
    let bad = edit_header(&wal, seg0, |h| h.sysid = 1);
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::SystemIdMismatch {
            lsn: seg0,
            found: 1,
            expected: SYSID,
        },
    );
    let unknown_sysid = DecoderConfig {
        system_id: None,
        ..cfg()
    };
    assert_eq!(
        decode(WalStreamDecoder::new(seg0, unknown_sysid), &bad, 1).1,
        None
    );
    let bad = edit_header(&wal, seg0, |h| h.seg_size = 2 * SEG);
    let want = DecodeError::SegmentSizeMismatch {
        lsn: seg0,
        found: 2 * SEG,
        expected: SEG,
    };
    assert_fails(seg0, cfg(), &bad, want);
    let bad = edit_header(&wal, seg0, |h| h.xlog_blcksz = 4096);
    assert_fails(
        seg0,
        cfg(),
        &bad,
        DecodeError::BlockSizeMismatch {
            lsn: seg0,
            found: 4096,
        },
    );
}

#[test]
fn continuation_checks() {
    let mut wal = Wal::new(START);
    let big = wal.record(20_000);
    let page = Lsn(wal.g.position().page_lsn().0 + 0x2000);
    wal.record_ending_at(page);
    wal.record(10);
    let page1 = Lsn(0x10_2000);
    let bad = edit_header(&wal, page1, |h| h.std.info &= !XLP_FIRST_IS_CONTRECORD);
    assert_fails(
        START,
        cfg(),
        &bad,
        DecodeError::MissingContrecord { lsn: page1 },
    );
    let rem = big.total_len - (0x2000 - 0x28);
    let bad = edit_header(&wal, page1, |h| h.std.rem_len += 1);
    let want = DecodeError::ContrecordLengthMismatch {
        lsn: page1,
        rem_len: rem + 1,
        expected: rem.into(),
    };
    assert_fails(START, cfg(), &bad, want);
    // The record before `page` ends exactly at it: no continuation there.
    let bad = edit_header(&wal, page, |h| {
        h.std.info |= XLP_FIRST_IS_CONTRECORD;
        h.std.rem_len = 8;
    });
    assert_fails(
        START,
        cfg(),
        &bad,
        DecodeError::UnexpectedContrecord { lsn: page },
    );
}

#[test]
fn zeros_after_the_last_record_end_the_wal() {
    let mut wal = Wal::new(START);
    wal.record(10);
    let last = wal.record(9000);
    let mut bytes = wal.bytes.clone();
    bytes.resize(bytes.len() + 3 * XLOG_BLCKSZ, 0);
    for chunk in [1, usize::MAX] {
        let (recs, err) = decode(WalStreamDecoder::new(START, cfg()), &bytes, chunk);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            err,
            Some(DecodeError::InvalidRecordLength {
                lsn: last.end_lsn,
                len: 0
            })
        );
    }
    let mut d = WalStreamDecoder::new(START, cfg());
    d.feed(&bytes);
    while let Ok(Some(_)) = d.next_record() {}
    assert_eq!(d.last_record_end(), last.end_lsn);
    assert!(d.error().is_some());
    // The error repeats.
    assert!(d.next_record().is_err());

    let mut bytes = wal.bytes.clone();
    bytes.extend_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
    let (_, err) = decode(WalStreamDecoder::new(START, cfg()), &bytes, 1);
    assert_eq!(
        err,
        Some(DecodeError::RecordTooLong {
            lsn: last.end_lsn,
            len: MAX_RECORD_LEN + 1
        })
    );
}

#[test]
fn unusable_starts_and_configurations_are_reported() {
    for bad in [Lsn(0x10_0004), Lsn(0x10_0020), Lsn(0x10_2010)] {
        let mut d = WalStreamDecoder::new(bad, cfg());
        d.feed(&[0; 100]);
        assert_eq!(
            d.next_record(),
            Err(DecodeError::InvalidStartLsn { lsn: bad })
        );
    }
    let mut d = WalStreamDecoder::new_at_segment_start(START, cfg());
    assert_eq!(
        d.next_record(),
        Err(DecodeError::InvalidStartLsn { lsn: START })
    );
    let mut d = WalStreamDecoder::new(
        START,
        DecoderConfig {
            wal_seg_size: 5000,
            ..cfg()
        },
    );
    assert_eq!(
        d.next_record(),
        Err(DecodeError::InvalidSegmentSize { seg_size: 5000 })
    );
    let mut d = WalStreamDecoder::new(START, DecoderConfig::new(130_004, SEG, SYSID));
    assert_eq!(
        d.next_record(),
        Err(DecodeError::UnsupportedPgVersion { pg_major: 13 })
    );
    assert_eq!(
        DecoderConfig::new(150_004, SEG, 0),
        DecoderConfig {
            system_id: None,
            ..cfg()
        }
    );
}

#[test]
fn lsn_overflow_is_an_error() {
    // The last page of the LSN space, filled by one record up to its very end.
    let page = Lsn(u64::MAX - (XLOG_BLCKSZ as u64 - 1));
    let std = XLogPageHeader {
        magic: 0xD110,
        info: 0,
        tli: 1,
        pageaddr: page,
        rem_len: 0,
    };
    let mut bytes = std.to_bytes().to_vec();
    let body = vec![0u8; XLOG_BLCKSZ - 24 - 24];
    let header = XLogRecordHeader {
        tot_len: (XLOG_BLCKSZ - 24) as u32,
        xid: 0,
        prev: Lsn(0),
        info: 0,
        rmid: 0,
        crc: 0,
    }
    .with_crc_for(&body);
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(&body);
    let (recs, err) = decode(WalStreamDecoder::new(page, cfg()), &bytes, usize::MAX);
    assert!(recs.is_empty());
    assert!(
        matches!(err, Some(DecodeError::LsnOverflow { .. })),
        "{err:?}"
    );
}
