//! The types of one client connection: the socket and its halves, and the session's
//! parameters from the startup packet.
//!
//! Owns: [`Session`] (application name, the timeline named in `options`, and the choice
//! of timeline when none is named), the connection type aliases, and the one way an error
//! ends a connection ([`send_error`]). Must never: look at a timeline's state.

use pq_proto::backend::{BeMessage, FieldDescription};
use pq_proto::framed::{Framed, FramedReader, FramedWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use utils::TenantTimelineId;

use crate::ctx::ServerCtx;
use crate::errors::ClientError;

/// The session's parameters from the startup packet.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// `application_name`.
    pub app_name: String,
    /// The timeline named in `options`, if any.
    pub ttid: Option<TenantTimelineId>,
}

impl Session {
    /// The session's timeline: the one named in `options`, or the only one this
    /// safekeeper holds.
    pub fn timeline(&self, ctx: &ServerCtx) -> Result<TenantTimelineId, ClientError> {
        if let Some(t) = self.ttid {
            return Ok(t);
        }
        let all = ctx.timelines.list();
        match all.as_slice() {
            [one] => Ok(*one),
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

/// A client connection.
pub type Conn = Framed<TcpStream>;
/// The read half of a connection in a CopyBoth stream.
pub type ConnReader = FramedReader<ReadHalf<TcpStream>>;
/// The write half of a connection in a CopyBoth stream.
pub type ConnWriter = FramedWriter<WriteHalf<TcpStream>>;

/// Writes one ErrorResponse and flushes, ignoring a connection that is already gone.
pub async fn send_error(conn: &mut Conn, e: &ClientError) {
    conn.write_be(&BeMessage::ErrorResponse(e.to_fields()));
    let _ = conn.flush().await;
}

/// A RowDescription of text columns.
pub fn text_columns(names: &[&str]) -> BeMessage {
    BeMessage::RowDescription(names.iter().map(|n| FieldDescription::text(n)).collect())
}
