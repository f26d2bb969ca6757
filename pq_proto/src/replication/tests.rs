//! Replication payload tests: round trips, literal layouts, the XLogData frame writer
//! against the typed path, rejections, and pageserver feedback key handling.

use bytes::{Bytes, BytesMut};
use utils::Lsn;

use super::{
    PrimaryKeepalive, ReplicationClientMessage, ReplicationServerMessage, StandbyHsFeedback,
    StandbyStatusUpdate, XLogData, write_xlog_data_frame,
};
use crate::ProtocolError;
use crate::backend::BeMessage;
use crate::proposer::PageserverFeedback;

fn server_round_trip(m: ReplicationServerMessage) {
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    assert_eq!(ReplicationServerMessage::decode(buf.freeze()), Ok(m));
}

fn client_round_trip(m: ReplicationClientMessage) {
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    assert_eq!(ReplicationClientMessage::decode(buf.freeze()), Ok(m));
}

fn feedback() -> PageserverFeedback {
    PageserverFeedback {
        current_timeline_size: 1 << 30,
        last_received_lsn: Lsn(0x1_0000_0100),
        disk_consistent_lsn: Lsn(0x1_0000_0000),
        remote_consistent_lsn: Lsn(0x0_ff00_0000),
        replytime: 789_000_000_000_000,
        shard_number: 0,
        corruption_detected: false,
    }
}

#[test]
fn server_messages_round_trip() {
    server_round_trip(ReplicationServerMessage::XLogData(XLogData {
        wal_start: Lsn(0x1000100),
        wal_end: Lsn(0x2000000),
        send_time: 12345,
        data: Bytes::from_static(&[0xd1, 0x10, 0, 0, 1, 2, 3]),
    }));
    server_round_trip(ReplicationServerMessage::XLogData(XLogData {
        wal_start: Lsn(0),
        wal_end: Lsn(0),
        send_time: -1,
        data: Bytes::new(),
    }));
    for reply_requested in [false, true] {
        server_round_trip(ReplicationServerMessage::Keepalive(PrimaryKeepalive {
            wal_end: Lsn(u64::MAX),
            send_time: i64::MIN,
            reply_requested,
        }));
    }
}

#[test]
fn client_messages_round_trip() {
    client_round_trip(ReplicationClientMessage::StandbyStatusUpdate(
        StandbyStatusUpdate {
            write_lsn: Lsn(3),
            flush_lsn: Lsn(2),
            apply_lsn: Lsn(1),
            client_time: 42,
            reply_requested: true,
        },
    ));
    client_round_trip(ReplicationClientMessage::HotStandbyFeedback(
        StandbyHsFeedback {
            ts: 7,
            xmin: 1000,
            xmin_epoch: 2,
            catalog_xmin: 900,
            catalog_xmin_epoch: 1,
        },
    ));
    client_round_trip(ReplicationClientMessage::PageserverFeedback(feedback()));
    // As a whole CopyData frame, the way a client sends it.
    let m = ReplicationClientMessage::StandbyStatusUpdate(StandbyStatusUpdate::default());
    let mut buf = BytesMut::new();
    m.encode_frame(&mut buf);
    let Some(BeMessage::CopyData(payload)) = BeMessage::parse(&mut buf).unwrap() else {
        panic!("not CopyData");
    };
    assert_eq!(ReplicationClientMessage::decode(payload), Ok(m));
    client_round_trip(ReplicationClientMessage::PageserverFeedback(
        PageserverFeedback {
            shard_number: 3,
            corruption_detected: true,
            ..feedback()
        },
    ));
}

#[test]
fn literal_layouts() {
    let mut buf = BytesMut::new();
    ReplicationServerMessage::Keepalive(PrimaryKeepalive {
        wal_end: Lsn(0x0102030405060708),
        send_time: 0x1112131415161718,
        reply_requested: true,
    })
    .encode(&mut buf);
    assert_eq!(
        &buf[..],
        b"k\x01\x02\x03\x04\x05\x06\x07\x08\x11\x12\x13\x14\x15\x16\x17\x18\x01"
    );
    let mut buf = BytesMut::new();
    ReplicationClientMessage::HotStandbyFeedback(StandbyHsFeedback {
        ts: 1,
        xmin: 2,
        xmin_epoch: 3,
        catalog_xmin: 4,
        catalog_xmin_epoch: 5,
    })
    .encode(&mut buf);
    assert_eq!(
        &buf[..],
        b"h\0\0\0\0\0\0\0\x01\0\0\0\x02\0\0\0\x03\0\0\0\x04\0\0\0\x05"
    );
    // 'z': u64 length of the key/value encoding, then that encoding.
    let mut buf = BytesMut::new();
    ReplicationClientMessage::PageserverFeedback(feedback()).encode(&mut buf);
    let mut kv = BytesMut::new();
    feedback().write(&mut kv);
    assert_eq!(buf[0], b'z');
    assert_eq!(&buf[1..9], &(kv.len() as u64).to_be_bytes());
    assert_eq!(&buf[9..], &kv[..]);
    assert_eq!(kv[0], 5, "five keys when shard 0 and no corruption");
}

#[test]
fn hs_feedback_full_xids() {
    let h = StandbyHsFeedback {
        ts: 0,
        xmin: 0xdead_beef,
        xmin_epoch: 2,
        catalog_xmin: 5,
        catalog_xmin_epoch: 1,
    };
    assert_eq!(h.full_xmin(), 0x2_dead_beef);
    assert_eq!(h.full_catalog_xmin(), 0x1_0000_0005);
}

#[test]
fn xlog_data_frame_writer_matches_the_typed_path() {
    let data = vec![7u8; 1000];
    let mut direct = BytesMut::new();
    write_xlog_data_frame(&mut direct, Lsn(0x1000000), Lsn(0x1000400), 99, &data);
    let mut payload = BytesMut::new();
    let x = XLogData {
        wal_start: Lsn(0x1000000),
        wal_end: Lsn(0x1000400),
        send_time: 99,
        data: Bytes::from(data),
    };
    ReplicationServerMessage::XLogData(x.clone()).encode(&mut payload);
    let mut typed = BytesMut::new();
    BeMessage::CopyData(payload.freeze()).write(&mut typed);
    assert_eq!(direct, typed);
    let mut framed = BytesMut::new();
    ReplicationServerMessage::XLogData(x.clone()).encode_frame(&mut framed);
    assert_eq!(direct, framed);
    let Some(BeMessage::CopyData(p)) = BeMessage::parse(&mut direct).unwrap() else {
        panic!("not CopyData");
    };
    assert_eq!(
        ReplicationServerMessage::decode(p),
        Ok(ReplicationServerMessage::XLogData(x))
    );
}

#[test]
fn decode_rejects() {
    let server = |b: &'static [u8]| ReplicationServerMessage::decode(Bytes::from_static(b));
    let client = |b: &'static [u8]| ReplicationClientMessage::decode(Bytes::from_static(b));
    assert!(matches!(server(b""), Err(ProtocolError::Truncated { .. })));
    assert!(matches!(
        server(b"r"),
        Err(ProtocolError::UnknownTag { tag: b'r', .. })
    ));
    assert!(matches!(
        server(b"w\0\0"),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        server(b"k\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01\x00"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
    assert!(matches!(
        client(b"w"),
        Err(ProtocolError::UnknownTag { .. })
    ));
    assert!(matches!(
        client(b"r\0"),
        Err(ProtocolError::Truncated { .. })
    ));
    // 'z' whose length word runs past the payload, or leaves bytes after it.
    assert!(matches!(
        client(b"z\xff\xff\xff\xff\xff\xff\xff\xff\0"),
        Err(ProtocolError::Truncated { .. })
    ));
    assert!(matches!(
        client(b"z\0\0\0\0\0\0\0\x01\0\0"),
        Err(ProtocolError::TrailingBytes { .. })
    ));
}

#[test]
fn pageserver_feedback_keys() {
    // Aliases are read; unknown keys skipped by their length; order does not matter.
    let mut b = vec![4u8];
    let mut kv = |k: &[u8], v: &[u8]| {
        b.extend_from_slice(k);
        b.push(0);
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v);
    };
    kv(b"some_future_key", b"whatever it is");
    kv(b"last_received_lsn", &5u64.to_be_bytes());
    kv(b"corruption_detected", &[1]);
    kv(b"replytime", &(-3i64).to_be_bytes());
    let f = PageserverFeedback::parse(Bytes::from(b)).unwrap();
    assert_eq!(f.last_received_lsn, Lsn(5));
    assert!(f.corruption_detected);
    assert_eq!(f.replytime, -3);
    // A known key with the wrong size; a negative value length; an absurd key count.
    let bad_size = b"\x01ps_writelsn\0\0\0\0\x04\0\0\0\x05";
    assert!(PageserverFeedback::parse(Bytes::from_static(bad_size)).is_err());
    let negative = b"\x01ps_writelsn\0\xff\xff\xff\xff";
    assert!(matches!(
        PageserverFeedback::parse(Bytes::from_static(negative)),
        Err(ProtocolError::InvalidField { .. })
    ));
    assert!(PageserverFeedback::parse(Bytes::from_static(b"\xff")).is_err());
    assert_eq!(
        PageserverFeedback::parse(Bytes::from_static(b"\0")),
        Ok(PageserverFeedback::default())
    );
}
