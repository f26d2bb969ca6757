//! The peers' positions: every member of the timeline's configuration is asked for its
//! `TIMELINE_STATUS` over the PostgreSQL protocol (`pq_client`), all at once, every
//! interval. What each answered is kept on the timeline's peer board ([`PeerBoard`]),
//! read by the offloader (who offloads, and how far the offloader got); the lowest
//! flush_lsn of a round where every peer answered is fed to the ingest loop as the peers'
//! horizon: WAL below it is needed by no peer's recovery, one of the bounds of WAL
//! removal ([`crate::acceptor::removal_horizon`]).
//!
//! Runs only while the timeline has a membership configuration with other members (a
//! proposer's v3 greeting of generation ≥ 1 brings one); a timeline without one learns the
//! horizon from the proposer's `truncate_lsn` alone. A peer that cannot be asked makes the
//! round report no horizon (it must not pass WAL a silent peer may need), and is left off
//! the board until it answers again.
//!
//! With `--auth-token-file` / `SAFEKEEPER_AUTH_TOKEN` the question carries that token as
//! its password (peers with `--pg-auth-public-key-path` ask for one).
//!
//! Owns: the polling task of a timeline and its board. Must never: report a position above
//! what some member holds, or outlive its timeline (it is one of the timeline's tasks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pq_client::{Conninfo, PgError};
use pq_proto::proposer::SafekeeperId;
use utils::{Lsn, NodeId, TenantTimelineId, Term};

use super::{Input, Timeline};
use crate::acceptor::Progress;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` of these status queries.
pub const PEER_STATUS_APP: &str = "safekeeper_peer_status";

/// What one peer said about the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPosition {
    /// The peer.
    pub id: NodeId,
    /// Its end of WAL.
    pub flush_lsn: Lsn,
    /// Its commit position.
    pub commit_lsn: Lsn,
    /// The term it voted in last.
    pub term: Term,
    /// The term of its last WAL (the last entry of its term history).
    pub last_log_term: Term,
    /// How far it knows WAL to be offloaded.
    pub backup_lsn: Lsn,
}

/// The last round of questions.
#[derive(Clone, Debug, Default)]
pub struct PeerBoard {
    /// When the round ended (`None`: no round yet).
    pub at: Option<Instant>,
    /// Members of the configuration other than this safekeeper (asked or not).
    pub members: usize,
    /// The peers that answered, holding the timeline.
    pub answered: Vec<PeerPosition>,
}

impl Timeline {
    /// The peers' answers of the last round.
    pub fn peer_board(&self) -> PeerBoard {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How often peers are asked (`None`: never).
    pub fn peer_status_interval(&self) -> Option<Duration> {
        self.ctx.peer_status_interval
    }

    /// Starts asking the peers for their positions every `interval` (`None`: never).
    pub(super) fn start_peer_status(self: &Arc<Self>, interval: Option<Duration>) {
        let Some(interval) = interval else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        let me = self.ctx.node_id;
        let token = self.ctx.peer_token.clone();
        self.tasks.spawn_on(
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let Some(tl) = weak.upgrade() else { return };
                    let st = tl.status();
                    let peers: Vec<SafekeeperId> = st
                        .mconf
                        .members
                        .iter()
                        .chain(st.mconf.new_members.iter().flatten())
                        .filter(|m| m.id != me)
                        .cloned()
                        .collect();
                    if peers.is_empty() {
                        continue;
                    }
                    let ttid = tl.ttid;
                    drop(tl);
                    let answers = tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = ask_all(ttid, &peers, token.clone()) => a,
                    };
                    let Some(tl) = weak.upgrade() else { return };
                    let mut board = PeerBoard {
                        at: Some(Instant::now()),
                        members: peers.len(),
                        answered: Vec::new(),
                    };
                    let mut horizon = Some(st.flush_lsn);
                    for (p, a) in peers.iter().zip(answers) {
                        match a {
                            Ok(Some(pos)) => {
                                horizon = horizon.map(|h| h.min(pos.flush_lsn));
                                board.answered.push(pos);
                            }
                            Ok(None) => {
                                tracing::debug!(%ttid, peer = %p.id, "peer does not hold the timeline");
                                horizon = None;
                            }
                            Err(e) => {
                                tracing::debug!(%ttid, peer = %p.id, "peer did not answer: {e}");
                                horizon = None;
                            }
                        }
                    }
                    tl.maybe_recover(&board.answered);
                    *tl.peers.lock().unwrap_or_else(|p| p.into_inner()) = board;
                    if let Some(h) = horizon {
                        let _ = tl.submit(Input::Progress(Progress::PeerHorizon(h)));
                    }
                }
            },
            &rt,
        );
    }
}

/// Asks every peer at once; one answer per peer, in order.
async fn ask_all(
    ttid: TenantTimelineId,
    peers: &[SafekeeperId],
    token: Option<Arc<str>>,
) -> Vec<Result<Option<PeerPosition>, String>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, p) in peers.iter().enumerate() {
        let p = p.clone();
        let token = token.clone();
        set.spawn(async move {
            let ask = peer_position(ttid, &p, token.as_deref());
            let r = match tokio::time::timeout(PEER_TIMEOUT, ask).await {
                Err(_) => Err(format!("no answer in {PEER_TIMEOUT:?}")),
                Ok(r) => r.map_err(|e| e.to_string()),
            };
            (i, r)
        });
    }
    let mut out: Vec<Result<Option<PeerPosition>, String>> =
        (0..peers.len()).map(|_| Err("not asked".into())).collect();
    while let Some(j) = set.join_next().await {
        if let Ok((i, r)) = j {
            out[i] = r;
        }
    }
    out
}

/// A peer's positions on the timeline (`None` if it does not hold it).
async fn peer_position(
    ttid: TenantTimelineId,
    p: &SafekeeperId,
    token: Option<&str>,
) -> Result<Option<PeerPosition>, PgError> {
    let addr = format!("{}:{}", p.host, p.pg_port);
    let mut ci = Conninfo::for_timeline(&addr, ttid.tenant_id, ttid.timeline_id, PEER_STATUS_APP);
    ci.set("replication", "true");
    if let Some(t) = token {
        // Sent only if the peer asks for a password.
        ci.set("password", t);
    }
    let mut conn = pq_client::connect(&ci).await?;
    let rows = pq_client::simple_query(&mut conn, "TIMELINE_STATUS").await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    // Columns: flush_lsn, commit_lsn, term, last_log_term, …, backup_lsn (9).
    let lsn = |i: usize| -> Result<Lsn, PgError> {
        let cell = row.get(i).cloned().flatten().unwrap_or_default();
        cell.parse()
            .map_err(|e| PgError::Unexpected(format!("TIMELINE_STATUS column {i} {cell:?}: {e}")))
    };
    let term = |i: usize| -> Result<Term, PgError> {
        let cell = row.get(i).cloned().flatten().unwrap_or_default();
        cell.parse::<u64>()
            .map(Term)
            .map_err(|e| PgError::Unexpected(format!("TIMELINE_STATUS column {i} {cell:?}: {e}")))
    };
    Ok(Some(PeerPosition {
        id: p.id,
        flush_lsn: lsn(0)?,
        commit_lsn: lsn(1)?,
        term: term(2)?,
        last_log_term: term(3)?,
        backup_lsn: lsn(9)?,
    }))
}
