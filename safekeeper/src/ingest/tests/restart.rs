//! The restart path against the durable-flush watermark, over the in-memory disk: damage
//! below it refuses the timeline and cuts nothing, damage above it is a torn tail that is
//! cut, and a truncation lowers the watermark in the control file before it cuts.

use pq_proto::proposer::{Generation, ProposerElected, ProposerMessage, VoteRequest};
use utils::xlog::DecoderConfig;
use utils::{Lsn, NodeId, Term, TermHistory, TermLsn};

use super::{Disk, SEG, START, elected, push, ttid, wal};
use crate::ingest::{Executor, OpenError, TimelineError, WalDamage};
use crate::storage::{ScanStop, find_end_of_wal};

/// An elected executor's disk holding six flushed records (their ends returned), with the
/// watermark of the control file at the end of record number `watermark_after` (1-based).
fn six_records(watermark_after: usize) -> (Disk, Vec<Lsn>) {
    let mut e = elected();
    let (data, ends) = wal(START, 6, 100);
    let cut = (ends[watermark_after - 1].0 - START.0) as usize;
    push(&mut e, 1, START, data.slice(..cut));
    e.flush_owed().unwrap();
    e.checkpoint().unwrap();
    push(&mut e, 1, ends[watermark_after - 1], data.slice(cut..));
    e.flush_owed().unwrap();
    let disk = std::mem::take(e.storage_mut());
    let persisted = disk.control.as_ref().unwrap().durable_flush_lsn;
    assert_eq!(
        persisted,
        ends[watermark_after - 1],
        "the checkpoint wrote it"
    );
    assert_eq!(disk.durable, disk.wal.len(), "all six flushed");
    (disk, ends)
}

/// Flips a byte inside the record that ends at `ends[i]` (record number `i + 1`).
fn damage(disk: &mut Disk, ends: &[Lsn], i: usize) {
    let at = (ends[i - 1].0 + (ends[i].0 - ends[i - 1].0) / 2) as usize;
    disk.wal[at] ^= 0x5a;
}

#[test]
fn damage_below_the_watermark_refuses_the_timeline_and_cuts_nothing() {
    let (mut disk, ends) = six_records(6);
    damage(&mut disk, &ends, 3);
    let truncations = disk.truncations.clone();
    let err = Executor::open(disk, ttid(), NodeId(1)).unwrap_err();
    let OpenError::AckedWalDamaged { damage, watermark } = &err else {
        panic!("not the corruption error: {err}");
    };
    assert_eq!(*watermark, ends[5]);
    let WalDamage::Record { at, segment, .. } = damage else {
        panic!("not a damaged record: {damage}");
    };
    assert!(ends[2] <= *at && *at < ends[3], "{at}");
    assert_eq!(segment, "000000010000000000000001");
    let msg = err.to_string();
    assert!(
        msg.starts_with("corruption of acknowledged WAL: record at LSN"),
        "{msg}"
    );
    assert!(
        msg.ends_with(&format!(
            "WAL up to {} had been fsynced and acknowledged",
            ends[5]
        )),
        "{msg}"
    );
    assert!(
        truncations.borrow().is_empty(),
        "acknowledged WAL is never cut"
    );
}

#[test]
fn missing_wal_below_the_watermark_refuses_the_timeline() {
    let (mut disk, ends) = six_records(6);
    disk.wal.truncate(ends[4].0 as usize);
    let err = Executor::open(disk, ttid(), NodeId(1)).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::AckedWalDamaged {
                damage: WalDamage::Missing { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn damage_above_the_watermark_is_a_torn_tail_that_is_cut() {
    let (mut disk, ends) = six_records(3);
    damage(&mut disk, &ends, 4);
    let e = Executor::open(disk, ttid(), NodeId(1)).unwrap();
    assert_eq!(e.acceptor().flush_lsn(), ends[3], "the last good record");
    assert_eq!(e.storage().wal.len() as u64, ends[3].0, "the tail is cut");
    // The next persist raises the watermark to the end found.
    let mut e = e;
    e.checkpoint().unwrap();
    assert_eq!(
        e.storage().control.as_ref().unwrap().durable_flush_lsn,
        ends[3]
    );
}

#[test]
fn damage_at_the_watermark_is_a_torn_tail_that_is_cut() {
    let (mut disk, ends) = six_records(3);
    damage(&mut disk, &ends, 3);
    let e = Executor::open(disk, ttid(), NodeId(1)).unwrap();
    assert_eq!(e.acceptor().flush_lsn(), ends[2]);
    assert_eq!(e.storage().wal.len() as u64, ends[2].0);
}

#[test]
fn the_scan_tells_zeroes_from_garbage_and_missing_wal() {
    let cfg = DecoderConfig::new(150004, SEG, 42);
    let (disk, ends) = six_records(6);
    let seg_end = 2 * SEG as usize;

    let mut zeroed = Disk {
        wal: disk.wal.clone(),
        ..Disk::default()
    };
    zeroed.wal.resize(seg_end, 0);
    let found = find_end_of_wal(&mut zeroed, START, cfg).unwrap();
    assert_eq!(found.end, ends[5]);
    assert!(
        matches!(found.stop, ScanStop::Zeroes(_)),
        "{:?}",
        found.stop
    );

    // Zeroes first, then a stray page written back out of order: not plain zeroes.
    let mut garbage = zeroed;
    garbage.wal[seg_end - 100] = 1;
    let found = find_end_of_wal(&mut garbage, START, cfg).unwrap();
    assert_eq!(found.end, ends[5]);
    assert!(
        matches!(found.stop, ScanStop::Damaged(_)),
        "{:?}",
        found.stop
    );

    let mut short = Disk {
        wal: disk.wal.clone(),
        ..Disk::default()
    };
    let found = find_end_of_wal(&mut short, START, cfg).unwrap();
    assert_eq!(found.end, ends[5]);
    assert!(
        matches!(found.stop, ScanStop::NoMoreWal),
        "{:?}",
        found.stop
    );
}

/// Term 2 elected with a history that diverges from ours at `ends[2]`: the written tail
/// past it is cut.
fn elect_term_2_at(e: &mut Executor<Disk>, start: Lsn) -> Result<(), TimelineError> {
    e.propose(
        2,
        ProposerMessage::VoteRequest(VoteRequest {
            generation: Generation(0),
            term: Term(2),
        }),
    )?;
    e.propose(
        2,
        ProposerMessage::Elected(ProposerElected {
            generation: Generation(0),
            term: Term(2),
            start_streaming_at: start,
            term_history: TermHistory(vec![
                TermLsn {
                    term: Term(1),
                    lsn: START,
                },
                TermLsn {
                    term: Term(2),
                    lsn: start,
                },
            ]),
        }),
    )?;
    Ok(())
}

/// An executor over the disk of [`six_records`] with the watermark at the sixth record.
fn reopened_with_six_records() -> (Executor<Disk>, Vec<Lsn>) {
    let (disk, ends) = six_records(6);
    (Executor::open(disk, ttid(), NodeId(1)).unwrap(), ends)
}

#[test]
fn a_truncation_lowers_the_watermark_in_the_control_file_before_it_cuts() {
    let (mut e, ends) = reopened_with_six_records();
    let truncations = e.storage().truncations.clone();
    truncations.borrow_mut().clear();
    elect_term_2_at(&mut e, ends[2]).unwrap();
    assert_eq!(
        *truncations.borrow(),
        vec![(ends[2], ends[2])],
        "the control file's watermark was at the cut when it was made"
    );
    let control = e.storage().control.clone().unwrap();
    assert_eq!(control.durable_flush_lsn, ends[2]);
    assert_eq!(control.term, Term(2));
    // The next flush (and the persist after it) raises it again.
    let (data, more) = wal(ends[2], 2, 100);
    let ProposerMessage::AppendRequest(mut a) = super::append(ends[2], data, Lsn::INVALID) else {
        unreachable!("an AppendRequest")
    };
    a.h.term = Term(2);
    e.propose(2, ProposerMessage::AppendRequest(a)).unwrap();
    e.flush_owed().unwrap();
    e.checkpoint().unwrap();
    assert_eq!(
        e.storage().control.as_ref().unwrap().durable_flush_lsn,
        more[1]
    );
}

#[test]
fn a_crash_between_lowering_the_watermark_and_the_cut_reopens_cleanly() {
    let (mut e, ends) = reopened_with_six_records();
    e.storage_mut().fail_next_truncate = true;
    let err = elect_term_2_at(&mut e, ends[2]).unwrap_err();
    assert!(matches!(err, TimelineError::Storage { .. }), "{err}");
    let disk = std::mem::take(e.storage_mut());
    let control = disk.control.clone().unwrap();
    assert_eq!(control.durable_flush_lsn, ends[2], "lowered first");
    assert_eq!(control.term, Term(2), "the vote was persisted");
    assert_eq!(control.term_history.0.len(), 1, "the new history was not");
    // Nothing was cut: the restart finds all six records, above the lowered watermark.
    let e = Executor::open(disk, ttid(), NodeId(1)).unwrap();
    assert_eq!(e.acceptor().flush_lsn(), ends[5]);
}
