//! Every wire format the safekeeper speaks, sans-IO (plus an optional tokio [`framed`]
//! adapter).
//!
//! Owns: PostgreSQL v3 frontend and backend messages ([`frontend`], [`backend`]), the
//! replication payloads nested in CopyData ([`replication`]), and the proposer/acceptor
//! protocol in both versions ([`proposer`]). Must never: hold connection state, decide
//! anything about timelines, or allocate from a length field it has not checked against
//! the configured maximum.
