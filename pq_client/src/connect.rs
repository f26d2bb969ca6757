//! [`connect`]: opening a connection, the startup packet and authentication.
//!
//! Owns: the startup parameters sent (user, database, application_name, options,
//! replication), trust, cleartext, MD5 and SCRAM-SHA-256 authentication, and [`PgConn`].
//! Must never: send a password the server did not ask for, or accept a SASL mechanism other
//! than SCRAM-SHA-256.

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use pq_proto::backend::{Authentication, BeMessage};
use pq_proto::framed::Framed;
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use tokio::net::TcpStream;

use crate::conninfo::Conninfo;
use crate::error::{PgError, unexpected};
use crate::query::read;

/// A client connection.
pub type PgConn = Framed<TcpStream>;

/// Connects and authenticates; the connection is then ready for queries.
///
/// `user` defaults to `PGUSER`, then `postgres`; `password` to `PGPASSWORD`.
pub async fn connect(ci: &Conninfo) -> Result<PgConn, PgError> {
    let addr = ci.addr();
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| PgError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream);
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
