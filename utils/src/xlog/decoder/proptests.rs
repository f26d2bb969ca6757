//! Property tests: the decoder never panics on any bytes, and how valid WAL is chunked
//! never changes what it decodes.

use proptest::prelude::*;

use super::tests::{START, SYSID, Wal, cfg, decode};
use super::*;

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunked<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn drain(d: &mut WalStreamDecoder, out: &mut Vec<DecodedRecord>) -> Option<DecodeError> {
    loop {
        match d.next_record() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// Valid WAL from START: records with these body sizes; `switch_after` inserts a switch.
fn valid_wal(sizes: &[usize], switch_after: Option<usize>) -> Wal {
    let mut wal = Wal::new(START);
    for (i, &len) in sizes.iter().enumerate() {
        wal.record(len);
        if switch_after == Some(i) {
            wal.switch();
        }
    }
    wal
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        start in any::<u64>(),
        page_start: bool,
        shift in 19u32..=31,
        pg_major in 0u32..20,
    ) {
        let seg_size = 1u32 << shift;
        let config = DecoderConfig { pg_major, wal_seg_size: seg_size, system_id: Some(SYSID) };
        let start = Lsn(if page_start { start & !0x1FFF } else { start & !7 });
        for mut d in [
            WalStreamDecoder::new(start, config),
            WalStreamDecoder::new_at_segment_start(start, config),
        ] {
            let mut out = Vec::new();
            for piece in chunked(&bytes, &cuts) {
                d.feed(piece);
                drain(&mut d, &mut out);
            }
            let _ = (d.position(), d.last_record_end(), d.first_record_lsn());
        }
    }

    #[test]
    fn corrupted_wal_never_panics_and_keeps_a_valid_prefix(
        sizes in proptest::collection::vec(0usize..20_000, 1..12),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let wal = valid_wal(&sizes, Some(sizes.len() / 2));
        let mut bytes = wal.bytes.to_vec();
        for (at, x) in flips {
            let at = at % bytes.len();
            bytes[at] ^= x;
        }
        let mut d = WalStreamDecoder::new(START, cfg());
        let mut out = Vec::new();
        for piece in chunked(&bytes, &cuts) {
            d.feed(piece);
            drain(&mut d, &mut out);
        }
        // Whatever decodes is a prefix of what was written (CRCs catch the rest), except a
        // flip inside skipped padding, which changes nothing.
        for (got, want) in out.iter().zip(&wal.records) {
            prop_assert_eq!((got.start_lsn, got.end_lsn), (want.start_lsn, want.end_lsn));
        }
    }

    #[test]
    fn chunking_never_changes_the_records(
        sizes in proptest::collection::vec(0usize..30_000, 1..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        switch_after in proptest::option::of(0usize..20),
    ) {
        let wal = valid_wal(&sizes, switch_after);
        let (whole, err) = decode(WalStreamDecoder::new(START, cfg()), &wal.bytes, usize::MAX);
        prop_assert_eq!(err, None);
        let mut d = WalStreamDecoder::new(START, cfg());
        let mut pieces = Vec::new();
        for piece in chunked(&wal.bytes, &cuts) {
            d.feed(piece);
            prop_assert_eq!(drain(&mut d, &mut pieces), None);
        }
        prop_assert_eq!(&pieces, &whole);
        let want: Vec<(Lsn, Lsn)> = wal.records.iter().map(|r| (r.start_lsn, r.end_lsn)).collect();
        let got: Vec<(Lsn, Lsn)> = whole.iter().map(|r| (r.start_lsn, r.end_lsn)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(d.position(), wal.g.position());
    }
}
