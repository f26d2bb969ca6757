//! The PostgreSQL WAL format (versions 14 to 17): constants, segment file names, page
//! headers, a streaming record decoder, and the synthetic image of a timeline's first
//! segment.

/// Size of a WAL page.
pub const XLOG_BLCKSZ: usize = 8192;
