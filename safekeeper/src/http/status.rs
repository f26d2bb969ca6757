//! Whole-server routes: `GET /v1/status` (open), `GET /metrics` (open), `GET
//! /v1/utilization` (needs a safekeeperdata token when auth is on), `GET
//! /v1/openapi.json` (open: the API's description).
//!
//! Owns: those answers. Must never: do more than a statvfs and a look at the registry
//! (utilization is polled by placement; it must stay cheap).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::access::Access;
use super::error::ApiError;
use crate::ctx::ServerCtx;
use crate::offload::task::disk_space;

/// The OpenAPI 3 document describing every route (kept in the repository beside this file).
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// `GET /v1/status`: this safekeeper's id.
pub async fn status(State(ctx): State<Arc<ServerCtx>>) -> Json<Value> {
    Json(json!({ "id": ctx.node_id().0 }))
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text of the server's metrics.
pub async fn metrics(
    State(ctx): State<Arc<ServerCtx>>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
}

/// `GET /v1/openapi.json`.
pub async fn openapi() -> ([(&'static str, &'static str); 1], &'static str) {
    ([("content-type", "application/json")], OPENAPI_JSON)
}

/// `GET /v1/utilization`: how many timelines, and the data directory's filesystem.
pub async fn utilization(
    State(ctx): State<Arc<ServerCtx>>,
    access: Access,
) -> Result<Json<Value>, ApiError> {
    access.require_all()?;
    let timeline_count = ctx.timelines.list().len();
    // One statvfs, inline: it reads the superblock's counters (no I/O on a local
    // filesystem), cheaper than handing it to a thread.
    let (available, total) = disk_space(&ctx.conf.datadir).unwrap_or((0, 0));
    Ok(Json(json!({
        "timeline_count": timeline_count,
        "disk_total_bytes": total,
        "disk_available_bytes": available,
        "disk_used_bytes": total.saturating_sub(available),
    })))
}
