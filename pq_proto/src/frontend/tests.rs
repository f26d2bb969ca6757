//! Frontend codec tests: round trips of every packet and message, the literal bytes
//! libpq sends, partial input, and every rejection rule.

use bytes::{Bytes, BytesMut};

use super::{FeMessage, FeStartupPacket, PROTOCOL_V3_CODE};
use crate::{MAX_STARTUP_PACKET_LEN, ProtocolError};

fn startup_round_trip(p: FeStartupPacket) {
    let mut buf = BytesMut::new();
    p.write(&mut buf);
    assert_eq!(FeStartupPacket::parse(&mut buf).unwrap(), Some(p));
    assert!(buf.is_empty());
}

fn fe_round_trip(m: FeMessage) {
    let mut buf = BytesMut::new();
    m.write(&mut buf);
    assert_eq!(FeMessage::parse(&mut buf).unwrap(), Some(m));
    assert!(buf.is_empty());
}

fn startup_v3(params: &[(&str, &str)]) -> FeStartupPacket {
    FeStartupPacket::Startup {
        major: 3,
        minor: 0,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn startup_packets_round_trip() {
    startup_round_trip(FeStartupPacket::SslRequest);
    startup_round_trip(FeStartupPacket::GssEncRequest);
    startup_round_trip(FeStartupPacket::CancelRequest {
        process_id: -7,
        secret_key: 123456,
    });
    startup_round_trip(startup_v3(&[]));
    startup_round_trip(startup_v3(&[
        ("user", "cloud_admin"),
        ("database", "replication"),
        ("options", "-c timeline_id=aa tenant_id=bb"),
        ("application_name", "pg_receivewal"),
    ]));
    startup_round_trip(FeStartupPacket::Startup {
        major: 3,
        minor: 2,
        params: vec![("user".into(), "x".into())],
    });
}

#[test]
fn startup_literal_bytes() {
    let mut buf = BytesMut::from(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..]);
    assert_eq!(
        FeStartupPacket::parse(&mut buf).unwrap(),
        Some(FeStartupPacket::SslRequest)
    );
    // What libpq sends for `user=u`: length 16, 3.0, "user\0u\0\0".
    let mut buf = BytesMut::from(&b"\0\0\0\x10\0\x03\0\0user\0u\0\0"[..]);
    let p = FeStartupPacket::parse(&mut buf).unwrap().unwrap();
    assert_eq!(p, startup_v3(&[("user", "u")]));
    assert_eq!(p.param("user"), Some("u"));
    assert_eq!(p.param("database"), None);
    assert_eq!(FeStartupPacket::SslRequest.param("user"), None);
    assert_eq!(PROTOCOL_V3_CODE, 196608);
}

#[test]
fn startup_rejects() {
    let parse = |b: &[u8]| FeStartupPacket::parse(&mut BytesMut::from(b));
    // Protocol 2.0, detected as soon as the code arrives.
    assert_eq!(
        parse(&[0, 0, 0, 9, 0, 2, 0, 0]),
        Err(ProtocolError::UnsupportedProtocolVersion { major: 2, minor: 0 })
    );
    assert!(matches!(
        parse(&[0, 0, 0, 7]),
        Err(ProtocolError::InvalidLength { len: 7, .. })
    ));
    let too_long = (MAX_STARTUP_PACKET_LEN + 5) as u32;
    assert!(matches!(
        parse(&too_long.to_be_bytes()),
        Err(ProtocolError::MessageTooLong { .. })
    ));
    // The longest allowed one is merely incomplete.
    let max = (MAX_STARTUP_PACKET_LEN + 4) as u32;
    assert_eq!(parse(&max.to_be_bytes()), Ok(None));
    // SSLRequest with an extra byte.
    assert!(matches!(
        parse(&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0]),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    // No terminator after the last pair; a value without NUL; bad UTF-8.
    assert!(matches!(
        parse(b"\0\0\0\x0f\0\x03\0\0user\0u\0"),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        parse(b"\0\0\0\x0f\0\x03\0\0user\0uu"),
        Err(ProtocolError::UnterminatedString { .. })
    ));
    assert!(matches!(
        parse(b"\0\0\0\x10\0\x03\0\0user\0\xff\0\0"),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
    // Bytes after the terminator.
    assert!(matches!(
        parse(b"\0\0\0\x11\0\x03\0\0user\0u\0\0x"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
}

#[test]
fn startup_partial_consumes_nothing() {
    let mut full = BytesMut::new();
    startup_v3(&[("user", "u")]).write(&mut full);
    for n in 0..full.len() {
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(FeStartupPacket::parse(&mut buf), Ok(None));
        assert_eq!(buf.len(), n);
    }
}

#[test]
fn fe_messages_round_trip() {
    fe_round_trip(FeMessage::Query(Bytes::from_static(b"IDENTIFY_SYSTEM")));
    fe_round_trip(FeMessage::Query(Bytes::new()));
    fe_round_trip(FeMessage::Password(Bytes::from_static(b"jwt.token.here\0")));
    fe_round_trip(FeMessage::Terminate);
    fe_round_trip(FeMessage::CopyData(Bytes::from_static(
        b"\x00\x01binary\xff",
    )));
    fe_round_trip(FeMessage::CopyData(Bytes::new()));
    fe_round_trip(FeMessage::CopyDone);
    fe_round_trip(FeMessage::CopyFail("client gave up".into()));
    fe_round_trip(FeMessage::Sync);
    fe_round_trip(FeMessage::Flush);
    for tag in super::EXTENDED_TAGS {
        fe_round_trip(FeMessage::Extended {
            tag,
            body: Bytes::from_static(b"\0stmt\0SELECT 1\0\0\0"),
        });
    }
}

#[test]
fn fe_literal_bytes_and_zero_copy() {
    let mut buf = BytesMut::from(&b"Q\0\0\0\x14IDENTIFY_SYSTEM\0X\0\0\0\x04"[..]);
    let start = buf.as_ptr() as usize;
    let Some(FeMessage::Query(q)) = FeMessage::parse(&mut buf).unwrap() else {
        panic!("not a query");
    };
    assert_eq!(&q[..], b"IDENTIFY_SYSTEM");
    // The text is a slice of the receive buffer, not a copy.
    assert_eq!(q.as_ptr() as usize, start + 5);
    assert_eq!(&buf[..], b"X\0\0\0\x04");
    assert_eq!(
        FeMessage::parse(&mut buf).unwrap(),
        Some(FeMessage::Terminate)
    );
    assert!(buf.is_empty());
    assert_eq!(FeMessage::parse(&mut buf), Ok(None));
}

#[test]
fn fe_rejects() {
    let parse = |b: &[u8]| FeMessage::parse(&mut BytesMut::from(b));
    // Unknown tag (a backend-only one), before any length arrives.
    assert_eq!(
        parse(b"Z"),
        Err(ProtocolError::UnknownTag {
            tag: b'Z',
            context: "frontend message"
        })
    );
    assert!(matches!(
        parse(b"Q\0\0\0\x03"),
        Err(ProtocolError::InvalidLength { len: 3, .. })
    ));
    assert!(matches!(
        parse(b"Q\0\0\0\x05x"),
        Err(ProtocolError::UnterminatedString { .. })
    ));
    assert!(matches!(
        parse(b"Q\0\0\0\x07a\0b\0"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    assert!(matches!(
        parse(b"S\0\0\0\x05x"),
        Err(ProtocolError::TrailingBytes {
            message: "Sync",
            ..
        })
    ));
    assert!(matches!(
        parse(b"f\0\0\0\x06\xff\0"),
        Err(ProtocolError::InvalidUtf8 { .. })
    ));
    assert_eq!(
        FeMessage::parse_with_limit(&mut BytesMut::from(&b"d\0\0\x01\0"[..]), 255),
        Err(ProtocolError::MessageTooLong { len: 256, max: 255 })
    );
    // A 2 GiB length field fails from the header alone.
    assert_eq!(
        parse(b"d\x7f\xff\xff\xff"),
        Err(ProtocolError::MessageTooLong {
            len: 0x7fff_ffff,
            max: crate::DEFAULT_MAX_MESSAGE_LEN
        })
    );
}
