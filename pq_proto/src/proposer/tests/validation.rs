//! What decoding refuses: inconsistent AppendRequests, invalid configurations, oversized
//! counts, trailing bytes, unknown tags; and the frame helpers' partial-input behaviour.

use bytes::{Bytes, BytesMut};

use super::{MAX, V2, V3, all_cases, greeting, heartbeat};
use crate::ProtocolError;
use crate::proposer::{
    AcceptorMessage, AppendRequest, AppendRequestHeader, Configuration, Generation,
    ProposerMessage, ProtocolVersion, VoteRequest, parse_acceptor_frame, parse_proposer_frame,
    write_proposer_frame,
};
use utils::{Lsn, Term};

#[test]
fn append_request_rules() {
    let encode = |h: AppendRequestHeader, wal: &'static [u8], v: ProtocolVersion| {
        let mut buf = BytesMut::new();
        let m = ProposerMessage::AppendRequest(AppendRequest {
            h,
            wal_data: Bytes::from_static(wal),
        });
        m.encode(v, &mut buf);
        buf.freeze()
    };
    for v in [V2, V3] {
        // end - begin differs from the byte count.
        let p = encode(heartbeat(0), b"xyz", v);
        assert!(matches!(
            ProposerMessage::decode(p, v),
            Err(ProtocolError::InvalidField {
                field: "end_lsn",
                ..
            })
        ));
        // end < begin.
        let h = AppendRequestHeader {
            end_lsn: Lsn(1),
            ..heartbeat(0)
        };
        assert!(ProposerMessage::decode(encode(h, b"", v), v).is_err());
        // The WAL is a slice of the payload, not a copy.
        let h = AppendRequestHeader {
            end_lsn: Lsn(0x1000103),
            ..heartbeat(0)
        };
        let p = encode(h, b"abc", v);
        let start = p.as_ptr() as usize;
        let Ok(ProposerMessage::AppendRequest(a)) = ProposerMessage::decode(p.clone(), v) else {
            panic!("not an append request");
        };
        assert_eq!(a.wal_data.as_ptr() as usize, start + p.len() - 3);
    }
}

#[test]
fn v3_validation() {
    let decode = |b: Vec<u8>| ProposerMessage::decode(Bytes::from(b), V3);
    let mut base = BytesMut::new();
    ProposerMessage::Greeting(greeting(Configuration::empty())).encode(V3, &mut base);
    // Offset of the mconf: tag + two 33-byte cstrings.
    let conf_at = 1 + 33 + 33;
    let with_conf = |conf: &[u8]| {
        let mut b = base[..conf_at].to_vec();
        b.extend_from_slice(conf);
        b.extend_from_slice(&base[conf_at + 12..]);
        b
    };
    // Generation 1 with no members.
    let r = decode(with_conf(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert!(matches!(
        r,
        Err(ProtocolError::InvalidField {
            field: "members",
            ..
        })
    ));
    // Duplicate node ids.
    let member = [0, 0, 0, 0, 0, 0, 0, 5, b'h', 0, 0x15, 0x4e];
    let mut conf = vec![0, 0, 0, 1, 0, 0, 0, 2];
    conf.extend_from_slice(&member);
    conf.extend_from_slice(&member);
    conf.extend_from_slice(&[0, 0, 0, 0]);
    let r = decode(with_conf(&conf));
    assert!(matches!(
        r,
        Err(ProtocolError::InvalidField {
            field: "members",
            ..
        })
    ));
    // A member count that cannot fit: refused before allocating.
    let r = decode(with_conf(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    assert!(matches!(r, Err(ProtocolError::InvalidField { .. })));
    // Any pg_version is accepted (validation is the server's).
    let mut b = base.to_vec();
    let at = b.len() - 16;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode(b).is_ok());
    // Bad tenant id text.
    let mut b = base.to_vec();
    b[1] = b'g';
    assert!(matches!(
        decode(b),
        Err(ProtocolError::InvalidField {
            field: "tenant_id",
            ..
        })
    ));
    // A huge term history count in a VoteResponse.
    let mut b = vec![b'v', 0, 0, 0, 0];
    b.extend_from_slice(&[0; 8 + 1 + 8 + 8]);
    b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        AcceptorMessage::decode(Bytes::from(b), V3),
        Err(ProtocolError::InvalidField {
            field: "term history length",
            ..
        })
    ));
}

#[test]
fn trailing_bytes_and_unknown_tags() {
    for (version, proposer, acceptor) in all_cases() {
        for m in proposer {
            if matches!(m, ProposerMessage::AppendRequest(_)) {
                continue; // trailing bytes are WAL there (checked against end - begin)
            }
            let mut buf = BytesMut::new();
            m.encode(version, &mut buf);
            buf.extend_from_slice(&[0]);
            let r = ProposerMessage::decode(buf.freeze(), version);
            assert!(
                matches!(r, Err(ProtocolError::TrailingBytes { .. })),
                "{m:?}"
            );
        }
        for m in acceptor {
            if matches!(m, AcceptorMessage::AppendResponse(_)) {
                continue; // trailing bytes are pageserver feedback there
            }
            let mut buf = BytesMut::new();
            m.encode(version, &mut buf);
            buf.extend_from_slice(&[0]);
            let r = AcceptorMessage::decode(buf.freeze(), version);
            assert!(
                matches!(r, Err(ProtocolError::TrailingBytes { .. })),
                "{m:?}"
            );
        }
    }
    // A proposer tag in the acceptor direction; empty payloads; a v2 tag above 0xff.
    let r = AcceptorMessage::decode(Bytes::from_static(b"e"), V3);
    assert!(matches!(
        r,
        Err(ProtocolError::UnknownTag { tag: b'e', .. })
    ));
    assert!(ProposerMessage::decode(Bytes::new(), V3).is_err());
    assert!(ProposerMessage::decode(Bytes::new(), V2).is_err());
    let r = ProposerMessage::decode(Bytes::from_static(&[0x61, 1, 0, 0, 0, 0, 0, 0]), V2);
    assert!(matches!(
        r,
        Err(ProtocolError::InvalidField { field: "tag", .. })
    ));
}

#[test]
fn frame_helpers() {
    let msg = ProposerMessage::VoteRequest(VoteRequest {
        generation: Generation(1),
        term: Term(3),
    });
    let mut full = BytesMut::new();
    write_proposer_frame(&msg, V3, &mut full);
    write_proposer_frame(&msg, V3, &mut full);
    for n in 0..18 {
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(parse_proposer_frame(&mut buf, V3, MAX), Ok(None));
        assert_eq!(buf.len(), n);
    }
    let mut buf = full.clone();
    assert_eq!(
        parse_proposer_frame(&mut buf, V3, MAX),
        Ok(Some(msg.clone()))
    );
    assert_eq!(buf.len(), 18);
    assert_eq!(parse_proposer_frame(&mut buf, V3, MAX), Ok(Some(msg)));
    // Another frame (an ErrorResponse) is refused at once.
    let mut buf = BytesMut::from(&b"E"[..]);
    assert!(matches!(
        parse_acceptor_frame(&mut buf, V3, MAX),
        Err(ProtocolError::UnknownTag { tag: b'E', .. })
    ));
    let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
    assert!(matches!(
        parse_acceptor_frame(&mut buf, V2, MAX),
        Err(ProtocolError::MessageTooLong { .. })
    ));
}
