//! The choice of donor: same term and last log term on both sides, more WAL than ours.

use pq_proto::proposer::SafekeeperId;
use utils::{Lsn, NodeId, Term};

use super::{Donor, Local, choose_donor};
use crate::timeline::PeerPosition;

fn members() -> Vec<SafekeeperId> {
    (1..=3)
        .map(|i| SafekeeperId {
            id: NodeId(i),
            host: "127.0.0.1".into(),
            pg_port: 5000 + i as u16,
        })
        .collect()
}

fn peer(id: u64, term: u64, last: u64, flush: u64) -> PeerPosition {
    PeerPosition {
        id: NodeId(id),
        flush_lsn: Lsn(flush),
        commit_lsn: Lsn(flush - 8),
        term: Term(term),
        last_log_term: Term(last),
        backup_lsn: Lsn(0),
    }
}

fn us(term: u64, last: u64, flush: u64) -> Local {
    Local {
        term: Term(term),
        last_log_term: Term(last),
        flush_lsn: Lsn(flush),
    }
}

#[test]
fn takes_the_peer_with_most_wal_in_our_term() {
    let d = choose_donor(
        us(3, 3, 1000),
        &members(),
        &[peer(2, 3, 3, 2000), peer(3, 3, 3, 3000)],
    );
    assert_eq!(
        d,
        Some(Donor {
            id: NodeId(3),
            addr: "127.0.0.1:5003".into(),
            term: Term(3),
            from: Lsn(1000),
            to: Lsn(3000),
            commit_lsn: Lsn(2992),
        })
    );
}

#[test]
fn ties_go_to_the_lowest_id() {
    let d = choose_donor(
        us(3, 3, 1000),
        &members(),
        &[peer(3, 3, 3, 2000), peer(2, 3, 3, 2000)],
    );
    assert_eq!(d.map(|d| d.id), Some(NodeId(2)));
}

#[test]
fn nothing_when_no_peer_is_ahead() {
    let d = choose_donor(us(3, 3, 2000), &members(), &[peer(2, 3, 3, 2000)]);
    assert_eq!(d, None);
}

#[test]
fn never_from_another_term() {
    // The peer's WAL is of a later term: not ours to take without an election.
    assert_eq!(
        choose_donor(us(3, 3, 1000), &members(), &[peer(2, 4, 4, 2000)]),
        None
    );
    // The peer voted in a later term: its WAL of term 3 may be cut by that election.
    assert_eq!(
        choose_donor(us(3, 3, 1000), &members(), &[peer(2, 4, 3, 2000)]),
        None
    );
    // The peer's WAL is of an older term.
    assert_eq!(
        choose_donor(us(3, 3, 1000), &members(), &[peer(2, 3, 2, 2000)]),
        None
    );
}

#[test]
fn never_after_voting_in_a_later_term() {
    // We promised term 4: appends of term 3 would be refused anyway.
    assert_eq!(
        choose_donor(us(4, 3, 1000), &members(), &[peer(2, 3, 3, 2000)]),
        None
    );
}

#[test]
fn never_without_an_elected_term_or_wal() {
    assert_eq!(
        choose_donor(us(0, 0, 1000), &members(), &[peer(2, 0, 0, 2000)]),
        None
    );
    assert_eq!(
        choose_donor(us(3, 3, 0), &members(), &[peer(2, 3, 3, 2000)]),
        None
    );
}

#[test]
fn never_from_a_peer_outside_the_configuration() {
    assert_eq!(
        choose_donor(us(3, 3, 1000), &members(), &[peer(7, 3, 3, 2000)]),
        None
    );
}
