//! A minimal PostgreSQL client over [`pq_proto`]: libpq-style connection strings,
//! startup with trust, cleartext, MD5 or SCRAM-SHA-256 authentication, simple queries, and
//! entering COPY (replication streams). tokio-postgres cannot stream replication, so the
//! proposer speaks the protocol itself.
//!
//! Must never: hide a server error (an ErrorResponse becomes [`PgError::Server`] with its
//! SQLSTATE and message).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pq_proto::backend::{Authentication, BeMessage, ErrorFields};
use pq_proto::framed::{ConnectionError, Framed};
use pq_proto::frontend::{FeMessage, FeStartupPacket};
use tokio::net::TcpStream;

/// A client connection.
pub type PgConn = Framed<TcpStream>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Connecting or the stream failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The server answered with an error.
    #[error("server error {}: {}{}", .0.code, .0.message, .0.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server(ErrorFields),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// Authentication could not be done.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server sent something the protocol does not allow here.
    #[error("unexpected message from server: {0}")]
    Unexpected(String),
    /// The connection string is malformed.
    #[error("invalid connection string: {0}")]
    Conninfo(String),
}

/// A parsed libpq connection string (`key=value ...` with `'…'` quoting and `\` escapes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conninfo {
    params: BTreeMap<String, String>,
}

impl Conninfo {
    /// Parses `host=… port=… user=… dbname=… password=… application_name=… options=…`.
    pub fn parse(s: &str) -> Result<Self, PgError> {
        let mut params = BTreeMap::new();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(PgError::Conninfo(format!("missing \"=\" after \"{key}\"")));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => value.push(c),
                        None => {
                            return Err(PgError::Conninfo(format!(
                                "unterminated quoted value of \"{key}\""
                            )));
                        }
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        value.extend(chars.next());
                    } else {
                        value.push(c);
                    }
                }
            }
            params.insert(key, value);
        }
        Ok(Conninfo { params })
    }

    /// A parameter's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Sets a parameter.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    /// `host:port` to connect to (defaults: 127.0.0.1, 5432).
    pub fn addr(&self) -> String {
        let host = self
            .get("host")
            .or(self.get("hostaddr"))
            .unwrap_or("127.0.0.1");
        let port = self.get("port").unwrap_or("5432");
        format!("{host}:{port}")
    }
}

/// Connects and authenticates; the connection is then ready for queries.
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
    let mut scram: Option<postgres_protocol::authentication::sasl::ScramSha256> = None;
    loop {
        match read(&mut conn).await? {
            BeMessage::Authentication(Authentication::Ok) => {}
            BeMessage::Authentication(Authentication::CleartextPassword) => {
                let pw = password.as_deref().ok_or_else(no_password)?;
                send_password(&mut conn, pw.as_bytes()).await?;
            }
            BeMessage::Authentication(Authentication::Md5Password { salt }) => {
                let pw = password.as_deref().ok_or_else(no_password)?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    pw.as_bytes(),
                    salt,
                );
                send_password(&mut conn, hash.as_bytes()).await?;
            }
            BeMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(PgError::Auth(format!(
                        "server offers only {mechanisms:?}; SCRAM-SHA-256 is supported"
                    )));
                }
                let pw = password.as_deref().ok_or_else(no_password)?;
                let s = postgres_protocol::authentication::sasl::ScramSha256::new(
                    pw.as_bytes(),
                    postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
                );
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

fn unexpected(what: &str) -> PgError {
    PgError::Unexpected(what.to_string())
}

async fn send_password(conn: &mut PgConn, pw: &[u8]) -> Result<(), PgError> {
    let mut b = BytesMut::with_capacity(pw.len() + 1);
    b.extend_from_slice(pw);
    b.extend_from_slice(&[0]);
    conn.write_fe(&FeMessage::Password(b.freeze()));
    conn.flush().await?;
    Ok(())
}

/// Reads one message; an ErrorResponse becomes `PgError::Server`, EOF `PgError::Closed`.
pub async fn read(conn: &mut PgConn) -> Result<BeMessage, PgError> {
    match conn.read_be_message().await? {
        Some(BeMessage::ErrorResponse(e)) => Err(PgError::Server(e)),
        Some(m) => Ok(m),
        None => Err(PgError::Closed),
    }
}

/// The rows of a simple query, as text (`None` = NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Runs a simple query and returns its rows (of the last result).
pub async fn simple_query(conn: &mut PgConn, q: &str) -> Result<Rows, PgError> {
    conn.write_fe(&FeMessage::Query(Bytes::copy_from_slice(q.as_bytes())));
    conn.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        match conn.read_be_message().await? {
            None => return Err(PgError::Closed),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing() {
        let ci = Conninfo::parse(
            "host=127.0.0.1 port=5432 user=postgres options='-c a=b\\'c' application_name = x",
        )
        .unwrap();
        assert_eq!(ci.addr(), "127.0.0.1:5432");
        assert_eq!(ci.get("options"), Some("-c a=b'c"));
        assert_eq!(ci.get("application_name"), Some("x"));
        assert!(Conninfo::parse("host").is_err());
        assert!(Conninfo::parse("options='x").is_err());
        assert_eq!(Conninfo::parse("").unwrap(), Conninfo::default());
    }
}
