//! WAL for unit tests: valid records made by the generator, with their ends.

use bytes::{Bytes, BytesMut};
use utils::Lsn;
use utils::xlog::WalGenerator;

/// `n` valid records (logical messages of `size` payload bytes) starting at `start`, in
/// segments of `seg_size`; returns the bytes and the end of every record.
pub(crate) fn records(start: Lsn, seg_size: u32, n: usize, size: usize) -> (Bytes, Vec<Lsn>) {
    let mut g = WalGenerator::new(start, 42, seg_size, 15).expect("generator");
    let mut out = BytesMut::new();
    let ends = (0..n)
        .map(|_| {
            g.append_logical_message("t", &vec![7u8; size], &mut out)
                .expect("a record")
                .end_lsn
        })
        .collect();
    (out.freeze(), ends)
}
