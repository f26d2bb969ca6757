//! Why bytes are not valid WAL, or why a position or configuration cannot be used with it.
//!
//! Owns: the error type shared by the decoder, the writer and the first-segment image; each
//! variant carries the LSN where the problem was found, and its message follows the wording
//! of PostgreSQL's own WAL reader so that operators recognise it. Must never: carry buffers.

use crate::Lsn;
use crate::xlog::constants::{PG_TLI, SIZE_OF_XLOG_RECORD, XLOG_BLCKSZ};
use crate::xlog::file_name::xlog_file_name;

/// What is wrong with a WAL stream, position or configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A PostgreSQL major version whose WAL format is not known here.
    #[error("unsupported PostgreSQL major version {pg_major}: supported are 14 to 17")]
    UnsupportedPgVersion {
        /// The major version asked for (0 when the version number was unknown).
        pg_major: u32,
    },
    /// A segment size Postgres cannot have.
    #[error("invalid WAL segment size {seg_size}: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSegmentSize {
        /// The size asked for.
        seg_size: u32,
    },
    /// A start position that is not a record boundary (unaligned, or inside a page header).
    #[error("WAL position {lsn} is not a record boundary")]
    InvalidStartLsn {
        /// The position.
        lsn: Lsn,
    },
    /// A page whose `xlp_magic` is not the configured version's.
    #[error("invalid magic number {magic:04X} in log segment {}", seg_pos(*.lsn, *.seg_size))]
    InvalidMagic {
        /// The page's LSN.
        lsn: Lsn,
        /// The segment size, to name the segment.
        seg_size: u32,
        /// The magic found.
        magic: u16,
    },
    /// Unknown `xlp_info` bits, or `XLP_LONG_HEADER` where it does not belong (or missing at
    /// a segment start).
    #[error("invalid info bits {info:04X} in log segment {}", seg_pos(*.lsn, *.seg_size))]
    InvalidInfoBits {
        /// The page's LSN.
        lsn: Lsn,
        /// The segment size, to name the segment.
        seg_size: u32,
        /// The `xlp_info` found.
        info: u16,
    },
    /// A page whose `xlp_pageaddr` is not its own LSN (stale or misplaced data).
    #[error("unexpected pageaddr {pageaddr} in log segment {}", seg_pos(*.lsn, *.seg_size))]
    UnexpectedPageAddr {
        /// The page's LSN.
        lsn: Lsn,
        /// The segment size, to name the segment.
        seg_size: u32,
        /// The `xlp_pageaddr` found.
        pageaddr: Lsn,
    },
    /// A long page header of another cluster.
    #[error(
        "WAL file is from different database system: WAL file database system identifier is \
         {found}, expected {expected} (page at {lsn})"
    )]
    SystemIdMismatch {
        /// The page's LSN.
        lsn: Lsn,
        /// `xlp_sysid` found.
        found: u64,
        /// The configured system id.
        expected: u64,
    },
    /// A long page header announcing another segment size.
    #[error(
        "WAL file is from different database system: incorrect segment size {found} in page \
         header at {lsn}, expected {expected}"
    )]
    SegmentSizeMismatch {
        /// The page's LSN.
        lsn: Lsn,
        /// `xlp_seg_size` found.
        found: u32,
        /// The configured segment size.
        expected: u32,
    },
    /// A long page header announcing another page size.
    #[error(
        "WAL file is from different database system: incorrect XLOG_BLCKSZ {found} in page \
         header at {lsn}, expected {XLOG_BLCKSZ}"
    )]
    BlockSizeMismatch {
        /// The page's LSN.
        lsn: Lsn,
        /// `xlp_xlog_blcksz` found.
        found: u32,
    },
    /// A record continues onto a page whose header lacks `XLP_FIRST_IS_CONTRECORD`.
    #[error("there is no contrecord flag at {lsn}")]
    MissingContrecord {
        /// The page's LSN.
        lsn: Lsn,
    },
    /// A page claims a continuation although the previous record ended before it.
    #[error("contrecord is requested by {lsn}")]
    UnexpectedContrecord {
        /// The page's LSN.
        lsn: Lsn,
    },
    /// `xlp_rem_len` disagrees with what is left of the record being continued.
    #[error("invalid contrecord length {rem_len} (expected {expected}) at {lsn}")]
    ContrecordLengthMismatch {
        /// The page's LSN.
        lsn: Lsn,
        /// `xlp_rem_len` found.
        rem_len: u32,
        /// Bytes of the record still to come.
        expected: u64,
    },
    /// `xl_tot_len` smaller than a record header: how the end of valid WAL usually looks
    /// (zeroed space reads as length 0).
    #[error("invalid record length at {lsn}: wanted {SIZE_OF_XLOG_RECORD}, got {len}")]
    InvalidRecordLength {
        /// The record's start.
        lsn: Lsn,
        /// `xl_tot_len` found.
        len: u32,
    },
    /// `xl_tot_len` larger than any PostgreSQL reader accepts.
    #[error("record length {len} at {lsn} too long")]
    RecordTooLong {
        /// The record's start.
        lsn: Lsn,
        /// `xl_tot_len` found (or asked for, when writing).
        len: u32,
    },
    /// The record's CRC-32C does not match `xl_crc`.
    #[error("incorrect resource manager data checksum in record at {lsn}")]
    CrcMismatch {
        /// The record's start.
        lsn: Lsn,
    },
    /// The stream would run past the largest LSN.
    #[error("WAL position overflows past {lsn}")]
    LsnOverflow {
        /// The last position reached.
        lsn: Lsn,
    },
}

impl DecodeError {
    /// The LSN the error was found at, if it concerns a position in the stream.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            DecodeError::UnsupportedPgVersion { .. } | DecodeError::InvalidSegmentSize { .. } => {
                None
            }
            DecodeError::InvalidStartLsn { lsn }
            | DecodeError::InvalidMagic { lsn, .. }
            | DecodeError::InvalidInfoBits { lsn, .. }
            | DecodeError::UnexpectedPageAddr { lsn, .. }
            | DecodeError::SystemIdMismatch { lsn, .. }
            | DecodeError::SegmentSizeMismatch { lsn, .. }
            | DecodeError::BlockSizeMismatch { lsn, .. }
            | DecodeError::MissingContrecord { lsn }
            | DecodeError::UnexpectedContrecord { lsn }
            | DecodeError::ContrecordLengthMismatch { lsn, .. }
            | DecodeError::InvalidRecordLength { lsn, .. }
            | DecodeError::RecordTooLong { lsn, .. }
            | DecodeError::CrcMismatch { lsn }
            | DecodeError::LsnOverflow { lsn } => Some(*lsn),
        }
    }
}

/// "<segment file name>, offset <n>" for a page, as Postgres names the place of a bad header.
fn seg_pos(lsn: Lsn, seg_size: u32) -> String {
    if seg_size == 0 {
        return format!("?, LSN {lsn}");
    }
    let name = xlog_file_name(PG_TLI, lsn.segment_number(seg_size), seg_size);
    format!(
        "{name}, offset {} (LSN {lsn})",
        lsn.segment_offset(seg_size)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_postgres() {
        let e = DecodeError::InvalidMagic {
            lsn: Lsn(0x1002000),
            seg_size: 16 << 20,
            magic: 0xD10D,
        };
        assert_eq!(
            e.to_string(),
            "invalid magic number D10D in log segment 000000010000000000000001, offset 8192 (LSN 0/1002000)"
        );
        let e = DecodeError::InvalidRecordLength {
            lsn: Lsn(0x1234),
            len: 0,
        };
        assert_eq!(
            e.to_string(),
            "invalid record length at 0/1234: wanted 24, got 0"
        );
        let e = DecodeError::CrcMismatch { lsn: Lsn(0x1234) };
        assert_eq!(
            e.to_string(),
            "incorrect resource manager data checksum in record at 0/1234"
        );
        assert_eq!(e.lsn(), Some(Lsn(0x1234)));
        assert_eq!(DecodeError::InvalidSegmentSize { seg_size: 3 }.lsn(), None);
    }
}
