//! Backend codec tests: round trips of every message, literal bytes, the ErrorResponse
//! field rules, rejections, zero-copy values, SQLSTATEs and the encryption answer.

use bytes::{Bytes, BytesMut};

use super::{
    Authentication, BeMessage, CopyResponse, ENCRYPTION_REFUSED, ErrorFields, FieldDescription,
    SSL_ACCEPTED, SqlState, TransactionStatus, parse_encryption_response,
    write_encryption_response,
};
use crate::ProtocolError;

fn round_trip(m: BeMessage) {
    let mut buf = BytesMut::new();
    m.write(&mut buf);
    assert_eq!(BeMessage::parse(&mut buf).unwrap(), Some(m));
    assert!(buf.is_empty());
}

fn parse(b: &[u8]) -> Result<Option<BeMessage>, ProtocolError> {
    BeMessage::parse(&mut BytesMut::from(b))
}

/// Parses a frame built from `tag` and `body` (the length is computed).
fn parse_body(tag: u8, body: &[u8]) -> Result<Option<BeMessage>, ProtocolError> {
    let mut frame = vec![tag];
    frame.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    parse(&frame)
}

#[test]
fn every_message_round_trips() {
    for auth in [
        Authentication::Ok,
        Authentication::CleartextPassword,
        Authentication::Md5Password { salt: [1, 2, 3, 4] },
        Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-256-PLUS".into()],
        },
        Authentication::Sasl { mechanisms: vec![] },
        Authentication::SaslContinue(Bytes::from_static(b"r=abc,s=xyz,i=4096")),
        Authentication::SaslFinal(Bytes::from_static(b"v=signature")),
    ] {
        round_trip(BeMessage::Authentication(auth));
    }
    round_trip(BeMessage::ParameterStatus {
        name: "server_version".into(),
        value: "14.1".into(),
    });
    round_trip(BeMessage::BackendKeyData {
        process_id: 4242,
        secret_key: -1,
    });
    for s in [
        TransactionStatus::Idle,
        TransactionStatus::InBlock,
        TransactionStatus::Failed,
    ] {
        round_trip(BeMessage::ReadyForQuery(s));
    }
    round_trip(BeMessage::RowDescription(vec![
        FieldDescription::text("systemid"),
        FieldDescription::int4("timeline"),
        FieldDescription::int8("size"),
        FieldDescription {
            name: "odd".into(),
            table_oid: 16384,
            column_id: 3,
            type_oid: 1043,
            type_len: -1,
            type_modifier: 68,
            format: 1,
        },
    ]));
    round_trip(BeMessage::RowDescription(vec![]));
    round_trip(BeMessage::DataRow(vec![
        Some(Bytes::from_static(b"7123456789")),
        Some(Bytes::new()),
        None,
    ]));
    round_trip(BeMessage::CommandComplete("IDENTIFY_SYSTEM".into()));
    round_trip(BeMessage::EmptyQueryResponse);
    let e = ErrorFields::error(SqlState::PROTOCOL_VIOLATION, "bad")
        .with_detail("detail")
        .with_hint("hint");
    round_trip(BeMessage::ErrorResponse(e));
    round_trip(BeMessage::ErrorResponse(ErrorFields::fatal(
        SqlState::ADMIN_SHUTDOWN,
        "terminating connection due to administrator command",
    )));
    round_trip(BeMessage::NoticeResponse(ErrorFields::notice("hello")));
    let both = CopyResponse::default();
    round_trip(BeMessage::CopyBothResponse(both.clone()));
    round_trip(BeMessage::CopyOutResponse(CopyResponse {
        format: 1,
        column_formats: vec![1, 1, 0],
    }));
    round_trip(BeMessage::CopyInResponse(both));
    round_trip(BeMessage::CopyData(Bytes::from_static(b"wxyz")));
    round_trip(BeMessage::CopyDone);
    round_trip(BeMessage::NoData);
}

#[test]
fn literal_bytes() {
    let mut buf = BytesMut::new();
    BeMessage::Authentication(Authentication::Ok).write(&mut buf);
    BeMessage::ReadyForQuery(TransactionStatus::Idle).write(&mut buf);
    BeMessage::CopyBothResponse(CopyResponse::default()).write(&mut buf);
    assert_eq!(
        &buf[..],
        b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05IW\0\0\0\x07\0\0\0"
    );
    let mut buf = BytesMut::new();
    BeMessage::ErrorResponse(ErrorFields::error(SqlState::INTERNAL_ERROR, "boom")).write(&mut buf);
    assert_eq!(&buf[..], b"E\0\0\0\x20SERROR\0VERROR\0CXX000\0Mboom\0\0");
}

#[test]
fn error_fields_parse_rules() {
    // Unknown fields skipped; V wins over a localized S.
    let body = b"SFEHLER\0VERROR\0C42601\0Mmsg\0P12\0Ffile.c\0Hhint\0\0";
    let Some(BeMessage::ErrorResponse(e)) = parse_body(b'E', body).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(e.severity, "ERROR");
    assert_eq!(e.code, SqlState::SYNTAX_ERROR);
    assert_eq!(e.message, "msg");
    assert_eq!(e.detail, None);
    assert_eq!(e.hint.as_deref(), Some("hint"));
    // Missing code, bad code, missing terminator.
    assert!(matches!(
        parse_body(b'E', b"SERROR\0Mmsg\0\0"),
        Err(ProtocolError::InvalidField {
            field: "SQLSTATE (C)",
            ..
        })
    ));
    assert!(matches!(
        parse_body(b'E', b"SERROR\0Cxx000\0Mmsg\0\0"),
        Err(ProtocolError::InvalidField {
            field: "SQLSTATE (C)",
            ..
        })
    ));
    assert!(matches!(
        parse_body(b'E', b"SERROR\0CXX000\0Mmsg\0"),
        Err(ProtocolError::Truncated { .. })
    ));
}

#[test]
fn rejects_malformed_bodies() {
    // Unknown tag.
    assert!(matches!(
        parse(b"Q"),
        Err(ProtocolError::UnknownTag { tag: b'Q', .. })
    ));
    // Bad transaction status.
    assert!(matches!(
        parse_body(b'Z', b"X"),
        Err(ProtocolError::InvalidField { .. })
    ));
    // A RowDescription claiming 32767 columns in a 6-byte body: refused before allocating.
    assert!(matches!(
        parse_body(b'T', b"\x7f\xff"),
        Err(ProtocolError::InvalidField {
            field: "column count",
            ..
        })
    ));
    assert!(matches!(
        parse_body(b'T', b"\xff\xff"),
        Err(ProtocolError::InvalidField {
            field: "column count",
            ..
        })
    ));
    // DataRow value lengths: -2 is invalid, too long is truncated.
    assert!(matches!(
        parse_body(b'D', b"\0\x01\xff\xff\xff\xfe"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(matches!(
        parse_body(b'D', b"\0\x01\0\0\0\x05x"),
        Err(ProtocolError::Truncated { .. })
    ));
    // Unsupported authentication method (GSS = 7) and trailing bytes after AuthenticationOk.
    assert!(matches!(
        parse_body(b'R', b"\0\0\0\x07"),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(matches!(
        parse_body(b'R', b"\0\0\0\0\0"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    assert!(matches!(
        parse_body(b'n', b"\0"),
        Err(ProtocolError::TrailingBytes {
            message: "NoData",
            ..
        })
    ));
}

#[test]
fn data_row_values_are_zero_copy() {
    let mut buf = BytesMut::new();
    BeMessage::DataRow(vec![Some(Bytes::from_static(b"abc"))]).write(&mut buf);
    let start = buf.as_ptr() as usize;
    let Some(BeMessage::DataRow(v)) = BeMessage::parse(&mut buf).unwrap() else {
        panic!("not a row");
    };
    let value = v[0].as_ref().unwrap();
    assert_eq!(value.as_ptr() as usize, start + 11);
}

#[test]
fn encryption_response() {
    let mut buf = BytesMut::new();
    assert_eq!(parse_encryption_response(&mut buf), Ok(None));
    write_encryption_response(&mut buf, ENCRYPTION_REFUSED);
    write_encryption_response(&mut buf, SSL_ACCEPTED);
    assert_eq!(parse_encryption_response(&mut buf), Ok(Some(b'N')));
    assert_eq!(parse_encryption_response(&mut buf), Ok(Some(b'S')));
    assert!(buf.is_empty());
    let mut buf = BytesMut::from(&b"E"[..]);
    assert!(parse_encryption_response(&mut buf).is_err());
}

#[test]
fn sqlstate() {
    assert_eq!(SqlState::PROTOCOL_VIOLATION.as_str(), "08P01");
    assert_eq!(SqlState::new("57P01"), Ok(SqlState::ADMIN_SHUTDOWN));
    assert_eq!("XX001".parse::<SqlState>(), Ok(SqlState::DATA_CORRUPTED));
    assert_eq!(SqlState::DISK_FULL.to_string(), "53100");
    assert_eq!(SqlState::QUERY_CANCELED.class(), "57");
    for bad in ["", "0800", "080000", "08p01", "08 01"] {
        assert!(SqlState::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn field_description_helpers() {
    let t = FieldDescription::text("xlogpos");
    assert_eq!(
        (t.type_oid, t.type_len, t.type_modifier, t.format),
        (25, -1, -1, 0)
    );
    let i = FieldDescription::int4("timeline");
    assert_eq!((i.type_oid, i.type_len), (23, 4));
    let l = FieldDescription::int8("n");
    assert_eq!((l.type_oid, l.type_len), (20, 8));
}
