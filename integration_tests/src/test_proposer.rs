//! A proposer for tests, built directly on `pq_proto`: every message is sent explicitly,
//! so tests control terms, histories, start points and bad input exactly.
//!
//! Owns: one START_WAL_PUSH connection. Must never: hide an ErrorResponse (it becomes an
//! error that carries the SQLSTATE and message).

use anyhow::{Context, bail};
use bytes::Bytes;
use pq_client::{Conninfo, PgConn};
use pq_proto::backend::{BeMessage, ErrorFields};
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, ProposerElected, ProposerGreeting, ProposerMessage, ProtocolVersion,
    VoteRequest, VoteResponse, write_proposer_frame,
};
use tokio::net::TcpStream;
use utils::{Lsn, TenantTimelineId, Term, TermHistory, TermLsn};

/// The cluster a test proposer claims to be.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    /// PG_VERSION_NUM.
    pub pg_version: u32,
    /// System identifier.
    pub system_id: u64,
    /// WAL segment size.
    pub wal_seg_size: u32,
}

/// A server error, kept typed so tests can check the SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("{} {}", .0.code, .0.message)]
pub struct ServerError(pub ErrorFields);

/// One START_WAL_PUSH connection.
pub struct TestProposer {
    conn: PgConn,
    version: ProtocolVersion,
    ttid: TenantTimelineId,
    /// The generation its messages carry (that of the configuration it greeted with).
    generation: Generation,
}

impl TestProposer {
    /// Connects to `addr` and enters START_WAL_PUSH.
    pub async fn connect(
        addr: &str,
        ttid: TenantTimelineId,
        version: ProtocolVersion,
        allow_creation: bool,
    ) -> anyhow::Result<TestProposer> {
        Self::connect_with_password(addr, ttid, version, allow_creation, None).await
    }

    /// [`TestProposer::connect`] sending `password` (a JWT) if the safekeeper asks for
    /// one; an ErrorResponse of the startup or of START_WAL_PUSH is a [`ServerError`].
    pub async fn connect_with_password(
        addr: &str,
        ttid: TenantTimelineId,
        version: ProtocolVersion,
        allow_creation: bool,
        password: Option<&str>,
    ) -> anyhow::Result<TestProposer> {
        let mut ci =
            Conninfo::for_timeline(addr, ttid.tenant_id, ttid.timeline_id, "test_proposer");
        if let Some(p) = password {
            ci.set("password", p);
        }
        let mut conn = pq_client::connect(&ci).await.map_err(server_error_of)?;
        let q = match version {
            ProtocolVersion::V2 if allow_creation => "START_WAL_PUSH".to_string(),
            v => format!(
                "START_WAL_PUSH (proto_version '{}', allow_timeline_creation '{}')",
                v.number(),
                allow_creation
            ),
        };
        pq_client::start_copy(&mut conn, &q)
            .await
            .map_err(server_error_of)?;
        Ok(TestProposer {
            conn,
            version,
            ttid,
            generation: Generation(0),
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &ProposerMessage) -> anyhow::Result<()> {
        write_proposer_frame(m, self.version, self.conn.write_buf());
        self.conn.flush().await?;
        Ok(())
    }

    /// Receives one message; an ErrorResponse is an error carrying [`ServerError`].
    pub async fn recv(&mut self) -> anyhow::Result<AcceptorMessage> {
        match self.conn.read_be_message().await? {
            Some(BeMessage::CopyData(p)) => Ok(AcceptorMessage::decode(p, self.version)?),
            Some(BeMessage::ErrorResponse(e)) => Err(ServerError(e).into()),
            Some(other) => bail!("unexpected {other:?}"),
            None => bail!("connection closed"),
        }
    }

    /// Greeting → AcceptorGreeting.
    pub async fn greet(&mut self, c: Cluster) -> anyhow::Result<AcceptorGreeting> {
        self.greet_with(c, Configuration::empty()).await
    }

    /// Greeting with a membership configuration → AcceptorGreeting; later messages carry
    /// its generation.
    pub async fn greet_with(
        &mut self,
        c: Cluster,
        mconf: Configuration,
    ) -> anyhow::Result<AcceptorGreeting> {
        self.generation = mconf.generation;
        self.send(&ProposerMessage::Greeting(ProposerGreeting {
            tenant_id: self.ttid.tenant_id,
            timeline_id: self.ttid.timeline_id,
            mconf,
            pg_version: c.pg_version,
            system_id: c.system_id,
            wal_seg_size: c.wal_seg_size,
        }))
        .await?;
        match self.recv().await? {
            AcceptorMessage::Greeting(g) => Ok(g),
            other => bail!("expected AcceptorGreeting, got {other:?}"),
        }
    }

    /// VoteRequest → VoteResponse.
    pub async fn vote(&mut self, term: Term) -> anyhow::Result<VoteResponse> {
        self.send(&ProposerMessage::VoteRequest(VoteRequest {
            generation: self.generation,
            term,
        }))
        .await?;
        match self.recv().await? {
            AcceptorMessage::VoteResponse(v) => Ok(v),
            other => bail!("expected VoteResponse, got {other:?}"),
        }
    }

    /// ProposerElected (no reply).
    pub async fn elect(
        &mut self,
        term: Term,
        history: TermHistory,
        start: Lsn,
    ) -> anyhow::Result<()> {
        self.send(&ProposerMessage::Elected(ProposerElected {
            generation: self.generation,
            term,
            start_streaming_at: start,
            term_history: history,
        }))
        .await
    }

    /// Sends one AppendRequest without waiting for an answer.
    pub async fn append(
        &mut self,
        term: Term,
        begin: Lsn,
        data: Bytes,
        commit: Lsn,
    ) -> anyhow::Result<()> {
        let end = Lsn(begin.0 + data.len() as u64);
        self.send(&ProposerMessage::AppendRequest(AppendRequest {
            h: AppendRequestHeader {
                generation: self.generation,
                term,
                begin_lsn: begin,
                end_lsn: end,
                commit_lsn: commit,
                truncate_lsn: Lsn::INVALID,
            },
            wal_data: data,
        }))
        .await
    }

    /// The next AppendResponse.
    pub async fn append_response(&mut self) -> anyhow::Result<AppendResponse> {
        match self.recv().await? {
            AcceptorMessage::AppendResponse(r) => Ok(r),
            other => bail!("expected AppendResponse, got {other:?}"),
        }
    }

    /// Streams `wal` (starting at `begin`) in chunks of at most 128 KiB, each carrying
    /// the last flush_lsn seen as commit_lsn (right only when this is the one acceptor
    /// that counts: see [`TestProposer::push_with_commit`]), and reads every response.
    /// Returns the flush_lsns reported, in order.
    pub async fn push(&mut self, term: Term, begin: Lsn, wal: &Bytes) -> anyhow::Result<Vec<Lsn>> {
        self.push_inner(term, begin, wal, None).await
    }

    /// Like [`TestProposer::push`] but every request carries `commit` as commit_lsn.
    pub async fn push_with_commit(
        &mut self,
        term: Term,
        begin: Lsn,
        wal: &Bytes,
        commit: Lsn,
    ) -> anyhow::Result<Vec<Lsn>> {
        self.push_inner(term, begin, wal, Some(commit)).await
    }

    async fn push_inner(
        &mut self,
        term: Term,
        begin: Lsn,
        wal: &Bytes,
        fixed_commit: Option<Lsn>,
    ) -> anyhow::Result<Vec<Lsn>> {
        let mut flushes = Vec::new();
        let mut commit = fixed_commit.unwrap_or_default();
        let mut off = 0;
        while off < wal.len() {
            let n = (wal.len() - off).min(pq_proto::replication::MAX_SEND_SIZE);
            self.append(
                term,
                Lsn(begin.0 + off as u64),
                wal.slice(off..off + n),
                commit,
            )
            .await?;
            off += n;
            let r = self
                .append_response()
                .await
                .context("waiting for AppendResponse")?;
            flushes.push(r.flush_lsn);
            commit = fixed_commit.unwrap_or(r.flush_lsn);
        }
        Ok(flushes)
    }

    /// Access to the connection (for bad-input tests).
    pub fn conn(&mut self) -> &mut PgConn {
        &mut self.conn
    }

    /// The connection itself (for bad-input tests that watch it close).
    pub fn into_conn(self) -> PgConn {
        self.conn
    }
}

/// A term history from `(term, lsn)` pairs.
pub fn history(entries: &[(u64, Lsn)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(term, lsn)| TermLsn {
                term: Term(term),
                lsn,
            })
            .collect(),
    )
}

/// A client error, with a server's ErrorResponse as a [`ServerError`].
fn server_error_of(e: pq_client::PgError) -> anyhow::Error {
    match e {
        pq_client::PgError::Server(f) => ServerError(f).into(),
        other => other.into(),
    }
}

/// The server's ErrorResponse inside an error from [`TestProposer`], if that is what it is.
pub fn server_error(e: &anyhow::Error) -> Option<&ErrorFields> {
    e.downcast_ref::<ServerError>().map(|s| &s.0)
}

impl TestProposer {
    /// Connects, greets, wins `term` (fails unless the vote is granted) and sends
    /// ProposerElected with `history`, starting at `start` (which must be the highest
    /// common point the acceptor computes). Returns the proposer and the VoteResponse.
    pub async fn elected(
        addr: &str,
        ttid: TenantTimelineId,
        version: ProtocolVersion,
        cluster: Cluster,
        term: Term,
        history: TermHistory,
        start: Lsn,
    ) -> anyhow::Result<(TestProposer, VoteResponse)> {
        let mut p = TestProposer::connect(addr, ttid, version, true).await?;
        p.greet(cluster).await?;
        let v = p.vote(term).await?;
        if !v.vote_given {
            bail!("vote for {term} refused: {v:?}");
        }
        p.elect(term, history, start).await?;
        Ok((p, v))
    }

    /// [`TestProposer::elected`] for the first term of a new timeline: protocol v3, term 1,
    /// its history a single entry at `start`.
    pub async fn first_term(
        addr: &str,
        ttid: TenantTimelineId,
        cluster: Cluster,
        start: Lsn,
    ) -> anyhow::Result<TestProposer> {
        let history = history(&[(1, start)]);
        let (p, _) = Self::elected(
            addr,
            ttid,
            ProtocolVersion::V3,
            cluster,
            Term(1),
            history,
            start,
        )
        .await?;
        Ok(p)
    }
}

/// Connects to the safekeeper and returns the raw socket, for bad-input tests.
pub async fn raw_socket(addr: &str) -> anyhow::Result<TcpStream> {
    Ok(TcpStream::connect(addr).await?)
}

/// A conninfo for a safekeeper timeline (see [`Conninfo::for_timeline`]).
pub fn conninfo(addr: &str, ttid: &TenantTimelineId, app: &str) -> Conninfo {
    Conninfo::for_timeline(addr, ttid.tenant_id, ttid.timeline_id, app)
}
