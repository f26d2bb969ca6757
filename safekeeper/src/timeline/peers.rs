//! The peers' horizon: how far every member of the timeline's configuration holds WAL,
//! learned by asking each peer for its `TIMELINE_STATUS` over the PostgreSQL protocol
//! (`pq_client`), and fed to the ingest loop as progress. WAL below it is needed by no
//! peer's recovery, which is one of the bounds of WAL removal
//! ([`crate::acceptor::removal_horizon`]).
//!
//! Runs only while the timeline has a membership configuration with other members (a
//! proposer's v3 greeting of generation ≥ 1 brings one); a timeline without one learns the
//! horizon from the proposer's `truncate_lsn` alone. A peer that cannot be asked makes the
//! round report nothing (the horizon must not pass WAL a silent peer may need).
//!
//! Owns: the polling task of a timeline. Must never: report a position above what some
//! member holds, or outlive its timeline (it is one of the timeline's tasks).

use std::sync::Arc;
use std::time::Duration;

use pq_client::{Conninfo, PgError};
use pq_proto::proposer::SafekeeperId;
use utils::{Lsn, TenantTimelineId};

use super::{Input, Timeline};
use crate::acceptor::Progress;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` of these status queries.
pub const PEER_STATUS_APP: &str = "safekeeper_peer_status";

impl Timeline {
    /// Starts asking the peers for their positions every `interval` (`None`: never).
    pub(super) fn start_peer_status(self: &Arc<Self>, interval: Option<Duration>) {
        let Some(interval) = interval else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        let me = self.ctx.node_id;
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
                    let asked = tokio::select! {
                        _ = cancel.cancelled() => return,
                        h = horizon(ttid, st.flush_lsn, &peers) => h,
                    };
                    match (asked, weak.upgrade()) {
                        (Ok(h), Some(tl)) => {
                            let _ = tl.submit(Input::Progress(Progress::PeerHorizon(h)));
                        }
                        (Err(e), _) => tracing::debug!(%ttid, "peers' horizon unknown: {e}"),
                        (_, None) => return,
                    }
                }
            },
            &rt,
        );
    }
}

/// The lowest flush_lsn among `peers` and `own`; an error if a peer cannot say.
async fn horizon(ttid: TenantTimelineId, own: Lsn, peers: &[SafekeeperId]) -> Result<Lsn, String> {
    let mut h = own;
    for p in peers {
        let flush = tokio::time::timeout(PEER_TIMEOUT, peer_flush_lsn(ttid, p))
            .await
            .map_err(|_| format!("peer {} did not answer in {PEER_TIMEOUT:?}", p.id))?
            .map_err(|e| format!("peer {}: {e}", p.id))?;
        match flush {
            Some(f) => h = h.min(f),
            None => return Err(format!("peer {} does not hold the timeline", p.id)),
        }
    }
    Ok(h)
}

/// A peer's flush_lsn of the timeline (`None` if it does not hold it).
async fn peer_flush_lsn(ttid: TenantTimelineId, p: &SafekeeperId) -> Result<Option<Lsn>, PgError> {
    let addr = format!("{}:{}", p.host, p.pg_port);
    let mut ci = Conninfo::for_timeline(&addr, ttid.tenant_id, ttid.timeline_id, PEER_STATUS_APP);
    ci.set("replication", "true");
    let mut conn = pq_client::connect(&ci).await?;
    let rows = pq_client::simple_query(&mut conn, "TIMELINE_STATUS").await?;
    let Some(cell) = rows.first().and_then(|r| r.first()).cloned().flatten() else {
        return Ok(None);
    };
    cell.parse()
        .map(Some)
        .map_err(|e| PgError::Unexpected(format!("flush_lsn {cell:?}: {e}")))
}
