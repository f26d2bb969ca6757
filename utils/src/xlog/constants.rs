//! Numeric facts of the PostgreSQL WAL format (from `xlog_internal.h`, `xlogrecord.h`,
//! `rmgrlist.h` of PostgreSQL 14 to 17) and the version helpers that pick between them.
//!
//! Owns: page and record sizes, page-header flag bits, the page magic of each supported
//! major version, and the few resource-manager ids the workspace needs. Must never: hold
//! state or parse bytes; everything here is a constant or a pure function of numbers.

/// Size of a WAL page (`XLOG_BLCKSZ`); every page starts with a page header.
pub const XLOG_BLCKSZ: usize = 8192;

/// `XLOG_BLCKSZ` as a `u64`, for LSN arithmetic.
pub const XLOG_BLCKSZ_U64: u64 = XLOG_BLCKSZ as u64;

/// The default WAL segment size (`--wal-segsize` of initdb), 16 MiB.
pub const DEFAULT_WAL_SEG_SIZE: u32 = 16 * 1024 * 1024;

/// The smallest segment size Postgres accepts (`WalSegMinSize`), 1 MiB.
pub const WAL_SEG_MIN_SIZE: u32 = 1024 * 1024;

/// The largest segment size Postgres accepts (`WalSegMaxSize`), 1 GiB.
pub const WAL_SEG_MAX_SIZE: u32 = 1024 * 1024 * 1024;

/// The timeline id every WAL stream of this workspace is written on.
pub const PG_TLI: u32 = 1;

/// `xlp_info` bit: the page starts with the continuation of a record begun on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info` bit: the page carries the long header (the first page of every segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `xlp_info` bit: backup blocks starting on this page are optional.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `xlp_info` bit: the page replaces a missing continuation record (crash recovery).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every defined `xlp_info` bit; any other bit makes a page header invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// Size of `XLogPageHeaderData` on disk: 20 bytes of fields, MAXALIGNed to 24.
pub const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// Size of `XLogLongPageHeaderData` on disk (the short header plus sysid, seg size, blcksz).
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;
/// Size of the fixed `XLogRecord` header that starts every record.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc` inside the record header; the CRC covers the header bytes before it.
pub const XLOG_RECORD_CRC_OFFSET: usize = 20;

/// The largest `xl_tot_len` a PostgreSQL reader accepts (`MaxAllocSize`, 1 GiB − 1): its
/// reader must allocate the whole record, so anything larger is treated as bogus data.
pub const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

/// Resource manager id of XLOG (checkpoints, switches, FPIs).
pub const RM_XLOG_ID: u8 = 0;
/// Resource manager id of logical decoding messages (`pg_logical_emit_message`).
pub const RM_LOGICALMSG_ID: u8 = 21;
/// `xl_info` of an XLOG_SWITCH record (with `RM_XLOG_ID`): the rest of the segment is unused.
pub const XLOG_SWITCH: u8 = 0x40;
/// `xl_info` of a logical message record (with `RM_LOGICALMSG_ID`).
pub const XLOG_LOGICAL_MESSAGE: u8 = 0x00;
/// The low bits of `xl_info` that belong to the WAL machinery, not to the rmgr.
pub const XLR_INFO_MASK: u8 = 0x0F;

/// Block id announcing main data of less than 256 bytes (one length byte follows).
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// Block id announcing main data of 256 bytes or more (a `u32` length follows).
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;

/// The oldest and newest PostgreSQL major versions whose WAL this workspace reads.
pub const SUPPORTED_PG_MAJORS: std::ops::RangeInclusive<u32> = 14..=17;

/// `XLOG_PAGE_MAGIC` of a PostgreSQL major version, or `None` for an unsupported one.
pub fn page_magic(pg_major: u32) -> Option<u16> {
    match pg_major {
        14 => Some(0xD10D),
        15 => Some(0xD110),
        16 => Some(0xD113),
        17 => Some(0xD116),
        _ => None,
    }
}

/// The major version of a `PG_VERSION_NUM` (`150004` → `15`).
pub fn pg_major(pg_version_num: u32) -> u32 {
    pg_version_num / 10000
}

/// True if WAL of this `PG_VERSION_NUM` can be decoded (majors 14 to 17).
pub fn is_supported_pg_version(pg_version_num: u32) -> bool {
    SUPPORTED_PG_MAJORS.contains(&pg_major(pg_version_num))
}

/// True if Postgres accepts this segment size: a power of two from 1 MiB to 1 GiB.
pub fn is_valid_seg_size(seg_size: u32) -> bool {
    seg_size.is_power_of_two() && (WAL_SEG_MIN_SIZE..=WAL_SEG_MAX_SIZE).contains(&seg_size)
}

/// True for an XLOG_SWITCH record, whatever the WAL-machinery bits of `xl_info`.
pub fn is_switch_record(xl_rmid: u8, xl_info: u8) -> bool {
    xl_rmid == RM_XLOG_ID && (xl_info & !XLR_INFO_MASK) == XLOG_SWITCH
}

/// Size of the page header of a page: long at a segment start, short on every other page.
pub fn page_header_size(is_segment_start: bool) -> usize {
    if is_segment_start {
        SIZE_OF_XLOG_LONG_PHD
    } else {
        SIZE_OF_XLOG_SHORT_PHD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_magics() {
        assert_eq!(pg_major(150004), 15);
        assert_eq!(pg_major(170000), 17);
        assert_eq!(page_magic(14), Some(0xD10D));
        assert_eq!(page_magic(15), Some(0xD110));
        assert_eq!(page_magic(16), Some(0xD113));
        assert_eq!(page_magic(17), Some(0xD116));
        assert_eq!(page_magic(13), None);
        assert_eq!(page_magic(150004), None);
        assert!(is_supported_pg_version(140000));
        assert!(is_supported_pg_version(170002));
        assert!(!is_supported_pg_version(130011));
        assert!(!is_supported_pg_version(180000));
        assert!(!is_supported_pg_version(0));
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_seg_size(DEFAULT_WAL_SEG_SIZE));
        assert!(is_valid_seg_size(WAL_SEG_MIN_SIZE));
        assert!(is_valid_seg_size(WAL_SEG_MAX_SIZE));
        assert!(!is_valid_seg_size(WAL_SEG_MIN_SIZE / 2));
        assert!(!is_valid_seg_size(WAL_SEG_MAX_SIZE * 2));
        assert!(!is_valid_seg_size(DEFAULT_WAL_SEG_SIZE + 8192));
        assert!(!is_valid_seg_size(0));
    }

    #[test]
    fn switch_detection_ignores_low_info_bits() {
        assert!(is_switch_record(RM_XLOG_ID, XLOG_SWITCH));
        assert!(is_switch_record(RM_XLOG_ID, XLOG_SWITCH | 0x01));
        assert!(!is_switch_record(RM_XLOG_ID, 0x00));
        assert!(!is_switch_record(RM_LOGICALMSG_ID, XLOG_SWITCH));
    }
}
