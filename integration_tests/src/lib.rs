//! Shared harness for the integration tests: a throwaway PostgreSQL 15 cluster ([`pg`]) and
//! helpers to run Postgres tools such as `pg_waldump` ([`pg_tools`]); safekeeper processes
//! ([`sk`]) and a server in the test process with a fault hook on its storage
//! ([`in_process`]); the seeded, in-process simulation of proposer + acceptors
//! ([`sim`]); and an S3-protocol server on loopback with a fresh bucket per test ([`s3`]) and
//! a TCP proxy that can take it "down" or cut uploads midway ([`proxy`]); a real Prometheus
//! server and a client of its query API ([`prometheus`]); an HTTP client of the API
//! ([`http`]); Ed25519 keys and JWTs for authentication tests ([`jwt`]); a test
//! certificate authority ([`tls`]); Neon's compute as a client ([`neon`]).
//!
//! Owns: processes and temp directories of tests. Must never: be used outside tests, or
//! leave a process or directory behind (everything is released on drop).

pub mod http;
pub mod in_process;
/// Ed25519 test keys and JWTs, good and forged.
pub mod jwt;
/// Neon's compute (PostgreSQL 17 fork + `neon` walproposer) as a test client.
pub mod neon;
pub mod pg;
pub mod pg_tools;
pub mod prometheus;
/// A TCP proxy with switchable faults (pass, refuse, cut after N bytes).
pub mod proxy;
pub mod real_wal;
/// A fresh bucket on a loopback `moto_server`, its environment and an `ObjectStore` on it.
pub mod s3;
pub mod sim;
pub mod sk;
/// A hot standby made with pg_basebackup; a child process with a time limit.
pub mod standby;
pub mod test_proposer;
/// A test certificate authority and server certificates as PEM files.
pub mod tls;

pub use pg::{PgCluster, PgOptions, free_port};
pub use pg_tools::{Waldump, WaldumpRecord, pg_bin, pg_waldump, run, server_command};
