//! Fuzzes what a server reads from an untrusted client: the startup packets, then the
//! tagged frontend messages, then the CopyData payloads a replication or WAL-push client
//! sends. Anything that parses must survive an encode / parse round trip unchanged.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use pq_proto::proposer::{ProposerMessage, ProtocolVersion};
use pq_proto::replication::ReplicationClientMessage;

fn check_startup(p: &FeStartupPacket) {
    let mut out = BytesMut::new();
    p.write(&mut out);
    assert_eq!(FeStartupPacket::parse(&mut out).unwrap().as_ref(), Some(p));
    assert!(out.is_empty());
}

fn check_message(m: &FeMessage) {
    let mut out = BytesMut::new();
    m.write(&mut out);
    assert_eq!(FeMessage::parse(&mut out).unwrap().as_ref(), Some(m));
    assert!(out.is_empty());
    if let FeMessage::CopyData(payload) = m {
        check_payload(payload);
    }
}

/// A CopyData payload as the safekeeper decodes it.
fn check_payload(payload: &Bytes) {
    if let Ok(r) = ReplicationClientMessage::decode(payload.clone()) {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(ReplicationClientMessage::decode(out.freeze()).unwrap(), r);
    }
    for v in [ProtocolVersion::V2, ProtocolVersion::V3] {
        if let Ok(p) = ProposerMessage::decode(payload.clone(), v) {
            let mut out = BytesMut::new();
            p.encode(v, &mut out);
            assert_eq!(ProposerMessage::decode(out.freeze(), v).unwrap(), p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // As a server sees a connection: startup packets until a StartupMessage, then messages.
    let mut buf = BytesMut::from(data);
    loop {
        match FeStartupPacket::parse(&mut buf) {
            Ok(Some(p)) => {
                check_startup(&p);
                if matches!(p, FeStartupPacket::Startup { .. }) {
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    while let Ok(Some(m)) = FeMessage::parse_with_limit(&mut buf, 1 << 20) {
        check_message(&m);
    }
    // And the whole input as a message stream, so the fuzzer need not find a valid
    // startup packet to reach the message parser.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = FeMessage::parse_with_limit(&mut buf, 1 << 20) {
        check_message(&m);
    }
});
