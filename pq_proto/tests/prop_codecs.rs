//! Property tests over generated valid messages: every codec round-trips, every strict
//! prefix of an encoded frame is "incomplete" (never an error, never another message), and
//! a parser consumes exactly one frame.

mod strategies;

use bytes::BytesMut;
use pq_proto::DEFAULT_MAX_MESSAGE_LEN;
use pq_proto::backend::BeMessage;
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use pq_proto::proposer::{
    AcceptorMessage, ProposerMessage, parse_acceptor_frame, parse_proposer_frame,
    write_acceptor_frame, write_proposer_frame,
};
use pq_proto::replication::{ReplicationClientMessage, ReplicationServerMessage};
use proptest::prelude::{Just, ProptestConfig, Strategy, prop_assert, prop_assert_eq, proptest};

const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

/// Checks a stream parser on `wire` (one encoded frame): every strict prefix gives
/// `Ok(None)` and consumes nothing; the whole frame followed by the start of another one
/// gives `want` and leaves exactly that extra.
fn check_stream<T, F>(
    wire: &[u8],
    want: &T,
    mut parse: F,
) -> Result<(), proptest::test_runner::TestCaseError>
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut(&mut BytesMut) -> Result<Option<T>, pq_proto::ProtocolError>,
{
    for n in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..n]);
        let r = parse(&mut buf);
        prop_assert!(
            matches!(r, Ok(None)),
            "prefix of {n}/{} bytes gave {r:?}",
            wire.len()
        );
        prop_assert_eq!(buf.len(), n);
    }
    let mut buf = BytesMut::from(wire);
    buf.extend_from_slice(&wire[..wire.len() / 2]);
    let got =
        parse(&mut buf).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.as_ref(), Some(want));
    prop_assert_eq!(&buf[..], &wire[..wire.len() / 2]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn startup_packets(p in strategies::startup_packet()) {
        let mut wire = BytesMut::new();
        p.write(&mut wire);
        check_stream(&wire, &p, FeStartupPacket::parse)?;
    }

    #[test]
    fn fe_messages(m in strategies::fe_message()) {
        let mut wire = BytesMut::new();
        m.write(&mut wire);
        check_stream(&wire, &m, FeMessage::parse)?;
    }

    #[test]
    fn be_messages(m in strategies::be_message()) {
        let mut wire = BytesMut::new();
        m.write(&mut wire);
        check_stream(&wire, &m, BeMessage::parse)?;
    }

    #[test]
    fn replication_server_messages(m in strategies::replication_server_message()) {
        let mut payload = BytesMut::new();
        m.encode(&mut payload);
        prop_assert_eq!(ReplicationServerMessage::decode(payload.freeze()), Ok(m));
    }

    #[test]
    fn replication_client_messages(m in strategies::replication_client_message()) {
        let mut payload = BytesMut::new();
        m.encode(&mut payload);
        prop_assert_eq!(ReplicationClientMessage::decode(payload.freeze()), Ok(m));
    }

    #[test]
    fn proposer_messages(
        (v, m) in strategies::version().prop_flat_map(|v| (Just(v), strategies::proposer_message(v)))
    ) {
        let mut payload = BytesMut::new();
        m.encode(v, &mut payload);
        prop_assert_eq!(ProposerMessage::decode(payload.freeze(), v), Ok(m.clone()));
        let mut wire = BytesMut::new();
        write_proposer_frame(&m, v, &mut wire);
        check_stream(&wire, &m, |b| parse_proposer_frame(b, v, MAX))?;
    }

    #[test]
    fn acceptor_messages(
        (v, m) in strategies::version().prop_flat_map(|v| (Just(v), strategies::acceptor_message(v)))
    ) {
        let mut payload = BytesMut::new();
        m.encode(v, &mut payload);
        prop_assert_eq!(AcceptorMessage::decode(payload.freeze(), v), Ok(m.clone()));
        let mut wire = BytesMut::new();
        write_acceptor_frame(&m, v, &mut wire);
        check_stream(&wire, &m, |b| parse_acceptor_frame(b, v, MAX))?;
    }
}
