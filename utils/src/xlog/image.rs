//! The synthetic image of the part of a timeline's first segment that precedes its start.
//!
//! A timeline that starts mid-segment has no WAL before its start LSN, yet Postgres tools
//! (`pg_waldump`, a standby's startup) expect a segment to begin with a long page header
//! and every page to have a header. The image supplies them: a long header at offset 0 and
//! a short header on each later page up to the start, all pretending one continuation
//! record that ends exactly at the start, so both Postgres and
//! [`WalStreamDecoder::new_at_segment_start`](crate::xlog::WalStreamDecoder::new_at_segment_start)
//! find the first real record at the start. Everything else is zero.
//!
//! Owns: that image. Must never: write files (the caller does, before the first WAL byte).

use crate::Lsn;
use crate::xlog::constants::{
    PG_TLI, XLOG_BLCKSZ, XLOG_BLCKSZ_U64, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
    is_valid_seg_size, page_magic,
};
use crate::xlog::decoder::DecodeError;
use crate::xlog::page::{
    XLogLongPageHeader, XLogPageHeader, is_valid_stream_start, page_header_size_at,
};

/// The bytes `[segment start of start, start)` of a timeline's first segment (empty when
/// `start` is a segment start). `start` must be a record boundary: MAXALIGNed, and a page
/// start or past its page's header.
///
/// Unlike Neon's image, which leaves the pages between the first one and the start's page
/// all zero, every page here has a header, so the segment can be decoded from its start.
pub fn first_segment_image(
    start: Lsn,
    seg_size: u32,
    system_id: u64,
    pg_major: u32,
) -> Result<Vec<u8>, DecodeError> {
    if !is_valid_seg_size(seg_size) {
        return Err(DecodeError::InvalidSegmentSize { seg_size });
    }
    let magic = page_magic(pg_major).ok_or(DecodeError::UnsupportedPgVersion { pg_major })?;
    if !is_valid_stream_start(start, seg_size) {
        return Err(DecodeError::InvalidStartLsn { lsn: start });
    }
    let seg_start = start.segment_lsn(seg_size);
    let len = start.segment_offset(seg_size);
    let mut image = vec![0u8; len];
    // Walk the pages before `start` backwards, counting the pretend record's bytes that
    // follow each page's header: that is the page's xlp_rem_len.
    let mut rem_len: u64 = 0;
    let pages = len.div_ceil(XLOG_BLCKSZ);
    for page_no in (0..pages).rev() {
        let page_off = page_no * XLOG_BLCKSZ;
        let page = Lsn(seg_start.0 + (page_no as u64) * XLOG_BLCKSZ_U64);
        let header_len = page_header_size_at(page, seg_size);
        let data_end = len.min(page_off + XLOG_BLCKSZ);
        rem_len += (data_end - page_off - header_len) as u64;
        let std = XLogPageHeader {
            magic,
            info: if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            },
            tli: PG_TLI,
            pageaddr: page,
            // At most one segment (1 GiB) of pretend record: always fits.
            rem_len: u32::try_from(rem_len).unwrap_or(u32::MAX),
        };
        let out = &mut image[page_off..page_off + header_len];
        let written = if page_no == 0 {
            let long = XLogLongPageHeader {
                std: XLogPageHeader {
                    info: std.info | XLP_LONG_HEADER,
                    ..std
                },
                sysid: system_id,
                seg_size,
                xlog_blcksz: XLOG_BLCKSZ as u32,
            };
            long.encode(out)
        } else {
            std.encode(out)
        };
        // The slice has exactly the header's length.
        debug_assert!(written.is_ok());
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlog::{
        DEFAULT_WAL_SEG_SIZE, DecoderConfig, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD,
        WalGenerator, WalStreamDecoder,
    };
    use bytes::BytesMut;

    const SEG: u32 = DEFAULT_WAL_SEG_SIZE;
    const SYSID: u64 = 0x1122_3344_5566_7788;

    fn cfg() -> DecoderConfig {
        DecoderConfig {
            pg_major: 15,
            wal_seg_size: SEG,
            system_id: Some(SYSID),
        }
    }

    /// Decodes image + generated records from the segment start; returns the record LSNs.
    fn decode_after_image(start: Lsn) -> (Option<Lsn>, Vec<Lsn>, Vec<Lsn>) {
        let image = first_segment_image(start, SEG, SYSID, 15).unwrap();
        assert_eq!(image.len() as u64, start.0 - start.segment_lsn(SEG).0);
        let mut g = WalGenerator::new(start, SYSID, SEG, 15).unwrap();
        let mut wal = BytesMut::new();
        let mut written = Vec::new();
        for size in [10, 9000, 50] {
            written.push(
                g.append_logical_message("t", &vec![1; size], &mut wal)
                    .unwrap()
                    .start_lsn,
            );
        }
        let mut d = WalStreamDecoder::new_at_segment_start(start.segment_lsn(SEG), cfg());
        d.feed(&image);
        d.feed(&wal);
        let mut got = Vec::new();
        while let Some(r) = d.next_record().unwrap() {
            got.push(r.start_lsn);
        }
        (d.first_record_lsn(), got, written)
    }

    #[test]
    fn decoder_finds_first_record_at_start() {
        for start in [
            0x100_0028u64, // right after the long header
            0x100_0100,    // mid first page
            0x100_2000,    // a later page start
            0x100_2018,    // right after a short header
            0x100_5ff8,    // end of a later page
            0x1FF_E100,    // last page of the segment
        ] {
            let start = Lsn(start);
            let (first, got, written) = decode_after_image(start);
            let expected_first = if start.is_page_start() {
                Lsn(start.0 + 24)
            } else {
                start
            };
            assert_eq!(first, Some(expected_first), "start {start}");
            assert_eq!(got, written, "start {start}");
        }
    }

    #[test]
    fn image_layout() {
        assert!(
            first_segment_image(Lsn(0x100_0000), SEG, SYSID, 15)
                .unwrap()
                .is_empty()
        );
        let img = first_segment_image(Lsn(0x100_0100), SEG, SYSID, 15).unwrap();
        let h = XLogLongPageHeader::decode(&img).unwrap();
        assert_eq!(h.std.magic, 0xD110);
        assert_eq!(h.std.info, XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD);
        assert_eq!(h.std.pageaddr, Lsn(0x100_0000));
        assert_eq!(h.std.rem_len as usize, 0x100 - SIZE_OF_XLOG_LONG_PHD);
        assert_eq!((h.sysid, h.seg_size, h.xlog_blcksz), (SYSID, SEG, 8192));
        assert!(img[SIZE_OF_XLOG_LONG_PHD..].iter().all(|&b| b == 0));

        let img = first_segment_image(Lsn(0x100_4030), SEG, SYSID, 17).unwrap();
        assert_eq!(img.len(), 0x4030);
        let last = XLogPageHeader::decode(&img[0x4000..]).unwrap();
        assert_eq!(last.magic, 0xD116);
        assert_eq!(last.info, XLP_FIRST_IS_CONTRECORD);
        assert_eq!(last.pageaddr, Lsn(0x100_4000));
        assert_eq!(last.rem_len as usize, 0x30 - SIZE_OF_XLOG_SHORT_PHD);
        let first = XLogLongPageHeader::decode(&img).unwrap();
        let per_page = (8192 - SIZE_OF_XLOG_SHORT_PHD) as u32;
        assert_eq!(first.std.rem_len, (8192 - 40) + per_page + last.rem_len);

        // Just after the long header: no pretend record at all.
        let img = first_segment_image(Lsn(0x100_0028), SEG, SYSID, 15).unwrap();
        assert_eq!(
            XLogLongPageHeader::decode(&img).unwrap().std.info,
            XLP_LONG_HEADER
        );
    }

    #[test]
    fn refuses_what_is_not_a_record_boundary() {
        for bad in [0x100_0008u64, 0x100_0027, 0x100_2010, 0x100_2019] {
            assert_eq!(
                first_segment_image(Lsn(bad), SEG, SYSID, 15),
                Err(DecodeError::InvalidStartLsn { lsn: Lsn(bad) })
            );
        }
        assert!(first_segment_image(Lsn(0x100_0028), SEG, SYSID, 0).is_err());
        assert!(first_segment_image(Lsn(0x100_0028), 1000, SYSID, 15).is_err());
    }
}
