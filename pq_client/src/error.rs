//! [`PgError`]: why a client operation failed.
//!
//! Owns: the one error type every function of this crate returns. Must never: lose what a
//! server said (an ErrorResponse is kept whole, SQLSTATE included, in [`PgError::Server`]).

use pq_proto::backend::ErrorFields;
use pq_proto::framed::ConnectionError;

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
    /// The server answered the SSLRequest with `N` but the `sslmode` requires TLS.
    #[error("server does not support SSL, but SSL was required")]
    SslNotSupported,
    /// The TLS handshake failed (an untrusted certificate, a name mismatch, a server that
    /// does not speak TLS after all).
    #[error("SSL connection to {addr} failed: {source}")]
    TlsHandshake {
        /// The address.
        addr: String,
        /// The error (rustls' reason inside).
        source: std::io::Error,
    },
    /// The root certificate file (`sslrootcert`) cannot be used.
    #[error("could not read root certificate file \"{}\": {reason}", .path.display())]
    RootCert {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
}

/// [`PgError::Unexpected`] from a description.
pub(crate) fn unexpected(what: &str) -> PgError {
    PgError::Unexpected(what.to_string())
}
