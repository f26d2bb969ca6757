//! The end of complete WAL in a stream of bytes: the decoder's record ends, with the one
//! rule every consumer needs.
//!
//! An XLOG_SWITCH record ends at the next segment boundary, but its end is decoded as soon
//! as its header is, long before the zero padding that fills the rest of its segment has
//! arrived. Its end becomes the end of complete WAL only once the stream reaches it; a
//! complete record decoded after it (in the next segment) supersedes it.
//!
//! Owns: that rule, for the acceptor (WAL arriving from a proposer), the end-of-WAL scan
//! (WAL read back after a restart) and the simulation's disk. Must never: do I/O or buffer
//! WAL (the decoder is O(1) in memory).

use crate::Lsn;
use crate::xlog::decoder::{DecodeError, DecoderConfig, WalStreamDecoder};

/// Tracks where the last complete, CRC-checked record of a stream ends.
#[derive(Debug, Clone)]
pub struct RecordEnds {
    decoder: WalStreamDecoder,
    /// End of the bytes fed so far.
    fed: Lsn,
    /// End of the last complete record.
    end: Lsn,
    /// End of a decoded XLOG_SWITCH whose padding has not all been fed yet.
    pending: Option<Lsn>,
}

impl RecordEnds {
    /// A stream starting at `start`, a record boundary (see [`WalStreamDecoder::new`]).
    pub fn new(start: Lsn, cfg: DecoderConfig) -> Self {
        RecordEnds {
            decoder: WalStreamDecoder::new(start, cfg),
            fed: start,
            end: start,
            pending: None,
        }
    }

    /// Feeds the next bytes and returns the end of complete WAL after them. On a decoding
    /// error, [`RecordEnds::end`] still tells where the last good record ended, and every
    /// later call fails the same way.
    pub fn feed(&mut self, data: &[u8]) -> Result<Lsn, DecodeError> {
        self.decoder.feed(data);
        self.fed = Lsn(self.fed.0 + data.len() as u64);
        loop {
            match self.decoder.next_record() {
                // A complete record after a pending XLOG_SWITCH means the switch's padding
                // is complete too: the later end supersedes it.
                Ok(Some(rec)) if rec.end_lsn <= self.fed => {
                    self.end = rec.end_lsn;
                    self.pending = None;
                }
                // An XLOG_SWITCH ends at the segment end, past the bytes fed so far.
                Ok(Some(rec)) => self.pending = Some(rec.end_lsn),
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = self.pending.filter(|&p| p <= self.fed) {
            // `max`: records after the switch may have been decoded from this same chunk
            // when it straddles the segment boundary.
            self.end = self.end.max(p);
            self.pending = None;
        }
        Ok(self.end)
    }

    /// End of the last complete record.
    pub fn end(&self) -> Lsn {
        self.end
    }

    /// End of the bytes fed.
    pub fn fed_end(&self) -> Lsn {
        self.fed
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::xlog::WalGenerator;

    const SEG: u32 = 1 << 20;

    fn cfg() -> DecoderConfig {
        DecoderConfig::new(150004, SEG, 42)
    }

    #[test]
    fn ends_move_with_complete_records_only() {
        let start = Lsn(u64::from(SEG) + 40);
        let mut g = WalGenerator::new(start, 42, SEG, 15).unwrap();
        let mut wal = BytesMut::new();
        let a = g.append_logical_message("t", &[1; 100], &mut wal).unwrap();
        let b = g.append_logical_message("t", &[2; 300], &mut wal).unwrap();
        let mut ends = RecordEnds::new(start, cfg());
        let split = (a.end_lsn.0 - start.0) as usize + 10;
        assert_eq!(ends.feed(&wal[..split]).unwrap(), a.end_lsn);
        assert_eq!(ends.feed(&wal[split..]).unwrap(), b.end_lsn);
        assert_eq!(ends.fed_end(), Lsn(start.0 + wal.len() as u64));
    }

    #[test]
    fn a_switch_counts_once_its_padding_is_all_there() {
        let start = Lsn(u64::from(SEG) + 40);
        let mut g = WalGenerator::new(start, 42, SEG, 15).unwrap();
        let mut wal = BytesMut::new();
        let a = g.append_logical_message("t", &[1; 100], &mut wal).unwrap();
        let sw = g.append_switch(&mut wal).unwrap().unwrap();
        assert_eq!(sw.end_lsn, Lsn(2 * u64::from(SEG)));
        let after = g.append_logical_message("t", &[3; 50], &mut wal).unwrap();
        let to_seg_end = (sw.end_lsn.0 - start.0) as usize;

        // Everything but the last byte of padding: the switch does not count yet.
        let mut ends = RecordEnds::new(start, cfg());
        assert_eq!(ends.feed(&wal[..to_seg_end - 1]).unwrap(), a.end_lsn);
        assert_eq!(
            ends.feed(&wal[to_seg_end - 1..to_seg_end]).unwrap(),
            sw.end_lsn
        );
        assert_eq!(ends.feed(&wal[to_seg_end..]).unwrap(), after.end_lsn);

        // All at once (one chunk straddling the boundary): the later record wins.
        let mut ends = RecordEnds::new(start, cfg());
        assert_eq!(ends.feed(&wal).unwrap(), after.end_lsn);
    }

    #[test]
    fn an_error_keeps_the_last_good_end() {
        let start = Lsn(u64::from(SEG) + 40);
        let mut g = WalGenerator::new(start, 42, SEG, 15).unwrap();
        let mut wal = BytesMut::new();
        let a = g.append_logical_message("t", &[1; 100], &mut wal).unwrap();
        g.append_logical_message("t", &[2; 100], &mut wal).unwrap();
        let last = wal.len() - 1;
        wal[last] ^= 0xff;
        let mut ends = RecordEnds::new(start, cfg());
        assert!(ends.feed(&wal).is_err());
        assert_eq!(ends.end(), a.end_lsn);
        assert!(ends.feed(&[0; 8]).is_err());
    }
}
