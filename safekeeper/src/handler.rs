//! One client connection: startup, trust authentication, and the command loop.
//!
//! Owns: the order of a session (SSLRequest/GSSENCRequest answered `N`, StartupMessage,
//! AuthenticationOk, ParameterStatus, ReadyForQuery, then simple queries) and the choice
//! of timeline from the startup `options` (the session's types are in
//! [`crate::session`]). Streaming commands hand the connection to
//! [`crate::receive_wal`] or [`crate::send_wal`]. Must never: panic on client input, or
//! let one connection's error reach another (every error ends here as an ErrorResponse).

use std::sync::Arc;

use pq_proto::backend::{Authentication, BeMessage, ErrorFields, SqlState, TransactionStatus};
use pq_proto::framed::Framed;
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use tokio::net::TcpStream;
use utils::TenantTimelineId;

use crate::command::{self, Command};
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::queries;
use crate::session::{Conn, Session, send_error};
use crate::{receive_wal, send_wal};

/// How long a client may take to send its startup packet: a connection that never
/// finishes it would otherwise hold a connection slot forever.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves one connection until the client leaves, a stream ends it, or shutdown.
pub async fn handle(stream: TcpStream, ctx: Arc<ServerCtx>) -> Result<(), ClientError> {
    let mut conn = Framed::new(stream);
    // Under the shutdown token like every other wait on the client: a client that never
    // finishes its startup must not hold up a graceful shutdown.
    let session = tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            send_error(&mut conn, &ClientError::Shutdown).await;
            return Ok(());
        }
        s = tokio::time::timeout(STARTUP_TIMEOUT, startup(&mut conn)) => match s {
            Ok(s) => s?,
            Err(_) => {
                tracing::info!("closing a connection that did not finish its startup in {STARTUP_TIMEOUT:?}");
                return Ok(());
            }
        },
    };
    let Some(session) = session else {
        return Ok(());
    };
    tracing::debug!(app = %session.app_name, ttid = ?session.ttid, "session started");
    let mut skip_until_sync = false;
    loop {
        let msg = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                send_error(&mut conn, &ClientError::Shutdown).await;
                return Ok(());
            }
            m = conn.read_fe_message() => m?,
        };
        let Some(msg) = msg else { return Ok(()) };
        match msg {
            FeMessage::Query(q) => {
                let text = String::from_utf8_lossy(&q).into_owned();
                match command::parse(&text) {
                    Ok(Command::StartWalPush {
                        proto_version,
                        allow_timeline_creation,
                    }) => {
                        return receive_wal::run(
                            conn,
                            &ctx,
                            &session,
                            proto_version,
                            allow_timeline_creation,
                        )
                        .await;
                    }
                    Ok(Command::StartReplication(args)) => {
                        match send_wal::run(conn, &ctx, &session, args).await? {
                            Some(c) => conn = c,
                            None => return Ok(()),
                        }
                    }
                    Ok(cmd) => {
                        if let Err(e) = queries::answer(&mut conn, &ctx, &session, cmd).await {
                            conn.write_be(&BeMessage::ErrorResponse(e.to_fields()));
                        }
                    }
                    Err(e) => {
                        let e = ClientError::from(e);
                        tracing::debug!("refused query {text:?}: {e}");
                        conn.write_be(&BeMessage::ErrorResponse(e.to_fields()));
                    }
                }
                conn.write_be(&BeMessage::ReadyForQuery(TransactionStatus::Idle));
                conn.flush().await.map_err(ClientError::from)?;
            }
            FeMessage::Extended { .. } if !skip_until_sync => {
                skip_until_sync = true;
                conn.write_be(&BeMessage::ErrorResponse(ErrorFields::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "extended query protocol is not supported; use simple queries",
                )));
                conn.flush().await.map_err(ClientError::from)?;
            }
            FeMessage::Extended { .. } | FeMessage::Flush => {}
            FeMessage::Sync => {
                skip_until_sync = false;
                conn.write_be(&BeMessage::ReadyForQuery(TransactionStatus::Idle));
                conn.flush().await.map_err(ClientError::from)?;
            }
            FeMessage::Terminate => return Ok(()),
            other => {
                let e = ClientError::Unexpected(format!(
                    "unexpected message {} outside of a stream",
                    fe_name(&other)
                ));
                send_error(&mut conn, &e).await;
                return Err(e);
            }
        }
    }
}

fn fe_name(m: &FeMessage) -> &'static str {
    match m {
        FeMessage::Query(_) => "Query",
        FeMessage::Password(_) => "PasswordMessage",
        FeMessage::Terminate => "Terminate",
        FeMessage::CopyData(_) => "CopyData",
        FeMessage::CopyDone => "CopyDone",
        FeMessage::CopyFail(_) => "CopyFail",
        FeMessage::Sync => "Sync",
        FeMessage::Flush => "Flush",
        FeMessage::Extended { .. } => "extended-protocol message",
    }
}

/// The startup phase. `None` if the client went away or sent a CancelRequest.
async fn startup(conn: &mut Conn) -> Result<Option<Session>, ClientError> {
    let params = loop {
        match conn.read_startup().await? {
            None => return Ok(None),
            Some(FeStartupPacket::SslRequest) | Some(FeStartupPacket::GssEncRequest) => {
                // No TLS or GSS encryption (yet): the client goes on in plain text.
                pq_proto::backend::write_encryption_response(conn.write_buf(), b'N');
                conn.flush().await?;
            }
            // We never hand out keys, so there is nothing to cancel.
            Some(FeStartupPacket::CancelRequest { .. }) => return Ok(None),
            Some(FeStartupPacket::Startup { params, .. }) => break params,
        }
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let ttid = match parse_options(get("options").unwrap_or("")) {
        Ok(t) => t,
        Err(e) => {
            send_error(conn, &e).await;
            return Err(e);
        }
    };
    let session = Session {
        app_name: get("application_name").unwrap_or("").to_string(),
        ttid,
    };
    conn.write_be(&BeMessage::Authentication(Authentication::Ok));
    for (name, value) in [
        ("server_version", queries::SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
    ] {
        conn.write_be(&BeMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        });
    }
    conn.write_be(&BeMessage::BackendKeyData {
        process_id: std::process::id() as i32,
        secret_key: 0,
    });
    conn.write_be(&BeMessage::ReadyForQuery(TransactionStatus::Idle));
    conn.flush().await?;
    Ok(Some(session))
}

/// Splits the `options` startup parameter the way PostgreSQL does (whitespace separates,
/// a backslash escapes the next character) and picks out `tenant_id` / `timeline_id`
/// (also Neon's `ztenantid` / `ztimelineid`), whether written `-c key=value`,
/// `--key=value` or `key=value`.
pub fn parse_options(options: &str) -> Result<Option<TenantTimelineId>, ClientError> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let (mut tenant, mut timeline) = (None, None);
    for tok in &tokens {
        let kv = tok
            .strip_prefix("--")
            .or_else(|| tok.strip_prefix("-c"))
            .unwrap_or(tok);
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k.replace('-', "_").as_str() {
            "tenant_id" | "ztenantid" => {
                tenant = Some(
                    v.parse()
                        .map_err(|e: utils::IdParseError| ClientError::BadOptions(e.to_string()))?,
                )
            }
            "timeline_id" | "ztimelineid" => {
                timeline = Some(
                    v.parse()
                        .map_err(|e: utils::IdParseError| ClientError::BadOptions(e.to_string()))?,
                )
            }
            _ => {}
        }
    }
    match (tenant, timeline) {
        (Some(t), Some(tl)) => Ok(Some(TenantTimelineId::new(t, tl))),
        (None, None) => Ok(None),
        _ => Err(ClientError::BadOptions(
            "tenant_id and timeline_id must be given together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_forms() {
        let t = "0123456789abcdef0123456789abcdef";
        let l = "fedcba9876543210fedcba9876543210";
        for s in [
            format!("-c tenant_id={t} timeline_id={l}"),
            format!("-c timeline_id={l} -c tenant_id={t}"),
            format!("--tenant_id={t} --timeline_id={l}"),
            format!("ztenantid={t} ztimelineid={l}"),
        ] {
            let ttid = parse_options(&s).unwrap().unwrap();
            assert_eq!(ttid.tenant_id.to_string(), t, "{s}");
            assert_eq!(ttid.timeline_id.to_string(), l, "{s}");
        }
        assert_eq!(parse_options("").unwrap(), None);
        assert_eq!(parse_options("-c statement_timeout=0").unwrap(), None);
        assert!(parse_options("-c tenant_id=zz timeline_id=00").is_err());
        assert!(parse_options(&format!("-c tenant_id={t}")).is_err());
    }
}
