//! Checking the WAL a stream sends before it goes out: every record's headers and CRC.
//!
//! WAL was checked when it arrived, but a disk can change bytes later (a flipped bit in a
//! complete segment, a damaged `.partial`). A reader must never receive a record whose
//! CRC fails, so each chunk read for sending is first fed through a streaming decoder
//! (O(1) memory: the CRC is computed as the bytes pass) and only bytes before a damaged
//! record go out; the stream then ends with `XX001` naming the segment and LSN.
//!
//! A record that began in an earlier chunk has had its first bytes sent before its CRC
//! could be checked; a reader that gets the beginning of a damaged record never gets its
//! end, so it never holds the whole of one.
//!
//! Owns: [`Verifier`]. Must never: buffer WAL, do I/O, or let a byte at or above a
//! damaged record's start through.

use utils::xlog::{DecodeError, DecoderConfig, WalStreamDecoder, xlog_file_name};
use utils::{Lsn, TenantTimelineId};

use crate::errors::ClientError;

/// The decoder of one stream, fed with exactly the bytes the stream reads.
pub(super) struct Verifier {
    decoder: WalStreamDecoder,
    /// LSN of the next byte to feed.
    next: Lsn,
    seg_size: u32,
}

impl Verifier {
    /// A verifier for a stream whose first byte to send is `pos`: it starts at the start of
    /// `pos`'s page (every page of a timeline's segments has a header, the first segment's
    /// synthetic image included), so the bytes of that page before `pos` must be fed first
    /// (see [`Verifier::next`]).
    pub(super) fn new(pos: Lsn, cfg: DecoderConfig) -> Self {
        let start = pos.page_lsn();
        Verifier {
            decoder: WalStreamDecoder::new_at_segment_start(start, cfg),
            next: start,
            seg_size: cfg.wal_seg_size,
        }
    }

    /// The LSN of the next byte to feed.
    pub(super) fn next(&self) -> Lsn {
        self.next
    }

    /// Feeds `data`, the WAL at [`Verifier::next`], and returns how many of its bytes may be
    /// sent: all of them, or, when a record among them (or a page header) is damaged, those
    /// before the damage, with the error that ends the stream.
    pub(super) fn check(&mut self, data: &[u8]) -> (usize, Option<WalCorruption>) {
        let at = self.next;
        self.decoder.feed(data);
        self.next = Lsn(at.0 + data.len() as u64);
        // Drain what was decoded: only the error matters here.
        let error = loop {
            match self.decoder.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        let Some(error) = error else {
            return (data.len(), None);
        };
        // The damage starts at the bad record's (or page's) first byte. When that record
        // began in an earlier chunk, its first bytes are out already (see the module
        // docs): nothing of this chunk goes, so the reader never has the whole record.
        let lsn = error.lsn().unwrap_or(at);
        let good = (lsn.max(at).0 - at.0).min(data.len() as u64) as usize;
        (
            good,
            Some(WalCorruption {
                lsn,
                segment: xlog_file_name(1, lsn.segment_number(self.seg_size), self.seg_size),
                error,
            }),
        )
    }
}

/// Damaged WAL found by a [`Verifier`].
#[derive(Debug)]
pub(super) struct WalCorruption {
    /// Where the damage starts.
    pub(super) lsn: Lsn,
    /// The segment file holding it.
    pub(super) segment: String,
    /// What the decoder found.
    pub(super) error: DecodeError,
}

impl WalCorruption {
    /// The error the stream ends with.
    pub(super) fn into_client_error(self, ttid: TenantTimelineId) -> ClientError {
        ClientError::WalCorrupt {
            ttid,
            lsn: self.lsn,
            segment: self.segment,
            reason: self.error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use utils::xlog::WalGenerator;

    const SEG: u32 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_123;

    /// WAL from the start of segment 1 (long page header included) with records of varied
    /// sizes, and the start of every record.
    fn wal() -> (Vec<u8>, Vec<Lsn>) {
        let start = Lsn(u64::from(SEG) + 40);
        let mut g = WalGenerator::new(start, SYSID, SEG, 15).unwrap();
        let mut out = BytesMut::new();
        let mut starts = Vec::new();
        for i in 0..40usize {
            let body = vec![i as u8; [10, 3_000, 20_000, 150][i % 4]];
            let rec = g.append_logical_message("verify", &body, &mut out).unwrap();
            starts.push(rec.start_lsn);
        }
        let image = utils::xlog::first_segment_image(start, SEG, SYSID, 15).unwrap();
        ([image, out.to_vec()].concat(), starts)
    }

    fn cfg() -> DecoderConfig {
        DecoderConfig::new(150000, SEG, SYSID)
    }

    /// Feeds `wal` from `from` in `chunk`-byte pieces; returns bytes allowed and the error.
    fn run(wal: &[u8], from: Lsn, chunk: usize) -> (usize, Option<WalCorruption>) {
        let base = u64::from(SEG);
        let mut v = Verifier::new(from, cfg());
        let mut off = (v.next().0 - base) as usize;
        let mut allowed = 0;
        while off < wal.len() {
            let end = (off + chunk).min(wal.len());
            let (n, err) = v.check(&wal[off..end]);
            allowed = off + n;
            if err.is_some() {
                return (allowed, err);
            }
            off = end;
        }
        (allowed, None)
    }

    #[test]
    fn good_wal_passes_whatever_the_chunking_and_start() {
        let (wal, starts) = wal();
        for chunk in [1, 100, 8192, 128 * 1024] {
            assert_eq!(run(&wal, Lsn(u64::from(SEG)), chunk).0, wal.len());
        }
        // Mid-page starts (a pageserver's record boundary, the tail of `0/0`, the middle
        // of a record): the page is fed from its start.
        for from in [starts[5], starts[17], Lsn(starts[17].0 + 5000)] {
            let (n, err) = run(&wal, from, 128 * 1024);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(n, wal.len());
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_stream_before_its_record() {
        let (wal, starts) = wal();
        let base = u64::from(SEG);
        for (victim, chunk) in [(9, 128 * 1024), (22, 8192), (30, 7)] {
            let mut bad = wal.clone();
            // A byte of the record's body (past its 24-byte header).
            let at = (starts[victim].0 - base) as usize + 30;
            bad[at] ^= 0x40;
            let (allowed, err) = run(&bad, Lsn(base), chunk);
            let err = err.expect("the damage is found");
            assert_eq!(err.lsn, starts[victim]);
            assert_eq!(err.segment, "000000010000000000000001");
            assert!(
                matches!(err.error, DecodeError::CrcMismatch { .. }),
                "{err:?}"
            );
            // Never the whole damaged record; nothing past its start from the chunk that
            // holds its end.
            let allowed = Lsn(base + allowed as u64);
            assert!(allowed < starts[victim + 1], "{allowed}");
            if chunk >= 20_000 {
                assert!(allowed <= starts[victim], "{allowed}");
            }
        }
    }

    #[test]
    fn a_damaged_page_header_is_found_too() {
        let (wal, _) = wal();
        let mut bad = wal.clone();
        // The magic of the third page.
        bad[2 * 8192] ^= 0xff;
        let (allowed, err) = run(&bad, Lsn(u64::from(SEG)), 128 * 1024);
        let err = err.expect("found");
        assert!(
            matches!(err.error, DecodeError::InvalidMagic { .. }),
            "{err:?}"
        );
        assert_eq!(err.lsn, Lsn(u64::from(SEG) + 2 * 8192));
        assert!(allowed <= 2 * 8192);
    }
}
