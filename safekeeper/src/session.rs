//! The types of one client connection: the socket and its halves, and the session's
//! parameters from the startup packet.
//!
//! Owns: [`Session`] (application name, the timeline named in `options`, the claims of
//! the client's token, and the choice of timeline when none is named — refused with
//! 42501 when the token does not grant its tenant), the connection type aliases, and the
//! one way an error ends a connection ([`send_error`]). Must never: look at a timeline's
//! state, or hand out a timeline the session's token does not grant.

use pq_proto::backend::{BeMessage, FieldDescription};
use pq_proto::framed::{Framed, FramedReader, FramedWriter, Stream};
use tokio::io::{ReadHalf, WriteHalf};
use utils::TenantTimelineId;

use crate::auth::{AuthError, Claims};
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::metrics::Metrics;

/// The session's parameters from the startup packet.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// `application_name`.
    pub app_name: String,
    /// The timeline named in `options`, if any.
    pub ttid: Option<TenantTimelineId>,
    /// The verified claims of the client's token (`None`: the port runs without
    /// authentication, everything is allowed).
    pub claims: Option<Claims>,
}

impl Session {
    /// The session's timeline: the one named in `options`, or the only one this
    /// safekeeper holds; either way one the session's token grants.
    pub fn timeline(&self, ctx: &ServerCtx) -> Result<TenantTimelineId, ClientError> {
        if let Some(t) = self.ttid {
            self.check_access(&t)?;
            return Ok(t);
        }
        let all = ctx.timelines.list();
        match all.as_slice() {
            [one] => {
                self.check_access(one)?;
                Ok(*one)
            }
            [] => Err(ClientError::NoTimeline(
                "this safekeeper holds no timeline yet".into(),
            )),
            many => Err(ClientError::NoTimeline(format!(
                "this safekeeper holds {} timelines",
                many.len()
            ))),
        }
    }
}

impl Session {
    /// May this session act on `ttid`? 42501 (insufficient_privilege) if its token does
    /// not grant the tenant.
    pub fn check_access(&self, ttid: &TenantTimelineId) -> Result<(), ClientError> {
        match &self.claims {
            Some(c) if !c.allows_tenant(&ttid.tenant_id) => {
                Err(ClientError::Auth(AuthError::Forbidden(format!(
                    "the token does not grant tenant {}",
                    ttid.tenant_id
                ))))
            }
            _ => Ok(()),
        }
    }
}

/// A client connection (plain TCP, or TLS after an SSLRequest).
pub type Conn = Framed<Stream>;
/// The read half of a connection in a CopyBoth stream.
pub type ConnReader = FramedReader<ReadHalf<Stream>>;
/// The write half of a connection in a CopyBoth stream.
pub type ConnWriter = FramedWriter<WriteHalf<Stream>>;

/// The ErrorResponse reporting `e`, counted in the metrics by SQLSTATE. Every
/// ErrorResponse the server sends is made here.
pub fn error_response(metrics: &Metrics, e: &ClientError) -> BeMessage {
    let fields = e.to_fields();
    metrics.client_error(e.sqlstate());
    BeMessage::ErrorResponse(fields)
}

/// Writes one ErrorResponse (counted, see [`error_response`]) and flushes, ignoring a
/// connection that is already gone.
pub async fn send_error(conn: &mut Conn, metrics: &Metrics, e: &ClientError) {
    conn.write_be(&error_response(metrics, e));
    let _ = conn.flush().await;
}

/// A RowDescription of text columns.
pub fn text_columns(names: &[&str]) -> BeMessage {
    BeMessage::RowDescription(names.iter().map(|n| FieldDescription::text(n)).collect())
}
