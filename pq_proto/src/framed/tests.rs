//! Framed I/O tests over in-memory duplex pipes: 1-byte trickles, cancelled reads, EOF
//! rules, oversized length fields, and split / unsplit keeping both buffers.

use std::io::ErrorKind;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

use super::{ConnectionError, Framed};
use crate::ProtocolError;
use crate::backend::{BeMessage, ErrorFields, SqlState, TransactionStatus};
use crate::frontend::{FeMessage, FeStartupPacket};

fn startup() -> FeStartupPacket {
    FeStartupPacket::Startup {
        major: 3,
        minor: 0,
        params: vec![
            ("user".into(), "u".into()),
            ("options".into(), "-c x=y".into()),
        ],
    }
}

fn fe_messages() -> Vec<FeMessage> {
    vec![
        FeMessage::Query(Bytes::from_static(b"START_WAL_PUSH")),
        FeMessage::CopyData(Bytes::from(vec![9u8; 20_000])),
        FeMessage::CopyDone,
        FeMessage::Terminate,
    ]
}

fn be_messages() -> Vec<BeMessage> {
    vec![
        BeMessage::ReadyForQuery(TransactionStatus::Idle),
        BeMessage::CopyData(Bytes::from(vec![7u8; 300_000])),
        BeMessage::ErrorResponse(ErrorFields::error(SqlState::INTERNAL_ERROR, "x")),
    ]
}

/// Writes `bytes` one byte per write, flushing each, then closes.
async fn trickle(mut w: DuplexStream, bytes: BytesMut) {
    for b in bytes.iter() {
        w.write_all(&[*b]).await.unwrap();
        w.flush().await.unwrap();
    }
    w.shutdown().await.unwrap();
}

#[tokio::test]
async fn reads_messages_written_one_byte_at_a_time() {
    let (client, server) = duplex(64);
    let mut wire = BytesMut::new();
    FeStartupPacket::SslRequest.write(&mut wire);
    startup().write(&mut wire);
    for m in fe_messages() {
        m.write(&mut wire);
    }
    let writer = tokio::spawn(trickle(client, wire));
    let mut server = Framed::new(server);
    assert_eq!(
        server.read_startup().await.unwrap(),
        Some(FeStartupPacket::SslRequest)
    );
    assert_eq!(server.read_startup().await.unwrap(), Some(startup()));
    for m in fe_messages() {
        assert_eq!(server.read_fe_message().await.unwrap(), Some(m));
    }
    assert_eq!(server.read_fe_message().await.unwrap(), None);
    writer.await.unwrap();
}

#[tokio::test]
async fn client_side_reads_backend_messages() {
    let (client, server) = duplex(64);
    let mut wire = BytesMut::new();
    crate::backend::write_encryption_response(&mut wire, b'N');
    for m in be_messages() {
        m.write(&mut wire);
    }
    let writer = tokio::spawn(trickle(server, wire));
    let mut client = Framed::new(client);
    assert_eq!(client.read_encryption_response().await.unwrap(), Some(b'N'));
    for m in be_messages() {
        assert_eq!(client.read_be_message().await.unwrap(), Some(m));
    }
    assert_eq!(client.read_be_message().await.unwrap(), None);
    writer.await.unwrap();
}

#[tokio::test]
async fn write_then_flush_round_trip() {
    let (a, b) = duplex(1024);
    let (mut a, mut b) = (Framed::new(a), Framed::new(b));
    a.write_startup(&startup());
    for m in fe_messages() {
        a.write_fe(&m);
    }
    let reader = tokio::spawn(async move {
        assert_eq!(b.read_startup().await.unwrap(), Some(startup()));
        for m in fe_messages() {
            assert_eq!(b.read_fe_message().await.unwrap(), Some(m));
        }
        b
    });
    a.flush().await.unwrap();
    assert!(a.write_buf().is_empty());
    let mut b = reader.await.unwrap();
    b.write_be(&BeMessage::NoData);
    b.flush().await.unwrap();
    assert_eq!(a.read_be_message().await.unwrap(), Some(BeMessage::NoData));
}

#[tokio::test]
async fn cancelled_read_loses_nothing() {
    let (mut client, server) = duplex(1024);
    let mut server = Framed::new(server);
    let msg = FeMessage::Query(Bytes::from_static(b"IDENTIFY_SYSTEM"));
    let mut wire = BytesMut::new();
    msg.write(&mut wire);
    let half = wire.len() / 2;
    client.write_all(&wire[..half]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(20), server.read_fe_message()).await;
    assert!(r.is_err(), "a half message must not complete the read");
    assert_eq!(server.read_buffer(), &wire[..half]);
    client.write_all(&wire[half..]).await.unwrap();
    assert_eq!(server.read_fe_message().await.unwrap(), Some(msg));
}

#[tokio::test]
async fn eof_inside_a_message_is_unexpected_eof() {
    let (mut client, server) = duplex(1024);
    client.write_all(b"Q\0\0\0\x10IDENT").await.unwrap();
    drop(client);
    let mut server = Framed::new(server);
    match server.read_fe_message().await {
        Err(ConnectionError::Io(e)) => assert_eq!(e.kind(), ErrorKind::UnexpectedEof),
        other => panic!("expected UnexpectedEof, got {other:?}"),
    }
    // And before any byte of a startup packet: a clean end.
    let (client, server) = duplex(1024);
    drop(client);
    assert_eq!(Framed::new(server).read_startup().await.unwrap(), None);
}

#[tokio::test]
async fn oversized_length_fails_without_allocating() {
    let (mut client, server) = duplex(1024);
    // A 2 GiB CopyData announced: refused from the header, nothing reserved for it.
    client.write_all(b"d\x7f\xff\xff\xff").await.unwrap();
    let mut server = Framed::new(server).with_max_message_len(1 << 20);
    match server.read_fe_message().await {
        Err(ConnectionError::Protocol(ProtocolError::MessageTooLong { len, max })) => {
            assert_eq!((len, max), (0x7fff_ffff, 1 << 20));
        }
        other => panic!("expected MessageTooLong, got {other:?}"),
    }
    assert!(server.read.buf.capacity() < 64 * 1024);
    // Likewise for a startup packet above PostgreSQL's 10 000 bytes.
    let (mut client, server) = duplex(1024);
    client
        .write_all(&0x7fff_ffffu32.to_be_bytes())
        .await
        .unwrap();
    let r = Framed::new(server).read_startup().await;
    assert!(matches!(
        r,
        Err(ConnectionError::Protocol(
            ProtocolError::MessageTooLong { .. }
        ))
    ));
}

#[tokio::test]
async fn split_keeps_buffers_and_unsplit_restores_them() {
    let (mut client, server) = duplex(1 << 16);
    let mut wire = BytesMut::new();
    for m in fe_messages() {
        m.write(&mut wire);
    }
    client.write_all(&wire).await.unwrap();
    let mut server = Framed::new(server);
    assert_eq!(
        server.read_fe_message().await.unwrap(),
        Some(fe_messages()[0].clone())
    );
    server.write_be(&BeMessage::CopyDone);
    // The rest of the messages are (at least partly) buffered already.
    let (mut reader, mut writer) = server.split();
    assert_eq!(
        reader.read_fe_message().await.unwrap(),
        Some(fe_messages()[1].clone())
    );
    writer.write_be(&BeMessage::NoData);
    writer.flush().await.unwrap();
    let mut server = reader.unsplit(writer);
    assert_eq!(
        server.read_fe_message().await.unwrap(),
        Some(FeMessage::CopyDone)
    );
    let mut client = Framed::new(client);
    assert_eq!(
        client.read_be_message().await.unwrap(),
        Some(BeMessage::CopyDone)
    );
    assert_eq!(
        client.read_be_message().await.unwrap(),
        Some(BeMessage::NoData)
    );
}

#[test]
fn reads_grow_while_the_stream_keeps_filling_them_and_shrink_when_it_is_quiet() {
    let mut r = super::ReadState::new();
    assert_eq!(r.chunk, super::READ_CHUNK);
    // Full reads: doubled each time, up to the maximum.
    for _ in 0..10 {
        let offered = r.chunk;
        r.adapt(offered, offered);
    }
    assert_eq!(r.chunk, super::MAX_READ_CHUNK);
    // A read that half fills its space keeps the size; a small one drops it.
    r.adapt(super::MAX_READ_CHUNK / 2, super::MAX_READ_CHUNK);
    assert_eq!(r.chunk, super::MAX_READ_CHUNK);
    r.adapt(100, super::MAX_READ_CHUNK);
    assert_eq!(r.chunk, super::READ_CHUNK);
}

#[tokio::test]
async fn buffers_shrink_after_a_large_message() {
    let (client, server) = duplex(1 << 20);
    let mut client = Framed::new(client);
    let mut server = Framed::new(server);
    client.write_fe(&FeMessage::CopyData(Bytes::from(vec![1u8; 4 << 20])));
    client.write_fe(&FeMessage::Query(Bytes::from_static(b"IDENTIFY_SYSTEM")));
    let writer = async {
        client.flush().await.unwrap();
        client
    };
    let reader = async {
        let big = server.read_fe_message().await.unwrap().unwrap();
        assert!(matches!(big, FeMessage::CopyData(ref b) if b.len() == 4 << 20));
        drop(big);
        server.read_fe_message().await.unwrap().unwrap()
    };
    let (client, small) = tokio::join!(writer, reader);
    assert!(matches!(small, FeMessage::Query(_)));
    // Neither side keeps megabytes for a connection that is now quiet.
    assert!(
        server.read.buf.capacity() <= 64 * 1024,
        "{}",
        server.read.buf.capacity()
    );
    assert!(
        client.write.capacity() <= 64 * 1024,
        "{}",
        client.write.capacity()
    );
}
