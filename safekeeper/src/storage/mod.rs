//! The storage seam of a timeline: everything the ingest executor does to a disk, as one
//! trait, so that the server's files and the simulation's in-memory disk run the same
//! executor code (steps, effects, group commit, the restart path).
//!
//! Each method states its durability contract; an implementation must keep it exactly,
//! since the executor sends replies (promises about the disk) right after the calls
//! return. [`FileStorage`] is the real one; the simulation's disk lives in
//! `integration_tests::sim` and injects crashes between calls.
//!
//! Owns: the trait, the end-of-WAL scan written once over it ([`find_end_of_wal`]), and the
//! test hook of the real storage ([`hook`]). Must never: decide what to write.

mod file;
pub mod hook;

use std::io;

use bytes::Bytes;
use utils::Lsn;
use utils::xlog::{DecodeError, DecoderConfig, RecordEnds};

pub use file::{FileFlush, FileStorage};
pub use hook::{StorageHook, StorageOp};

use crate::control_file::ControlFileError;
use crate::state::TimelineState;
pub use crate::wal_storage::WriteOutcome;

/// What a timeline's executor needs from a disk.
pub trait Storage {
    /// Reads the persisted state (the control file), checked. Used by the restart path.
    fn load_control(&mut self) -> Result<TimelineState, ControlFileError>;

    /// Durably replaces the persisted state: when this returns, a crash leaves either the
    /// old state or this one, whole.
    fn persist_control(&mut self, state: &TimelineState) -> io::Result<()>;

    /// Starts the WAL of a timeline that has none at `start`: the segment holding `start`
    /// gets `image` (its synthetic beginning) before `start`. Need not be durable by itself
    /// (a later flush is), but must be readable by the next read.
    fn init_wal(&mut self, start: Lsn, image: &[u8]) -> io::Result<()>;

    /// Writes `data` at `lsn`, the end of the WAL written so far. Not durable until
    /// [`Storage::flush_wal`], except that a write completing a segment makes that segment
    /// durable before it returns ([`WriteOutcome::SegmentCompleted`]).
    fn write_wal(&mut self, lsn: Lsn, data: Bytes) -> io::Result<WriteOutcome>;

    /// Makes everything written durable.
    fn flush_wal(&mut self) -> io::Result<()>;

    /// A flush that runs while writes go on: writes out what is batched and returns a
    /// flush of everything written so far, to [`PendingFlush::run`] on another thread. At
    /// most one is pending; nothing it covers counts as durable until
    /// [`Storage::await_flush`] returned.
    type Flush: PendingFlush;

    /// Begins a flush (see [`Storage::Flush`]).
    fn begin_flush(&mut self) -> io::Result<Self::Flush>;

    /// Returns once the begun flush has run (at once if it has, or if none was begun),
    /// with its error if it failed. Afterwards what it covered is durable.
    fn await_flush(&mut self) -> io::Result<()>;

    /// Durably cuts the WAL at `end` and continues writing there: nothing at or above
    /// `end` may be found again, even after a crash midway. `Lsn(0)` removes all WAL.
    fn truncate_wal(&mut self, end: Lsn) -> io::Result<()>;

    /// Reads WAL at `lsn` into `buf` for the end-of-WAL scan, never across a segment
    /// boundary: the number of bytes read, 0 where there is no more WAL (a missing or
    /// short segment).
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize>;
}

/// A flush begun by [`Storage::begin_flush`], run off the ingest loop.
pub trait PendingFlush: Send + 'static {
    /// Does the flush (blocks: an fdatasync); its outcome is reported by
    /// [`Storage::await_flush`].
    fn run(self);
}

/// Why the end-of-WAL scan stopped (the restart path judges it against the watermark).
#[derive(Debug)]
pub enum ScanStop {
    /// No more WAL: a missing or short segment.
    NoMoreWal,
    /// The next record does not decode and its segment holds only zeroes from the end
    /// found onward: space never written (how WAL normally ends).
    Zeroes(DecodeError),
    /// The next record does not decode and non-zero bytes follow the end found: a record
    /// torn by a crash, or damaged.
    Damaged(DecodeError),
}

/// Where valid WAL ends, and why the scan stopped there.
#[derive(Debug)]
pub struct WalEnd {
    /// The end of the last complete, CRC-checked record.
    pub end: Lsn,
    /// Why nothing valid follows.
    pub stop: ScanStop,
}

/// Finds the end of valid WAL by decoding forward from `start` (a record boundary at or
/// below the end, normally the persisted commit_lsn): the end of the last complete record
/// whose CRC matches. Stops where there is no more WAL or at the first record that does
/// not decode, and then tells zeroed space (never written) from anything else by reading
/// the rest of the end's segment. Logs nothing: the caller knows what the end means.
pub fn find_end_of_wal<S: Storage + ?Sized>(
    storage: &mut S,
    start: Lsn,
    cfg: DecoderConfig,
) -> io::Result<WalEnd> {
    let mut ends = RecordEnds::new(start, cfg);
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut pos = start;
    loop {
        let n = storage.read_wal(pos, &mut buf)?;
        if n == 0 {
            return Ok(WalEnd {
                end: ends.end(),
                stop: ScanStop::NoMoreWal,
            });
        }
        if let Err(e) = ends.feed(&buf[..n]) {
            let end = ends.end();
            let stop = if zeroes_from(storage, end, cfg.wal_seg_size, &mut buf)? {
                ScanStop::Zeroes(e)
            } else {
                ScanStop::Damaged(e)
            };
            return Ok(WalEnd { end, stop });
        }
        pos = Lsn(pos.0 + n as u64);
    }
}

/// How much the end-of-WAL scan reads at once.
const SCAN_CHUNK: usize = 256 * 1024;

/// True if the WAL from `from` to the end of its segment (or of the WAL) is all zeroes.
fn zeroes_from<S: Storage + ?Sized>(
    storage: &mut S,
    from: Lsn,
    seg_size: u32,
    buf: &mut [u8],
) -> io::Result<bool> {
    let seg_end = Lsn(from.0 + from.remaining_in_segment(seg_size));
    let mut pos = from;
    while pos < seg_end {
        let n = storage.read_wal(pos, buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos = Lsn(pos.0 + n as u64);
    }
    Ok(true)
}
