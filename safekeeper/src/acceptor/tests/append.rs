//! AppendRequests: written at once, answered after one flush; record boundaries; commit
//! persistence; truncation at elections; refusals that leave no trace.

use super::*;

#[test]
fn appends_are_written_at_once_and_answered_after_one_flush() {
    let mut a = elected();
    let (data, ends) = wal(START, 3, 100);
    let (first, rest) = (data.slice(..200), data.slice(200..));
    let out = append(&mut a, 1, START, first.clone(), Lsn::INVALID).unwrap();
    assert_eq!(
        out,
        Output {
            effects: vec![Effect::WriteWal {
                lsn: START,
                data: first
            }],
            reply: Reply::AfterFlush
        }
    );
    let mid = Lsn(START.0 + 200);
    let out = append(&mut a, 1, mid, rest.clone(), ends[0]).unwrap();
    assert_eq!(
        out.effects,
        vec![Effect::WriteWal {
            lsn: mid,
            data: rest
        }]
    );
    assert_eq!(
        a.flush_lsn(),
        START,
        "nothing is reported flushed before the flush"
    );
    let out = a.flush();
    assert_eq!(
        out,
        Output {
            effects: vec![Effect::FlushWal],
            reply: Reply::Now(AcceptorMessage::AppendResponse(AppendResponse {
                generation: Generation(0),
                term: Term(1),
                flush_lsn: ends[2],
                commit_lsn: ends[0],
                ..Default::default()
            })),
        }
    );
    // Nothing new written: a heartbeat is answered without a second fdatasync.
    append(&mut a, 1, ends[2], Bytes::new(), ends[2]).unwrap();
    let out = a.flush();
    assert_eq!(out.effects, vec![]);
}

#[test]
fn flush_lsn_stops_at_the_last_complete_record() {
    let mut a = elected();
    let (data, ends) = wal(START, 2, 300);
    // All of record 1 and half of record 2.
    let cut = ((ends[0].0 - START.0) + 50) as usize;
    append(&mut a, 1, START, data.slice(..cut), Lsn::INVALID).unwrap();
    a.flush();
    assert_eq!(a.flush_lsn(), ends[0]);
    assert_eq!(a.write_lsn(), Lsn(START.0 + cut as u64));
}

#[test]
fn commit_crossing_the_term_start_is_persisted_before_it_is_reported() {
    let mut a = elected();
    let (data, ends) = wal(START, 2, 100);
    append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    a.flush();
    // Term 2 starts at the end of term 1's WAL; its commit_lsn crosses that start.
    let t2 = ends[1];
    vote(&mut a, 2);
    elect(&mut a, 2, hist(&[(1, START), (2, t2)]), t2).unwrap();
    let (data2, ends2) = wal(t2, 1, 100);
    append(&mut a, 2, t2, data2, ends2[0]).unwrap();
    let out = a.flush();
    assert_eq!(out.effects[0], Effect::FlushWal);
    assert_eq!(out.effects[1], persisted(&a));
    assert_eq!(a.state().commit_lsn, ends2[0]);
    let Reply::Now(AcceptorMessage::AppendResponse(r)) = out.reply else {
        panic!()
    };
    assert_eq!(r.commit_lsn, ends2[0]);
    // Further commit moves within the term are persisted lazily.
    let (data3, ends3) = wal(ends2[0], 1, 100);
    append(&mut a, 2, ends2[0], data3, ends3[0]).unwrap();
    assert_eq!(a.flush().effects, vec![Effect::FlushWal]);
}

#[test]
fn election_truncates_a_divergent_tail() {
    let mut a = elected();
    let (data, ends) = wal(START, 3, 100);
    append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    a.flush();
    // Meanwhile another acceptor took term 2 at the end of record 1; the proposer of
    // term 3 carries that history: everything here after record 1 is divergent.
    vote(&mut a, 3);
    let h = hist(&[(1, START), (2, ends[0]), (3, ends[0])]);
    let out = elect(&mut a, 3, h.clone(), ends[0]).unwrap();
    assert_eq!(
        out,
        Output {
            effects: vec![Effect::TruncateWal { end: ends[0] }, persisted(&a)],
            reply: Reply::None,
        }
    );
    assert_eq!(a.state().term_history, h);
    assert_eq!((a.flush_lsn(), a.write_lsn()), (ends[0], ends[0]));
    // A start point that disagrees with the histories is refused.
    let mut b = elected();
    let (data, ends) = wal(START, 3, 100);
    append(&mut b, 1, START, data, Lsn::INVALID).unwrap();
    b.flush();
    vote(&mut b, 3);
    let h = hist(&[(1, START), (2, ends[0]), (3, ends[1])]);
    let err = elect(&mut b, 3, h, ends[1]).unwrap_err();
    assert!(matches!(err, AcceptorError::StartMismatch { .. }), "{err}");
}

#[test]
fn refused_election_does_not_count_unflushed_wal_as_flushed() {
    // WAL written, not yet flushed; a ProposerElected that is refused must not mark it
    // flushed, or the next VoteResponse would report it without an fdatasync.
    let mut a = elected();
    let (data, ends) = wal(START, 2, 100);
    append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    let err = elect(&mut a, 1, hist(&[(1, START)]), ends[0]).unwrap_err();
    assert!(matches!(err, AcceptorError::StartMismatch { .. }), "{err}");
    let out = vote(&mut a, 2);
    assert_eq!(out.effects[0], Effect::FlushWal, "{out:?}");
    let Reply::Now(AcceptorMessage::VoteResponse(v)) = out.reply else {
        panic!("{out:?}")
    };
    assert_eq!(v.flush_lsn, ends[1]);
}

#[test]
fn election_beyond_the_end_of_wal_is_refused() {
    // Histories with nothing in common and a start past this acceptor's WAL: refused,
    // nothing changes.
    let mut a = elected();
    let (data, ends) = wal(START, 2, 100);
    append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    a.flush();
    vote(&mut a, 2);
    let beyond = Lsn(0x0100_4018);
    let err = elect(&mut a, 2, hist(&[(2, beyond)]), beyond).unwrap_err();
    assert_eq!(
        err,
        AcceptorError::StartBeyondWal {
            start: beyond,
            flush: ends[1]
        }
    );
    assert_eq!((a.flush_lsn(), a.write_lsn()), (ends[1], ends[1]));
    assert_eq!(a.state().term_history, hist(&[(1, START)]));
    // Nothing in common but a start inside the WAL: a truncation, as before.
    let out = elect(&mut a, 2, hist(&[(2, ends[0])]), ends[0]).unwrap();
    assert_eq!(out.effects[0], Effect::TruncateWal { end: ends[0] });
}

#[test]
fn stale_term_append_gets_a_term_only_response() {
    let mut a = elected();
    vote(&mut a, 3);
    let (data, _) = wal(START, 1, 10);
    let out = append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    assert_eq!(
        out,
        Output {
            effects: vec![],
            reply: Reply::Now(AcceptorMessage::AppendResponse(AppendResponse {
                generation: Generation(0),
                term: Term(3),
                ..Default::default()
            })),
        }
    );
}

#[test]
fn append_before_election_is_an_error() {
    let mut a = elected();
    vote(&mut a, 3);
    let (data, _) = wal(START, 1, 10);
    for term in [3, 4] {
        let err = append(&mut a, term, START, data.clone(), Lsn::INVALID).unwrap_err();
        assert!(
            matches!(err, AcceptorError::AppendBeforeElected { .. }),
            "{err}"
        );
    }
}

#[test]
fn gaps_are_errors_heartbeats_past_the_end_too() {
    let mut a = elected();
    let (data, ends) = wal(START, 2, 100);
    append(&mut a, 1, START, data.slice(..64), Lsn::INVALID).unwrap();
    let err = append(
        &mut a,
        1,
        Lsn(START.0 + 72),
        data.slice(72..80),
        Lsn::INVALID,
    )
    .unwrap_err();
    assert_eq!(
        err,
        AcceptorError::Gap {
            begin: Lsn(START.0 + 72),
            write_lsn: Lsn(START.0 + 64)
        }
    );
    // A heartbeat past the end: the bytes before it were lost on the way.
    let err = append(&mut a, 1, Lsn(START.0 + 72), Bytes::new(), Lsn::INVALID).unwrap_err();
    assert!(matches!(err, AcceptorError::Gap { .. }), "{err}");
    // At the end or before it (a late duplicate), a heartbeat is fine.
    append(&mut a, 1, Lsn(START.0 + 64), Bytes::new(), Lsn::INVALID).unwrap();
    append(&mut a, 1, START, Bytes::new(), Lsn::INVALID).unwrap();
    // The stream goes on from where it really is.
    append(&mut a, 1, Lsn(START.0 + 64), data.slice(64..), Lsn::INVALID).unwrap();
    a.flush();
    assert_eq!(a.flush_lsn(), ends[1]);
}

#[test]
fn invalid_wal_poisons_the_tail_until_the_next_election() {
    let mut a = elected();
    let (mut data, _) = {
        let (d, e) = wal(START, 1, 100);
        (d.to_vec(), e)
    };
    data[30] ^= 0xff; // inside the record body: CRC mismatch
    let err = append(&mut a, 1, START, Bytes::from(data), Lsn::INVALID).unwrap_err();
    assert!(matches!(err, AcceptorError::InvalidWal(_)), "{err}");
    let (good, _) = wal(START, 1, 100);
    let err = append(&mut a, 1, START, good, Lsn::INVALID).unwrap_err();
    assert_eq!(err, AcceptorError::WalPoisoned);
}

#[test]
fn records_of_a_refused_request_never_count() {
    // Two good records, then one with a bad CRC, in one request: nothing is written, so
    // the next flush (here: the one a VoteRequest does) must not report the good two.
    let mut a = elected();
    let (data, _) = wal(START, 3, 100);
    let mut bad = data.to_vec();
    let last = bad.len() - 10;
    bad[last] ^= 0xff;
    let err = append(&mut a, 1, START, Bytes::from(bad), Lsn::INVALID).unwrap_err();
    assert!(matches!(err, AcceptorError::InvalidWal(_)), "{err}");
    let out = vote(&mut a, 2);
    let Reply::Now(AcceptorMessage::VoteResponse(v)) = out.reply else {
        panic!("{out:?}")
    };
    assert_eq!(v.flush_lsn, START);
    assert_eq!(a.write_lsn(), START);
}

#[test]
fn xlog_switch_counts_only_once_its_padding_is_written() {
    let mut a = elected();
    let mut g = WalGenerator::new(START, 42, SEG, 15).unwrap();
    let mut out = BytesMut::new();
    let r1 = g.append_logical_message("t", b"x", &mut out).unwrap();
    let sw = g.append_switch(&mut out).unwrap().unwrap();
    assert_eq!(sw.end_lsn, Lsn(2 * u64::from(SEG)));
    let data = out.freeze();
    let chunk = pq_proto::replication::MAX_SEND_SIZE;
    let last = (data.len() - 1) / chunk * chunk;
    for off in (0..last).step_by(chunk) {
        let lsn = Lsn(START.0 + off as u64);
        append(&mut a, 1, lsn, data.slice(off..off + chunk), Lsn::INVALID).unwrap();
        a.flush();
        assert_eq!(
            a.flush_lsn(),
            r1.end_lsn,
            "the switch is not complete before {lsn}"
        );
    }
    append(
        &mut a,
        1,
        Lsn(START.0 + last as u64),
        data.slice(last..),
        Lsn::INVALID,
    )
    .unwrap();
    a.flush();
    assert_eq!(a.flush_lsn(), sw.end_lsn);
}

#[test]
fn a_flush_begun_counts_only_what_was_written_before_it_and_only_once_complete() {
    let mut a = elected();
    let (data, ends) = wal(START, 4, 100);
    let two = (ends[1].0 - START.0) as usize;
    append(&mut a, 1, START, data.slice(..two), ends[1]).unwrap();
    assert_eq!(a.unflushed(), two as u64);
    let ticket = a.begin_flush();
    assert_eq!(a.unflushed(), 0);
    // Written while the fdatasync runs: not covered by it.
    append(&mut a, 1, ends[1], data.slice(two..), ends[1]).unwrap();
    assert_eq!(a.flush_lsn(), START, "nothing counts before the completion");
    let out = a.complete_flush(ticket);
    assert_eq!(a.flush_lsn(), ends[1]);
    let Reply::Now(AcceptorMessage::AppendResponse(r)) = out.reply else {
        panic!("answered");
    };
    assert_eq!((r.flush_lsn, r.commit_lsn), (ends[1], ends[1]));
    assert!(
        !out.effects.contains(&Effect::FlushWal),
        "the caller did the fdatasync"
    );
    // The rest is flushed the ordinary way.
    let out = a.flush();
    assert_eq!(out.effects[0], Effect::FlushWal);
    assert_eq!(a.flush_lsn(), ends[3]);
}

#[test]
fn oversized_and_mismatched_appends_say_what_is_wrong() {
    let mut a = elected();
    let big = Bytes::from(vec![0u8; 1 << 20]);
    let err = append(&mut a, 1, START, big, Lsn::INVALID).unwrap_err();
    assert_eq!(
        err,
        AcceptorError::AppendTooLarge {
            bytes: 1 << 20,
            max: 128 * 1024
        }
    );
    assert!(err.to_string().contains("128 KiB"), "{err}");
    // A range that does not match the bytes.
    let err = a
        .process(ProposerMessage::AppendRequest(AppendRequest {
            h: AppendRequestHeader {
                generation: Generation(0),
                term: Term(1),
                begin_lsn: START,
                end_lsn: Lsn(START.0 + 10),
                commit_lsn: Lsn::INVALID,
                truncate_lsn: Lsn::INVALID,
            },
            wal_data: Bytes::from_static(b"abc"),
        }))
        .unwrap_err();
    assert!(
        matches!(err, AcceptorError::BadRange { bytes: 3, .. }),
        "{err}"
    );
}

/// Bytes already held are skipped, whether the request is all held (a resend) or runs past
/// the end (a resend that goes on, or a proposer catching up on WAL a peer recovery brought
/// first): only the new bytes are written, once, and the records end where they should.
#[test]
fn bytes_already_held_are_skipped() {
    let mut a = elected();
    let (data, ends) = wal(START, 3, 100);
    let mid = Lsn(START.0 + 64);
    let out = append(&mut a, 1, START, data.slice(..64), Lsn::INVALID).unwrap();
    assert_eq!(written(&out), vec![(START, 64)]);
    // All held: nothing written, answered as a heartbeat.
    let out = append(&mut a, 1, START, data.slice(..40), Lsn::INVALID).unwrap();
    assert_eq!(written(&out), vec![]);
    // Part held: only the bytes past the end are written, where they belong.
    let end = Lsn(START.0 + data.len() as u64);
    let out = append(&mut a, 1, Lsn(START.0 + 10), data.slice(10..), Lsn::INVALID).unwrap();
    assert_eq!(written(&out), vec![(mid, data.len() - 64)]);
    a.flush();
    assert_eq!(a.flush_lsn(), ends[2]);
    assert_eq!(a.flush_lsn(), end);
}

/// Where and how much each WriteWal effect of `out` writes.
fn written(out: &Output) -> Vec<(Lsn, usize)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::WriteWal { lsn, data } => Some((*lsn, data.len())),
            _ => None,
        })
        .collect()
}
