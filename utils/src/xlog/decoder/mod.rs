//! A streaming WAL record decoder: bytes in (any chunking), record boundaries out.
//!
//! Owns: the walk over page headers (short on every page, long at segment starts) and
//! records (headers that may straddle pages, bodies that may span segments, XLOG_SWITCH),
//! with the checks of PostgreSQL's reader: page magic, flags, pageaddr, long-header fields,
//! continuation flags and lengths, `xl_tot_len`, CRC-32C.
//!
//! Must never: buffer a record (memory is O(1) in `xl_tot_len`; only a page header and a
//! record header are ever assembled, and the CRC is computed as the bytes pass), do I/O, or
//! panic on any input. Every fed byte is consumed at once; the only thing that grows is the
//! queue of decoded records a caller has not drained yet (small structs, one per record).

#[cfg(test)]
mod check_tests;
mod error;
mod page_check;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod types;

use std::collections::VecDeque;

pub use error::DecodeError;
pub use types::{DecodedRecord, DecoderConfig};

use crate::Lsn;
use crate::xlog::constants::{
    MAX_RECORD_LEN, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_RECORD, XLOG_BLCKSZ, is_valid_seg_size,
    page_magic,
};
use crate::xlog::page::{is_valid_stream_start, record_start_at};
use crate::xlog::record::{XLogRecordHeader, record_crc_finish};

/// Where the decoder is between page headers.
#[derive(Debug, Clone, Copy)]
enum State {
    /// At the first page of a stream opened by [`WalStreamDecoder::new_at_segment_start`]:
    /// its header says whether the tail of an unseen record comes first.
    FindFirstRecord,
    /// Passing over the tail of a record whose start was never seen.
    SkipContinuation { remaining: u64 },
    /// At a record boundary: the next byte outside a page header starts a record.
    RecordBoundary,
    /// Assembling the 24-byte record header (it may straddle a page boundary).
    Header {
        start: Lsn,
        raw: [u8; SIZE_OF_XLOG_RECORD],
        have: usize,
    },
    /// Streaming the record body through the CRC.
    Body {
        start: Lsn,
        raw: [u8; SIZE_OF_XLOG_RECORD],
        remaining: u64,
        crc: u32,
    },
    /// Passing over unvalidated bytes up to `until`: MAXALIGN padding, or the rest of a
    /// segment after XLOG_SWITCH (which Postgres zeroes, page headers included).
    Skip { until: Lsn },
}

/// A page header being assembled.
#[derive(Debug, Clone, Copy)]
struct PageHeaderBuf {
    raw: [u8; SIZE_OF_XLOG_LONG_PHD],
    have: usize,
    need: usize,
}

/// Decodes a WAL byte stream into records; see the module documentation.
///
/// Typical use: [`feed`](Self::feed) each chunk as it arrives, then call
/// [`next_record`](Self::next_record) until it returns `Ok(None)`; the `end_lsn` of the
/// last record is the end of complete WAL. Errors are sticky: once one is found, later
/// bytes are ignored and `next_record` returns it (after the records decoded before it).
#[derive(Debug, Clone)]
pub struct WalStreamDecoder {
    seg_size: u32,
    system_id: Option<u64>,
    /// The page magic to expect; `None` until the first page when any version is accepted.
    magic: Option<u16>,
    /// LSN of the next byte to consume.
    pos: Lsn,
    page_header: Option<PageHeaderBuf>,
    state: State,
    first_record: Option<Lsn>,
    last_end: Lsn,
    ready: VecDeque<DecodedRecord>,
    error: Option<DecodeError>,
}

impl WalStreamDecoder {
    /// A decoder for a stream that begins at `start`, a record boundary: mid-page past the
    /// page header, or a page start (the stream then begins with that page's header).
    ///
    /// An unusable configuration or start is reported by the first `next_record` call.
    pub fn new(start: Lsn, cfg: DecoderConfig) -> Self {
        let mut d = Self::with_state(start, cfg, State::RecordBoundary);
        if d.error.is_none() {
            match record_start_at(start, cfg.wal_seg_size) {
                Some(first) if is_valid_stream_start(start, cfg.wal_seg_size) => {
                    d.first_record = Some(first);
                    d.last_end = start;
                }
                _ => d.error = Some(DecodeError::InvalidStartLsn { lsn: start }),
            }
        }
        d
    }

    /// A decoder for a stream that begins at a page start (normally a segment start) without
    /// knowing where the first record begins: the tail of a record continued from before
    /// (announced by `XLP_FIRST_IS_CONTRECORD` / `xlp_rem_len`, possibly over several pages)
    /// is skipped, and [`first_record_lsn`](Self::first_record_lsn) reports where the first
    /// whole record starts once that is known.
    pub fn new_at_segment_start(page_start: Lsn, cfg: DecoderConfig) -> Self {
        let mut d = Self::with_state(page_start, cfg, State::FindFirstRecord);
        if d.error.is_none() && !page_start.is_page_start() {
            d.error = Some(DecodeError::InvalidStartLsn { lsn: page_start });
        }
        d
    }

    fn with_state(pos: Lsn, cfg: DecoderConfig, state: State) -> Self {
        let mut magic = None;
        let mut error = None;
        if !is_valid_seg_size(cfg.wal_seg_size) {
            error = Some(DecodeError::InvalidSegmentSize {
                seg_size: cfg.wal_seg_size,
            });
        } else if cfg.pg_major != 0 {
            magic = page_magic(cfg.pg_major);
            if magic.is_none() {
                error = Some(DecodeError::UnsupportedPgVersion {
                    pg_major: cfg.pg_major,
                });
            }
        }
        WalStreamDecoder {
            seg_size: cfg.wal_seg_size,
            system_id: cfg.system_id.filter(|&id| id != 0),
            magic,
            pos,
            page_header: None,
            state,
            first_record: None,
            last_end: Lsn::INVALID,
            ready: VecDeque::new(),
            error,
        }
    }

    /// Consumes the next bytes of the stream. Never fails: a problem is remembered and
    /// returned by [`next_record`](Self::next_record), and bytes after it are ignored.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            match self.step(data) {
                Ok(n) => data = data.get(n..).unwrap_or_default(),
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// The next complete record, `Ok(None)` if more bytes are needed, or the error that
    /// stopped decoding (every record before it is returned first; the error repeats).
    pub fn next_record(&mut self) -> Result<Option<DecodedRecord>, DecodeError> {
        if let Some(rec) = self.ready.pop_front() {
            self.last_end = rec.end_lsn;
            return Ok(Some(rec));
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// LSN of the next byte the decoder expects (where it stopped, after an error).
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// End of the last record returned by `next_record`; before any, the start boundary
    /// (for [`new_at_segment_start`](Self::new_at_segment_start): the first record's LSN once
    /// found, `0/0` until then).
    pub fn last_record_end(&self) -> Lsn {
        self.last_end
    }

    /// LSN of the first whole record of the stream, once known.
    pub fn first_record_lsn(&self) -> Option<Lsn> {
        self.first_record
    }

    /// The error that stopped decoding, if any.
    pub fn error(&self) -> Option<&DecodeError> {
        self.error.as_ref()
    }

    /// Consumes a prefix of `data` (possibly empty, for a pure state change).
    fn step(&mut self, data: &[u8]) -> Result<usize, DecodeError> {
        let avail = data.len().min(XLOG_BLCKSZ - self.pos.page_offset());
        let chunk = data.get(..avail).unwrap_or_default();
        match self.state {
            State::Skip { until } => {
                let n = take(data.len(), until.distance_from(self.pos).unwrap_or(0));
                if n == 0 {
                    self.state = State::RecordBoundary;
                }
                self.advance(n)?;
                Ok(n)
            }
            _ if self.page_header.is_some() || self.pos.is_page_start() => {
                self.page_header_step(data)
            }
            State::FindFirstRecord => Err(DecodeError::InvalidStartLsn { lsn: self.pos }),
            State::SkipContinuation { remaining } => {
                let n = take(avail, remaining);
                self.advance(n)?;
                let remaining = remaining - n as u64;
                if remaining == 0 {
                    let boundary = self
                        .pos
                        .align()
                        .ok_or(DecodeError::LsnOverflow { lsn: self.pos })?;
                    self.found_first_record(boundary)?;
                    self.state = State::Skip { until: boundary };
                } else {
                    self.state = State::SkipContinuation { remaining };
                }
                Ok(n)
            }
            State::RecordBoundary => {
                let raw = [0u8; SIZE_OF_XLOG_RECORD];
                self.state = State::Header {
                    start: self.pos,
                    raw,
                    have: 0,
                };
                Ok(0)
            }
            State::Header {
                start,
                mut raw,
                have,
            } => {
                let n = avail.min(SIZE_OF_XLOG_RECORD - have);
                raw[have..have + n].copy_from_slice(&chunk[..n]);
                self.advance(n)?;
                let have = have + n;
                if have >= 4 {
                    check_tot_len(start, tot_len_of(&raw))?;
                }
                if have < SIZE_OF_XLOG_RECORD {
                    self.state = State::Header { start, raw, have };
                } else {
                    let remaining = u64::from(tot_len_of(&raw)) - SIZE_OF_XLOG_RECORD as u64;
                    self.state = State::Body {
                        start,
                        raw,
                        remaining,
                        crc: 0,
                    };
                    if remaining == 0 {
                        self.finish_record(start, raw, 0)?;
                    }
                }
                Ok(n)
            }
            State::Body {
                start,
                raw,
                remaining,
                crc,
            } => {
                let n = take(avail, remaining);
                let crc = crc32c::crc32c_append(crc, &chunk[..n]);
                self.advance(n)?;
                let remaining = remaining - n as u64;
                self.state = State::Body {
                    start,
                    raw,
                    remaining,
                    crc,
                };
                if remaining == 0 {
                    self.finish_record(start, raw, crc)?;
                }
                Ok(n)
            }
        }
    }

    /// Records where the first whole record begins (`boundary` may be a page start, in which
    /// case the record begins past that page's header).
    fn found_first_record(&mut self, boundary: Lsn) -> Result<(), DecodeError> {
        let first = record_start_at(boundary, self.seg_size)
            .ok_or(DecodeError::LsnOverflow { lsn: boundary })?;
        self.first_record = Some(first);
        if !self.last_end.is_valid() {
            self.last_end = first;
        }
        Ok(())
    }

    /// Checks the CRC of the record that just ended at `self.pos` and queues it.
    fn finish_record(
        &mut self,
        start: Lsn,
        raw: [u8; SIZE_OF_XLOG_RECORD],
        body_crc: u32,
    ) -> Result<(), DecodeError> {
        let header = XLogRecordHeader::from_bytes(&raw);
        if record_crc_finish(body_crc, &raw) != header.crc {
            return Err(DecodeError::CrcMismatch { lsn: start });
        }
        let overflow = DecodeError::LsnOverflow { lsn: self.pos };
        let mut end = self.pos.align().ok_or_else(|| overflow.clone())?;
        let is_switch = header.is_switch();
        if is_switch && !end.is_segment_start(self.seg_size) {
            end = end
                .segment_lsn(self.seg_size)
                .checked_add(u64::from(self.seg_size))
                .ok_or(overflow)?;
        }
        self.ready.push_back(DecodedRecord {
            start_lsn: start,
            end_lsn: end,
            xl_rmid: header.rmid,
            xl_info: header.info,
            xl_xid: header.xid,
            xl_prev: header.prev,
            total_len: header.tot_len,
            is_switch,
        });
        self.state = State::Skip { until: end };
        Ok(())
    }

    fn advance(&mut self, n: usize) -> Result<(), DecodeError> {
        self.pos = self
            .pos
            .checked_add(n as u64)
            .ok_or(DecodeError::LsnOverflow { lsn: self.pos })?;
        Ok(())
    }
}

/// `min(avail, remaining)` without truncating `remaining` on narrow platforms.
fn take(avail: usize, remaining: u64) -> usize {
    usize::try_from(remaining).map_or(avail, |r| avail.min(r))
}

fn tot_len_of(raw: &[u8; SIZE_OF_XLOG_RECORD]) -> u32 {
    u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])
}

fn check_tot_len(start: Lsn, len: u32) -> Result<(), DecodeError> {
    if (len as usize) < SIZE_OF_XLOG_RECORD {
        Err(DecodeError::InvalidRecordLength { lsn: start, len })
    } else if len > MAX_RECORD_LEN {
        Err(DecodeError::RecordTooLong { lsn: start, len })
    } else {
        Ok(())
    }
}
