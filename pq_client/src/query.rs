//! Talking on an established connection: [`read`] one message, run a [`simple_query`],
//! [`start_copy`] for a COPY stream.
//!
//! Owns: turning ErrorResponse into [`PgError::Server`] and EOF into [`PgError::Closed`],
//! collecting rows as text. Must never: leave an ErrorResponse unreported (a simple query
//! that fails reports it after ReadyForQuery, so the connection stays usable).

use bytes::Bytes;
use pq_proto::backend::BeMessage;
use pq_proto::frontend::FeMessage;

use crate::connect::PgConn;
use crate::error::{PgError, unexpected};

/// The rows of a simple query, as text (`None` = NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Reads one message; an ErrorResponse becomes `PgError::Server`, EOF `PgError::Closed`.
///
/// Cancel-safe (a message is consumed only when it is returned).
pub async fn read(conn: &mut PgConn) -> Result<BeMessage, PgError> {
    match conn.read_be_message().await? {
        Some(BeMessage::ErrorResponse(e)) => Err(PgError::Server(e)),
        Some(m) => Ok(m),
        None => Err(PgError::Closed),
    }
}

/// Runs a simple query and returns its rows (of the last result).
pub async fn simple_query(conn: &mut PgConn, q: &str) -> Result<Rows, PgError> {
    conn.write_fe(&FeMessage::Query(Bytes::copy_from_slice(q.as_bytes())));
    conn.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let msg = match conn.read_be_message().await {
            Ok(m) => m,
            // The server said why before it closed (a FATAL error): that is the answer.
            Err(_) if error.is_some() => None,
            Err(e) => return Err(e.into()),
        };
        match msg {
            None => return Err(error.map_or(PgError::Closed, PgError::Server)),
            Some(BeMessage::ErrorResponse(e)) => error = Some(e),
            Some(BeMessage::RowDescription(_)) => rows.clear(),
            Some(BeMessage::DataRow(cols)) => rows.push(
                cols.into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect(),
            ),
            Some(BeMessage::ReadyForQuery(_)) => {
                return match error {
                    Some(e) => Err(PgError::Server(e)),
                    None => Ok(rows),
                };
            }
            Some(_) => {}
        }
    }
}

/// Sends a query that starts a COPY stream (START_REPLICATION, START_WAL_PUSH) and waits
/// for the CopyBoth (or CopyOut) response.
pub async fn start_copy(conn: &mut PgConn, q: &str) -> Result<(), PgError> {
    conn.write_fe(&FeMessage::Query(Bytes::copy_from_slice(q.as_bytes())));
    conn.flush().await?;
    loop {
        match read(conn).await? {
            BeMessage::CopyBothResponse(_) | BeMessage::CopyOutResponse(_) => return Ok(()),
            BeMessage::NoticeResponse(_) => {}
            other => return Err(unexpected(&format!("{other:?} instead of a COPY response"))),
        }
    }
}
