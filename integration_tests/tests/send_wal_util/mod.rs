//! Helpers shared by the `send_wal_*` tests: a raw START_REPLICATION client (built on
//! `pq_proto` and `pq_client`, so every frame is visible), synthetic WAL, and
//! a safekeeper timeline filled through a test proposer.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::{Bytes, BytesMut};
use integration_tests::real_wal::SEG;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer};
use pq_client::{PgConn, PgError};
use pq_proto::backend::{BeMessage, ErrorFields};
use pq_proto::frontend::FeMessage;
use pq_proto::proposer::AppendResponse;
use pq_proto::replication::{
    PrimaryKeepalive, ReplicationClientMessage, ReplicationServerMessage, XLogData,
};
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

/// A fresh timeline id.
pub fn new_ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

/// What a test proposer claims for synthetic WAL.
pub const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 7_300_000_000_000_000_001,
    wal_seg_size: SEG,
};

/// Where synthetic timelines start: just after the long page header of segment 1.
pub const GEN_START: Lsn = Lsn(SEG as u64 + 40);

/// Synthetic WAL: logical-message records of varied sizes from `start`.
pub struct GenWal {
    /// First byte.
    pub start: Lsn,
    /// The bytes.
    pub wal: Bytes,
    /// End of every record, in order.
    pub record_ends: Vec<Lsn>,
}

impl GenWal {
    /// At least `min_bytes` of WAL from `start`.
    pub fn new(start: Lsn, min_bytes: usize) -> GenWal {
        let mut g = WalGenerator::new(start, CLUSTER.system_id, SEG, 15).expect("generator");
        let mut out = BytesMut::new();
        let mut record_ends = Vec::new();
        const SIZES: [usize; 5] = [10, 3_000, 20_000, 150, 70_000];
        let mut i = 0;
        while out.len() < min_bytes {
            let size = SIZES[i % SIZES.len()];
            let body: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            let rec = g
                .append_logical_message("send_wal_test", &body, &mut out)
                .expect("record");
            record_ends.push(rec.end_lsn);
            i += 1;
        }
        GenWal {
            start,
            wal: out.freeze(),
            record_ends,
        }
    }

    /// End of the WAL.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.wal.len() as u64)
    }

    /// The bytes of `[from, to)`.
    pub fn bytes(&self, from: Lsn, to: Lsn) -> &[u8] {
        let off = (from.0 - self.start.0) as usize;
        &self.wal[off..off + (to.0 - from.0) as usize]
    }

    /// The first record end at or after `lsn`.
    pub fn record_end_at_or_after(&self, lsn: Lsn) -> Lsn {
        *self
            .record_ends
            .iter()
            .find(|&&e| e >= lsn)
            .expect("a record ends there")
    }
}

/// Sends a heartbeat (an empty AppendRequest) carrying `commit` and returns the answer.
pub async fn heartbeat(
    p: &mut TestProposer,
    term: Term,
    at: Lsn,
    commit: Lsn,
) -> anyhow::Result<AppendResponse> {
    p.append(term, at, Bytes::new(), commit).await?;
    p.append_response().await
}

/// Appends `wal` from `begin` in chunks of at most 128 KiB, each carrying `commit`
/// (held back: the commit does not follow the flush), and reads every answer. Returns the
/// last flush_lsn.
pub async fn append_with_commit(
    p: &mut TestProposer,
    term: Term,
    begin: Lsn,
    wal: &Bytes,
    commit: Lsn,
) -> anyhow::Result<Lsn> {
    let flushes = p.push_with_commit(term, begin, wal, commit).await?;
    Ok(flushes.last().copied().unwrap_or(Lsn::INVALID))
}

/// A frame of a replication stream.
#[derive(Debug)]
pub enum Frame {
    /// `w`.
    Data(XLogData),
    /// `k`.
    Keepalive(PrimaryKeepalive),
    /// The server ended the COPY.
    CopyDone,
    /// Anything else (CommandComplete, ReadyForQuery, …).
    Other(BeMessage),
}

/// The server's ErrorResponse, if that is what ended `r`.
pub fn error_fields(e: &anyhow::Error) -> Option<&ErrorFields> {
    match e.downcast_ref::<PgError>() {
        Some(PgError::Server(f)) => Some(f),
        _ => None,
    }
}

/// One replication connection.
pub struct ReplStream {
    /// The connection (for what the helpers do not cover).
    pub conn: PgConn,
}

impl ReplStream {
    /// Connects to `sk` (naming `ttid` in the options when given) with `application_name`
    /// `app`.
    pub async fn connect(
        sk: &Safekeeper,
        ttid: Option<&TenantTimelineId>,
        app: &str,
    ) -> anyhow::Result<ReplStream> {
        let mut ci = match ttid {
            Some(t) => integration_tests::test_proposer::conninfo(&sk.addr(), t, app),
            None => {
                let mut ci = pq_client::Conninfo::default();
                ci.set("host", "127.0.0.1")
                    .set("port", sk.pg_port.to_string())
                    .set("application_name", app);
                ci
            }
        };
        ci.set("replication", "true");
        Ok(ReplStream {
            conn: pq_client::connect(&ci).await?,
        })
    }

    /// Connects and sends `query` (a START_REPLICATION); ok once CopyBoth started.
    pub async fn start(
        sk: &Safekeeper,
        ttid: Option<&TenantTimelineId>,
        app: &str,
        query: &str,
    ) -> anyhow::Result<ReplStream> {
        let mut s = ReplStream::connect(sk, ttid, app).await?;
        s.start_on(query).await?;
        Ok(s)
    }

    /// Sends `query` (a START_REPLICATION) on this connection.
    /// A refusal (an ErrorResponse before CopyBoth) is an error, after the ReadyForQuery
    /// that follows it has been read, so the connection can be used again.
    pub async fn start_on(&mut self, query: &str) -> anyhow::Result<()> {
        match pq_client::start_copy(&mut self.conn, query).await {
            Ok(()) => Ok(()),
            Err(e @ PgError::Server(_)) => {
                loop {
                    match self.conn.read_be_message().await? {
                        Some(BeMessage::ReadyForQuery(_)) => break,
                        Some(_) => {}
                        None => bail!("connection closed after the error"),
                    }
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a simple query on this connection (outside a stream).
    pub async fn query(&mut self, q: &str) -> anyhow::Result<pq_client::Rows> {
        Ok(pq_client::simple_query(&mut self.conn, q).await?)
    }

    /// The next frame, within `timeout`. An ErrorResponse is an error (see
    /// [`error_fields`]).
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Frame> {
        let m = tokio::time::timeout(timeout, pq_client::read(&mut self.conn))
            .await
            .with_context(|| format!("nothing from the server within {timeout:?}"))??;
        Ok(match m {
            BeMessage::CopyData(p) => match ReplicationServerMessage::decode(p)? {
                ReplicationServerMessage::XLogData(x) => Frame::Data(x),
                ReplicationServerMessage::Keepalive(k) => Frame::Keepalive(k),
            },
            BeMessage::CopyDone => Frame::CopyDone,
            other => Frame::Other(other),
        })
    }

    /// Reads WAL until `to`, checking that every XLogData continues where the previous
    /// one ended (the first at `from`), stays inside one segment, is at most 128 KiB, and
    /// that nothing above `to` arrives. Keepalives are skipped.
    pub async fn read_wal(
        &mut self,
        from: Lsn,
        to: Lsn,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity((to.0 - from.0) as usize);
        let deadline = tokio::time::Instant::now() + timeout;
        while (out.len() as u64) < to.0 - from.0 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .next(left)
                .await
                .with_context(|| format!("reading WAL, at {}", Lsn(from.0 + out.len() as u64)))?
            {
                Frame::Data(x) => {
                    check_xlog_data(&x, Lsn(from.0 + out.len() as u64))?;
                    let end = Lsn(x.wal_start.0 + x.data.len() as u64);
                    ensure!(
                        end <= to,
                        "XLogData {}..{end} goes beyond {to}",
                        x.wal_start
                    );
                    out.extend_from_slice(&x.data);
                }
                Frame::Keepalive(_) => {}
                other => bail!("{other:?} while reading WAL"),
            }
        }
        Ok(out)
    }

    /// Reads frames for `dur` and fails if any XLogData arrives; returns the keepalives.
    pub async fn expect_no_wal_for(
        &mut self,
        dur: Duration,
    ) -> anyhow::Result<Vec<PrimaryKeepalive>> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut keepalives = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(keepalives);
            }
            match tokio::time::timeout(left, pq_client::read(&mut self.conn)).await {
                Err(_) => return Ok(keepalives),
                Ok(m) => match m? {
                    BeMessage::CopyData(p) => match ReplicationServerMessage::decode(p)? {
                        ReplicationServerMessage::Keepalive(k) => keepalives.push(k),
                        ReplicationServerMessage::XLogData(x) => bail!(
                            "unexpected XLogData {}+{} (wal_end {})",
                            x.wal_start,
                            x.data.len(),
                            x.wal_end
                        ),
                    },
                    other => bail!("unexpected {other:?}"),
                },
            }
        }
    }

    /// Sends a reply (`r`, `h`, `z`).
    pub async fn reply(&mut self, m: ReplicationClientMessage) -> anyhow::Result<()> {
        m.encode_frame(self.conn.write_buf());
        self.conn.flush().await?;
        Ok(())
    }

    /// Sends CopyDone.
    pub async fn copy_done(&mut self) -> anyhow::Result<()> {
        self.conn.write_fe(&FeMessage::CopyDone);
        self.conn.flush().await?;
        Ok(())
    }

    /// Reads what follows the end of the COPY until ReadyForQuery; returns the
    /// CommandComplete tags.
    pub async fn read_until_ready(&mut self, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let mut tags = Vec::new();
        loop {
            match self.next(timeout).await? {
                Frame::Other(BeMessage::CommandComplete(t)) => tags.push(t),
                Frame::Other(BeMessage::ReadyForQuery(_)) => return Ok(tags),
                Frame::Keepalive(_) | Frame::Data(_) => {}
                other => bail!("unexpected {other:?} after the COPY"),
            }
        }
    }
}

/// The rules every XLogData must follow: it starts at `expected`, is at most 128 KiB,
/// stays inside one segment, and its `wal_end` is not below its own end.
pub fn check_xlog_data(x: &XLogData, expected: Lsn) -> anyhow::Result<()> {
    ensure!(
        x.wal_start == expected,
        "XLogData at {} where {expected} was expected",
        x.wal_start
    );
    ensure!(
        x.data.len() <= pq_proto::replication::MAX_SEND_SIZE,
        "XLogData of {} bytes",
        x.data.len()
    );
    let end = Lsn(x.wal_start.0 + x.data.len() as u64);
    ensure!(
        x.data.is_empty() || x.wal_start.segment_number(SEG) == Lsn(end.0 - 1).segment_number(SEG),
        "XLogData {}..{end} crosses a segment boundary",
        x.wal_start
    );
    ensure!(
        x.wal_end >= end,
        "XLogData {}..{end} has wal_end {}",
        x.wal_start,
        x.wal_end
    );
    Ok(())
}

/// The safekeeper's log without terminal colour codes.
pub fn plain_log(sk: &Safekeeper) -> String {
    let log = sk.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits (bounded) until the safekeeper's log (colour codes removed) contains `what`.
pub async fn wait_for_log(sk: &Safekeeper, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if plain_log(sk).contains(what) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the safekeeper log has no {what:?} after {timeout:?}; log:\n{}",
                plain_log(sk)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
