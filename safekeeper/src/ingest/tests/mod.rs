//! The executor over a small in-memory disk (pure logic: no files, no runtime): group
//! commit across connections, the answer at a segment's end, a storage error breaking the
//! executor, and the restart path cutting what was never flushed. The restart path's
//! verdicts against the durable-flush watermark are in `restart.rs`.

mod restart;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use pq_proto::proposer::{
    AcceptorMessage, AppendRequest, AppendRequestHeader, Generation, ProposerElected,
    ProposerMessage, VoteRequest,
};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

use super::{Executor, Sent, TimelineError};
use crate::control_file::ControlFileError;
use crate::state::{ServerInfo, TimelineState};
use crate::storage::{Storage, WriteOutcome};

const SEG: u32 = 1 << 20;
const START: Lsn = Lsn(SEG as u64 + 40);

/// WAL in a vector from offset 0 (LSN 0), the durable prefix marked, the control file a
/// value; can be told to fail the next write.
#[derive(Debug, Default)]
struct Disk {
    wal: Vec<u8>,
    durable: usize,
    control: Option<TimelineState>,
    flushes: usize,
    fail_next_write: bool,
    /// The end a begun flush will make durable when awaited.
    pending: Option<usize>,
    /// Fail the next truncation (a crash between the control file and the cut).
    fail_next_truncate: bool,
    /// Every truncation: its end and the watermark of the control file at that moment
    /// (shared, so it outlives a disk the restart path consumed).
    truncations: Rc<RefCell<Vec<(Lsn, Lsn)>>>,
}

/// The in-memory flush: durability is applied when it is awaited.
struct MemFlush;

impl crate::storage::PendingFlush for MemFlush {
    fn run(self) {}
}

impl Storage for Disk {
    fn load_control(&mut self) -> Result<TimelineState, ControlFileError> {
        self.control
            .clone()
            .ok_or_else(|| ControlFileError::Corrupt {
                path: "mem".into(),
                reason: "none".into(),
            })
    }
    fn persist_control(&mut self, state: &TimelineState) -> io::Result<()> {
        self.control = Some(state.clone());
        Ok(())
    }
    fn init_wal(&mut self, start: Lsn, image: &[u8]) -> io::Result<()> {
        let seg_start = start.segment_lsn(SEG).0 as usize;
        self.wal.resize(seg_start, 0);
        self.wal.extend_from_slice(image);
        Ok(())
    }
    fn write_wal(&mut self, lsn: Lsn, data: Bytes) -> io::Result<WriteOutcome> {
        if std::mem::take(&mut self.fail_next_write) {
            return Err(io::Error::other("injected write failure"));
        }
        assert_eq!(lsn.0 as usize, self.wal.len(), "writes are sequential");
        let before = self.wal.len() as u64 / u64::from(SEG);
        self.wal.extend_from_slice(&data);
        if self.wal.len() as u64 / u64::from(SEG) > before {
            self.durable = (self.wal.len() as u64 / u64::from(SEG) * u64::from(SEG)) as usize;
            return Ok(WriteOutcome::SegmentCompleted);
        }
        Ok(WriteOutcome::Written)
    }
    fn flush_wal(&mut self) -> io::Result<()> {
        if self.durable != self.wal.len() {
            self.flushes += 1;
        }
        self.durable = self.wal.len();
        Ok(())
    }
    type Flush = MemFlush;
    fn begin_flush(&mut self) -> io::Result<MemFlush> {
        self.pending = Some(self.wal.len());
        Ok(MemFlush)
    }
    fn await_flush(&mut self) -> io::Result<()> {
        if let Some(end) = self.pending.take() {
            self.flushes += 1;
            self.durable = self.durable.max(end);
        }
        Ok(())
    }
    fn truncate_wal(&mut self, end: Lsn) -> io::Result<()> {
        if std::mem::take(&mut self.fail_next_truncate) {
            return Err(io::Error::other("injected truncation failure"));
        }
        let watermark = self
            .control
            .as_ref()
            .map_or(Lsn::INVALID, |c| c.durable_flush_lsn);
        self.truncations.borrow_mut().push((end, watermark));
        self.wal.truncate(end.0 as usize);
        self.durable = self.durable.min(self.wal.len());
        Ok(())
    }
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let at = lsn.0 as usize;
        if at >= self.wal.len() {
            return Ok(0);
        }
        let n = buf
            .len()
            .min(self.wal.len() - at)
            .min(lsn.remaining_in_segment(SEG) as usize);
        buf[..n].copy_from_slice(&self.wal[at..at + n]);
        Ok(n)
    }
}

fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]))
}

fn new_exec() -> Executor<Disk> {
    let state = TimelineState::new(
        ttid(),
        ServerInfo {
            pg_version: 150004,
            system_id: 42,
            wal_seg_size: SEG,
        },
    );
    let disk = Disk {
        control: Some(state.clone()),
        ..Disk::default()
    };
    Executor::new(disk, NodeId(1), state, Lsn::INVALID)
}

/// `n` valid records of `size` bytes each starting at `start`; returns the bytes and the
/// end of every record.
fn wal(start: Lsn, n: usize, size: usize) -> (Bytes, Vec<Lsn>) {
    crate::test_wal::records(start, SEG, n, size)
}

fn append(begin: Lsn, data: Bytes, commit: Lsn) -> ProposerMessage {
    ProposerMessage::AppendRequest(AppendRequest {
        h: AppendRequestHeader {
            generation: Generation(0),
            term: Term(1),
            begin_lsn: begin,
            end_lsn: Lsn(begin.0 + data.len() as u64),
            commit_lsn: commit,
            truncate_lsn: Lsn::INVALID,
        },
        wal_data: data,
    })
}

/// Vote and election in term 1 at START, by connection 1.
fn elected() -> Executor<Disk> {
    let mut e = new_exec();
    e.propose(
        1,
        ProposerMessage::VoteRequest(VoteRequest {
            generation: Generation(0),
            term: Term(1),
        }),
    )
    .unwrap();
    let out = e.propose(1, elected_in_term_1()).unwrap();
    assert!(out.is_empty());
    e
}

/// The ProposerElected of term 1, streaming from START.
fn elected_in_term_1() -> ProposerMessage {
    ProposerMessage::Elected(ProposerElected {
        generation: Generation(0),
        term: Term(1),
        start_streaming_at: START,
        term_history: TermHistory(vec![TermLsn {
            term: Term(1),
            lsn: START,
        }]),
    })
}

fn flush_lsn_of(s: &Sent) -> Lsn {
    match &s.msg {
        AcceptorMessage::AppendResponse(r) => r.flush_lsn,
        other => panic!("not an AppendResponse: {other:?}"),
    }
}

/// Appends `data` in pieces of at most 128 KiB from `pos`, from connection `conn`;
/// returns what was answered at once.
fn push(e: &mut Executor<Disk>, conn: u64, mut pos: Lsn, data: Bytes) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let piece = rest.split_to(rest.len().min(128 * 1024));
        let len = piece.len() as u64;
        sent.extend(e.propose(conn, append(pos, piece, Lsn::INVALID)).unwrap());
        pos = Lsn(pos.0 + len);
    }
    sent
}

#[test]
fn one_flush_answers_every_owed_connection() {
    let mut e = elected();
    let (data, ends) = wal(START, 4, 100);
    let half = (ends[1].0 - START.0) as usize;
    assert!(push(&mut e, 1, START, data.slice(..half)).is_empty());
    assert!(push(&mut e, 2, ends[1], data.slice(half..)).is_empty());
    assert!(e.owes());
    let flushes_before = e.storage().flushes;
    let sent = e.flush_owed().unwrap();
    assert_eq!(e.storage().flushes, flushes_before + 1, "one fdatasync");
    assert_eq!(sent.iter().map(|s| s.conn).collect::<Vec<_>>(), vec![1, 2]);
    assert!(sent.iter().all(|s| flush_lsn_of(s) == ends[3]));
    assert_eq!(sent[0].msg, sent[1].msg);
    assert!(!e.owes());
    assert_eq!(
        e.flush_owed().unwrap(),
        vec![],
        "nothing owed, nothing sent"
    );
}

#[test]
fn a_completed_segment_is_answered_at_once() {
    let mut e = elected();
    // Enough 8 KiB records to cross into the next segment.
    let (data, ends) = wal(START, 140, 8000);
    let sent = push(&mut e, 1, START, data);
    assert!(
        !sent.is_empty(),
        "the segment's end answers without a flush call"
    );
    let seg_end = Lsn(2 * u64::from(SEG));
    assert!(flush_lsn_of(&sent[0]) <= seg_end);
    assert!(ends.iter().any(|&l| l > seg_end));
}

#[test]
fn a_storage_error_breaks_the_executor_until_it_is_reopened() {
    let mut e = elected();
    let (data, _) = wal(START, 2, 100);
    // Someone is owed an answer when the storage fails: nobody stays owed.
    push(&mut e, 3, START, data.slice(..10));
    assert!(e.owes());
    let data = data.slice(10..);
    let at = Lsn(START.0 + 10);
    e.storage_mut().fail_next_write = true;
    let err = e
        .propose(1, append(at, data.clone(), Lsn::INVALID))
        .unwrap_err();
    assert!(matches!(err, TimelineError::Storage { .. }), "{err}");
    assert!(e.is_broken());
    assert!(!e.owes(), "a broken executor owes nothing");
    let err = e.propose(1, append(at, data, Lsn::INVALID)).unwrap_err();
    assert!(matches!(err, TimelineError::Broken(_)), "{err}");
    // A checkpoint of a broken executor touches nothing.
    e.checkpoint().unwrap();
}

#[test]
fn an_acceptor_error_refuses_only_that_message() {
    let mut e = elected();
    let (data, ends) = wal(START, 2, 100);
    // A gap: refused, nothing changes.
    let gap = Lsn(START.0 + 8);
    let err = e
        .propose(2, append(gap, data.clone(), Lsn::INVALID))
        .unwrap_err();
    assert!(matches!(err, TimelineError::Acceptor(_)), "{err}");
    assert!(!e.is_broken());
    push(&mut e, 1, START, data);
    assert_eq!(flush_lsn_of(&e.flush_owed().unwrap()[0]), ends[1]);
}

#[test]
fn the_restart_path_cuts_what_was_never_flushed() {
    let mut e = elected();
    let (data, ends) = wal(START, 6, 100);
    let three = (ends[2].0 - START.0) as usize;
    push(&mut e, 1, START, data.slice(..three));
    e.flush_owed().unwrap();
    // commit_lsn persisted at START (the election); written past the flush: lost in a
    // crash, as are some bytes of the durable part's tail that were never synced.
    push(&mut e, 1, ends[2], data.slice(three..));
    let mut disk = std::mem::take(e.storage_mut());
    let keep = disk.durable + 30; // a torn write: a piece of the next record survived
    disk.wal.truncate(keep);
    let reopened = Executor::open(disk, ttid(), NodeId(1)).unwrap();
    assert_eq!(reopened.acceptor().flush_lsn(), ends[2]);
    assert_eq!(
        reopened.storage().wal.len() as u64,
        ends[2].0,
        "the torn tail is cut"
    );
    assert_eq!(reopened.acceptor().term(), Term(1));
}

#[test]
fn disconnect_flushes_and_forgets_the_connection() {
    let mut e = elected();
    let (data, _) = wal(START, 2, 100);
    push(&mut e, 7, START, data);
    assert!(e.owes());
    e.disconnect(7).unwrap();
    assert!(!e.owes());
    assert_eq!(e.storage().durable, e.storage().wal.len());
}

#[test]
fn writes_go_on_while_a_flush_is_in_flight_and_other_input_waits_for_it() {
    let mut e = elected();
    let (data, ends) = wal(START, 6, 100);
    let two = (ends[1].0 - START.0) as usize;
    let four = (ends[3].0 - START.0) as usize;
    push(&mut e, 1, START, data.slice(..two));
    let flush = e.start_flush().unwrap().expect("owed, so a flush begins");
    assert!(e.flush_in_flight());
    assert!(e.start_flush().unwrap().is_none(), "one at a time");
    // An append is written meanwhile; nothing is answered yet.
    assert!(push(&mut e, 2, ends[1], data.slice(two..four)).is_empty());
    assert_eq!(e.storage().durable, 0, "not durable before the flush ran");
    crate::storage::PendingFlush::run(flush);
    let sent = e.finish_flush().unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].conn, flush_lsn_of(&sent[0])), (1, ends[1]));
    assert_eq!(e.storage().durable as u64, ends[1].0, "what it covered");
    assert!(e.owes(), "connection 2 is owed by the next flush");
    // A vote while a flush is in flight: the flush finishes first, its answer first.
    push(&mut e, 2, ends[3], data.slice(four..));
    e.start_flush().unwrap().expect("a second flush");
    let sent = e
        .propose(
            3,
            ProposerMessage::VoteRequest(VoteRequest {
                generation: Generation(0),
                term: Term(2),
            }),
        )
        .unwrap();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((sent[0].conn, flush_lsn_of(&sent[0])), (2, ends[5]));
    assert!(matches!(sent[1].msg, AcceptorMessage::VoteResponse(_)));
    assert!(!e.flush_in_flight());
}

#[test]
fn a_refused_message_keeps_the_answers_of_the_flush_it_waited_for() {
    let mut e = elected();
    let (data, ends) = wal(START, 2, 100);
    push(&mut e, 1, START, data);
    e.start_flush().unwrap().expect("owed, so a flush begins");
    // The term's ProposerElected again (a duplicated message): refused, after the flush
    // finished.
    let err = e.propose(2, elected_in_term_1()).unwrap_err();
    assert!(matches!(err, TimelineError::Acceptor(_)), "{err}");
    assert!(!e.flush_in_flight());
    assert!(e.owes(), "connection 1 still waits for its answer");
    let sent = e.flush_owed().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].conn, flush_lsn_of(&sent[0])), (1, ends[1]));
}
