//! Checks of a WAL segment read back from the archive, beyond its checksum: every page
//! header in the WAL range the object claims has the right address, timeline and format,
//! and the segment's long header (when the range starts at the segment) names the right
//! system and segment size. Pages whose header is all zeros are unused (what follows a
//! WAL switch record). Pure: tested on generated WAL.
//!
//! Owns: that check. Must never: pass a page whose address is not where it lies.

use utils::xlog::{
    SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_SHORT_PHD, XLOG_BLCKSZ, XLP_LONG_HEADER,
    XLogLongPageHeader, XLogPageHeader,
};
use utils::{Lsn, SegNo};

/// What the pages must say.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The segment's number.
    pub segno: SegNo,
    /// The segment size.
    pub seg_size: u32,
    /// The cluster's system id, when known.
    pub system_id: Option<u64>,
}

/// Checks the page headers of `data` (a whole segment) on the pages wholly inside
/// `start..end`. Returns the system id of the long header when it was checked.
pub fn check_segment(data: &[u8], start: Lsn, end: Lsn, e: Expect) -> Result<Option<u64>, String> {
    let seg_start = e.segno * u64::from(e.seg_size);
    if data.len() != e.seg_size as usize {
        return Err(format!(
            "{} bytes, not a segment of {}",
            data.len(),
            e.seg_size
        ));
    }
    let page = XLOG_BLCKSZ as u64;
    // The first page whose header is WAL of this range (a range starting mid-page does
    // not hold that page's header).
    let mut at = start.0.max(seg_start).div_ceil(page) * page;
    let stop = end.0.min(seg_start + u64::from(e.seg_size));
    let mut magic = None;
    let mut sysid = None;
    while at + SIZE_OF_XLOG_SHORT_PHD as u64 <= stop {
        let off = (at - seg_start) as usize;
        let raw = &data[off..off + SIZE_OF_XLOG_SHORT_PHD];
        // A page never written: the rest of a segment after a WAL switch record is zeros.
        if raw.iter().all(|&b| b == 0) {
            at += page;
            continue;
        }
        let h = XLogPageHeader::decode(raw).map_err(|x| x.to_string())?;
        let here = Lsn(at);
        if h.pageaddr != here {
            return Err(format!(
                "the page at {here} says it is at {}: not this segment's WAL",
                h.pageaddr
            ));
        }
        if h.tli != 1 {
            return Err(format!(
                "the page at {here} is of timeline {}, not 1",
                h.tli
            ));
        }
        match magic {
            None => magic = Some(h.magic),
            Some(m) if m != h.magic => {
                return Err(format!(
                    "the page at {here} has format {:#06x}, earlier pages {m:#06x}",
                    h.magic
                ));
            }
            _ => {}
        }
        if off == 0 {
            if h.info & XLP_LONG_HEADER == 0 || stop < at + SIZE_OF_XLOG_LONG_PHD as u64 {
                return Err(format!(
                    "the segment's first page at {here} has no long header"
                ));
            }
            let l = XLogLongPageHeader::decode(data).map_err(|x| x.to_string())?;
            if l.seg_size != e.seg_size || l.xlog_blcksz as usize != XLOG_BLCKSZ {
                return Err(format!(
                    "segment size {} and page size {} in the long header, expected {} and {XLOG_BLCKSZ}",
                    l.seg_size, l.xlog_blcksz, e.seg_size
                ));
            }
            if let Some(want) = e.system_id
                && l.sysid != want
            {
                return Err(format!(
                    "system id {} in the long header, expected {want}",
                    l.sysid
                ));
            }
            sysid = Some(l.sysid);
        }
        at += page;
    }
    Ok(sysid)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use utils::xlog::WalGenerator;

    use super::*;

    const SEG: u32 = 1 << 20;
    const SYS: u64 = 7_000_000_000_000_000_042;

    /// Segment 1 and 2 of generated WAL starting at segment 1.
    fn two_segments() -> Vec<u8> {
        let mut g = WalGenerator::new(Lsn(u64::from(SEG)), SYS, SEG, 15).unwrap();
        let mut out = BytesMut::new();
        while out.len() < 2 * SEG as usize {
            g.append_logical_message("verify", &[7; 3000], &mut out)
                .unwrap();
        }
        out[..2 * SEG as usize].to_vec()
    }

    fn expect(segno: SegNo, system_id: Option<u64>) -> Expect {
        Expect {
            segno,
            seg_size: SEG,
            system_id,
        }
    }

    #[test]
    fn real_segments_pass_and_give_their_system() {
        let w = two_segments();
        let s = u64::from(SEG);
        let seg2 = &w[SEG as usize..];
        assert_eq!(
            check_segment(seg2, Lsn(2 * s), Lsn(3 * s), expect(2, Some(SYS))),
            Ok(Some(SYS))
        );
        // A range starting mid-segment checks the pages after it only.
        assert_eq!(
            check_segment(seg2, Lsn(2 * s + 100), Lsn(3 * s), expect(2, Some(1))),
            Ok(None)
        );
        // A partial range stops at its end.
        assert!(check_segment(seg2, Lsn(2 * s), Lsn(2 * s + 10_000), expect(2, None)).is_ok());
    }

    #[test]
    fn the_wrong_segment_system_or_damage_is_named() {
        let w = two_segments();
        let s = u64::from(SEG);
        let seg1 = &w[..SEG as usize];
        let seg2 = &w[SEG as usize..];
        let e = check_segment(seg1, Lsn(2 * s), Lsn(3 * s), expect(2, None)).unwrap_err();
        assert!(e.contains("says it is at"), "{e}");
        let e = check_segment(seg2, Lsn(2 * s), Lsn(3 * s), expect(2, Some(5))).unwrap_err();
        assert!(e.contains("system id"), "{e}");
        let mut bad = seg2.to_vec();
        bad[3 * XLOG_BLCKSZ + 8] ^= 0xff; // a page address
        let e = check_segment(&bad, Lsn(2 * s), Lsn(3 * s), expect(2, None)).unwrap_err();
        assert!(e.contains("says it is at"), "{e}");
        let e = check_segment(&seg2[..100], Lsn(2 * s), Lsn(3 * s), expect(2, None)).unwrap_err();
        assert!(e.contains("not a segment"), "{e}");
        // Zeros after a switch are fine.
        let mut switched = seg2.to_vec();
        switched[4 * XLOG_BLCKSZ..].fill(0);
        assert!(check_segment(&switched, Lsn(2 * s), Lsn(3 * s), expect(2, Some(SYS))).is_ok());
    }
}
