//! One event in, the exact effects and reply out: no disk, no runtime.

use bytes::{Bytes, BytesMut};
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, ProposerElected, ProposerGreeting, ProposerMessage, SafekeeperId,
    VoteRequest, VoteResponse,
};
use utils::xlog::{WalGenerator, first_segment_image};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

use super::*;

mod append;

pub(super) const SEG: u32 = 16 * 1024 * 1024;
/// The first record of segment 1: right after its long page header.
pub(super) const START: Lsn = Lsn(0x0100_0028);

pub(super) fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]))
}

pub(super) fn server() -> ServerInfo {
    ServerInfo {
        pg_version: 150004,
        system_id: 42,
        wal_seg_size: SEG,
    }
}

pub(super) fn fresh() -> Acceptor {
    Acceptor::new(
        NodeId(1),
        TimelineState::new(ttid(), server()),
        Lsn::INVALID,
    )
}

pub(super) fn hist(entries: &[(u64, Lsn)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(t, lsn)| TermLsn { term: Term(t), lsn })
            .collect(),
    )
}

/// `n` valid records of `size` bytes each starting at `start`; returns the bytes and the
/// end of every record.
pub(super) fn wal(start: Lsn, n: usize, size: usize) -> (Bytes, Vec<Lsn>) {
    crate::test_wal::records(start, SEG, n, size)
}

pub(super) fn vote(a: &mut Acceptor, term: u64) -> Output {
    a.process(ProposerMessage::VoteRequest(VoteRequest {
        generation: Generation(0),
        term: Term(term),
    }))
    .unwrap()
}

pub(super) fn elect(
    a: &mut Acceptor,
    term: u64,
    h: TermHistory,
    start: Lsn,
) -> Result<Output, AcceptorError> {
    a.process(ProposerMessage::Elected(ProposerElected {
        generation: Generation(0),
        term: Term(term),
        start_streaming_at: start,
        term_history: h,
    }))
}

pub(super) fn append(
    a: &mut Acceptor,
    term: u64,
    begin: Lsn,
    data: Bytes,
    commit: Lsn,
) -> Result<Output, AcceptorError> {
    a.process(ProposerMessage::AppendRequest(AppendRequest {
        h: AppendRequestHeader {
            generation: Generation(0),
            term: Term(term),
            begin_lsn: begin,
            end_lsn: Lsn(begin.0 + data.len() as u64),
            commit_lsn: commit,
            truncate_lsn: Lsn::INVALID,
        },
        wal_data: data,
    }))
}

pub(super) fn persisted(a: &Acceptor) -> Effect {
    Effect::PersistControl(Box::new(a.state().clone()))
}

/// A fresh acceptor elected in term 1 at START.
pub(super) fn elected() -> Acceptor {
    let mut a = fresh();
    vote(&mut a, 1);
    elect(&mut a, 1, hist(&[(1, START)]), START).unwrap();
    a
}

#[test]
fn malformed_term_histories_are_refused_before_anything_is_persisted() {
    // An acceptor that voted in term 5 and has WAL of term 1.
    let mut a = elected();
    let (data, ends) = wal(START, 3, 200);
    append(&mut a, 1, START, data, Lsn::INVALID).unwrap();
    vote(&mut a, 5);
    let before = a.state().clone();
    let end = *ends.last().unwrap();
    let bad = [
        // Unsorted terms.
        (
            hist(&[(1, START), (4, end), (3, end), (5, end)]),
            "strictly increase",
        ),
        // A repeated term.
        (hist(&[(1, START), (1, end), (5, end)]), "strictly increase"),
        // Decreasing switch points.
        (
            hist(&[(1, START), (3, end), (5, START)]),
            "must not decrease",
        ),
        // Ending with another term than the elected one.
        (hist(&[(1, START), (3, end)]), "not the elected term 5"),
        (hist(&[]), "empty"),
    ];
    for (h, rule) in bad {
        let err = elect(&mut a, 5, h.clone(), START).unwrap_err();
        assert!(matches!(err, AcceptorError::History(_)), "{h:?}: {err:?}");
        assert!(err.to_string().contains(rule), "{h:?}: {err}");
        assert_eq!(a.state(), &before, "{h:?} changed the state");
    }
    // The well-formed one is taken.
    elect(&mut a, 5, hist(&[(1, START), (5, end)]), end).unwrap();
    assert_eq!(a.state().term_history, hist(&[(1, START), (5, end)]));
}

#[test]
fn first_vote_is_persisted_before_it_is_granted() {
    let mut a = fresh();
    let out = vote(&mut a, 1);
    let mut expected_state = TimelineState::new(ttid(), server());
    expected_state.term = Term(1);
    assert_eq!(
        out,
        Output {
            effects: vec![Effect::PersistControl(Box::new(expected_state))],
            reply: Reply::Now(AcceptorMessage::VoteResponse(VoteResponse {
                generation: Generation(0),
                term: Term(1),
                vote_given: true,
                flush_lsn: Lsn::INVALID,
                truncate_lsn: Lsn::INVALID,
                term_history: TermHistory::empty(),
            })),
        }
    );
}

#[test]
fn votes_for_equal_or_lower_terms_are_refused_with_the_real_term() {
    let mut a = fresh();
    vote(&mut a, 5);
    for t in [5, 3] {
        let out = vote(&mut a, t);
        assert_eq!(out.effects, vec![], "a refusal changes nothing");
        let Reply::Now(AcceptorMessage::VoteResponse(v)) = out.reply else {
            panic!("{out:?}")
        };
        assert!(!v.vote_given);
        assert_eq!(v.term, Term(5));
    }
}

#[test]
fn election_on_a_fresh_timeline_writes_the_segment_image() {
    let mut a = fresh();
    vote(&mut a, 1);
    let out = elect(&mut a, 1, hist(&[(1, START)]), START).unwrap();
    let image = first_segment_image(START, SEG, 42, 15).unwrap();
    assert_eq!(
        out,
        Output {
            effects: vec![
                Effect::InitWal {
                    start: START,
                    image: Bytes::from(image)
                },
                persisted(&a),
            ],
            reply: Reply::None,
        }
    );
    let s = a.state();
    assert_eq!(s.term_history, hist(&[(1, START)]));
    assert_eq!(
        (
            s.timeline_start_lsn,
            s.local_start_lsn,
            s.commit_lsn,
            s.peer_horizon_lsn
        ),
        (START, START, START, START)
    );
    assert_eq!(a.flush_lsn(), START);
    assert_eq!(a.term_start_lsn(), Some(START));
}

#[test]
fn generations_are_checked_and_adopted() {
    let mut a = fresh();
    // v2 (and v3 without configurations) use generation 0: accepted.
    vote(&mut a, 1);
    let err = a
        .process(ProposerMessage::VoteRequest(VoteRequest {
            generation: Generation(1),
            term: Term(2),
        }))
        .unwrap_err();
    assert!(
        matches!(err, AcceptorError::GenerationMismatch { .. }),
        "{err}"
    );
    let me = SafekeeperId {
        id: NodeId(1),
        host: "sk1".into(),
        pg_port: 5454,
    };
    let greeting = |generation: u32, members: Vec<SafekeeperId>| {
        ProposerMessage::Greeting(ProposerGreeting {
            tenant_id: ttid().tenant_id,
            timeline_id: ttid().timeline_id,
            mconf: Configuration {
                generation: Generation(generation),
                members,
                new_members: None,
            },
            pg_version: 150004,
            system_id: 42,
            wal_seg_size: SEG,
        })
    };
    let out = a.process(greeting(2, vec![me.clone()])).unwrap();
    assert_eq!(out.effects, vec![persisted(&a)]);
    assert_eq!(
        out.reply,
        Reply::Now(AcceptorMessage::Greeting(AcceptorGreeting {
            node_id: NodeId(1),
            mconf: a.state().mconf.clone(),
            term: Term(1),
        }))
    );
    assert_eq!(a.state().mconf.generation, Generation(2));
    // Now generation 2 is required, and an older greeting does not switch back.
    assert!(
        a.process(ProposerMessage::VoteRequest(VoteRequest {
            generation: Generation(2),
            term: Term(2),
        }))
        .is_ok()
    );
    assert!(a.process(greeting(0, vec![])).unwrap().effects.is_empty());
    assert_eq!(a.state().mconf.generation, Generation(2));
    let other = SafekeeperId {
        id: NodeId(9),
        ..me
    };
    let err = a.process(greeting(3, vec![other])).unwrap_err();
    assert_eq!(err, AcceptorError::NotAMember(Generation(3)));
}

#[test]
fn greeting_checks_the_cluster() {
    let mut a = fresh();
    let mut g = ProposerGreeting {
        tenant_id: ttid().tenant_id,
        timeline_id: ttid().timeline_id,
        mconf: Configuration::empty(),
        pg_version: 160002,
        system_id: 42,
        wal_seg_size: SEG,
    };
    let err = a.process(ProposerMessage::Greeting(g.clone())).unwrap_err();
    assert!(
        matches!(err, AcceptorError::PgVersionMismatch { .. }),
        "{err}"
    );
    g.pg_version = 150007; // a minor upgrade is fine
    g.system_id = 43;
    let err = a.process(ProposerMessage::Greeting(g.clone())).unwrap_err();
    assert!(
        matches!(err, AcceptorError::SystemIdMismatch { .. }),
        "{err}"
    );
    g.system_id = 0; // unknown (sync mode) is fine
    g.wal_seg_size = SEG * 2;
    let err = a.process(ProposerMessage::Greeting(g.clone())).unwrap_err();
    assert!(
        matches!(err, AcceptorError::SegSizeMismatch { .. }),
        "{err}"
    );
    g.wal_seg_size = SEG;
    g.timeline_id = TimelineId([9; 16]);
    let err = a.process(ProposerMessage::Greeting(g)).unwrap_err();
    assert!(
        matches!(err, AcceptorError::TimelineMismatch { .. }),
        "{err}"
    );
}
