//! The restart path's verdict on the end of WAL it found: what the end means, said at the
//! level it deserves, against the durable-flush watermark of the control file.
//!
//! * The WAL ends below the watermark: WAL that had been fsynced and acknowledged is
//!   damaged or gone. ERROR, and the timeline is refused ([`OpenError::AckedWalDamaged`]):
//!   cutting it could break the quorum's promise.
//! * It ends at or above the watermark at a record that does not decode and is not plain
//!   zeroes: a write torn by a crash after the last fsync. WARN; the tail is cut.
//! * It ends at zeroes or where there is no more WAL: how WAL ends. INFO/DEBUG.
//!
//! Owns: [`judge`]. Must never: do I/O (the scan is done by then) or let WAL below the
//! watermark be cut.

use utils::xlog::{PG_TLI, xlog_file_name};
use utils::{Lsn, TenantTimelineId};

use super::error::{OpenError, WalDamage};
use crate::storage::{ScanStop, WalEnd};

/// Judges the end of WAL `found` by the restart scan of `ttid` against `watermark` (0 =
/// unknown: nothing is refused) and logs it. Returns the end to cut at, or why the
/// timeline must not be opened.
pub(super) fn judge(
    ttid: &TenantTimelineId,
    found: WalEnd,
    watermark: Lsn,
    seg_size: u32,
) -> Result<Lsn, OpenError> {
    let end = found.end;
    let segment = |at: Lsn| segment_name(at, seg_size);
    if watermark.is_valid() && end < watermark {
        let damage = match found.stop {
            ScanStop::Damaged(source) => {
                let at = source.lsn().unwrap_or(end);
                WalDamage::Record {
                    at,
                    segment: segment(at),
                    source,
                }
            }
            ScanStop::Zeroes(source) => WalDamage::Zeroed {
                at: end,
                segment: segment(end),
                source,
            },
            ScanStop::NoMoreWal => WalDamage::Missing {
                at: end,
                segment: segment(end),
            },
        };
        let err = OpenError::AckedWalDamaged { damage, watermark };
        tracing::error!(%ttid, "{err}");
        return Err(err);
    }
    match found.stop {
        ScanStop::Damaged(e) => {
            let at = e.lsn().unwrap_or(end);
            tracing::warn!(
                %ttid,
                "torn write after the last fsync at LSN {at} (segment {}): {e}; cutting the \
                 unacknowledged tail at {end}",
                segment(at)
            );
        }
        ScanStop::Zeroes(e) => tracing::info!(%ttid, "end of WAL at {end}: {e}"),
        ScanStop::NoMoreWal => tracing::debug!(%ttid, "end of WAL at {end}: no more WAL"),
    }
    Ok(end)
}

/// The file name of the segment holding `lsn`.
fn segment_name(lsn: Lsn, seg_size: u32) -> String {
    if seg_size == 0 {
        return "?".into();
    }
    xlog_file_name(PG_TLI, lsn.segment_number(seg_size), seg_size)
}

#[cfg(test)]
mod tests {
    use utils::xlog::DecodeError;
    use utils::{TenantId, TimelineId};

    use super::*;

    const SEG: u32 = 16 << 20;

    fn ttid() -> TenantTimelineId {
        TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]))
    }

    fn crc(at: u64) -> ScanStop {
        ScanStop::Damaged(DecodeError::CrcMismatch { lsn: Lsn(at) })
    }

    #[test]
    fn below_the_watermark_is_refused_naming_the_record_and_segment() {
        let found = WalEnd {
            end: Lsn(0x100_0100),
            stop: crc(0x100_0100),
        };
        let err = judge(&ttid(), found, Lsn(0x100_0200), SEG).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corruption of acknowledged WAL: record at LSN 0/1000100 in segment \
             000000010000000000000001 is damaged (incorrect resource manager data checksum in \
             record at 0/1000100); WAL up to 0/1000200 had been fsynced and acknowledged"
        );
        for stop in [
            ScanStop::NoMoreWal,
            ScanStop::Zeroes(DecodeError::InvalidRecordLength {
                lsn: Lsn(0x100_0100),
                len: 0,
            }),
        ] {
            let found = WalEnd {
                end: Lsn(0x100_0100),
                stop,
            };
            let err = judge(&ttid(), found, Lsn(0x100_0200), SEG).unwrap_err();
            assert!(matches!(err, OpenError::AckedWalDamaged { .. }), "{err}");
        }
    }

    #[test]
    fn at_or_above_the_watermark_or_without_one_the_end_is_cut() {
        for (end, watermark) in [(0x100_0200, 0x100_0200), (0x100_0300, 0x100_0200), (5, 0)] {
            for stop in [crc(end), ScanStop::NoMoreWal] {
                let found = WalEnd {
                    end: Lsn(end),
                    stop,
                };
                assert_eq!(
                    judge(&ttid(), found, Lsn(watermark), SEG).unwrap(),
                    Lsn(end)
                );
            }
        }
    }
}
