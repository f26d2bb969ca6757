//! Who is calling the HTTP API: the `Authorization: Bearer <JWT>` header checked against
//! `--http-auth-public-key-path`, as an axum extractor.
//!
//! Owns: [`Access`] and the 401/403 answers. Must never: echo the token back.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use utils::TenantId;

use crate::auth::{AuthError, Claims};
use crate::ctx::ServerCtx;

/// The caller's rights: `None` when the API runs without authentication (everything is
/// allowed), else the verified claims of its token.
#[derive(Clone, Debug)]
pub struct Access(pub Option<Claims>);

/// A refusal: the status and the `{"msg": ...}` text.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl Access {
    /// May the caller act on `tenant`'s timelines? 403 if not.
    pub fn require_tenant(&self, tenant: &TenantId) -> Result<(), Refused> {
        match &self.0 {
            Some(c) if !c.allows_tenant(tenant) => Err(Refused(
                StatusCode::FORBIDDEN,
                format!("permission denied: the token does not grant tenant {tenant}"),
            )),
            _ => Ok(()),
        }
    }

    /// May the caller act on the whole safekeeper? 403 if not (a tenant token).
    pub fn require_all(&self) -> Result<(), Refused> {
        match &self.0 {
            Some(c) if !c.allows_all() => Err(Refused(
                StatusCode::FORBIDDEN,
                "permission denied: this needs a token with scope safekeeperdata".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<Arc<ServerCtx>> for Access {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<ServerCtx>,
    ) -> Result<Self, Self::Rejection> {
        let Some(auth) = ctx.conf.http_auth.as_ref() else {
            return Ok(Access(None));
        };
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match header {
            None => Err(AuthError::Missing),
            Some(h) => match h.strip_prefix("Bearer ") {
                Some(t) => Ok(t.trim()),
                None => Err(AuthError::Invalid(
                    "expected an Authorization header of the form \"Bearer <token>\"".into(),
                )),
            },
        };
        match token.and_then(|t| auth.verify(t)) {
            Ok(claims) => Ok(Access(Some(claims))),
            Err(e) => Err(Refused(StatusCode::UNAUTHORIZED, e.to_string())),
        }
    }
}

impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        let mut r = (self.0, axum::Json(serde_json::json!({ "msg": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}
