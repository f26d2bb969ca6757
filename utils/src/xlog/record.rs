//! The fixed `XLogRecord` header that starts every WAL record, and the record CRC.
//!
//! Layout (little-endian): xl_tot_len u32 @0, xl_xid u32 @4, xl_prev u64 @8, xl_info u8 @16,
//! xl_rmid u8 @17, 2 bytes of padding, xl_crc u32 @20 → 24 bytes. The CRC-32C covers the
//! bytes after the header (the rest of the record), then header bytes 0..20.
//!
//! Owns: that layout and the CRC rule. Must never: buffer a record's body; callers that
//! stream a record feed its body to [`record_crc_finish`] incrementally.

use crate::Lsn;
use crate::xlog::constants::{SIZE_OF_XLOG_RECORD, XLOG_RECORD_CRC_OFFSET, is_switch_record};

/// The 24-byte header of a WAL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XLogRecordHeader {
    /// `xl_tot_len`: length of the whole record, header included.
    pub tot_len: u32,
    /// `xl_xid`: the transaction id, 0 if none.
    pub xid: u32,
    /// `xl_prev`: the start LSN of the previous record.
    pub prev: Lsn,
    /// `xl_info`: flag bits; the high nibble belongs to the resource manager.
    pub info: u8,
    /// `xl_rmid`: the resource manager id.
    pub rmid: u8,
    /// `xl_crc`: CRC-32C of the body followed by header bytes 0..20.
    pub crc: u32,
}

impl XLogRecordHeader {
    /// Reads a header from its 24 on-disk bytes.
    pub fn from_bytes(b: &[u8; SIZE_OF_XLOG_RECORD]) -> Self {
        let [
            t0,
            t1,
            t2,
            t3,
            x0,
            x1,
            x2,
            x3,
            p0,
            p1,
            p2,
            p3,
            p4,
            p5,
            p6,
            p7,
            info,
            rmid,
            _,
            _,
            c0,
            c1,
            c2,
            c3,
        ] = *b;
        XLogRecordHeader {
            tot_len: u32::from_le_bytes([t0, t1, t2, t3]),
            xid: u32::from_le_bytes([x0, x1, x2, x3]),
            prev: Lsn(u64::from_le_bytes([p0, p1, p2, p3, p4, p5, p6, p7])),
            info,
            rmid,
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        }
    }

    /// The header's 24 on-disk bytes (padding zeroed).
    pub fn to_bytes(&self) -> [u8; SIZE_OF_XLOG_RECORD] {
        let mut b = [0u8; SIZE_OF_XLOG_RECORD];
        b[0..4].copy_from_slice(&self.tot_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.xid.to_le_bytes());
        b[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        b[16] = self.info;
        b[17] = self.rmid;
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// True for an XLOG_SWITCH record.
    pub fn is_switch(&self) -> bool {
        is_switch_record(self.rmid, self.info)
    }

    /// Sets `crc` to the correct value for this header followed by `body`.
    pub fn with_crc_for(mut self, body: &[u8]) -> Self {
        let body_crc = crc32c::crc32c(body);
        self.crc = record_crc_finish(body_crc, &self.to_bytes());
        self
    }
}

/// Completes a record CRC: `body_crc` is `crc32c` over everything after the header (built
/// with `crc32c_append` as the body streams by); the header bytes before `xl_crc` come last.
pub fn record_crc_finish(body_crc: u32, header: &[u8; SIZE_OF_XLOG_RECORD]) -> u32 {
    crc32c::crc32c_append(body_crc, &header[..XLOG_RECORD_CRC_OFFSET])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlog::constants::{RM_XLOG_ID, XLOG_SWITCH};

    #[test]
    fn layout_round_trip() {
        let h = XLogRecordHeader {
            tot_len: 0x0102_0304,
            xid: 7,
            prev: Lsn(0x0000_0001_0000_0028),
            info: 0x40,
            rmid: 0,
            crc: 0xAABB_CCDD,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[0x28, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!((b[16], b[17], b[18], b[19]), (0x40, 0, 0, 0));
        assert_eq!(&b[20..24], &[0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(XLogRecordHeader::from_bytes(&b), h);
        assert!(h.is_switch());
    }

    #[test]
    fn crc_covers_body_then_header_prefix() {
        let h = XLogRecordHeader {
            tot_len: 27,
            xid: 0,
            prev: Lsn(0),
            info: XLOG_SWITCH,
            rmid: RM_XLOG_ID,
            crc: 0,
        }
        .with_crc_for(b"abc");
        let mut all = b"abc".to_vec();
        all.extend_from_slice(&h.to_bytes()[..20]);
        assert_eq!(h.crc, crc32c::crc32c(&all));
        // Streaming the body in pieces gives the same CRC.
        let partial = crc32c::crc32c_append(crc32c::crc32c(b"a"), b"bc");
        assert_eq!(record_crc_finish(partial, &h.to_bytes()), h.crc);
    }
}
