//! A WAL writer for synthetic streams: lays records into pages with correct page headers
//! (long at segment starts, continuation flags and lengths) and CRCs, as PostgreSQL does.
//!
//! Used by tests (decoder tests, interop with `pg_waldump`) and by load generators that
//! need valid WAL without a Postgres. Owns: record placement and page headers of generated
//! WAL, and the body layout of logical-message records. Must never: do I/O; output goes into
//! a caller's buffer and always starts where the previous call stopped.

use bytes::BytesMut;

use crate::Lsn;
use crate::xlog::constants::{
    MAX_RECORD_LEN, PG_TLI, RM_LOGICALMSG_ID, RM_XLOG_ID, SIZE_OF_XLOG_RECORD, XLOG_BLCKSZ,
    XLOG_LOGICAL_MESSAGE, XLOG_SWITCH, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
    XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT, is_valid_seg_size, page_magic,
};
use crate::xlog::decoder::DecodeError;
use crate::xlog::page::{XLogLongPageHeader, XLogPageHeader, is_valid_stream_start};
use crate::xlog::record::XLogRecordHeader;

/// Size of `xl_logical_message` before the prefix: dbId u32, transactional bool, 3 bytes of
/// padding, prefix_size u64, message_size u64.
const LOGICAL_MESSAGE_HEADER: usize = 24;

/// Where a generated record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedRecord {
    /// LSN of the record's first byte.
    pub start_lsn: Lsn,
    /// MAXALIGNed end (for XLOG_SWITCH, the next segment start): the generator's position.
    pub end_lsn: Lsn,
    /// `xl_tot_len`.
    pub total_len: u32,
}

/// Generates a WAL stream from a record boundary onwards; see the module documentation.
#[derive(Debug, Clone)]
pub struct WalGenerator {
    pos: Lsn,
    prev_record: Lsn,
    system_id: u64,
    seg_size: u32,
    magic: u16,
}

impl WalGenerator {
    /// A generator whose first output byte is at `start`, a record boundary (see
    /// [`WalStreamDecoder::new`](crate::xlog::WalStreamDecoder::new)); page headers carry
    /// `system_id`, `seg_size` and the page magic of `pg_major` (14 to 17).
    pub fn new(
        start: Lsn,
        system_id: u64,
        seg_size: u32,
        pg_major: u32,
    ) -> Result<Self, DecodeError> {
        if !is_valid_seg_size(seg_size) {
            return Err(DecodeError::InvalidSegmentSize { seg_size });
        }
        let magic = page_magic(pg_major).ok_or(DecodeError::UnsupportedPgVersion { pg_major })?;
        if !is_valid_stream_start(start, seg_size) {
            return Err(DecodeError::InvalidStartLsn { lsn: start });
        }
        Ok(WalGenerator {
            pos: start,
            prev_record: Lsn::INVALID,
            system_id,
            seg_size,
            magic,
        })
    }

    /// LSN of the next byte the generator will write (a record boundary).
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// The `xl_prev` the next record will carry: the start of the last generated record.
    pub fn prev_record_lsn(&self) -> Lsn {
        self.prev_record
    }

    /// Sets the `xl_prev` of the next record (when continuing a stream written elsewhere).
    pub fn set_prev_record_lsn(&mut self, prev: Lsn) {
        self.prev_record = prev;
    }

    /// Appends one record: the 24-byte header (with `xl_prev` and CRC filled in) followed by
    /// `body` (block headers and data, as the resource manager expects), then MAXALIGN
    /// padding. Page headers are inserted wherever a page starts.
    pub fn append_record(
        &mut self,
        rmid: u8,
        info: u8,
        xid: u32,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<GeneratedRecord, DecodeError> {
        let total = SIZE_OF_XLOG_RECORD + body.len();
        let total_len = match u32::try_from(total) {
            Ok(len) if len <= MAX_RECORD_LEN => len,
            _ => {
                let len = u32::try_from(total).unwrap_or(u32::MAX);
                return Err(DecodeError::RecordTooLong { lsn: self.pos, len });
            }
        };
        // Worst case: the record, a long header per page it touches, padding. Checking it up
        // front means a record is either written whole or not at all.
        let worst = u64::from(total_len) * 2 + XLOG_BLCKSZ as u64;
        if self.pos.checked_add(worst).is_none() {
            return Err(DecodeError::LsnOverflow { lsn: self.pos });
        }
        if self.pos.is_page_start() {
            self.put_page_header(0, out);
        }
        let start = self.pos;
        let header = XLogRecordHeader {
            tot_len: total_len,
            xid,
            prev: self.prev_record,
            info,
            rmid,
            crc: 0,
        }
        .with_crc_for(body);
        let mut written = 0u64;
        self.put(&header.to_bytes(), total_len, &mut written, out);
        self.put(body, total_len, &mut written, out);
        let end = self
            .pos
            .align()
            .ok_or(DecodeError::LsnOverflow { lsn: self.pos })?;
        self.zero_fill(end, out);
        self.prev_record = start;
        Ok(GeneratedRecord {
            start_lsn: start,
            end_lsn: end,
            total_len,
        })
    }

    /// Appends a non-transactional logical message (`pg_logical_emit_message(false, prefix,
    /// message)`): rmgr `LogicalMessage`, readable by `pg_waldump` and harmless to replay.
    pub fn append_logical_message(
        &mut self,
        prefix: &str,
        message: &[u8],
        out: &mut BytesMut,
    ) -> Result<GeneratedRecord, DecodeError> {
        let body = logical_message_body(prefix, message);
        self.append_record(RM_LOGICALMSG_ID, XLOG_LOGICAL_MESSAGE, 0, &body, out)
    }

    /// Appends an XLOG_SWITCH record and the zeros that fill the rest of its segment (page
    /// headers included, as PostgreSQL 15 writes them). At a segment start there is nothing
    /// to switch away from: `Ok(None)`, nothing written (as in Postgres).
    pub fn append_switch(
        &mut self,
        out: &mut BytesMut,
    ) -> Result<Option<GeneratedRecord>, DecodeError> {
        if self.pos.is_segment_start(self.seg_size) {
            return Ok(None);
        }
        let mut rec = self.append_record(RM_XLOG_ID, XLOG_SWITCH, 0, &[], out)?;
        if !rec.end_lsn.is_segment_start(self.seg_size) {
            let boundary = rec
                .end_lsn
                .segment_lsn(self.seg_size)
                .checked_add(u64::from(self.seg_size))
                .ok_or(DecodeError::LsnOverflow { lsn: rec.end_lsn })?;
            self.zero_fill(boundary, out);
            rec.end_lsn = boundary;
        }
        Ok(Some(rec))
    }

    /// Writes `bytes` of a record of `total_len` bytes of which `written` are already out,
    /// inserting page headers (with the continuation of this record) at page starts.
    fn put(&mut self, mut bytes: &[u8], total_len: u32, written: &mut u64, out: &mut BytesMut) {
        while !bytes.is_empty() {
            if self.pos.is_page_start() {
                self.put_page_header(u64::from(total_len) - *written, out);
            }
            let n = bytes.len().min(XLOG_BLCKSZ - self.pos.page_offset());
            let (now, rest) = bytes.split_at(n);
            out.extend_from_slice(now);
            self.pos = Lsn(self.pos.0 + n as u64);
            *written += n as u64;
            bytes = rest;
        }
    }

    /// Writes the header of the page starting at `self.pos`; `rem_len` > 0 marks it as
    /// continuing a record with that many bytes left.
    fn put_page_header(&mut self, rem_len: u64, out: &mut BytesMut) {
        let mut info = if rem_len > 0 {
            XLP_FIRST_IS_CONTRECORD
        } else {
            0
        };
        let is_long = self.pos.is_segment_start(self.seg_size);
        if is_long {
            info |= XLP_LONG_HEADER;
        }
        let std = XLogPageHeader {
            magic: self.magic,
            info,
            tli: PG_TLI,
            pageaddr: self.pos,
            // A record is at most MAX_RECORD_LEN bytes, so what is left of it fits.
            rem_len: u32::try_from(rem_len).unwrap_or(u32::MAX),
        };
        let len = if is_long {
            let long = XLogLongPageHeader {
                std,
                sysid: self.system_id,
                seg_size: self.seg_size,
                xlog_blcksz: XLOG_BLCKSZ as u32,
            };
            out.extend_from_slice(&long.to_bytes());
            crate::xlog::SIZE_OF_XLOG_LONG_PHD
        } else {
            out.extend_from_slice(&std.to_bytes());
            crate::xlog::SIZE_OF_XLOG_SHORT_PHD
        };
        self.pos = Lsn(self.pos.0 + len as u64);
    }

    /// Writes zeros (no page headers) up to `until`.
    fn zero_fill(&mut self, until: Lsn, out: &mut BytesMut) {
        let n = until.distance_from(self.pos).unwrap_or(0);
        out.resize(out.len() + n as usize, 0);
        self.pos = until.max(self.pos);
    }
}

/// The body (everything after the record header) of a non-transactional logical message
/// record: a main-data header, then `xl_logical_message`, the NUL-terminated prefix and
/// the message.
pub fn logical_message_body(prefix: &str, message: &[u8]) -> Vec<u8> {
    let prefix_size = prefix.len() + 1;
    let main_len = LOGICAL_MESSAGE_HEADER + prefix_size + message.len();
    let mut body = Vec::with_capacity(main_len + 5);
    match u8::try_from(main_len) {
        Ok(short) => body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, short]),
        Err(_) => {
            body.push(XLR_BLOCK_ID_DATA_LONG);
            body.extend_from_slice(&(main_len as u32).to_le_bytes());
        }
    }
    body.extend_from_slice(&0u32.to_le_bytes()); // dbId: not database-specific
    body.extend_from_slice(&[0, 0, 0, 0]); // transactional = false, padding
    body.extend_from_slice(&(prefix_size as u64).to_le_bytes());
    body.extend_from_slice(&(message.len() as u64).to_le_bytes());
    body.extend_from_slice(prefix.as_bytes());
    body.push(0);
    body.extend_from_slice(message);
    body
}

/// `xl_tot_len` of a logical message record with this prefix length and message length.
pub fn logical_message_len(prefix_len: usize, message_len: usize) -> usize {
    let main_len = LOGICAL_MESSAGE_HEADER + prefix_len + 1 + message_len;
    let data_header = if main_len < 256 { 2 } else { 5 };
    SIZE_OF_XLOG_RECORD + data_header + main_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlog::{DEFAULT_WAL_SEG_SIZE, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD};

    const SEG: u32 = DEFAULT_WAL_SEG_SIZE;

    #[test]
    fn output_length_matches_positions() {
        let start = Lsn(0x100_0028);
        let mut g = WalGenerator::new(start, 42, SEG, 15).unwrap();
        let mut out = BytesMut::new();
        let r = g
            .append_logical_message("p", &[7; 20000], &mut out)
            .unwrap();
        assert_eq!(r.start_lsn, start);
        assert_eq!(r.total_len as usize, logical_message_len(1, 20000));
        // Two page headers interrupt the record.
        let raw = r.total_len as u64 + 2 * SIZE_OF_XLOG_SHORT_PHD as u64;
        assert_eq!(r.end_lsn, Lsn(start.0 + raw).align().unwrap());
        assert_eq!(out.len() as u64, r.end_lsn.0 - start.0);
        assert_eq!(g.position(), r.end_lsn);
        assert_eq!(g.prev_record_lsn(), start);
    }

    #[test]
    fn page_headers_carry_continuations() {
        let start = Lsn(0x100_0028);
        let mut g = WalGenerator::new(start, 42, SEG, 15).unwrap();
        let mut out = BytesMut::new();
        let r = g
            .append_record(RM_LOGICALMSG_ID, 0, 0, &[1; 10000], &mut out)
            .unwrap();
        let page = 0x100_2000 - start.0 as usize;
        let h = XLogPageHeader::decode(&out[page..]).unwrap();
        assert_eq!(h.info, XLP_FIRST_IS_CONTRECORD);
        assert_eq!(h.pageaddr, Lsn(0x100_2000));
        let first_page_part = 0x2000 - 0x28;
        assert_eq!(h.rem_len, r.total_len - first_page_part);
    }

    #[test]
    fn long_header_at_segment_start_and_switch() {
        let mut g = WalGenerator::new(Lsn(0x200_0000), 7, SEG, 16).unwrap();
        let mut out = BytesMut::new();
        assert_eq!(g.append_switch(&mut out).unwrap(), None);
        assert!(out.is_empty());
        let r = g.append_record(RM_XLOG_ID, 0, 0, &[], &mut out).unwrap();
        assert_eq!(r.start_lsn, Lsn(0x200_0000 + SIZE_OF_XLOG_LONG_PHD as u64));
        let h = XLogLongPageHeader::decode(&out).unwrap();
        assert_eq!(
            (h.std.magic, h.std.info, h.sysid, h.seg_size),
            (0xD113, XLP_LONG_HEADER, 7, SEG)
        );
        let s = g.append_switch(&mut out).unwrap().unwrap();
        assert_eq!(s.end_lsn, Lsn(0x300_0000));
        assert_eq!(out.len(), SEG as usize);
        assert!(
            out[s.start_lsn.0 as usize - 0x200_0000 + 24..]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn refuses_bad_configuration() {
        assert!(matches!(
            WalGenerator::new(Lsn(0x100_0028), 1, SEG, 13),
            Err(DecodeError::UnsupportedPgVersion { pg_major: 13 })
        ));
        assert!(matches!(
            WalGenerator::new(Lsn(0x100_0028), 1, 12345, 15),
            Err(DecodeError::InvalidSegmentSize { .. })
        ));
        for bad in [0x100_0010, 0x100_0029, 0x100_2008] {
            assert!(matches!(
                WalGenerator::new(Lsn(bad), 1, SEG, 15),
                Err(DecodeError::InvalidStartLsn { .. })
            ));
        }
        let mut g = WalGenerator::new(Lsn(u64::MAX - 0x1FFF), 1, SEG, 15).unwrap();
        let err = g
            .append_record(0, 0, 0, &[0; 100], &mut BytesMut::new())
            .unwrap_err();
        assert!(matches!(err, DecodeError::LsnOverflow { .. }));
    }

    #[test]
    fn logical_message_sizes() {
        assert_eq!(
            logical_message_body("x", b"hello").len() + 24,
            logical_message_len(1, 5)
        );
        assert_eq!(
            logical_message_body("", &[0; 300]).len() + 24,
            logical_message_len(0, 300)
        );
    }
}
