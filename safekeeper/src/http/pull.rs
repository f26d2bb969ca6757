//! `POST /v1/pull_timeline` (copy a timeline from a peer, Neon's request) and the donor's
//! `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}/snapshot` (its snapshot, streamed).
//!
//! Both need a token of scope `safekeeperdata`: pulling makes this safekeeper call the
//! hosts the body names, and a snapshot is the timeline's whole data.
//!
//! Owns: the request's shape and the answers. Must never: create a timeline except
//! through `crate::pull` (whole, checked, durable before it is registered).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utils::{TenantId, TenantTimelineId, TimelineId};

use super::access::Access;
use super::error::{ApiError, clip};
use super::timelines::{parse_tenant, parse_timeline, timeline_json};
use crate::ctx::ServerCtx;
use crate::pull::{MAX_HOSTS, PullError, pull_timeline};

/// Neon's `PullTimelineRequest`.
#[derive(Debug, Deserialize)]
pub struct PullTimelineRequest {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The timeline.
    pub timeline_id: TimelineId,
    /// The peers' HTTP API base URLs (`http://host:port`).
    pub http_hosts: Vec<String>,
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> Self {
        let status = match &e {
            PullError::Exists(_) => StatusCode::CONFLICT,
            PullError::Registry(r) => return ApiError::from(r.clone()),
            PullError::NoDonor { .. } | PullError::Donor(_) | PullError::Format(_) => {
                StatusCode::BAD_GATEWAY
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// `POST /v1/pull_timeline`: 200 `{"safekeeper_host", "wal_bytes", "seconds", "timeline"}`
/// once the timeline is here; 409 if it exists; 502 if no peer could give it whole.
pub async fn pull(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    body: Result<Json<PullTimelineRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body?;
    access.require_all()?;
    if req.http_hosts.is_empty() || req.http_hosts.len() > MAX_HOSTS {
        return Err(ApiError::bad_request(format!(
            "http_hosts: name 1 to {MAX_HOSTS} peers"
        )));
    }
    for h in &req.http_hosts {
        let url = reqwest::Url::parse(h).ok();
        let fine = url.as_ref().is_some_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|s| !s.is_empty())
        });
        if !fine || h.len() > 256 {
            return Err(ApiError::bad_request(format!(
                "http_hosts: {:?} is not an http:// or https:// URL with a host",
                clip(h, 60)
            )));
        }
    }
    let ttid = TenantTimelineId::new(req.tenant_id, req.timeline_id);
    let token = ctx.conf.peer_token.clone();
    let p = pull_timeline(&ctx.timelines, token, ttid, &req.http_hosts).await?;
    Ok(Json(json!({
        "safekeeper_host": p.donor,
        "wal_bytes": p.wal_bytes,
        "seconds": p.seconds,
        "timeline": timeline_json(&p.timeline),
    })))
}

/// `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}/snapshot`: the snapshot stream
/// (`application/octet-stream`, layout in `crate::pull::format`). A failure once it
/// started ends the body without its trailer.
pub async fn snapshot(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((tenant, timeline)) = path?;
    let ttid = TenantTimelineId::new(parse_tenant(&tenant)?, parse_timeline(&timeline)?);
    access.require_all()?;
    let tl = ctx.timelines.get(&ttid).await?;
    let rx = crate::pull::donor::start(&tl);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
