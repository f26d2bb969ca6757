//! Log sequence numbers: a byte position in the WAL stream, printed `X/X` as PostgreSQL does.
//!
//! All arithmetic that can overflow is checked (`checked_add`, `checked_sub`, `align`) so a
//! hostile LSN from the network turns into an error instead of a wrap-around.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::xlog::XLOG_BLCKSZ;

/// A WAL segment number: `lsn / wal_seg_size`.
pub type SegNo = u64;

/// Alignment of WAL records (PostgreSQL's MAXALIGN on 64-bit platforms).
pub const MAXALIGN: u64 = 8;

/// A position in the WAL, in bytes from the start of the cluster's WAL stream.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lsn(pub u64);

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsnParseError {
    /// No `/` between the two halves.
    #[error(
        "invalid LSN \"{0}\": expected two hexadecimal numbers separated by '/', like 0/16B3748"
    )]
    MissingSlash(String),
    /// One half is empty, longer than 8 digits, or not hexadecimal.
    #[error("invalid LSN \"{0}\": each half must be 1 to 8 hexadecimal digits")]
    BadHalf(String),
}

impl Lsn {
    /// The invalid LSN, `0/0`; Postgres uses it for "none".
    pub const INVALID: Lsn = Lsn(0);
    /// The largest representable LSN.
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// True unless this is `0/0`.
    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// The segment holding this LSN.
    pub fn segment_number(self, seg_size: u32) -> SegNo {
        self.0 / u64::from(seg_size)
    }

    /// Offset of this LSN inside its segment.
    pub fn segment_offset(self, seg_size: u32) -> usize {
        (self.0 % u64::from(seg_size)) as usize
    }

    /// Start of the segment holding this LSN.
    pub fn segment_lsn(self, seg_size: u32) -> Lsn {
        Lsn(self.0 - self.0 % u64::from(seg_size))
    }

    /// True if this LSN is the first byte of a segment.
    pub fn is_segment_start(self, seg_size: u32) -> bool {
        self.segment_offset(seg_size) == 0
    }

    /// Bytes from this LSN to the end of its segment (a full segment at a segment start).
    pub fn remaining_in_segment(self, seg_size: u32) -> u64 {
        u64::from(seg_size) - self.segment_offset(seg_size) as u64
    }

    /// Offset of this LSN inside its WAL page (`XLOG_BLCKSZ` bytes).
    pub fn page_offset(self) -> usize {
        (self.0 % XLOG_BLCKSZ as u64) as usize
    }

    /// Start of the WAL page holding this LSN.
    pub fn page_lsn(self) -> Lsn {
        Lsn(self.0 - self.0 % XLOG_BLCKSZ as u64)
    }

    /// True if this LSN is the first byte of a WAL page.
    pub fn is_page_start(self) -> bool {
        self.page_offset() == 0
    }

    /// True if this LSN is MAXALIGNed (8 bytes), as every record start is.
    pub fn is_aligned(self) -> bool {
        self.0.is_multiple_of(MAXALIGN)
    }

    /// This LSN rounded up to MAXALIGN, or `None` on overflow.
    pub fn align(self) -> Option<Lsn> {
        self.0
            .checked_add(MAXALIGN - 1)
            .map(|v| Lsn(v & !(MAXALIGN - 1)))
    }

    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// `self - n`, or `None` below `0/0`.
    pub fn checked_sub(self, n: u64) -> Option<Lsn> {
        self.0.checked_sub(n).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, or `None` if `earlier` is ahead.
    pub fn distance_from(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> Self {
        l.0
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `X/X` as Postgres's `pg_lsn` input does: each half 1 to 8 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| LsnParseError::MissingSlash(s.to_string()))?;
        let half = |h: &str| -> Result<u64, LsnParseError> {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LsnParseError::BadHalf(s.to_string()));
            }
            u64::from_str_radix(h, 16).map_err(|_| LsnParseError::BadHalf(s.to_string()))
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x1000100).to_string(), "0/1000100");
        assert_eq!(Lsn(0x1_0000_00AB).to_string(), "1/AB");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_like_postgres() {
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("a/bc".parse::<Lsn>().unwrap(), Lsn(0xA_0000_00BC));
        assert_eq!("00000000/00000001".parse::<Lsn>().unwrap(), Lsn(1));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/1/2",
            "123456789/0",
            "0/g",
            " 0/1",
            "0/1 ",
            "-1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
        let err = "0-1".parse::<Lsn>().unwrap_err().to_string();
        assert!(err.contains("0-1") && err.contains('/'), "{err}");
    }

    #[test]
    fn segment_and_page_arithmetic() {
        let seg = 16 * 1024 * 1024;
        let l = Lsn(0x1000100);
        assert_eq!(l.segment_number(seg), 1);
        assert_eq!(l.segment_offset(seg), 0x100);
        assert_eq!(l.segment_lsn(seg), Lsn(0x1000000));
        assert_eq!(l.remaining_in_segment(seg), u64::from(seg) - 0x100);
        assert_eq!(Lsn(0x1000000).remaining_in_segment(seg), u64::from(seg));
        assert_eq!(l.page_offset(), 0x100);
        assert_eq!(Lsn(0x1002010).page_lsn(), Lsn(0x1002000));
        assert!(Lsn(0x1002000).is_page_start());
        assert!(Lsn(0x1000000).is_segment_start(seg));
    }

    #[test]
    fn alignment_and_checked_math() {
        assert_eq!(Lsn(9).align(), Some(Lsn(16)));
        assert_eq!(Lsn(16).align(), Some(Lsn(16)));
        assert_eq!(Lsn(u64::MAX).align(), None);
        assert!(Lsn(24).is_aligned() && !Lsn(25).is_aligned());
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(0).checked_sub(1), None);
        assert_eq!(Lsn(10).distance_from(Lsn(4)), Some(6));
        assert_eq!(Lsn(4).distance_from(Lsn(10)), None);
    }

    proptest! {
        #[test]
        fn text_round_trip(v: u64) {
            let s = Lsn(v).to_string();
            prop_assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn lowercase_and_padded_forms_parse(v: u64) {
            let s = format!("{:08x}/{:08x}", v >> 32, v & 0xffff_ffff);
            prop_assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<Lsn>();
        }
    }
}
