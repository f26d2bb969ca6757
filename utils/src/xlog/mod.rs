//! The PostgreSQL WAL format (versions 14 to 17): constants, segment file names, page
//! headers, a streaming record decoder, a writer of synthetic WAL, and the synthetic image
//! of a timeline's first segment.
//!
//! Owns: every fact about WAL bytes the workspace relies on. Must never: do I/O or keep
//! state across streams; callers own files, sockets and positions.

pub mod constants;
pub mod decoder;
pub mod file_name;
pub mod image;
pub mod page;
pub mod record;
pub mod record_ends;
pub mod writer;

pub use constants::{
    DEFAULT_WAL_SEG_SIZE, MAX_RECORD_LEN, PG_TLI, RM_LOGICALMSG_ID, RM_XLOG_ID,
    SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_RECORD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ, XLOG_SWITCH,
    XLP_ALL_FLAGS, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER, XLR_INFO_MASK,
    is_supported_pg_version, is_valid_seg_size, page_magic, pg_major,
};
pub use decoder::{DecodeError, DecodedRecord, DecoderConfig, WalStreamDecoder};
pub use file_name::{PARTIAL_SUFFIX, parse_xlog_file_name, xlog_file_name};
pub use image::first_segment_image;
pub use page::{ShortBuffer, XLogLongPageHeader, XLogPageHeader};
pub use record::XLogRecordHeader;
pub use record_ends::RecordEnds;
pub use writer::{GeneratedRecord, WalGenerator};
