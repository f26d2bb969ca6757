//! Timeline routes: `GET /v1/tenant/timeline` (list), `GET` and `DELETE
//! /v1/tenant/{tenant_id}/timeline/{timeline_id}`, `DELETE /v1/tenant/{tenant_id}`
//! (creation is in [`super::create`]).
//!
//! Owns: the timeline status JSON (from the published status, the feedback table and the
//! proposer table: it answers while a flush is stalled) and the delete answers (Neon's
//! `{"dir_existed": …}`). Must never: take a timeline's ingest lock, or change consensus
//! state (deletion goes through the registry, which ends the streams first).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use utils::{TenantId, TenantTimelineId, TimelineId};

use super::access::Access;
use super::error::ApiError;
use crate::ctx::ServerCtx;
use crate::timeline::Timeline;

/// A tenant id from the path (400 with the reason if it is not 32 hex digits).
pub fn parse_tenant(s: &str) -> Result<TenantId, ApiError> {
    s.parse::<TenantId>()
        .map_err(|e| ApiError::bad_request(format!("bad tenant_id: {e}")))
}

/// A timeline id from the path.
pub fn parse_timeline(s: &str) -> Result<TimelineId, ApiError> {
    s.parse::<TimelineId>()
        .map_err(|e| ApiError::bad_request(format!("bad timeline_id: {e}")))
}

fn parse_ttid(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<TenantTimelineId, ApiError> {
    let Path((tenant, timeline)) = path?;
    Ok(TenantTimelineId::new(
        parse_tenant(&tenant)?,
        parse_timeline(&timeline)?,
    ))
}

/// `GET /v1/tenant/timeline`: every timeline here (servable or not). With a tenant token,
/// only that tenant's.
pub async fn list(State(ctx): State<Arc<ServerCtx>>, access: Access) -> Json<Value> {
    let items: Vec<Value> = ctx
        .timelines
        .list()
        .into_iter()
        .filter(|t| access.require_tenant(&t.tenant_id).is_ok())
        .map(|t| json!({"tenant_id": t.tenant_id, "timeline_id": t.timeline_id}))
        .collect();
    Json(Value::Array(items))
}

/// `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}`.
pub async fn get(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let ttid = parse_ttid(path)?;
    access.require_tenant(&ttid.tenant_id)?;
    let tl = ctx.timelines.get(&ttid).await?;
    Ok(Json(timeline_json(&tl)))
}

/// `DELETE /v1/tenant/{tenant_id}/timeline/{timeline_id}`: 200 `{"dir_existed": bool}`
/// whether or not it existed (idempotent, as Neon).
pub async fn delete(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let ttid = parse_ttid(path)?;
    access.require_tenant(&ttid.tenant_id)?;
    let existed = ctx.timelines.delete(&ttid).await?;
    Ok(Json(json!({ "dir_existed": existed })))
}

/// `DELETE /v1/tenant/{tenant_id}`: every timeline of the tenant, then its directory; 200
/// with `{timeline_id: {"dir_existed": bool}}` (empty when it had none).
pub async fn delete_tenant(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(tenant) = path?;
    let tenant = parse_tenant(&tenant)?;
    access.require_tenant(&tenant)?;
    let deleted = ctx.timelines.delete_tenant(&tenant).await?;
    let out: BTreeMap<String, Value> = deleted
        .into_iter()
        .map(|(tl, existed)| (tl.to_string(), json!({ "dir_existed": existed })))
        .collect();
    Ok(Json(json!(out)))
}

/// A timeline's status as the API shows it (see `docs/http-api.md`).
pub fn timeline_json(tl: &Timeline) -> Value {
    let s = tl.status();
    let ttid = tl.ttid;
    let walsenders: Vec<Value> = tl
        .feedback
        .readers()
        .into_iter()
        .map(|r| {
            json!({
                "reader_id": r.id,
                "app_name": r.app_name,
                "sent_lsn": r.sent_lsn.to_string(),
                "write_lsn": r.write_lsn.to_string(),
                "flush_lsn": r.flush_lsn.to_string(),
                "apply_lsn": r.apply_lsn.to_string(),
                "reply_time": r.reply_time,
                "hs_feedback": {
                    "ts": r.hs.ts,
                    "xmin": r.hs.xmin,
                    "catalog_xmin": r.hs.catalog_xmin,
                },
            })
        })
        .collect();
    let walreceivers = tl.proposers();
    json!({
        "tenant_id": ttid.tenant_id,
        "timeline_id": ttid.timeline_id,
        "mconf": super::create::mconf_json(&s.mconf),
        "term": s.term.0,
        "last_log_term": s.last_log_term.0,
        "flush_lsn": s.flush_lsn.to_string(),
        "commit_lsn": s.commit_lsn.to_string(),
        "timeline_start_lsn": s.timeline_start_lsn.to_string(),
        "local_start_lsn": s.local_start_lsn.to_string(),
        "peer_horizon_lsn": s.peer_horizon_lsn.to_string(),
        "backup_lsn": s.backup_lsn.to_string(),
        "remote_consistent_lsn": s.remote_consistent_lsn.to_string(),
        "term_history": s.term_history.0.iter()
            .map(|e| json!({"term": e.term.0, "lsn": e.lsn.to_string()}))
            .collect::<Vec<_>>(),
        "pg_version": s.server.pg_version,
        "system_id": s.server.system_id,
        "wal_seg_size": s.server.wal_seg_size,
        "computes": tl.computes(),
        "readers": walsenders.len(),
        "walreceivers": walreceivers,
        "walsenders": walsenders,
        "offload": tl.offload().map(|_| tl.offload_state()),
    })
}
