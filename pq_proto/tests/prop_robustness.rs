//! Robustness properties: no parser or decoder panics on arbitrary bytes or on mutated
//! valid messages, and a length field above the limit is refused from the header alone.

mod strategies;

use bytes::{Bytes, BytesMut};
use pq_proto::backend::{BeMessage, parse_encryption_response};
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use pq_proto::proposer::{
    AcceptorMessage, PageserverFeedback, ProposerMessage, ProtocolVersion, parse_acceptor_frame,
    parse_proposer_frame, write_acceptor_frame, write_proposer_frame,
};
use pq_proto::replication::{ReplicationClientMessage, ReplicationServerMessage};
use pq_proto::{MAX_STARTUP_PACKET_LEN, ProtocolError};
use proptest::collection::vec;
use proptest::prelude::{
    Just, ProptestConfig, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::sample::select;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V2, ProtocolVersion::V3];

/// Drives a stream parser over `data` until it errors, stalls or empties the buffer.
fn drain<T>(data: &[u8], mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = parse(&mut buf) {}
}

/// Feeds `data` to every parser and decoder of the crate.
fn feed_everything(data: &[u8]) {
    drain(data, FeStartupPacket::parse);
    drain(data, FeMessage::parse);
    drain(data, |b| FeMessage::parse_with_limit(b, 64));
    drain(data, BeMessage::parse);
    drain(data, parse_encryption_response);
    let payload = Bytes::copy_from_slice(data);
    for v in VERSIONS {
        let _ = ProposerMessage::decode(payload.clone(), v);
        let _ = AcceptorMessage::decode(payload.clone(), v);
        drain(data, |b| parse_proposer_frame(b, v, 1 << 20));
        drain(data, |b| parse_acceptor_frame(b, v, 1 << 20));
    }
    let _ = ReplicationServerMessage::decode(payload.clone());
    let _ = ReplicationClientMessage::decode(payload.clone());
    let _ = PageserverFeedback::parse(payload);
}

/// Valid encodings of every kind, to mutate.
fn valid_wire() -> impl Strategy<Value = Vec<u8>> {
    let proposer = strategies::version().prop_flat_map(|v| {
        (Just(v), strategies::proposer_message(v)).prop_map(|(v, m)| {
            let mut b = BytesMut::new();
            write_proposer_frame(&m, v, &mut b);
            b.to_vec()
        })
    });
    let acceptor = strategies::version().prop_flat_map(|v| {
        (Just(v), strategies::acceptor_message(v)).prop_map(|(v, m)| {
            let mut b = BytesMut::new();
            m.encode(v, &mut b);
            let mut framed = BytesMut::new();
            write_acceptor_frame(&m, v, &mut framed);
            [b.to_vec(), framed.to_vec()].concat()
        })
    });
    prop_oneof![
        strategies::startup_packet().prop_map(|p| {
            let mut b = BytesMut::new();
            p.write(&mut b);
            b.to_vec()
        }),
        strategies::fe_message().prop_map(|m| {
            let mut b = BytesMut::new();
            m.write(&mut b);
            b.to_vec()
        }),
        strategies::be_message().prop_map(|m| {
            let mut b = BytesMut::new();
            m.write(&mut b);
            b.to_vec()
        }),
        strategies::replication_client_message().prop_map(|m| {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            b.to_vec()
        }),
        proposer,
        acceptor,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        feed_everything(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        wire in valid_wire(),
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut data = wire;
        for (at, byte) in edits {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] = byte;
            }
        }
        data.truncate(cut % (data.len() + 1));
        feed_everything(&data);
        // Also as a bare payload with the frame header stripped.
        if data.len() > 5 {
            feed_everything(&data[5..]);
        }
    }

    #[test]
    fn oversized_length_fields_are_refused_from_the_header(
        len in (1u32 << 20) + 1..=u32::MAX,
        fe_tag in select(b"dQpcfSHXPBDECF".to_vec()),
        be_tag in select(b"RSKZTDCIEWHGdcn".to_vec()),
    ) {
        let header = |tag: u8| [&[tag][..], &len.to_be_bytes()[..]].concat();
        let expect = ProtocolError::MessageTooLong { len: len as usize, max: 1 << 20 };
        let mut buf = BytesMut::from(&header(fe_tag)[..]);
        prop_assert_eq!(FeMessage::parse_with_limit(&mut buf, 1 << 20), Err(expect.clone()));
        let mut buf = BytesMut::from(&header(be_tag)[..]);
        prop_assert_eq!(BeMessage::parse_with_limit(&mut buf, 1 << 20), Err(expect.clone()));
        for v in VERSIONS {
            let mut buf = BytesMut::from(&header(b'd')[..]);
            prop_assert_eq!(parse_proposer_frame(&mut buf, v, 1 << 20), Err(expect.clone()));
            let mut buf = BytesMut::from(&header(b'd')[..]);
            prop_assert_eq!(parse_acceptor_frame(&mut buf, v, 1 << 20), Err(expect.clone()));
        }
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let r = FeStartupPacket::parse(&mut buf);
        prop_assert!(matches!(r, Err(ProtocolError::MessageTooLong { .. })), "{r:?}");
    }
}

/// A 2 GiB length field: refused at once, and the buffer never grows for it.
#[test]
fn two_gib_length_field() {
    for len in [0x7fff_ffffu32, 0x8000_0000, u32::MAX] {
        let mut header = vec![b'd'];
        header.extend_from_slice(&len.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        let cap = buf.capacity();
        let r = FeMessage::parse(&mut buf);
        assert_eq!(
            r,
            Err(ProtocolError::MessageTooLong {
                len: len as usize,
                max: pq_proto::DEFAULT_MAX_MESSAGE_LEN
            })
        );
        assert_eq!(buf.capacity(), cap);
        let mut buf = BytesMut::from(&header[..]);
        assert!(BeMessage::parse(&mut buf).is_err());
        let mut buf = BytesMut::from(&header[..]);
        assert!(parse_proposer_frame(&mut buf, ProtocolVersion::V3, 1 << 24).is_err());
    }
    let mut buf = BytesMut::from(&0x7fff_ffffu32.to_be_bytes()[..]);
    assert_eq!(
        FeStartupPacket::parse(&mut buf),
        Err(ProtocolError::MessageTooLong {
            len: 0x7fff_ffff,
            max: MAX_STARTUP_PACKET_LEN + 4
        })
    );
}
