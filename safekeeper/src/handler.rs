//! One client connection: startup, authentication (trust, or a JWT as the password:
//! [`crate::pg_auth`]), and the command loop.
//!
//! Owns: the order of a session (SSLRequest answered `S` and the TLS handshake when the
//! server has a certificate, else `N`; GSSENCRequest answered `N`; StartupMessage, the
//! password exchange when tokens are checked, AuthenticationOk, ParameterStatus,
//! ReadyForQuery, then simple queries) and the choice of timeline from the startup
//! `options` (the session's types are in [`crate::session`], the certificate in
//! [`crate::tls`]). Streaming commands hand the connection to [`crate::receive_wal`] or
//! [`crate::send_wal`]. Must never: panic on client input, let one connection's error
//! reach another (every error ends here as an ErrorResponse), or read plain bytes a
//! client sent after its SSLRequest as part of the encrypted session (they could be an
//! attacker's: CVE-2021-23222).

use std::sync::Arc;

use pq_proto::backend::{Authentication, BeMessage, TransactionStatus};
use pq_proto::framed::{ConnectionError, Framed, Stream};
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use tokio::net::TcpStream;
use tokio::time::Instant;
use utils::TenantTimelineId;

use crate::command::{self, Command};
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::queries;
use crate::session::{Conn, Session, error_response, send_error};
use crate::{receive_wal, send_wal};

/// How long a client may take to send its startup packet (TLS handshake and password
/// included): a connection that never finishes it would otherwise hold a connection slot
/// forever.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the startup phase got to.
enum Startup {
    /// The session is established.
    Session(Session),
    /// The client asked for TLS and the server has a certificate: hand the socket over.
    Tls,
    /// The client went away or sent a CancelRequest.
    Closed,
}

/// Serves one connection until the client leaves, a stream ends it, or shutdown.
/// `in_reserve`: it holds one of the `reserved_connections` slots (see [`may_use_reserve`]).
pub async fn handle(
    stream: TcpStream,
    ctx: Arc<ServerCtx>,
    in_reserve: bool,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut conn = Framed::new(Stream::Plain(stream));
    let session = loop {
        // Under the shutdown token like every other wait on the client: a client that
        // never finishes its startup must not hold up a graceful shutdown.
        let tls_offered = ctx.conf.tls.is_some();
        let phase = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                send_error(&mut conn, &ctx.metrics, &ClientError::Shutdown).await;
                return Ok(());
            }
            s = tokio::time::timeout_at(deadline, startup(&mut conn, &ctx, tls_offered)) => match s {
                Ok(s) => s?,
                Err(_) => {
                    tracing::info!("closing a connection that did not finish its startup in {STARTUP_TIMEOUT:?}");
                    return Ok(());
                }
            },
        };
        match phase {
            Startup::Session(s) => break s,
            Startup::Closed => return Ok(()),
            Startup::Tls => {
                let Some(tls) = &ctx.conf.tls else {
                    return Ok(());
                };
                let acceptor = tls.pg_acceptor();
                conn = tokio::select! {
                    // Mid-handshake there is no way to say why: just close.
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    r = tokio::time::timeout_at(deadline, start_tls(conn, acceptor)) => match r {
                        Ok(c) => c?,
                        Err(_) => {
                            tracing::info!("closing a connection that did not finish its TLS handshake in {STARTUP_TIMEOUT:?}");
                            return Ok(());
                        }
                    },
                };
            }
        }
    };
    tracing::debug!(app = %session.app_name, ttid = ?session.ttid, "session started");
    // Commands are short: a connection may not make the server hold more than this for
    // one before a stream starts (a WAL push raises it for its CopyData).
    conn.set_max_message_len(MAX_COMMAND_LEN);
    let mut skip_until_sync = false;
    loop {
        let msg = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                send_error(&mut conn, &ctx.metrics, &ClientError::Shutdown).await;
                return Ok(());
            }
            m = conn.read_fe_message() => match m {
                Ok(m) => m,
                Err(ConnectionError::Protocol(p)) => {
                    // A bad length or tag: say so, as PostgreSQL does, then close (the
                    // stream cannot be resynchronised).
                    let e = ClientError::Protocol(p);
                    send_error(&mut conn, &ctx.metrics, &e).await;
                    return Err(e);
                }
                Err(e) => return Err(e.into()),
            },
            _ = idle(ctx.conf.idle_timeout) => {
                let secs = ctx.conf.idle_timeout.map_or(0, |d| d.as_secs());
                tracing::info!("closing a connection idle for {secs} s");
                send_error(&mut conn, &ctx.metrics, &ClientError::IdleTimeout(secs)).await;
                return Ok(());
            }
        };
        let Some(msg) = msg else { return Ok(()) };
        if in_reserve && !may_use_reserve(&msg, &session) {
            let e = ClientError::ReservedSlotsOnly;
            send_error(&mut conn, &ctx.metrics, &e).await;
            return Err(e);
        }
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
                            conn.write_be(&error_response(&ctx.metrics, &e));
                        }
                    }
                    Err(e) => {
                        let e = ClientError::from(e);
                        tracing::debug!("refused query {text:?}: {e}");
                        conn.write_be(&error_response(&ctx.metrics, &e));
                    }
                }
                conn.write_be(&BeMessage::ReadyForQuery(TransactionStatus::Idle));
                conn.flush().await.map_err(ClientError::from)?;
            }
            FeMessage::Extended { .. } if !skip_until_sync => {
                skip_until_sync = true;
                let e = ClientError::NotSupported(
                    "extended query protocol is not supported; use simple queries".into(),
                );
                conn.write_be(&error_response(&ctx.metrics, &e));
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
                send_error(&mut conn, &ctx.metrics, &e).await;
                return Err(e);
            }
        }
    }
}

/// Whether a connection holding a reserved slot may go on with `msg`: a safekeeperdata
/// token may do anything, others only START_WAL_PUSH.
fn may_use_reserve(msg: &FeMessage, session: &Session) -> bool {
    if session.claims.as_ref().is_some_and(|c| c.allows_all()) {
        return true;
    }
    match msg {
        FeMessage::Query(q) => matches!(
            command::parse(&String::from_utf8_lossy(q)),
            Ok(Command::StartWalPush { .. })
        ),
        FeMessage::Terminate => true,
        _ => false,
    }
}

/// The largest message accepted outside a WAL push stream (queries, and readers'
/// feedback in a replication stream).
pub const MAX_COMMAND_LEN: usize = 16 * 1024;

/// Completes after `timeout` (never when `None`): the wait for a connection's next
/// command.
async fn idle(timeout: Option<std::time::Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
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

/// Answers an SSLRequest with `S` and runs the TLS handshake on the socket; the
/// startup then goes on over the encrypted stream.
async fn start_tls(
    mut conn: Conn,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<Conn, ClientError> {
    if !conn.read_buffer().is_empty() {
        return Err(ClientError::Unexpected(
            "received unencrypted data after SSL request".into(),
        ));
    }
    pq_proto::backend::write_encryption_response(conn.write_buf(), b'S');
    conn.flush().await?;
    let Stream::Plain(tcp) = conn.into_inner() else {
        return Err(ClientError::Unexpected(
            "SSL request on an encrypted connection".into(),
        ));
    };
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| ClientError::Unexpected(format!("TLS handshake failed: {e}")))?;
    Ok(Framed::new(Stream::Tls(Box::new(tls.into()))))
}

/// The startup phase; `tls_offered`: the server has a certificate.
async fn startup(
    conn: &mut Conn,
    ctx: &ServerCtx,
    tls_offered: bool,
) -> Result<Startup, ClientError> {
    let metrics = &ctx.metrics;
    let params = loop {
        match conn.read_startup().await? {
            None => return Ok(Startup::Closed),
            Some(FeStartupPacket::SslRequest | FeStartupPacket::GssEncRequest)
                if conn.get_ref().is_tls() =>
            {
                // As PostgreSQL: a second negotiation is a protocol violation.
                return Err(ClientError::Unexpected(
                    "encryption request on an encrypted connection".into(),
                ));
            }
            Some(FeStartupPacket::SslRequest) if tls_offered => return Ok(Startup::Tls),
            Some(FeStartupPacket::SslRequest) | Some(FeStartupPacket::GssEncRequest) => {
                // No TLS configured, and no GSS encryption: the client goes on in plain
                // text (or gives up, if it requires encryption).
                pq_proto::backend::write_encryption_response(conn.write_buf(), b'N');
                conn.flush().await?;
            }
            // We never hand out keys, so there is nothing to cancel.
            Some(FeStartupPacket::CancelRequest { .. }) => return Ok(Startup::Closed),
            Some(FeStartupPacket::Startup { params, .. }) => break params,
        }
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // Authentication first: nothing else of the startup is looked at for a client
    // without a good token.
    let claims = match &ctx.conf.pg_auth {
        None => None,
        Some(auth) => match crate::pg_auth::authenticate(conn, auth).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => return Ok(Startup::Closed),
            Err(e) => {
                tracing::info!("authentication failed: {e}");
                send_error(conn, metrics, &e).await;
                return Err(e);
            }
        },
    };
    let ttid = match parse_options(get("options").unwrap_or("")) {
        Ok(t) => t,
        Err(e) => {
            send_error(conn, metrics, &e).await;
            return Err(e);
        }
    };
    let session = Session {
        app_name: get("application_name").unwrap_or("").to_string(),
        ttid,
        claims,
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
    Ok(Startup::Session(session))
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
    let bad = |what: String| ClientError::BadOptions(what);
    let clip = |t: &str| utils::text::clip(t, 64);
    let (mut tenant, mut timeline) = (None, None);
    let mut it = tokens.iter();
    while let Some(tok) = it.next() {
        let kv: &str = if tok == "-c" {
            it.next()
                .ok_or_else(|| bad("-c at the end of options: expected -c name=value".into()))?
        } else if let Some(rest) = tok.strip_prefix("--") {
            rest
        } else if let Some(rest) = tok.strip_prefix("-c") {
            rest
        } else if tok.starts_with('-') {
            return Err(bad(format!(
                "unsupported switch \"{}\": expected -c name=value, --name=value or name=value",
                clip(tok)
            )));
        } else {
            tok
        };
        let Some((k, v)) = kv.split_once('=') else {
            return Err(bad(format!(
                "\"{}\" is not name=value (after -c, -- or on its own)",
                clip(kv)
            )));
        };
        if k.is_empty() {
            return Err(bad(format!("\"{}\" has no setting name", clip(kv))));
        }
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
        // Neon's form: one -c, then the second setting on its own.
        let ttid = parse_options(&format!("-c timeline_id={l} tenant_id={t}"))
            .unwrap()
            .unwrap();
        assert_eq!(ttid.tenant_id.to_string(), t);
        // What cannot be parsed is refused, not skipped.
        for s in [
            "-c -c -c =tenant_id=",
            "-c",
            "-c statement_timeout",
            "=x",
            "--=x",
            "-B 128",
            "garbage",
        ] {
            let e = parse_options(s).unwrap_err();
            assert!(matches!(e, ClientError::BadOptions(_)), "{s}: {e}");
        }
        // The offending token is clipped in the message.
        let long = "x".repeat(10_000);
        let e = parse_options(&long).unwrap_err().to_string();
        assert!(e.len() < 300, "{}", e.len());
    }
}
