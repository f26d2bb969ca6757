//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`) in their on-disk form.
//!
//! Layout (little-endian, C struct padding included): magic u16 @0, info u16 @2, tli u32 @4,
//! pageaddr u64 @8, rem_len u32 @16, 4 bytes of padding → 24 bytes; the long header adds
//! sysid u64 @24, seg_size u32 @32, xlog_blcksz u32 @36 → 40 bytes.
//!
//! Owns: the byte layout, and where in a page a record may begin. Must never: judge whether
//! a header is valid for its place in the stream (that is the decoder's job, which knows the
//! LSN and the configuration).

use crate::Lsn;
use crate::xlog::constants::{
    SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLP_LONG_HEADER, page_header_size,
};

/// A buffer too small for what was asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer too short: need {need} bytes, got {got}")]
pub struct ShortBuffer {
    /// Bytes required.
    pub need: usize,
    /// Bytes available.
    pub got: usize,
}

// Little-endian field readers. Callers pass fixed-size header arrays and constant offsets
// inside them, so the indexing below cannot go out of bounds whatever the bytes are.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// The header at the start of every WAL page (`XLogPageHeaderData`, 24 bytes on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XLogPageHeader {
    /// `xlp_magic`: the WAL format version (see [`crate::xlog::page_magic`]).
    pub magic: u16,
    /// `xlp_info`: `XLP_*` flag bits.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub tli: u32,
    /// `xlp_pageaddr`: the LSN of this page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a record continued from earlier pages still to come.
    pub rem_len: u32,
}

impl XLogPageHeader {
    /// Reads a short header from its 24 on-disk bytes.
    pub fn from_bytes(b: &[u8; SIZE_OF_XLOG_SHORT_PHD]) -> Self {
        XLogPageHeader {
            magic: u16_at(b, 0),
            info: u16_at(b, 2),
            tli: u32_at(b, 4),
            pageaddr: Lsn(u64_at(b, 8)),
            rem_len: u32_at(b, 16),
        }
    }

    /// Reads a short header from the first 24 bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, ShortBuffer> {
        buf.first_chunk().map(Self::from_bytes).ok_or(ShortBuffer {
            need: SIZE_OF_XLOG_SHORT_PHD,
            got: buf.len(),
        })
    }

    /// Writes the header into the first 24 bytes of `out` (padding zeroed).
    pub fn encode(&self, out: &mut [u8]) -> Result<(), ShortBuffer> {
        let got = out.len();
        let b = out.get_mut(..SIZE_OF_XLOG_SHORT_PHD).ok_or(ShortBuffer {
            need: SIZE_OF_XLOG_SHORT_PHD,
            got,
        })?;
        b[0..2].copy_from_slice(&self.magic.to_le_bytes());
        b[2..4].copy_from_slice(&self.info.to_le_bytes());
        b[4..8].copy_from_slice(&self.tli.to_le_bytes());
        b[8..16].copy_from_slice(&self.pageaddr.0.to_le_bytes());
        b[16..20].copy_from_slice(&self.rem_len.to_le_bytes());
        b[20..24].fill(0);
        Ok(())
    }

    /// The header's 24 bytes.
    pub fn to_bytes(&self) -> [u8; SIZE_OF_XLOG_SHORT_PHD] {
        let mut b = [0u8; SIZE_OF_XLOG_SHORT_PHD];
        // Cannot fail: the array has exactly the header's size.
        let _ = self.encode(&mut b);
        b
    }

    /// True if `XLP_LONG_HEADER` is set, i.e. a long header's extra fields follow.
    pub fn is_long(&self) -> bool {
        self.info & XLP_LONG_HEADER != 0
    }
}

/// The header of a segment's first page (`XLogLongPageHeaderData`, 40 bytes on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XLogLongPageHeader {
    /// The standard fields.
    pub std: XLogPageHeader,
    /// `xlp_sysid`: the cluster's system identifier (from `pg_control`).
    pub sysid: u64,
    /// `xlp_seg_size`: the segment size, as a cross-check.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size, as a cross-check.
    pub xlog_blcksz: u32,
}

impl XLogLongPageHeader {
    /// Reads a long header from its 40 on-disk bytes (the flag bits are not checked).
    pub fn from_bytes(b: &[u8; SIZE_OF_XLOG_LONG_PHD]) -> Self {
        XLogLongPageHeader {
            std: XLogPageHeader {
                magic: u16_at(b, 0),
                info: u16_at(b, 2),
                tli: u32_at(b, 4),
                pageaddr: Lsn(u64_at(b, 8)),
                rem_len: u32_at(b, 16),
            },
            sysid: u64_at(b, 24),
            seg_size: u32_at(b, 32),
            xlog_blcksz: u32_at(b, 36),
        }
    }

    /// Reads a long header from the first 40 bytes of `buf` (the flag bits are not checked).
    pub fn decode(buf: &[u8]) -> Result<Self, ShortBuffer> {
        buf.first_chunk().map(Self::from_bytes).ok_or(ShortBuffer {
            need: SIZE_OF_XLOG_LONG_PHD,
            got: buf.len(),
        })
    }

    /// Writes the header into the first 40 bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), ShortBuffer> {
        let got = out.len();
        let b = out.get_mut(..SIZE_OF_XLOG_LONG_PHD).ok_or(ShortBuffer {
            need: SIZE_OF_XLOG_LONG_PHD,
            got,
        })?;
        self.std.encode(b)?;
        b[24..32].copy_from_slice(&self.sysid.to_le_bytes());
        b[32..36].copy_from_slice(&self.seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&self.xlog_blcksz.to_le_bytes());
        Ok(())
    }

    /// The header's 40 bytes.
    pub fn to_bytes(&self) -> [u8; SIZE_OF_XLOG_LONG_PHD] {
        let mut b = [0u8; SIZE_OF_XLOG_LONG_PHD];
        // Cannot fail: the array has exactly the header's size.
        let _ = self.encode(&mut b);
        b
    }
}

/// Size of the header of the page holding `lsn`: long on a segment's first page, else short.
pub fn page_header_size_at(lsn: Lsn, seg_size: u32) -> usize {
    page_header_size(lsn.page_lsn().is_segment_start(seg_size))
}

/// True if a WAL stream can begin at `lsn` as a record boundary: MAXALIGNed, and either a
/// page start (the stream then begins with that page's header) or past the page header.
/// `seg_size` must be non-zero.
pub fn is_valid_stream_start(lsn: Lsn, seg_size: u32) -> bool {
    lsn.is_aligned()
        && (lsn.is_page_start() || lsn.page_offset() >= page_header_size_at(lsn, seg_size))
}

/// The LSN a record beginning at boundary `lsn` gets: `lsn` itself, or the first byte past
/// the page header when `lsn` is a page start. `None` on overflow.
pub fn record_start_at(lsn: Lsn, seg_size: u32) -> Option<Lsn> {
    if lsn.is_page_start() {
        lsn.checked_add(page_header_size_at(lsn, seg_size) as u64)
    } else {
        Some(lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlog::constants::{XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD};
    use proptest::prelude::*;

    #[test]
    fn short_header_layout() {
        let h = XLogPageHeader {
            magic: 0xD110,
            info: XLP_FIRST_IS_CONTRECORD,
            tli: 1,
            pageaddr: Lsn(0x0000_0001_0000_2000),
            rem_len: 0x1234,
        };
        let b = h.to_bytes();
        assert_eq!(
            b,
            [
                0x10, 0xD1, 0x01, 0x00, 1, 0, 0, 0, // magic, info, tli
                0x00, 0x20, 0, 0, 1, 0, 0, 0, // pageaddr
                0x34, 0x12, 0, 0, 0, 0, 0, 0, // rem_len, padding
            ]
        );
        assert_eq!(XLogPageHeader::decode(&b), Ok(h));
        assert!(!h.is_long());
    }

    #[test]
    fn long_header_layout() {
        let h = XLogLongPageHeader {
            std: XLogPageHeader {
                magic: 0xD110,
                info: XLP_LONG_HEADER,
                tli: 1,
                pageaddr: Lsn(0x100_0000),
                rem_len: 0,
            },
            sysid: 0x0102_0304_0506_0708,
            seg_size: 16 << 20,
            xlog_blcksz: XLOG_BLCKSZ as u32,
        };
        let b = h.to_bytes();
        assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[32..36], &(16u32 << 20).to_le_bytes());
        assert_eq!(&b[36..40], &8192u32.to_le_bytes());
        assert_eq!(XLogLongPageHeader::decode(&b), Ok(h));
        assert!(h.std.is_long());
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(
            XLogPageHeader::decode(&[0; 23]),
            Err(ShortBuffer { need: 24, got: 23 })
        );
        assert_eq!(
            XLogLongPageHeader::decode(&[0; 39]),
            Err(ShortBuffer { need: 40, got: 39 })
        );
        let h = XLogPageHeader::decode(&[0; 24]).unwrap();
        assert_eq!(
            h.encode(&mut [0; 10]),
            Err(ShortBuffer { need: 24, got: 10 })
        );
    }

    #[test]
    fn where_records_can_begin() {
        let seg = 16 << 20;
        assert!(is_valid_stream_start(Lsn(0x100_0000), seg));
        assert!(is_valid_stream_start(Lsn(0x100_0028), seg));
        assert!(!is_valid_stream_start(Lsn(0x100_0020), seg));
        assert!(is_valid_stream_start(Lsn(0x100_2018), seg));
        assert!(!is_valid_stream_start(Lsn(0x100_2010), seg));
        assert!(!is_valid_stream_start(Lsn(0x100_2019), seg));
        assert_eq!(record_start_at(Lsn(0x100_0000), seg), Some(Lsn(0x100_0028)));
        assert_eq!(record_start_at(Lsn(0x100_2000), seg), Some(Lsn(0x100_2018)));
        assert_eq!(record_start_at(Lsn(0x100_2100), seg), Some(Lsn(0x100_2100)));
        assert_eq!(page_header_size_at(Lsn(0x100_1FFF), seg), 40);
    }

    proptest! {
        #[test]
        fn short_round_trip(magic: u16, info: u16, tli: u32, pageaddr: u64, rem_len: u32) {
            let h = XLogPageHeader { magic, info, tli, pageaddr: Lsn(pageaddr), rem_len };
            prop_assert_eq!(XLogPageHeader::decode(&h.to_bytes()), Ok(h));
        }

        #[test]
        fn long_round_trip(pageaddr: u64, rem_len: u32, sysid: u64, seg_size: u32, blcksz: u32) {
            let std = XLogPageHeader {
                magic: 0xD113, info: XLP_LONG_HEADER, tli: 1, pageaddr: Lsn(pageaddr), rem_len,
            };
            let h = XLogLongPageHeader { std, sysid, seg_size, xlog_blcksz: blcksz };
            prop_assert_eq!(XLogLongPageHeader::decode(&h.to_bytes()), Ok(h));
        }

        #[test]
        fn decode_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = XLogPageHeader::decode(&bytes);
            let _ = XLogLongPageHeader::decode(&bytes);
        }
    }
}
