//! The puller's side of a snapshot: its WAL written into the timeline directory under
//! construction (in `tmp/`), then checked by the restart path before the directory is
//! made live (see `Timelines::create_pulled`).
//!
//! The bytes arrive from the network task through a bounded channel and are written by
//! the real segment writer ([`crate::storage::FileStorage`]: segment files created
//! durably, completed segments fdatasynced and renamed, the last one left `.partial`), on
//! the WAL-pool thread that builds the directory.
//!
//! Owns: [`fill`]. Must never: let a directory pass whose WAL does not end exactly at
//! the donor's flush_lsn (the restart path's end-of-WAL scan decides, CRCs checked), or
//! whose stream ended without its trailer.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use utils::Lsn;

use super::format::Header;
use crate::ingest::Executor;
use crate::storage::Storage;
use crate::timelines::{Fill, Timelines};

/// What the network task hands the writer.
#[derive(Debug)]
pub enum Piece {
    /// The next WAL bytes.
    Wal(Bytes),
    /// The stream ended with a valid trailer: everything was sent.
    End,
    /// The stream failed (why).
    Abort(String),
}

/// The fill of a pulled timeline's directory: writes the WAL `rx` delivers from
/// `header.wal_start`, flushes it, and runs the restart path over it.
pub fn fill(timelines: Arc<Timelines>, header: Header, mut rx: mpsc::Receiver<Piece>) -> Fill {
    Box::new(move |dir: &Path| {
        let ttid = header.state.ttid;
        let seg = header.state.server.wal_seg_size;
        let mut storage = timelines.detached_storage(ttid, dir, seg);
        let mut pos = header.wal_start;
        if header.wal_start.is_valid() {
            storage.init_wal(header.wal_start, &[])?;
        }
        loop {
            match rx.blocking_recv() {
                Some(Piece::Wal(b)) => {
                    let end = Lsn(pos.0 + b.len() as u64);
                    if end > header.flush_lsn {
                        return Err(io::Error::other(format!(
                            "the snapshot sends WAL past its flush_lsn {}",
                            header.flush_lsn
                        )));
                    }
                    storage.write_wal(pos, b)?;
                    pos = end;
                }
                Some(Piece::End) => break,
                Some(Piece::Abort(why)) => return Err(io::Error::other(why)),
                None => return Err(io::Error::other("the snapshot stream was dropped")),
            }
        }
        if pos != header.flush_lsn {
            return Err(io::Error::other(format!(
                "the snapshot ended at {pos}, before its flush_lsn {}",
                header.flush_lsn
            )));
        }
        if !header.flush_lsn.is_valid() {
            return Ok(());
        }
        storage.flush_wal()?;
        // What a restart would find: the end of CRC-valid records from commit_lsn.
        let exec = Executor::recover(storage, header.pulled_state(), ttid, timelines.node_id())
            .map_err(|e| io::Error::other(format!("the pulled WAL does not open: {e}")))?;
        let found = exec.acceptor().flush_lsn();
        if found != header.flush_lsn {
            return Err(io::Error::other(format!(
                "the pulled WAL ends at {found}, but the donor's flush_lsn is {}",
                header.flush_lsn
            )));
        }
        Ok(())
    })
}
