//! Page headers inside the decoder: assembling one from the stream and checking it against
//! the configuration and against the record (if any) that continues onto the page.
//!
//! Owns: the page-level checks (magic, flags, pageaddr, long-header fields, continuation
//! flag and length). Must never: look at record bytes; the record walk is in the parent.

use super::{DecodeError, PageHeaderBuf, State, WalStreamDecoder, tot_len_of};
use crate::Lsn;
use crate::xlog::constants::{
    SIZE_OF_XLOG_LONG_PHD, SUPPORTED_PG_MAJORS, XLOG_BLCKSZ, XLP_ALL_FLAGS,
    XLP_FIRST_IS_CONTRECORD, page_header_size, page_magic,
};
use crate::xlog::page::XLogLongPageHeader;

impl WalStreamDecoder {
    /// Feeds bytes of the current page's header; validates it once complete.
    pub(super) fn page_header_step(&mut self, data: &[u8]) -> Result<usize, DecodeError> {
        let page = self.pos.page_lsn();
        let is_long = page.is_segment_start(self.seg_size);
        let mut buf = self.page_header.take().unwrap_or(PageHeaderBuf {
            raw: [0; SIZE_OF_XLOG_LONG_PHD],
            have: 0,
            need: page_header_size(is_long),
        });
        let n = data.len().min(buf.need - buf.have);
        buf.raw[buf.have..buf.have + n].copy_from_slice(&data[..n]);
        buf.have += n;
        self.advance(n)?;
        if buf.have == buf.need {
            self.check_page_header(page, is_long, &buf.raw)?;
        } else {
            self.page_header = Some(buf);
        }
        Ok(n)
    }

    /// Validates a complete page header against the configuration and the decoder's state
    /// (whether a record continues onto this page, and by how much).
    fn check_page_header(
        &mut self,
        page: Lsn,
        is_long: bool,
        raw: &[u8; SIZE_OF_XLOG_LONG_PHD],
    ) -> Result<(), DecodeError> {
        let seg_size = self.seg_size;
        let long = XLogLongPageHeader::from_bytes(raw);
        let hdr = long.std;
        match self.magic {
            Some(m) if m == hdr.magic => {}
            None if SUPPORTED_PG_MAJORS
                .clone()
                .any(|v| page_magic(v) == Some(hdr.magic)) =>
            {
                self.magic = Some(hdr.magic);
            }
            _ => {
                return Err(DecodeError::InvalidMagic {
                    lsn: page,
                    seg_size,
                    magic: hdr.magic,
                });
            }
        }
        if hdr.info & !XLP_ALL_FLAGS != 0 || hdr.is_long() != is_long {
            return Err(DecodeError::InvalidInfoBits {
                lsn: page,
                seg_size,
                info: hdr.info,
            });
        }
        if hdr.pageaddr != page {
            return Err(DecodeError::UnexpectedPageAddr {
                lsn: page,
                seg_size,
                pageaddr: hdr.pageaddr,
            });
        }
        if is_long {
            if let Some(expected) = self.system_id.filter(|&id| id != long.sysid) {
                return Err(DecodeError::SystemIdMismatch {
                    lsn: page,
                    found: long.sysid,
                    expected,
                });
            }
            if long.seg_size != seg_size {
                return Err(DecodeError::SegmentSizeMismatch {
                    lsn: page,
                    found: long.seg_size,
                    expected: seg_size,
                });
            }
            if long.xlog_blcksz as usize != XLOG_BLCKSZ {
                return Err(DecodeError::BlockSizeMismatch {
                    lsn: page,
                    found: long.xlog_blcksz,
                });
            }
        }
        let is_cont = hdr.info & XLP_FIRST_IS_CONTRECORD != 0;
        let expected = match self.state {
            State::FindFirstRecord => {
                // A zero rem_len with the flag set is not something Postgres writes; treat it
                // as "nothing to skip" rather than refusing the segment.
                if is_cont && hdr.rem_len > 0 {
                    self.state = State::SkipContinuation {
                        remaining: u64::from(hdr.rem_len),
                    };
                } else {
                    self.found_first_record(self.pos)?;
                    self.state = State::RecordBoundary;
                }
                return Ok(());
            }
            State::RecordBoundary | State::Skip { .. } => None,
            State::Header { raw, have, .. } => {
                Some(u64::from(tot_len_of(&raw)).saturating_sub(have as u64))
            }
            State::Body { remaining, .. } | State::SkipContinuation { remaining } => {
                Some(remaining)
            }
        };
        match expected {
            None if is_cont => Err(DecodeError::UnexpectedContrecord { lsn: page }),
            None => Ok(()),
            Some(_) if !is_cont => Err(DecodeError::MissingContrecord { lsn: page }),
            Some(expected) if u64::from(hdr.rem_len) != expected => {
                Err(DecodeError::ContrecordLengthMismatch {
                    lsn: page,
                    rem_len: hdr.rem_len,
                    expected,
                })
            }
            Some(_) => Ok(()),
        }
    }
}
