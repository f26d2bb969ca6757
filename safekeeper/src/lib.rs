//! The safekeeper server: keeps a PostgreSQL primary's WAL durable on a quorum and serves
//! it back.
//!
//! Layers, one direction of dependency: [`server`] (pools, runtimes, listeners,
//! lifecycle) → [`handler`] (startup, commands; connection types in [`session`]) →
//! [`receive_wal`] / [`send_wal`] (the two streams) → [`timelines`] (the registry) →
//! [`timeline`] (inbox, ingest loop on the disk pool, published status, lifecycle) →
//! [`ingest`] (the executor: steps and effects, generic over the [`storage`] seam) →
//! [`acceptor`] (the consensus state machine, no I/O) and the real storage
//! ([`wal_storage`], [`control_file`], [`wal_reader`]). See `docs/ARCHITECTURE.md` for the
//! codemap and the invariants.

pub mod acceptor;
pub mod archive;
pub mod auth;
pub mod command;
pub mod control_file;
pub mod ctx;
pub mod disk_pool;
pub mod durability;
pub mod errors;
pub mod feedback;
pub mod handler;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod offload;
pub mod pg_auth;
pub mod pull;
pub mod queries;
pub mod receive_wal;
pub mod remote;
pub mod send_wal;
pub mod server;
pub mod session;
pub mod state;
pub mod storage;
#[cfg(test)]
mod test_wal;
pub mod timeline;
pub mod timelines;
pub mod tls;
pub mod wal_reader;
pub mod wal_storage;
