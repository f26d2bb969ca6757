//! [`WalStream`] and [`fetch_wal`] against a scripted server on `127.0.0.1:0`: the query
//! sent, chunks joined and cut at `to`, keepalives skipped, and every way a stream can be
//! wrong (a gap, an early end).

use bytes::{Bytes, BytesMut};
use pq_proto::backend::{Authentication, BeMessage, CopyResponse, TransactionStatus};
use pq_proto::framed::Framed;
use pq_proto::frontend::FeMessage;
use pq_proto::replication::{PrimaryKeepalive, ReplicationServerMessage, XLogData};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use utils::{Lsn, Term};

use super::{WalStream, fetch_wal};
use crate::conninfo::Conninfo;
use crate::error::PgError;

const TERM: Term = Term(3);

/// A CopyData carrying XLogData of `data` at `start`.
fn chunk(start: u64, data: &'static [u8]) -> BeMessage {
    copy_data(ReplicationServerMessage::XLogData(XLogData {
        wal_start: Lsn(start),
        wal_end: Lsn(start + data.len() as u64),
        send_time: 0,
        data: Bytes::from_static(data),
    }))
}

fn keepalive() -> BeMessage {
    copy_data(ReplicationServerMessage::Keepalive(PrimaryKeepalive {
        wal_end: Lsn(0),
        send_time: 0,
        reply_requested: false,
    }))
}

fn copy_data(m: ReplicationServerMessage) -> BeMessage {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    BeMessage::CopyData(b.freeze())
}

/// A server that accepts one connection, trusts it, answers its one query with
/// CopyBothResponse and then `script`, and returns the query's text.
async fn serve(script: Vec<BeMessage>) -> (Conninfo, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut ci = Conninfo::default();
    ci.set("host", addr.ip().to_string())
        .set("port", addr.port().to_string());
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = Framed::new(socket);
        conn.read_startup().await.unwrap().unwrap();
        conn.write_be(&BeMessage::Authentication(Authentication::Ok));
        conn.write_be(&BeMessage::ReadyForQuery(TransactionStatus::Idle));
        conn.flush().await.unwrap();
        let Some(FeMessage::Query(q)) = conn.read_fe_message().await.unwrap() else {
            panic!("expected a query");
        };
        conn.write_be(&BeMessage::CopyBothResponse(CopyResponse::default()));
        for m in &script {
            conn.write_be(m);
        }
        // The client may hang up before reading everything.
        let _ = conn.flush().await;
        // Hold the connection until the client is done with it.
        while let Ok(Some(_)) = conn.read_fe_message().await {}
        String::from_utf8(q.to_vec()).unwrap()
    });
    (ci, server)
}

#[tokio::test]
async fn fetch_joins_chunks_and_cuts_at_to() {
    let (ci, server) = serve(vec![
        chunk(0x1000, b"abcd"),
        keepalive(),
        chunk(0x1004, b"efgh"),
        chunk(0x1008, b"ijklmnop-beyond"),
    ])
    .await;
    let wal = fetch_wal(&ci, Lsn(0x1000), Lsn(0x1010), TERM)
        .await
        .unwrap();
    assert_eq!(&wal[..], b"abcdefghijklmnop");
    assert_eq!(
        server.await.unwrap(),
        "START_REPLICATION PHYSICAL 0/1000 0/1010 (term='3')"
    );
}

#[tokio::test]
async fn fetch_of_nothing_is_empty() {
    let (ci, _server) = serve(vec![BeMessage::CopyDone]).await;
    let wal = fetch_wal(&ci, Lsn(0x1000), Lsn(0x1000), TERM)
        .await
        .unwrap();
    assert!(wal.is_empty());
}

#[tokio::test]
async fn fetch_rejects_a_gap() {
    let (ci, _server) = serve(vec![chunk(0x1000, b"abcd"), chunk(0x1008, b"ijkl")]).await;
    let e = fetch_wal(&ci, Lsn(0x1000), Lsn(0x1010), TERM)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PgError::Unexpected(m) if m == "XLogData at 0/1008 where 0/1004 was expected"),
        "{e}"
    );
}

#[tokio::test]
async fn fetch_rejects_an_early_end() {
    let (ci, _server) = serve(vec![chunk(0x1000, b"abcd"), BeMessage::CopyDone]).await;
    let e = fetch_wal(&ci, Lsn(0x1000), Lsn(0x1010), TERM)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PgError::Unexpected(m) if m == "donor ended the stream at 0/1004 before 0/1010"),
        "{e}"
    );
}

#[tokio::test]
async fn stream_without_stop_ends_at_copy_done() {
    let (ci, server) = serve(vec![
        chunk(0x2000, b"ab"),
        keepalive(),
        chunk(0x2002, b"cde"),
        BeMessage::CopyDone,
    ])
    .await;
    let mut s = WalStream::start(&ci, Lsn(0x2000), None, TERM)
        .await
        .unwrap();
    assert_eq!(s.position(), Lsn(0x2000));
    assert_eq!(&s.next().await.unwrap().unwrap().data[..], b"ab");
    assert_eq!(s.position(), Lsn(0x2002));
    assert_eq!(&s.next().await.unwrap().unwrap().data[..], b"cde");
    assert_eq!(s.position(), Lsn(0x2005));
    assert!(s.next().await.unwrap().is_none());
    assert!(s.next().await.unwrap().is_none(), "ended stays ended");
    drop(s);
    assert_eq!(
        server.await.unwrap(),
        "START_REPLICATION PHYSICAL 0/2000 (term='3')"
    );
}

#[tokio::test]
async fn stream_rejects_other_messages() {
    let (ci, _server) = serve(vec![BeMessage::ReadyForQuery(TransactionStatus::Idle)]).await;
    let mut s = WalStream::start(&ci, Lsn(0x2000), None, TERM)
        .await
        .unwrap();
    let e = s.next().await.unwrap_err();
    assert!(
        matches!(&e, PgError::Unexpected(m) if m.ends_with("in a WAL stream")),
        "{e}"
    );
}
