//! The decoder's public value types: its configuration and the records it yields.
//!
//! Owns: those two structs. Must never: hold decoding state.

use crate::Lsn;
use crate::xlog::constants::pg_major;

/// What the decoder checks the stream against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// PostgreSQL major version (14 to 17) whose page magic to expect; 0 accepts the magic of
    /// any supported version and then holds the stream to the first one seen.
    pub pg_major: u32,
    /// The segment size; long page headers must carry it.
    pub wal_seg_size: u32,
    /// The cluster's system id, checked against every long page header when `Some`.
    pub system_id: Option<u64>,
}

impl DecoderConfig {
    /// A configuration from a greeting's values: `pg_version` is a `PG_VERSION_NUM` (150004,
    /// or 0 when unknown) and a `system_id` of 0 means "not known yet, do not check".
    pub fn new(pg_version: u32, wal_seg_size: u32, system_id: u64) -> Self {
        DecoderConfig {
            pg_major: pg_major(pg_version),
            wal_seg_size,
            system_id: (system_id != 0).then_some(system_id),
        }
    }
}

/// One complete, CRC-checked WAL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord {
    /// LSN of the record's first header byte (what `pg_waldump` prints as `lsn:`).
    pub start_lsn: Lsn,
    /// MAXALIGNed end of the record: where the next record boundary is. For XLOG_SWITCH, the
    /// start of the next segment.
    pub end_lsn: Lsn,
    /// `xl_rmid`.
    pub xl_rmid: u8,
    /// `xl_info`.
    pub xl_info: u8,
    /// `xl_xid`.
    pub xl_xid: u32,
    /// `xl_prev`: the start of the previous record, as its writer recorded it.
    pub xl_prev: Lsn,
    /// `xl_tot_len`.
    pub total_len: u32,
    /// True for an XLOG_SWITCH record.
    pub is_switch: bool,
}
