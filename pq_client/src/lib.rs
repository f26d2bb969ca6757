//! A minimal PostgreSQL client over [`pq_proto`]: libpq-style connection strings, TLS
//! (`sslmode`, `sslrootcert`), startup with trust, cleartext, MD5 or SCRAM-SHA-256
//! authentication, simple queries,
//! entering COPY (replication streams), and reading WAL from a safekeeper in term mode.
//! tokio-postgres cannot stream replication, so the proposer (and the safekeeper, for peer
//! recovery) speak the protocol themselves, through this crate.
//!
//! Owns: [`Conninfo`], [`SslSettings`], [`connect`] and the [`PgConn`] it returns, [`read`],
//! [`simple_query`], [`start_copy`], [`WalStream`] / [`fetch_wal`], and [`PgError`].
//! Must never: hide a server error (an ErrorResponse becomes [`PgError::Server`] with its
//! SQLSTATE and message), depend on `safekeeper` or `walproposer` (both use it), or add
//! timeouts (callers wrap what they need in `tokio::time::timeout`).
//!
//! Modules: `conninfo` (connection strings), `tls` (sslmode and certificate
//! verification), `connect` (TLS negotiation, startup and authentication),
//! `query` (reading messages, simple queries, entering COPY), `wal` (term-mode WAL),
//! `error` ([`PgError`]).

mod connect;
mod conninfo;
mod error;
mod query;
mod tls;
mod wal;

pub use connect::{PgConn, connect};
pub use conninfo::Conninfo;
pub use error::PgError;
pub use query::{Rows, read, simple_query, start_copy};
pub use tls::{SslMode, SslSettings};
pub use wal::{WalStream, fetch_wal};
