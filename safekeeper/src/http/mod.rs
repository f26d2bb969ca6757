//! The HTTP API (compatible with Neon's safekeeper where Neon has the same route): status,
//! metrics, utilization, and creating, inspecting and deleting timelines. Routes, bodies,
//! statuses and auth per route are in `docs/http-api.md` and, exactly, in the OpenAPI
//! document served at `GET /v1/openapi.json` (`openapi.json` beside this file).
//!
//! Files: [`server`] (the accept loop: header timeout, connection cap, one generic
//! function per connection), [`error`] (every error as `{"msg": ...}`), [`access`] (the
//! caller's rights), [`status`] (whole-server routes), [`timelines`] (list, status,
//! delete), [`create`] (the create route), [`pull`] (`pull_timeline` and the snapshot a peer
//! pulls), [`membership`] (the membership switch and the term bump).
//!
//! Must never: change consensus state except by creating or deleting whole timelines
//! through the registry, or switching a membership configuration through the timeline's
//! ingest loop; answer with anything but JSON errors.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

use crate::ctx::ServerCtx;

pub mod access;
pub mod create;
pub mod error;
pub mod membership;
pub mod pull;
pub mod server;
pub mod status;
pub mod timelines;

pub use server::{Api, serve, serve_listener};

/// The largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Every route of the API.
pub fn router(ctx: Arc<ServerCtx>) -> axum::Router {
    axum::Router::new()
        .route("/v1/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .route("/v1/openapi.json", get(status::openapi))
        .route("/v1/utilization", get(status::utilization))
        .route(
            "/v1/tenant/timeline",
            get(timelines::list).post(create::create),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}",
            get(timelines::get).delete(timelines::delete),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}/snapshot",
            get(pull::snapshot),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}/membership",
            put(membership::put),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}/term_bump",
            post(membership::term_bump),
        )
        .route("/v1/pull_timeline", post(pull::pull))
        .route("/v1/tenant/{tenant_id}", delete(timelines::delete_tenant))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}
