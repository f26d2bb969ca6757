//! The API's errors: every failure is `{"msg": "..."}` with its status, including axum's
//! own rejections (malformed JSON, wrong content type, a body over the cap, a path that
//! does not parse), unknown routes (404) and methods (405).
//!
//! Owns: [`ApiError`], the mapping of registry errors to statuses, and [`clip`]. Must
//! never: echo a client's input back whole (messages are clipped to [`MAX_MSG`]).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::access::Refused;
use crate::timelines::RegistryError;

/// The longest message sent back, in bytes (client input quoted in it is cut).
pub const MAX_MSG: usize = 300;

/// An error answer: a status and a message.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `msg` (clipped when sent).
    pub msg: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            msg: msg.into(),
        }
    }

    /// 400.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// 409.
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, msg)
    }
}

pub use utils::text::clip;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "msg": clip(&self.msg, MAX_MSG) })),
        )
            .into_response()
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        ApiError::new(r.0, r.1)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Exists(_) => StatusCode::CONFLICT,
            RegistryError::Unavailable { .. }
            | RegistryError::Io { .. }
            | RegistryError::TenantIo { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // axum answers a body that is JSON but not the request's shape with 422; the
        // API's contract (and Neon's) is 400 for any bad body. 413 and 415 stay.
        let status = match r.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        ApiError::new(status, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let status = match r.status() {
            s if s.is_server_error() => s,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, r.body_text())
    }
}

/// The answer to a path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// The answer to a route that exists, with a method it does not have.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this method is not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_char_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
        assert_eq!(clip("ééé", 3), "é…");
    }
}
