//! [`connect`]: opening a connection, TLS negotiation, the startup packet and
//! authentication.
//!
//! Owns: the SSLRequest exchange and the handshake (the mode's rules are in
//! [`crate::tls`]), the startup parameters sent (user, database, application_name,
//! options, replication), trust, cleartext, MD5 and SCRAM-SHA-256 authentication, and
//! [`PgConn`]. Must never: send a password the server did not ask for, accept a SASL
//! mechanism other than SCRAM-SHA-256, or use bytes the server sent between its `S` and
//! the handshake (they could be an attacker's: CVE-2021-23222).

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use pq_proto::backend::{Authentication, BeMessage};
use pq_proto::framed::{Framed, Stream};
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use tokio::net::TcpStream;

use crate::conninfo::Conninfo;
use crate::error::{PgError, unexpected};
use crate::query::read;
use crate::tls::{SslMode, SslSettings, server_name};

/// A client connection (plain or TLS, as `sslmode` decided).
pub type PgConn = Framed<Stream>;

/// Connects, negotiates TLS as `sslmode` says (see [`SslSettings::from_conninfo`]) and
/// authenticates; the connection is then ready for queries.
///
/// `user` defaults to `PGUSER`, then `postgres`; `password` to `PGPASSWORD`. As in libpq,
/// `allow` retries with TLS when the plain connection is refused, and `prefer` retries
/// in plain text when the TLS handshake fails or the server refuses the TLS connection.
pub async fn connect(ci: &Conninfo) -> Result<PgConn, PgError> {
    let ssl = SslSettings::from_conninfo(ci)?;
    match ssl.mode {
        SslMode::Allow => match connect_with(ci, &ssl, false).await {
            Err(PgError::Server(_)) => connect_with(ci, &ssl, true).await,
            r => r,
        },
        SslMode::Prefer => match connect_with(ci, &ssl, true).await {
            Err(PgError::Server(_) | PgError::TlsHandshake { .. }) => {
                connect_with(ci, &ssl, false).await
            }
            r => r,
        },
        SslMode::Disable => connect_with(ci, &ssl, false).await,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            connect_with(ci, &ssl, true).await
        }
    }
}

/// Opens the TCP connection and, with `tls`, asks for TLS (the server may refuse: then
/// the connection stays plain unless the mode requires TLS).
async fn open(ci: &Conninfo, ssl: &SslSettings, tls: bool) -> Result<PgConn, PgError> {
    let addr = ci.addr();
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| PgError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(Stream::Plain(stream));
    let config = match ssl.client_config()? {
        Some(c) if tls => c,
        _ => return Ok(conn),
    };
    let name = server_name(ci)?;
    conn.write_startup(&FeStartupPacket::SslRequest);
    conn.flush().await?;
    match conn.read_encryption_response().await? {
        None => Err(PgError::Closed),
        Some(b'S') => {
            if !conn.read_buffer().is_empty() {
                return Err(PgError::Unexpected(
                    "unencrypted data after the server's SSL response".into(),
                ));
            }
            let Stream::Plain(tcp) = conn.into_inner() else {
                unreachable!("the stream was opened plain just above")
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| PgError::TlsHandshake { addr, source })?;
            Ok(Framed::new(Stream::Tls(Box::new(tls.into()))))
        }
        Some(_) if ssl.mode.requires_tls() => Err(PgError::SslNotSupported),
        Some(_) => Ok(conn),
    }
}

/// One connection attempt: TCP, TLS if `tls` (and the mode allows it), then startup.
async fn connect_with(ci: &Conninfo, ssl: &SslSettings, tls: bool) -> Result<PgConn, PgError> {
    let mut conn = open(ci, ssl, tls).await?;
    let user = ci
        .get("user")
        .map(str::to_string)
        .or_else(|| std::env::var("PGUSER").ok())
        .unwrap_or_else(|| "postgres".to_string());
    let mut params = vec![("user".to_string(), user.clone())];
    for (k, wire) in [
        ("dbname", "database"),
        ("application_name", "application_name"),
        ("options", "options"),
        ("replication", "replication"),
    ] {
        if let Some(v) = ci.get(k) {
            params.push((wire.to_string(), v.to_string()));
        }
    }
    conn.write_startup(&FeStartupPacket::Startup {
        major: 3,
        minor: 0,
        params,
    });
    conn.flush().await?;
    let password = ci
        .get("password")
        .map(str::to_string)
        .or_else(|| std::env::var("PGPASSWORD").ok());
    let mut scram: Option<ScramSha256> = None;
    loop {
        match read(&mut conn).await? {
            BeMessage::Authentication(Authentication::Ok) => {}
            BeMessage::Authentication(Authentication::CleartextPassword) => {
                let pw = password.as_deref().ok_or_else(no_password)?;
                send_password(&mut conn, pw.as_bytes()).await?;
            }
            BeMessage::Authentication(Authentication::Md5Password { salt }) => {
                let pw = password.as_deref().ok_or_else(no_password)?;
                let hash = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
                send_password(&mut conn, hash.as_bytes()).await?;
            }
            BeMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(PgError::Auth(format!(
                        "server offers only {mechanisms:?}; SCRAM-SHA-256 is supported"
                    )));
                }
                let pw = password.as_deref().ok_or_else(no_password)?;
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                // SASLInitialResponse: mechanism, i32 length, data.
                let mut body = BytesMut::new();
                body.extend_from_slice(b"SCRAM-SHA-256\0");
                body.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                body.extend_from_slice(s.message());
                conn.write_fe(&FeMessage::Password(body.freeze()));
                conn.flush().await?;
                scram = Some(s);
            }
            BeMessage::Authentication(Authentication::SaslContinue(data)) => {
                let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                s.update(&data)
                    .map_err(|e| PgError::Auth(format!("SCRAM: {e}")))?;
                let msg = Bytes::copy_from_slice(s.message());
                conn.write_fe(&FeMessage::Password(msg));
                conn.flush().await?;
            }
            BeMessage::Authentication(Authentication::SaslFinal(data)) => {
                let s = scram.as_mut().ok_or_else(|| unexpected("SASLFinal"))?;
                s.finish(&data)
                    .map_err(|e| PgError::Auth(format!("SCRAM: {e}")))?;
            }
            BeMessage::ParameterStatus { .. } | BeMessage::BackendKeyData { .. } => {}
            BeMessage::NoticeResponse(_) => {}
            BeMessage::ReadyForQuery(_) => return Ok(conn),
            other => return Err(unexpected(&format!("{other:?} during startup"))),
        }
    }
}

fn no_password() -> PgError {
    PgError::Auth("the server asks for a password; give password= or PGPASSWORD".into())
}

/// A PasswordMessage carrying `pw` (cleartext or MD5 hash), NUL-terminated.
async fn send_password(conn: &mut PgConn, pw: &[u8]) -> Result<(), PgError> {
    let mut b = BytesMut::with_capacity(pw.len() + 1);
    b.extend_from_slice(pw);
    b.extend_from_slice(&[0]);
    conn.write_fe(&FeMessage::Password(b.freeze()));
    conn.flush().await?;
    Ok(())
}
