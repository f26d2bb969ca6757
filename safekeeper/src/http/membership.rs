//! `PUT /v1/tenant/{tenant_id}/timeline/{timeline_id}/membership`: switch the timeline's
//! membership configuration (Neon's route, body `{generation, members, new_members}`), so
//! an external controller can drive membership changes.
//!
//! Answers (the rules are the acceptor's, `acceptor::membership`): 200 with
//! `{"previous_conf", "current_conf", "last_log_term", "flush_lsn"}` — after a switch to
//! a higher generation (durable in the control file before the answer), for the same
//! configuration again (idempotent), and for a lower generation (nothing changes; the
//! answer shows the current, higher one, as Neon does); 409 for another configuration of
//! the current generation; 400 for a malformed one; 404 without the timeline.
//!
//! `POST /v1/tenant/{tenant_id}/timeline/{timeline_id}/term_bump` (Neon's route, body
//! `{"term": N}` or `{}`): raises the timeline's term, as a membership change needs
//! before the new set decides alone; 200 with `{"previous_term", "current_term"}`.
//!
//! Owns: the request and answer shapes. Must never: change anything but the
//! configuration, or answer before the switch is durable.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use utils::TenantTimelineId;

use super::access::Access;
use super::create::{MconfJson, mconf_from_json, mconf_json};
use super::error::ApiError;
use super::timelines::{parse_tenant, parse_timeline};
use crate::acceptor::AcceptorError;
use crate::ctx::ServerCtx;
use crate::ingest::TimelineError;

/// `PUT .../membership`.
pub async fn put(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<MconfJson>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((tenant, timeline)) = path?;
    let ttid = TenantTimelineId::new(parse_tenant(&tenant)?, parse_timeline(&timeline)?);
    access.require_tenant(&ttid.tenant_id)?;
    let Json(m) = body?;
    let to = mconf_from_json(&m)?;
    let tl = ctx.timelines.get(&ttid).await?;
    let sw = tl.switch_membership(to).await.map_err(|e| match e {
        TimelineError::Acceptor(a @ AcceptorError::ConfigurationConflict(_)) => {
            ApiError::conflict(a.to_string())
        }
        TimelineError::ShuttingDown(_) | TimelineError::Broken(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    Ok(Json(json!({
        "previous_conf": mconf_json(&sw.previous),
        "current_conf": mconf_json(&sw.current),
        "last_log_term": sw.last_log_term.0,
        "flush_lsn": sw.flush_lsn.to_string(),
    })))
}

/// Body of `POST .../term_bump` (Neon's `TimelineTermBumpRequest`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermBumpJson {
    /// The term to raise to; absent or null: one above the current one.
    #[serde(default)]
    term: Option<u64>,
}

/// `POST .../term_bump`: raises the timeline's term (never lowers it; no vote is given),
/// durably before the answer `{"previous_term", "current_term"}`.
pub async fn term_bump(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<TermBumpJson>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((tenant, timeline)) = path?;
    let ttid = TenantTimelineId::new(parse_tenant(&tenant)?, parse_timeline(&timeline)?);
    access.require_tenant(&ttid.tenant_id)?;
    let Json(b) = body?;
    let tl = ctx.timelines.get(&ttid).await?;
    let bump = tl
        .bump_term(b.term.map(utils::Term))
        .await
        .map_err(|e| match e {
            TimelineError::ShuttingDown(_) | TimelineError::Broken(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;
    Ok(Json(json!({
        "previous_term": bump.previous.0,
        "current_term": bump.current.0,
    })))
}
