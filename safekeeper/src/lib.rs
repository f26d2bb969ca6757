//! The safekeeper server: keeps a PostgreSQL primary's WAL durable on a quorum and serves
//! it back.
//!
//! Layers, one direction of dependency: [`server`] (listeners, lifecycle) → [`handler`]
//! (startup, commands) → [`receive_wal`] / [`send_wal`] (the two streams) → [`timeline`]
//! (one lock per timeline, effects performed in order) → [`acceptor`] (the consensus
//! state machine, no I/O) and the storage ([`wal_storage`], [`control_file`],
//! [`wal_reader`]). See `docs/ARCHITECTURE.md` for the codemap and the invariants.

pub mod acceptor;
pub mod command;
pub mod control_file;
pub mod durability;
pub mod errors;
pub mod feedback;
pub mod handler;
pub mod http;
pub mod queries;
pub mod receive_wal;
pub mod send_wal;
pub mod server;
pub mod state;
pub mod timeline;
pub mod timelines;
pub mod wal_reader;
pub mod wal_storage;
