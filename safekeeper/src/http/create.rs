//! `POST /v1/tenant/timeline`: creates a timeline from Neon's `TimelineCreateRequest`, the
//! way Neon's safekeeper does (what Neon's storage controller calls on each member).
//!
//! The new timeline's WAL starts at `start_lsn`: it becomes the timeline start, the local
//! start, the flush and commit positions (`commit_lsn` if given), the term history is
//! `[(0, start_lsn)]`, `mconf` is persisted in the control file (AcceptorGreetings report
//! it), and the first segment holds the synthetic bytes before `start_lsn` — so a proposer
//! campaigns and streams from `start_lsn`, and readers read from there. Durable before the
//! answer (see `Timelines::create_with_state`).
//!
//! Idempotent: 201 when created, 200 when a timeline of that id exists and agrees with the
//! body, 409 when it does not (another start, server, or a membership configuration the
//! timeline does not have: configurations change through the membership route).
//!
//! Owns: the request's shape and validation. Must never: create a timeline from a body it
//! has not fully validated.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utils::xlog::{self, page::is_valid_stream_start};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

use super::access::Access;
use super::error::{ApiError, clip};
use super::timelines::timeline_json;
use crate::ctx::ServerCtx;
use crate::state::{ServerInfo, TimelineState};
use crate::timeline::TimelineStatus;

/// The segment size when the request has none (PostgreSQL's default).
pub const DEFAULT_WAL_SEG_SIZE: u32 = 16 << 20;

/// Members a configuration may name (a quorum is a handful; this bounds the work a body
/// can ask for).
const MAX_MEMBERS: usize = 64;

/// One safekeeper of a membership configuration, as JSON (Neon's `SafekeeperId`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MemberJson {
    /// Its node id.
    pub id: u64,
    /// Host of its PostgreSQL-protocol listener.
    pub host: String,
    /// Port of that listener.
    pub pg_port: u16,
}

/// A membership configuration, as JSON (Neon's `Configuration`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MconfJson {
    /// Its generation (0: none).
    pub generation: u32,
    /// The members.
    pub members: Vec<MemberJson>,
    /// The members being switched to (joint configuration), or null.
    #[serde(default)]
    pub new_members: Option<Vec<MemberJson>>,
}

/// Neon's `TimelineCreateRequest`.
#[derive(Debug, Deserialize)]
pub struct TimelineCreateRequest {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The timeline.
    pub timeline_id: TimelineId,
    /// The membership configuration.
    pub mconf: MconfJson,
    /// PG_VERSION_NUM of the compute (e.g. 150000).
    pub pg_version: u32,
    /// The cluster's system identifier, or null (learnt from the first proposer).
    #[serde(default)]
    pub system_id: Option<u64>,
    /// WAL segment size in bytes, or null for 16 MiB.
    #[serde(default)]
    pub wal_seg_size: Option<u32>,
    /// Where the timeline's WAL starts, `X/X`.
    pub start_lsn: String,
    /// Committed position, `X/X` or null (= `start_lsn`).
    #[serde(default)]
    pub commit_lsn: Option<String>,
}

fn members_of(v: &[MemberJson], what: &str) -> Result<Vec<SafekeeperId>, ApiError> {
    if v.len() > MAX_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "mconf.{what} names {} safekeepers; at most {MAX_MEMBERS}",
            v.len()
        )));
    }
    let mut out: Vec<SafekeeperId> = Vec::with_capacity(v.len());
    for m in v {
        if m.id == 0 {
            return Err(ApiError::bad_request(format!(
                "mconf.{what}: node id 0 is not a valid safekeeper id"
            )));
        }
        if out.iter().any(|o| o.id.0 == m.id) {
            return Err(ApiError::bad_request(format!(
                "mconf.{what}: node id {} appears twice",
                m.id
            )));
        }
        out.push(SafekeeperId {
            id: NodeId(m.id),
            host: m.host.clone(),
            pg_port: m.pg_port,
        });
    }
    Ok(out)
}

/// The configuration a JSON body names (400 when malformed).
pub fn mconf_from_json(m: &MconfJson) -> Result<Configuration, ApiError> {
    let conf = Configuration {
        generation: Generation(m.generation),
        members: members_of(&m.members, "members")?,
        new_members: m
            .new_members
            .as_deref()
            .map(|n| members_of(n, "new_members"))
            .transpose()?,
    };
    if conf.generation.0 > 0 && conf.members.is_empty() {
        return Err(ApiError::bad_request(
            "mconf: a configuration of generation 1 or more needs members",
        ));
    }
    Ok(conf)
}

/// A configuration as JSON.
pub fn mconf_json(c: &Configuration) -> Value {
    let members = |v: &[SafekeeperId]| -> Vec<MemberJson> {
        v.iter()
            .map(|m| MemberJson {
                id: m.id.0,
                host: m.host.clone(),
                pg_port: m.pg_port,
            })
            .collect()
    };
    serde_json::json!({
        "generation": c.generation.0,
        "members": members(&c.members),
        "new_members": c.new_members.as_deref().map(members),
    })
}

fn parse_lsn(field: &str, s: &str) -> Result<Lsn, ApiError> {
    s.parse::<Lsn>().map_err(|_| {
        ApiError::bad_request(format!(
            "{field}: {:?} is not an LSN (X/X in hex)",
            clip(s, 40)
        ))
    })
}

/// The state a valid request creates.
fn initial_state(req: &TimelineCreateRequest) -> Result<TimelineState, ApiError> {
    let ttid = TenantTimelineId::new(req.tenant_id, req.timeline_id);
    let pg_version = req.pg_version;
    if !xlog::is_supported_pg_version(pg_version) {
        return Err(ApiError::bad_request(format!(
            "pg_version: {} is not a supported PostgreSQL version (PG_VERSION_NUM of 14 to 17, e.g. 150000)",
            req.pg_version
        )));
    }
    let wal_seg_size = req.wal_seg_size.unwrap_or(DEFAULT_WAL_SEG_SIZE);
    if !xlog::is_valid_seg_size(wal_seg_size) {
        return Err(ApiError::bad_request(format!(
            "wal_seg_size: {wal_seg_size} is not a power of two from 1 MiB to 1 GiB"
        )));
    }
    let start = parse_lsn("start_lsn", &req.start_lsn)?;
    if !start.is_valid() || !is_valid_stream_start(start, wal_seg_size) {
        return Err(ApiError::bad_request(format!(
            "start_lsn: {start} is not where WAL can start (a non-zero, 8-byte aligned LSN outside a page header)"
        )));
    }
    let commit = match &req.commit_lsn {
        None => start,
        Some(c) => parse_lsn("commit_lsn", c)?,
    };
    if commit != start {
        // Neon takes a commit_lsn above start_lsn for timelines whose WAL is fetched
        // afterwards; here a created timeline holds no WAL above start_lsn, and commit_lsn
        // never exceeds the WAL held.
        return Err(ApiError::bad_request(format!(
            "commit_lsn: {commit} differs from start_lsn {start}; a created timeline has no WAL past start_lsn, so commit_lsn must be null or start_lsn"
        )));
    }
    let mut state = TimelineState::new(
        ttid,
        ServerInfo {
            pg_version,
            system_id: req.system_id.unwrap_or(0),
            wal_seg_size,
        },
    );
    state.mconf = mconf_from_json(&req.mconf)?;
    state.term_history = TermHistory(vec![TermLsn {
        term: Term(0),
        lsn: start,
    }]);
    state.timeline_start_lsn = start;
    state.local_start_lsn = start;
    state.commit_lsn = commit;
    state.backup_lsn = start;
    state.peer_horizon_lsn = start;
    state.remote_consistent_lsn = start;
    Ok(state)
}

/// Why an existing timeline does not match what the request would create, if it does not.
fn conflict(have: &TimelineStatus, want: &TimelineState) -> Option<String> {
    let (h, w) = (&have.server, &want.server);
    if h.wal_seg_size != w.wal_seg_size {
        return Some(format!(
            "it exists with wal_seg_size {}, not {}",
            h.wal_seg_size, w.wal_seg_size
        ));
    }
    if h.pg_version != 0 && xlog::pg_major(h.pg_version) != xlog::pg_major(w.pg_version) {
        return Some(format!(
            "it exists with pg_version {}, not {}",
            h.pg_version, w.pg_version
        ));
    }
    if h.system_id != 0 && w.system_id != 0 && h.system_id != w.system_id {
        return Some(format!(
            "it exists with system_id {}, not {}",
            h.system_id, w.system_id
        ));
    }
    if have.timeline_start_lsn != want.timeline_start_lsn {
        return Some(format!(
            "it exists with timeline_start_lsn {}, not {}",
            have.timeline_start_lsn, want.timeline_start_lsn
        ));
    }
    let (hc, wc) = (&*have.mconf, &want.mconf);
    if wc.generation > hc.generation || (wc.generation == hc.generation && hc != wc) {
        return Some(format!(
            "it exists with another membership configuration (generation {}); change it through the membership route",
            hc.generation
        ));
    }
    None
}

/// `POST /v1/tenant/timeline`.
pub async fn create(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    body: Result<Json<TimelineCreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body?;
    access.require_tenant(&req.tenant_id)?;
    let state = initial_state(&req)?;
    let ttid = state.ttid;
    let (tl, created) = ctx.timelines.create_with_state(state.clone()).await?;
    if created {
        return Ok((StatusCode::CREATED, Json(timeline_json(&tl))));
    }
    if let Some(why) = conflict(&tl.status(), &state) {
        return Err(ApiError::conflict(format!(
            "timeline {ttid} conflicts with the request: {why}"
        )));
    }
    Ok((StatusCode::OK, Json(timeline_json(&tl))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptor::Acceptor;

    fn request(body: serde_json::Value) -> TimelineCreateRequest {
        serde_json::from_value(body).expect("a request")
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "tenant_id": "0123456789abcdef0123456789abcdef",
            "timeline_id": "fedcba9876543210fedcba9876543210",
            "mconf": {"generation": 1, "members": [{"id": 1, "host": "a", "pg_port": 5454}]},
            "pg_version": 150000,
            "start_lsn": "0/149F0D8",
        })
    }

    #[test]
    fn the_initial_state_starts_everything_at_start_lsn() {
        let s = initial_state(&request(good())).unwrap();
        let start: Lsn = "0/149F0D8".parse().unwrap();
        assert_eq!(s.server.wal_seg_size, DEFAULT_WAL_SEG_SIZE);
        assert_eq!(s.server.system_id, 0);
        assert_eq!(s.term, Term(0));
        assert_eq!(
            s.term_history,
            TermHistory(vec![TermLsn {
                term: Term(0),
                lsn: start
            }])
        );
        for lsn in [
            s.timeline_start_lsn,
            s.local_start_lsn,
            s.commit_lsn,
            s.backup_lsn,
            s.peer_horizon_lsn,
            s.remote_consistent_lsn,
        ] {
            assert_eq!(lsn, start);
        }
        assert_eq!(s.mconf.generation, Generation(1));
        assert_eq!(s.mconf.members[0].id, NodeId(1));
    }

    #[test]
    fn invalid_fields_are_refused() {
        let cases: [(&str, serde_json::Value); 7] = [
            ("start_lsn", serde_json::json!("0/1000004")),
            ("start_lsn", serde_json::json!("0/1000010")),
            ("start_lsn", serde_json::json!("0/0")),
            ("commit_lsn", serde_json::json!("0/2000000")),
            ("wal_seg_size", serde_json::json!(12345)),
            ("pg_version", serde_json::json!(130000)),
            (
                "mconf",
                serde_json::json!({"generation": 1, "members": [
                    {"id": 2, "host": "a", "pg_port": 1}, {"id": 2, "host": "b", "pg_port": 1}]}),
            ),
        ];
        for (field, value) in cases {
            let mut b = good();
            b[field] = value.clone();
            let e = initial_state(&request(b)).expect_err(field);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{field} = {value}");
        }
    }

    #[test]
    fn conflicts_are_what_the_timeline_does_not_have() {
        let want = initial_state(&request(good())).unwrap();
        let have = |s: &TimelineState| {
            TimelineStatus::of(
                &Acceptor::new(NodeId(1), s.clone(), s.local_start_lsn),
                false,
            )
        };
        assert_eq!(conflict(&have(&want), &want), None);
        // A retry after the configuration moved on agrees.
        let mut moved = want.clone();
        moved.mconf.generation = Generation(2);
        assert_eq!(conflict(&have(&moved), &want), None);
        // A configuration it does not have, another start: conflicts.
        assert!(conflict(&have(&want), &moved).is_some());
        let mut other = want.clone();
        other.timeline_start_lsn = Lsn(0x2000028);
        assert!(conflict(&have(&want), &other).is_some());
        // system_id learnt from the proposer since: not a conflict with a null one.
        let mut learnt = want.clone();
        learnt.server.system_id = 42;
        assert_eq!(conflict(&have(&learnt), &want), None);
    }
}
