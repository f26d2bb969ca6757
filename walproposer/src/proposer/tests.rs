//! The proposer alone: inputs in, exact outputs out (no sockets, no clock).

use bytes::Bytes;
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendResponse, Configuration, Generation, ProposerMessage,
    SafekeeperId, VoteResponse,
};
use utils::{Lsn, NodeId, TenantId, Term, TermHistory, TermLsn, TimelineId};

use super::*;

fn conf() -> Config {
    let mut c = Config::new(TenantId([1; 16]), TimelineId([2; 16]), 3);
    c.timeline_start_lsn = Lsn(0x100);
    c
}

fn hist(entries: &[(u64, u64)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(t, l)| TermLsn {
                term: Term(t),
                lsn: Lsn(l),
            })
            .collect(),
    )
}

fn greeting(term: u64) -> AcceptorMessage {
    AcceptorMessage::Greeting(AcceptorGreeting {
        node_id: NodeId(1),
        mconf: Configuration::empty(),
        term: Term(term),
    })
}

fn vote(term: u64, given: bool, flush: u64, h: TermHistory) -> AcceptorMessage {
    AcceptorMessage::VoteResponse(VoteResponse {
        generation: Generation(0),
        term: Term(term),
        vote_given: given,
        flush_lsn: Lsn(flush),
        truncate_lsn: Lsn(0),
        term_history: h,
    })
}

fn ack(term: u64, flush: u64, commit: u64) -> AcceptorMessage {
    AcceptorMessage::AppendResponse(AppendResponse {
        generation: Generation(0),
        term: Term(term),
        flush_lsn: Lsn(flush),
        commit_lsn: Lsn(commit),
        ..Default::default()
    })
}

/// Connects and greets all three with the given terms; returns the proposer and the
/// outputs of the last step.
fn greeted(terms: [u64; 3]) -> (Proposer, Vec<Output>) {
    let mut p = Proposer::new(conf());
    assert_eq!(
        p.drain_outputs(),
        vec![Output::Connect(0), Output::Connect(1), Output::Connect(2)]
    );
    for (sk, &t) in terms.iter().enumerate() {
        p.handle(0, Input::Connected(sk));
        p.handle(0, Input::Message(sk, greeting(t)));
    }
    let out = p.drain_outputs();
    (p, out)
}

fn sent(out: &[Output]) -> Vec<(SkId, &ProposerMessage)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(sk, m) => Some((*sk, m)),
            _ => None,
        })
        .collect()
}

#[test]
fn campaigns_for_one_above_the_highest_term_once_a_quorum_greeted() {
    let mut p = Proposer::new(conf());
    p.drain_outputs();
    p.handle(0, Input::Connected(0));
    p.handle(0, Input::Message(0, greeting(4)));
    let out = p.drain_outputs();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send(_, ProposerMessage::VoteRequest(_)))),
        "no campaign before a quorum greeted: {out:?}"
    );
    p.handle(0, Input::Connected(1));
    p.handle(0, Input::Message(1, greeting(7)));
    let out = p.drain_outputs();
    let votes: Vec<_> = sent(&out)
        .into_iter()
        .filter_map(|(sk, m)| match m {
            ProposerMessage::VoteRequest(v) => Some((sk, v.term)),
            _ => None,
        })
        .collect();
    assert_eq!(votes, vec![(0, Term(8)), (1, Term(8))]);
}

#[test]
fn donor_is_the_highest_last_log_term_then_flush_lsn() {
    let (mut p, _) = greeted([3, 3, 3]);
    // Safekeeper 0 has more WAL, but of an older term: 1 wins on last_log_term.
    p.handle(
        0,
        Input::Message(0, vote(4, true, 0x900, hist(&[(1, 0x100)]))),
    );
    p.handle(
        0,
        Input::Message(1, vote(4, true, 0x500, hist(&[(1, 0x100), (3, 0x400)]))),
    );
    let out = p.drain_outputs();
    assert!(out.contains(&Output::Elected {
        term: Term(4),
        term_start_lsn: Lsn(0x500)
    }));
    assert_eq!(p.donor(), Some(1));
    assert_eq!(
        p.history(),
        Some(&hist(&[(1, 0x100), (3, 0x400), (4, 0x500)]))
    );
    // Each voter starts at its highest common point with that history: safekeeper 0's
    // term-1 WAL above 0x400 is divergent.
    let elected: Vec<_> = sent(&out)
        .into_iter()
        .filter_map(|(sk, m)| match m {
            ProposerMessage::Elected(e) => Some((sk, e.start_streaming_at)),
            _ => None,
        })
        .collect();
    assert_eq!(elected, vec![(0, Lsn(0x400)), (1, Lsn(0x500))]);
}

#[test]
fn commit_counts_only_acks_at_or_above_the_term_start() {
    let (mut p, _) = greeted([0, 0, 0]);
    for sk in 0..3 {
        p.handle(
            0,
            Input::Message(sk, vote(1, true, 0, TermHistory::empty())),
        );
    }
    p.drain_outputs();
    assert_eq!(p.term_start_lsn(), Some(Lsn(0x100)));
    p.append_wal(Lsn(0x100), Bytes::from(vec![0u8; 0x200]))
        .unwrap();
    // One ack is not a quorum.
    p.handle(0, Input::Message(0, ack(1, 0x300, 0)));
    assert_eq!(p.commit_lsn(), Lsn(0));
    p.handle(0, Input::Message(1, ack(1, 0x280, 0)));
    assert_eq!(p.commit_lsn(), Lsn(0x280), "the second highest of the acks");
    assert!(p.drain_outputs().contains(&Output::Committed(Lsn(0x280))));
}

#[test]
fn older_term_wal_is_not_committed_before_this_terms() {
    let (mut p, _) = greeted([1, 1, 1]);
    // A lagging quorum member: term start is the donor's 0x800.
    p.handle(
        0,
        Input::Message(0, vote(2, true, 0x800, hist(&[(1, 0x100)]))),
    );
    p.handle(
        0,
        Input::Message(1, vote(2, true, 0x400, hist(&[(1, 0x100)]))),
    );
    p.drain_outputs();
    // Safekeeper 1 acknowledges 0x600: below the term start, it counts as nothing.
    p.handle(0, Input::Message(0, ack(2, 0x800, 0)));
    p.handle(0, Input::Message(1, ack(2, 0x600, 0)));
    assert_eq!(p.commit_lsn(), Lsn(0));
    p.handle(0, Input::Message(1, ack(2, 0x800, 0)));
    assert_eq!(p.commit_lsn(), Lsn(0x800));
}

#[test]
fn steps_down_when_any_reply_carries_a_higher_term() {
    let (mut p, _) = greeted([0, 0, 0]);
    for sk in 0..2 {
        p.handle(
            0,
            Input::Message(sk, vote(1, true, 0, TermHistory::empty())),
        );
    }
    p.drain_outputs();
    p.handle(0, Input::Message(0, ack(5, 0, 0)));
    let out = p.drain_outputs();
    assert!(
        matches!(out.as_slice(), [Output::SteppedDown { term: Term(5), .. }]),
        "{out:?}"
    );
    assert!(p.is_done());
    // A refused vote while campaigning also ends the campaign.
    let (mut p, _) = greeted([0, 0, 0]);
    p.handle(
        0,
        Input::Message(0, vote(1, false, 0, TermHistory::empty())),
    );
    assert!(p.is_done());
}

#[test]
fn streams_chunks_of_at_most_128k_and_heartbeats_when_idle() {
    let (mut p, _) = greeted([0, 0, 0]);
    for sk in 0..3 {
        p.handle(
            0,
            Input::Message(sk, vote(1, true, 0, TermHistory::empty())),
        );
    }
    p.drain_outputs();
    p.append_wal(Lsn(0x100), Bytes::from(vec![7u8; 300 * 1024]))
        .unwrap();
    let mut sizes = Vec::new();
    while let Some(ProposerMessage::AppendRequest(a)) = p.poll_send(0, 0) {
        sizes.push(a.wal_data.len());
        if a.wal_data.is_empty() {
            break;
        }
    }
    assert_eq!(sizes, vec![128 * 1024, 128 * 1024, 44 * 1024]);
    assert_eq!(p.poll_send(0, 10), None, "nothing due");
    let Some(ProposerMessage::AppendRequest(hb)) = p.poll_send(0, 2000) else {
        panic!("a heartbeat is due after a second");
    };
    assert!(hb.wal_data.is_empty());
}

#[test]
fn max_append_sets_the_size_of_append_requests() {
    // What `walproposer generate --append-size 8k` relies on.
    let mut c = conf();
    c.max_append = 8 * 1024;
    let mut p = Proposer::new(c);
    p.drain_outputs();
    for sk in 0..3 {
        p.handle(0, Input::Connected(sk));
        p.handle(0, Input::Message(sk, greeting(0)));
    }
    for sk in 0..2 {
        p.handle(
            0,
            Input::Message(sk, vote(1, true, 0, TermHistory::empty())),
        );
    }
    p.drain_outputs();
    p.append_wal(Lsn(0x100), Bytes::from(vec![7u8; 20 * 1024]))
        .unwrap();
    let mut sizes = Vec::new();
    while let Some(ProposerMessage::AppendRequest(a)) = p.poll_send(0, 0) {
        if a.wal_data.is_empty() {
            break;
        }
        sizes.push(a.wal_data.len());
    }
    assert_eq!(sizes, vec![8 * 1024, 8 * 1024, 4 * 1024]);
}

#[test]
fn reconnects_with_backoff() {
    let (mut p, _) = greeted([0, 0, 0]);
    p.handle(1000, Input::Disconnected(2));
    assert_eq!(p.drain_outputs(), vec![]);
    p.handle(1050, Input::Tick);
    assert_eq!(p.drain_outputs(), vec![], "backoff not over");
    p.handle(1100, Input::Tick);
    assert_eq!(p.drain_outputs(), vec![Output::Connect(2)]);
}

#[test]
fn sync_reports_the_term_start_once_everyone_committed_it() {
    let mut c = conf();
    c.mode = Mode::Sync;
    let mut p = Proposer::new(c);
    p.drain_outputs();
    for sk in 0..3 {
        p.handle(0, Input::Connected(sk));
        p.handle(0, Input::Message(sk, greeting(1)));
    }
    for sk in 0..3 {
        p.handle(
            0,
            Input::Message(sk, vote(2, true, 0x700, hist(&[(1, 0x100)]))),
        );
    }
    p.drain_outputs();
    for sk in 0..3 {
        p.handle(0, Input::Message(sk, ack(2, 0x700, 0)));
    }
    assert_eq!(p.commit_lsn(), Lsn(0x700));
    assert!(
        !p.drain_outputs()
            .iter()
            .any(|o| matches!(o, Output::Synced(_)))
    );
    for sk in 0..3 {
        p.handle(0, Input::Message(sk, ack(2, 0x700, 0x700)));
    }
    assert!(p.drain_outputs().contains(&Output::Synced(Lsn(0x700))));
}

#[test]
fn greets_with_the_configured_membership_and_every_message_carries_its_generation() {
    // What `--safekeepers 1@…,2@…,3@…` configures.
    let mconf = Configuration {
        generation: Generation(1),
        members: (1..=3)
            .map(|i| SafekeeperId {
                id: NodeId(i),
                host: "127.0.0.1".into(),
                pg_port: 5453 + i as u16,
            })
            .collect(),
        new_members: None,
    };
    let mut c = conf();
    c.mconf = mconf.clone();
    let mut p = Proposer::new(c);
    p.drain_outputs();
    let mut out = Vec::new();
    for sk in 0..3 {
        p.handle(0, Input::Connected(sk));
        out.extend(p.drain_outputs());
        p.handle(
            0,
            Input::Message(
                sk,
                AcceptorMessage::Greeting(AcceptorGreeting {
                    node_id: NodeId(sk as u64 + 1),
                    mconf: mconf.clone(),
                    term: Term(0),
                }),
            ),
        );
        out.extend(p.drain_outputs());
    }
    for sk in 0..3 {
        let mut v = vote(1, true, 0, TermHistory::empty());
        if let AcceptorMessage::VoteResponse(r) = &mut v {
            r.generation = Generation(1);
        }
        p.handle(0, Input::Message(sk, v));
        out.extend(p.drain_outputs());
    }
    p.append_wal(Lsn(0x100), Bytes::from(vec![7u8; 1024]))
        .unwrap();
    let append = p.poll_send(0, 0).expect("an AppendRequest");
    let mut kinds = Vec::new();
    for (_, m) in sent(&out).into_iter().chain([(0, &append)]) {
        match m {
            ProposerMessage::Greeting(g) => {
                assert_eq!(g.mconf, mconf);
                kinds.push("greeting");
            }
            ProposerMessage::VoteRequest(v) => {
                assert_eq!(v.generation, Generation(1));
                kinds.push("vote");
            }
            ProposerMessage::Elected(e) => {
                assert_eq!(e.generation, Generation(1));
                kinds.push("elected");
            }
            ProposerMessage::AppendRequest(a) => {
                assert_eq!(a.h.generation, Generation(1));
                kinds.push("append");
            }
        }
    }
    // The campaign starts once two have greeted, so the kinds interleave: count them.
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "append", "elected", "elected", "elected", "greeting", "greeting", "greeting", "vote",
            "vote", "vote"
        ]
    );
}

#[test]
fn greets_with_the_empty_configuration_by_default() {
    let mut p = Proposer::new(conf());
    p.drain_outputs();
    p.handle(0, Input::Connected(0));
    let out = p.drain_outputs();
    let [Output::Send(0, ProposerMessage::Greeting(g))] = out.as_slice() else {
        panic!("a greeting: {out:?}");
    };
    assert_eq!(g.mconf, Configuration::empty());
    assert_eq!(p.generation(), Generation(0));
}

fn members_conf(generation: u32, members: &[u64], new: Option<&[u64]>) -> Configuration {
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|&i| SafekeeperId {
                id: NodeId(i),
                host: "127.0.0.1".into(),
                pg_port: 5453 + i as u16,
            })
            .collect()
    };
    Configuration {
        generation: Generation(generation),
        members: list(members),
        new_members: new.map(list),
    }
}

#[test]
fn a_greeting_with_a_newer_configuration_ends_the_proposer_with_it() {
    let mut c = conf();
    c.mconf = members_conf(1, &[1, 2, 3], None);
    let mut p = Proposer::new(c);
    p.drain_outputs();
    let newer = members_conf(2, &[1, 2, 3], Some(&[1, 2, 4]));
    p.handle(0, Input::Connected(0));
    p.handle(
        0,
        Input::Message(
            0,
            AcceptorMessage::Greeting(AcceptorGreeting {
                node_id: NodeId(1),
                mconf: newer.clone(),
                term: Term(0),
            }),
        ),
    );
    let out = p.drain_outputs();
    assert!(out.contains(&Output::Reconfigure(newer)), "{out:?}");
    assert!(p.is_done());
}

#[test]
fn a_joint_configuration_needs_votes_and_acks_from_both_sets() {
    // List order: ids 1, 2, 3, 4; old set {1,2,3}, new set {1,2,4}.
    let joint = members_conf(2, &[1, 2, 3], Some(&[1, 2, 4]));
    let mut c = conf();
    c.n_safekeepers = 4;
    c.mconf = joint.clone();
    let mut p = Proposer::new(c);
    p.drain_outputs();
    let greet = |p: &mut Proposer, sk: SkId| {
        p.handle(0, Input::Connected(sk));
        p.handle(
            0,
            Input::Message(
                sk,
                AcceptorMessage::Greeting(AcceptorGreeting {
                    node_id: NodeId(sk as u64 + 1),
                    mconf: joint.clone(),
                    term: Term(0),
                }),
            ),
        );
    };
    // Ids 1 and 3 are a majority of the old set only: no campaign.
    greet(&mut p, 0);
    greet(&mut p, 2);
    let out = p.drain_outputs();
    assert!(
        !sent(&out)
            .iter()
            .any(|(_, m)| matches!(m, ProposerMessage::VoteRequest(_))),
        "campaigned without the new set: {out:?}"
    );
    // Id 4 too: {1, 3} is 2 of {1,2,3} and {1, 4} is 2 of {1,2,4}: both majorities.
    greet(&mut p, 3);
    let out = p.drain_outputs();
    let votes = sent(&out)
        .into_iter()
        .filter(|(_, m)| matches!(m, ProposerMessage::VoteRequest(_)))
        .count();
    assert_eq!(votes, 3, "{out:?}");
    let v = |flush| {
        let mut v = vote(1, true, flush, TermHistory::empty());
        if let AcceptorMessage::VoteResponse(r) = &mut v {
            r.generation = Generation(2);
        }
        v
    };
    // Votes from ids 1 and 3: not elected (the new set has one vote).
    p.handle(0, Input::Message(0, v(0)));
    p.handle(0, Input::Message(2, v(0)));
    assert!(
        !p.drain_outputs()
            .iter()
            .any(|o| matches!(o, Output::Elected { .. }))
    );
    p.handle(0, Input::Message(3, v(0)));
    assert!(
        p.drain_outputs()
            .iter()
            .any(|o| matches!(o, Output::Elected { .. }))
    );
    p.append_wal(Lsn(0x100), Bytes::from(vec![7u8; 1024]))
        .unwrap();
    let mut a = |sk: SkId, flush: u64| {
        let mut m = ack(1, flush, 0);
        if let AcceptorMessage::AppendResponse(r) = &mut m {
            r.generation = Generation(2);
        }
        p.handle(0, Input::Message(sk, m));
        p.drain_outputs()
    };
    // Ids 1 and 3 have it: a majority of the old set, not of the new one.
    a(0, 0x500);
    let out = a(2, 0x500);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Committed(l) if *l >= Lsn(0x500))),
        "{out:?}"
    );
    // Id 4 too: both majorities.
    let out = a(3, 0x500);
    assert!(out.contains(&Output::Committed(Lsn(0x500))), "{out:?}");
}
