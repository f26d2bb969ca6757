//! WAL segment file names, as Postgres's `XLogFileName` writes them, and their inverse.
//!
//! Owns: the `%08X%08X%08X` naming and the `.partial` suffix. Must never: touch the
//! filesystem or accept a name Postgres would not have written (lowercase hex, other
//! suffixes, wrong lengths), so a directory listing can be trusted to name segments only.

use crate::lsn::SegNo;

/// The `.partial` suffix of a segment that is still being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Length of a segment file name without suffix: three 8-digit hex numbers.
const NAME_LEN: usize = 24;

/// Segments per "xlogid" (4 GiB of WAL) for a segment size; 0 only for an invalid size.
fn segments_per_xlog_id(seg_size: u32) -> u64 {
    if seg_size == 0 {
        0
    } else {
        0x1_0000_0000 / u64::from(seg_size)
    }
}

/// The file name of segment `segno` of timeline `tli` (Postgres's `XLogFileName`).
///
/// ```
/// use utils::xlog::{xlog_file_name, DEFAULT_WAL_SEG_SIZE};
/// assert_eq!(xlog_file_name(1, 1, DEFAULT_WAL_SEG_SIZE), "000000010000000000000001");
/// assert_eq!(xlog_file_name(1, 0x1FF, DEFAULT_WAL_SEG_SIZE), "0000000100000001000000FF");
/// ```
pub fn xlog_file_name(tli: u32, segno: SegNo, seg_size: u32) -> String {
    let per_id = segments_per_xlog_id(seg_size).max(1);
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// Parses a segment file name: `<24 uppercase hex digits>` or the same with `.partial`.
///
/// Returns the timeline, the segment number and whether the name had the `.partial`
/// suffix, or `None` for anything Postgres would not have named a segment (including a
/// low part too large for `seg_size`, or a segment size that is zero).
pub fn parse_xlog_file_name(name: &str, seg_size: u32) -> Option<(u32, SegNo, bool)> {
    let (base, is_partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
        Some(base) => (base, true),
        None => (name, false),
    };
    if base.len() != NAME_LEN || !base.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    let part = |i: usize| u32::from_str_radix(base.get(i * 8..(i + 1) * 8)?, 16).ok();
    let (tli, hi, lo) = (part(0)?, u64::from(part(1)?), u64::from(part(2)?));
    let per_id = segments_per_xlog_id(seg_size);
    if per_id == 0 || lo >= per_id {
        return None;
    }
    let segno = hi.checked_mul(per_id)?.checked_add(lo)?;
    Some((tli, segno, is_partial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;
    use crate::xlog::DEFAULT_WAL_SEG_SIZE;
    use proptest::prelude::*;

    const GIB: u32 = 1024 * 1024 * 1024;

    #[test]
    fn names_for_16mib_segments() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        assert_eq!(xlog_file_name(1, 0, seg), "000000010000000000000000");
        let segno = Lsn(0x1000100).segment_number(seg);
        assert_eq!(xlog_file_name(1, segno, seg), "000000010000000000000001");
        assert_eq!(xlog_file_name(1, 0x100, seg), "000000010000000100000000");
        assert_eq!(xlog_file_name(0xAB, 0x2FF, seg), "000000AB00000002000000FF");
    }

    #[test]
    fn names_for_1gib_segments() {
        assert_eq!(xlog_file_name(1, 3, GIB), "000000010000000000000003");
        assert_eq!(xlog_file_name(1, 4, GIB), "000000010000000100000000");
        assert_eq!(
            parse_xlog_file_name("000000010000000100000002", GIB),
            Some((1, 6, false))
        );
        // Only 4 segments per xlogid: a low part of 4 is not a name Postgres writes.
        assert_eq!(parse_xlog_file_name("000000010000000000000004", GIB), None);
    }

    #[test]
    fn parses_full_and_partial_names() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        assert_eq!(
            parse_xlog_file_name("000000010000000000000001", seg),
            Some((1, 1, false))
        );
        assert_eq!(
            parse_xlog_file_name("0000000200000001000000FF.partial", seg),
            Some((2, 0x1FF, true))
        );
    }

    #[test]
    fn rejects_garbage() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        for bad in [
            "",
            ".partial",
            "00000001000000000000001",
            "0000000100000000000000011",
            "00000001000000000000000a",
            "00000001000000000000000G",
            "000000010000000000000001.part",
            "000000010000000000000001.partial.partial",
            "000000010000000000000001.tmp",
            "000000010000000000000100",
            "00000001.history",
            "waltmp",
            " 00000001000000000000001",
            "+00000010000000000000001",
            "0000000100000000000000é1",
        ] {
            assert_eq!(parse_xlog_file_name(bad, seg), None, "{bad:?}");
        }
        assert_eq!(parse_xlog_file_name("000000010000000000000001", 0), None);
    }

    proptest! {
        #[test]
        fn round_trip(tli: u32, segno in 0u64..(1 << 34), shift in 20u32..=30, partial: bool) {
            let seg = 1u32 << shift;
            let mut name = xlog_file_name(tli, segno, seg);
            if partial {
                name.push_str(PARTIAL_SUFFIX);
            }
            prop_assert_eq!(parse_xlog_file_name(&name, seg), Some((tli, segno, partial)));
        }

        #[test]
        fn arbitrary_names_never_panic(name in ".*") {
            let _ = parse_xlog_file_name(&name, DEFAULT_WAL_SEG_SIZE);
        }
    }
}
