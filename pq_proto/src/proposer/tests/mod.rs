//! Proposer protocol tests: fixtures covering every message, and round trips in both
//! versions (layouts in [`wire_bytes`], refusals in [`validation`]).

use bytes::{Bytes, BytesMut};
use utils::{Lsn, NodeId, TenantId, Term, TimelineId};

use super::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, HotStandbyFeedback, PageserverFeedback, ProposerElected,
    ProposerGreeting, ProposerMessage, ProtocolVersion, SafekeeperId, TermHistory, TermLsn,
    VoteRequest, VoteResponse, parse_acceptor_frame, parse_proposer_frame, write_acceptor_frame,
    write_proposer_frame,
};
use crate::DEFAULT_MAX_MESSAGE_LEN;

mod validation;
mod wire_bytes;

pub(super) const V2: ProtocolVersion = ProtocolVersion::V2;
pub(super) const V3: ProtocolVersion = ProtocolVersion::V3;
pub(super) const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

pub(super) fn history(entries: &[(u64, u64)]) -> TermHistory {
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

pub(super) fn sk(id: u64, host: &str) -> SafekeeperId {
    SafekeeperId {
        id: NodeId(id),
        host: host.into(),
        pg_port: 5454,
    }
}

pub(super) fn joint_conf() -> Configuration {
    Configuration {
        generation: Generation(7),
        members: vec![sk(1, "sk-1"), sk(2, "sk-2"), sk(3, "")],
        new_members: Some(vec![sk(2, "sk-2"), sk(4, "sk-4.local")]),
    }
}

pub(super) fn greeting(mconf: Configuration) -> ProposerGreeting {
    ProposerGreeting {
        tenant_id: "0123456789abcdef0123456789abcdef"
            .parse::<TenantId>()
            .unwrap(),
        timeline_id: "fedcba9876543210fedcba9876543210"
            .parse::<TimelineId>()
            .unwrap(),
        mconf,
        pg_version: 170004,
        system_id: 7_412_345_678_901_234_567,
        wal_seg_size: 16 << 20,
    }
}

pub(super) fn heartbeat(generation: u32) -> AppendRequestHeader {
    AppendRequestHeader {
        generation: Generation(generation),
        term: Term(3),
        begin_lsn: Lsn(0x1000100),
        end_lsn: Lsn(0x1000100),
        commit_lsn: Lsn(0x10000f8),
        truncate_lsn: Lsn(0x10000c0),
    }
}

pub(super) fn feedback() -> PageserverFeedback {
    PageserverFeedback {
        current_timeline_size: 12345,
        last_received_lsn: Lsn(300),
        disk_consistent_lsn: Lsn(200),
        remote_consistent_lsn: Lsn(100),
        replytime: 1_000_000,
        shard_number: 2,
        corruption_detected: true,
    }
}

/// Every proposer message; `gen` is 0 for v2 (which cannot carry generations).
pub(super) fn proposer_messages(generation: u32, mconf: Configuration) -> Vec<ProposerMessage> {
    let g = Generation(generation);
    let wal = Bytes::from_static(&[0xd1, 0x10, 0x02, 0x00, 0xaa, 0xbb, 0xcc]);
    vec![
        ProposerMessage::Greeting(greeting(mconf)),
        ProposerMessage::VoteRequest(VoteRequest {
            generation: g,
            term: Term(u64::MAX),
        }),
        ProposerMessage::Elected(ProposerElected {
            generation: g,
            term: Term(5),
            start_streaming_at: Lsn(0x2000000),
            term_history: history(&[(1, 0x1000000), (3, 0x1800000), (5, 0x2000000)]),
        }),
        ProposerMessage::Elected(ProposerElected {
            generation: g,
            term: Term(1),
            start_streaming_at: Lsn(0),
            term_history: TermHistory::empty(),
        }),
        ProposerMessage::AppendRequest(AppendRequest {
            h: heartbeat(generation),
            wal_data: Bytes::new(),
        }),
        ProposerMessage::AppendRequest(AppendRequest {
            h: AppendRequestHeader {
                end_lsn: Lsn(0x1000100 + wal.len() as u64),
                ..heartbeat(generation)
            },
            wal_data: wal,
        }),
    ]
}

pub(super) fn acceptor_messages(generation: u32, mconf: Configuration) -> Vec<AcceptorMessage> {
    let g = Generation(generation);
    let response = AppendResponse {
        generation: g,
        term: Term(3),
        flush_lsn: Lsn(0x1000100),
        commit_lsn: Lsn(0x10000f8),
        hs_feedback: HotStandbyFeedback {
            ts: -5,
            xmin: 0x1_0000_0010,
            catalog_xmin: 0x1_0000_0001,
        },
        pageserver_feedback: None,
    };
    vec![
        AcceptorMessage::Greeting(AcceptorGreeting {
            node_id: NodeId(42),
            mconf,
            term: Term(9),
        }),
        AcceptorMessage::VoteResponse(VoteResponse {
            generation: g,
            term: Term(4),
            vote_given: true,
            flush_lsn: Lsn(0x1800000),
            truncate_lsn: Lsn(0x1000000),
            term_history: history(&[(1, 0x1000000), (3, 0x1800000)]),
        }),
        AcceptorMessage::VoteResponse(VoteResponse {
            generation: g,
            term: Term(4),
            vote_given: false,
            flush_lsn: Lsn(0),
            truncate_lsn: Lsn(0),
            term_history: TermHistory::empty(),
        }),
        AcceptorMessage::AppendResponse(response.clone()),
        AcceptorMessage::AppendResponse(AppendResponse {
            pageserver_feedback: Some(feedback()),
            ..response
        }),
        AcceptorMessage::AppendResponse(AppendResponse::default()),
    ]
}

pub(super) fn all_cases() -> Vec<(ProtocolVersion, Vec<ProposerMessage>, Vec<AcceptorMessage>)> {
    vec![
        (
            V2,
            proposer_messages(0, Configuration::empty()),
            acceptor_messages(0, Configuration::empty()),
        ),
        (
            V3,
            proposer_messages(0, Configuration::empty()),
            acceptor_messages(0, Configuration::empty()),
        ),
        (
            V3,
            proposer_messages(7, joint_conf()),
            acceptor_messages(7, joint_conf()),
        ),
    ]
}

#[test]
pub(super) fn every_message_round_trips_in_both_versions() {
    for (version, proposer, acceptor) in all_cases() {
        for m in proposer {
            let mut buf = BytesMut::new();
            m.encode(version, &mut buf);
            assert_eq!(
                ProposerMessage::decode(buf.freeze(), version),
                Ok(m.clone())
            );
            let mut buf = BytesMut::new();
            write_proposer_frame(&m, version, &mut buf);
            assert_eq!(parse_proposer_frame(&mut buf, version, MAX), Ok(Some(m)));
            assert!(buf.is_empty());
        }
        for m in acceptor {
            let mut buf = BytesMut::new();
            m.encode(version, &mut buf);
            assert_eq!(
                AcceptorMessage::decode(buf.freeze(), version),
                Ok(m.clone())
            );
            let mut buf = BytesMut::new();
            write_acceptor_frame(&m, version, &mut buf);
            assert_eq!(parse_acceptor_frame(&mut buf, version, MAX), Ok(Some(m)));
            assert!(buf.is_empty());
        }
    }
}

#[test]
pub(super) fn v2_drops_generation_and_mconf() {
    let mut buf = BytesMut::new();
    ProposerMessage::Greeting(greeting(joint_conf())).encode(V2, &mut buf);
    assert_eq!(buf.len(), crate::proposer::v2::PROPOSER_GREETING_LEN);
    assert_eq!(
        ProposerMessage::decode(buf.freeze(), V2),
        Ok(ProposerMessage::Greeting(greeting(Configuration::empty())))
    );
    let mut buf = BytesMut::new();
    ProposerMessage::VoteRequest(VoteRequest {
        generation: Generation(9),
        term: Term(2),
    })
    .encode(V2, &mut buf);
    let Ok(ProposerMessage::VoteRequest(v)) = ProposerMessage::decode(buf.freeze(), V2) else {
        panic!("not a vote request");
    };
    assert_eq!(v.generation, Generation(0));
}
