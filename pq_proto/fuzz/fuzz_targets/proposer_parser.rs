//! Fuzzes the proposer/acceptor codecs in both versions, as whole payloads and through the
//! stream-level frame parsers, plus the replication payloads. Anything that decodes must
//! survive an encode / decode round trip unchanged.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pq_proto::proposer::{
    AcceptorMessage, ProposerMessage, ProtocolVersion, parse_acceptor_frame,
    parse_proposer_frame, write_acceptor_frame, write_proposer_frame,
};
use pq_proto::replication::{ReplicationClientMessage, ReplicationServerMessage};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    for v in [ProtocolVersion::V2, ProtocolVersion::V3] {
        if let Ok(m) = ProposerMessage::decode(payload.clone(), v) {
            let mut out = BytesMut::new();
            write_proposer_frame(&m, v, &mut out);
            assert_eq!(parse_proposer_frame(&mut out, v, MAX).unwrap(), Some(m));
            assert!(out.is_empty());
        }
        if let Ok(m) = AcceptorMessage::decode(payload.clone(), v) {
            let mut out = BytesMut::new();
            write_acceptor_frame(&m, v, &mut out);
            assert_eq!(parse_acceptor_frame(&mut out, v, MAX).unwrap(), Some(m));
            assert!(out.is_empty());
        }
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = parse_proposer_frame(&mut buf, v, MAX) {}
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = parse_acceptor_frame(&mut buf, v, MAX) {}
    }
    if let Ok(m) = ReplicationServerMessage::decode(payload.clone()) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(ReplicationServerMessage::decode(out.freeze()).unwrap(), m);
    }
    if let Ok(m) = ReplicationClientMessage::decode(payload) {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(ReplicationClientMessage::decode(out.freeze()).unwrap(), m);
    }
});
