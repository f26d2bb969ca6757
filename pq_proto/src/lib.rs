//! Every wire format the safekeeper speaks, sans-IO (plus an optional tokio [`framed`]
//! adapter).
//!
//! Owns: PostgreSQL v3 frontend and backend messages ([`frontend`], [`backend`]), the
//! replication payloads nested in CopyData ([`replication`]), and the proposer/acceptor
//! protocol in both versions ([`proposer`]). Must never: hold connection state, decide
//! anything about timelines, or allocate from a length field it has not checked against
//! the configured maximum.
//!
//! Conventions shared by every codec:
//! * `parse` works on a stream buffer: `Ok(None)` means "incomplete, nothing consumed";
//!   `Ok(Some(_))` consumes exactly one frame and keeps bodies as zero-copy [`bytes::Bytes`]
//!   slices of it. `decode` works on one whole payload and rejects trailing bytes.
//! * No parser panics on any input (fuzzed: see `pq_proto/fuzz`). Writers are infallible;
//!   they panic only on a message longer than `i32::MAX` bytes or with more than 32767
//!   columns, which no caller builds (every payload is bounded far below). A string with an
//!   embedded NUL is written up to that NUL: the wire format cannot carry one.

pub mod backend;
mod codec;
mod error;
pub mod framed;
pub mod frontend;
pub mod proposer;
pub mod replication;

pub use error::{DEFAULT_MAX_MESSAGE_LEN, MAX_STARTUP_PACKET_LEN, ProtocolError};
