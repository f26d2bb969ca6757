//! The HTTP API: health and status for people and orchestration.
//!
//! `GET /v1/status` → `{"id": N}`; `GET /v1/tenant/timeline` lists timelines;
//! `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}` shows one timeline's positions (from
//! its published status: it answers while a flush is stalled); `GET /metrics` is the
//! Prometheus text format of the server's metrics.
//! Must never: change state (the consensus state changes only through the protocol).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use utils::{TenantId, TenantTimelineId, TimelineId};

use crate::ctx::ServerCtx;
use crate::timelines::RegistryError;

/// Serves the API until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>) -> std::io::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let app = axum::Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/tenant/timeline", get(list))
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}",
            get(timeline),
        )
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn status(State(ctx): State<Arc<ServerCtx>>) -> Json<Value> {
    Json(json!({ "id": ctx.node_id().0 }))
}

async fn metrics(State(ctx): State<Arc<ServerCtx>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
}

async fn list(State(ctx): State<Arc<ServerCtx>>) -> Json<Value> {
    let items: Vec<Value> = ctx
        .timelines
        .list()
        .into_iter()
        .map(|t| json!({"tenant_id": t.tenant_id, "timeline_id": t.timeline_id}))
        .collect();
    Json(Value::Array(items))
}

async fn timeline(
    State(ctx): State<Arc<ServerCtx>>,
    Path((tenant, timeline)): Path<(String, String)>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let bad = |e: utils::IdParseError| (StatusCode::BAD_REQUEST, e.to_string());
    let ttid = TenantTimelineId::new(
        tenant.parse::<TenantId>().map_err(bad)?,
        timeline.parse::<TimelineId>().map_err(bad)?,
    );
    let tl = ctx.timelines.get(&ttid).await.map_err(|e| match e {
        RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, e.to_string()),
        other => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    let s = tl.status();
    Ok(Json(json!({
        "tenant_id": ttid.tenant_id,
        "timeline_id": ttid.timeline_id,
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
        "readers": tl.feedback.readers().len(),
        "offload": tl.offload().map(|_| tl.offload_state()),
    })))
}
