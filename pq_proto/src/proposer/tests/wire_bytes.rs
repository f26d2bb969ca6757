//! The byte layouts: the worked examples of ref §2.5 and the v2 struct sizes.

use bytes::{Bytes, BytesMut};

use super::{MAX, V2, V3, acceptor_messages, feedback, greeting, heartbeat};
use crate::ProtocolError;
use crate::proposer::{
    AcceptorMessage, AppendRequest, AppendResponse, Configuration, Generation, HotStandbyFeedback,
    ProposerMessage, ProtocolVersion, VoteRequest, parse_acceptor_frame, parse_proposer_frame,
    write_acceptor_frame, write_proposer_frame,
};
use utils::{Lsn, Term};

/// Ref §2.5: the heartbeat AppendRequest v3 as it appears on the TCP stream.
const HEARTBEAT_V3_FRAME: [u8; 50] = [
    0x64, 0x00, 0x00, 0x00, 0x31, 0x61, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x00, 0xc0,
];

#[test]
fn ref_example_heartbeat_append_request_v3() {
    let msg = ProposerMessage::AppendRequest(AppendRequest {
        h: heartbeat(1),
        wal_data: Bytes::new(),
    });
    let mut buf = BytesMut::new();
    write_proposer_frame(&msg, V3, &mut buf);
    assert_eq!(&buf[..], &HEARTBEAT_V3_FRAME[..]);
    let mut buf = BytesMut::from(&HEARTBEAT_V3_FRAME[..]);
    assert_eq!(parse_proposer_frame(&mut buf, V3, MAX), Ok(Some(msg)));
    assert!(buf.is_empty());
}

#[test]
fn ref_example_append_response_v3() {
    let mut expected = vec![0x64, 0x00, 0x00, 0x00, 0x39, 0x61, 0, 0, 0, 1];
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
    expected.extend_from_slice(&[0, 0, 0, 0, 0x01, 0x00, 0x01, 0x00]);
    expected.extend_from_slice(&[0, 0, 0, 0, 0x01, 0x00, 0x00, 0xf8]);
    expected.extend_from_slice(&[0; 24]);
    let msg = AcceptorMessage::AppendResponse(AppendResponse {
        generation: Generation(1),
        term: Term(3),
        flush_lsn: Lsn(0x1000100),
        commit_lsn: Lsn(0x10000f8),
        hs_feedback: HotStandbyFeedback::default(),
        pageserver_feedback: None,
    });
    let mut buf = BytesMut::new();
    write_acceptor_frame(&msg, V3, &mut buf);
    assert_eq!(&buf[..], &expected[..]);
    assert_eq!(
        buf.len() - 5,
        crate::proposer::v3::APPEND_RESPONSE_FIXED_LEN
    );
    assert_eq!(parse_acceptor_frame(&mut buf, V3, MAX), Ok(Some(msg)));
}

#[test]
fn ref_example_append_request_v2() {
    let mut expected = vec![0x61, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0xf8, 0x00, 0x00, 0x01, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0xc0, 0x00, 0x00, 0x01, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0; 16]);
    assert_eq!(expected.len(), 72);
    let msg = ProposerMessage::AppendRequest(AppendRequest {
        h: heartbeat(0),
        wal_data: Bytes::new(),
    });
    let mut buf = BytesMut::new();
    msg.encode(V2, &mut buf);
    assert_eq!(&buf[..], &expected[..]);
    assert_eq!(ProposerMessage::decode(Bytes::from(expected), V2), Ok(msg));
}

#[test]
fn ref_example_vote_request_v3() {
    let bytes = [0x76, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x03];
    let msg = ProposerMessage::VoteRequest(VoteRequest {
        generation: Generation(1),
        term: Term(3),
    });
    let mut buf = BytesMut::new();
    msg.encode(V3, &mut buf);
    assert_eq!(&buf[..], &bytes[..]);
    assert_eq!(
        ProposerMessage::decode(Bytes::copy_from_slice(&bytes), V3),
        Ok(msg)
    );
}

#[test]
fn v2_greeting_layout() {
    let g = greeting(Configuration::empty());
    let mut buf = BytesMut::new();
    ProposerMessage::Greeting(g.clone()).encode(V2, &mut buf);
    assert_eq!(&buf[0..8], &u64::from(b'g').to_le_bytes());
    assert_eq!(&buf[8..12], &2u32.to_le_bytes());
    assert_eq!(&buf[12..16], &170004u32.to_le_bytes());
    assert_eq!(&buf[16..32], &[0; 16]);
    assert_eq!(&buf[32..40], &g.system_id.to_le_bytes());
    assert_eq!(
        &buf[40..56],
        g.timeline_id.as_bytes(),
        "timeline id comes first"
    );
    assert_eq!(&buf[56..72], g.tenant_id.as_bytes());
    assert_eq!(&buf[72..76], &1u32.to_le_bytes());
    assert_eq!(&buf[76..80], &(16u32 << 20).to_le_bytes());
    // Other protocol versions are refused.
    buf[8] = 3;
    assert!(matches!(
        ProposerMessage::decode(buf.freeze(), V2),
        Err(ProtocolError::InvalidField {
            field: "protocol_version",
            ..
        })
    ));
}

#[test]
fn v2_sizes() {
    let sizes = |v: ProtocolVersion| -> Vec<usize> {
        acceptor_messages(0, Configuration::empty())
            .iter()
            .map(|m| {
                let mut buf = BytesMut::new();
                m.encode(v, &mut buf);
                buf.len()
            })
            .collect()
    };
    // Greeting 24; VoteResponse 52 + 16n; AppendResponse 56 (+ feedback).
    let v2 = sizes(V2);
    assert_eq!(&v2[..4], &[24, 52 + 32, 52, 56]);
    let mut fb = BytesMut::new();
    feedback().write(&mut fb);
    assert_eq!(v2[4], 56 + fb.len());
    // v3: VoteResponse 34 + 16n, AppendResponse 53.
    let v3 = sizes(V3);
    assert_eq!(&v3[1..4], &[34 + 32, 34, 53]);
}
