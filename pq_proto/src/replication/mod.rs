//! The physical-replication payloads nested in CopyData (all big-endian): XLogData and
//! keepalives from the server; standby status, hot-standby feedback and Neon's pageserver
//! feedback from the client.
//!
//! Owns: their types, decode and encode, and the hot-path writer of a whole XLogData frame.
//! Must never: decide when to send them or what the values mean for a timeline.

use bytes::{BufMut, Bytes, BytesMut};
use utils::Lsn;

use crate::ProtocolError;
use crate::codec::{Reader, write_tagged};
use crate::frontend::COPY_DATA_TAG;
use crate::proposer::PageserverFeedback;

mod time;

pub use time::{
    PG_EPOCH_UNIX_SECS, pg_timestamp_now, pg_timestamp_to_system_time, system_time_to_pg_timestamp,
};

/// Most WAL bytes sent in one XLogData (and, by the walproposer, in one AppendRequest):
/// 16 pages of 8 KiB.
pub const MAX_SEND_SIZE: usize = 128 * 1024;

/// Tag of XLogData.
pub const XLOG_DATA_TAG: u8 = b'w';
/// Tag of the primary keepalive.
pub const KEEPALIVE_TAG: u8 = b'k';
/// Tag of the standby status update.
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';
/// Tag of hot-standby feedback.
pub const HOT_STANDBY_FEEDBACK_TAG: u8 = b'h';
/// Tag of Neon's pageserver feedback.
pub const PAGESERVER_FEEDBACK_TAG: u8 = b'z';

/// Size of an XLogData payload before its WAL: tag, wal_start, wal_end, send_time.
pub const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;

/// Server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationServerMessage {
    /// `w`: WAL.
    XLogData(XLogData),
    /// `k`: still alive; maybe asks for a reply.
    Keepalive(PrimaryKeepalive),
}

/// `w`: a chunk of WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// LSN of the first byte of `data`.
    pub wal_start: Lsn,
    /// The end of WAL available on the server.
    pub wal_end: Lsn,
    /// When it was sent (PostgreSQL timestamp).
    pub send_time: i64,
    /// The WAL (a zero-copy slice of the payload when decoded).
    pub data: Bytes,
}

/// `k`: primary keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The end of WAL available on the server.
    pub wal_end: Lsn,
    /// When it was sent (PostgreSQL timestamp).
    pub send_time: i64,
    /// Whether the client should reply at once.
    pub reply_requested: bool,
}

/// Client → server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationClientMessage {
    /// `r`: how far the standby has written, flushed and applied.
    StandbyStatusUpdate(StandbyStatusUpdate),
    /// `h`: the oldest transactions the standby still needs.
    HotStandbyFeedback(StandbyHsFeedback),
    /// `z`: a pageserver's progress (Neon).
    PageserverFeedback(PageserverFeedback),
}

/// `r`: standby status update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// End of WAL written by the standby.
    pub write_lsn: Lsn,
    /// End of WAL flushed by the standby.
    pub flush_lsn: Lsn,
    /// End of WAL applied by the standby.
    pub apply_lsn: Lsn,
    /// The client's clock (PostgreSQL timestamp).
    pub client_time: i64,
    /// Whether the server should reply at once.
    pub reply_requested: bool,
}

/// `h`: hot-standby feedback, as 32-bit xids with their epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyHsFeedback {
    /// The client's clock (PostgreSQL timestamp).
    pub ts: i64,
    /// Oldest xmin the standby needs (0 = none).
    pub xmin: u32,
    /// Its epoch.
    pub xmin_epoch: u32,
    /// Oldest catalog xmin the standby needs (0 = none).
    pub catalog_xmin: u32,
    /// Its epoch.
    pub catalog_xmin_epoch: u32,
}

impl StandbyHsFeedback {
    /// The xmin as a FullTransactionId (`epoch << 32 | xid`).
    pub fn full_xmin(&self) -> u64 {
        (u64::from(self.xmin_epoch) << 32) | u64::from(self.xmin)
    }

    /// The catalog xmin as a FullTransactionId.
    pub fn full_catalog_xmin(&self) -> u64 {
        (u64::from(self.catalog_xmin_epoch) << 32) | u64::from(self.catalog_xmin)
    }
}

impl ReplicationServerMessage {
    /// Decodes a whole CopyData payload.
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload, "replication message");
        let msg = match r.u8("tag")? {
            XLOG_DATA_TAG => {
                let mut r = Reader::new(r.rest(), "XLogData");
                return Ok(ReplicationServerMessage::XLogData(XLogData {
                    wal_start: Lsn(r.u64("wal_start")?),
                    wal_end: Lsn(r.u64("wal_end")?),
                    send_time: r.i64("send_time")?,
                    data: r.rest(),
                }));
            }
            KEEPALIVE_TAG => {
                let mut r = Reader::new(r.rest(), "PrimaryKeepalive");
                let k = PrimaryKeepalive {
                    wal_end: Lsn(r.u64("wal_end")?),
                    send_time: r.i64("send_time")?,
                    reply_requested: r.u8("reply_requested")? != 0,
                };
                r.finish()?;
                ReplicationServerMessage::Keepalive(k)
            }
            tag => {
                return Err(ProtocolError::UnknownTag {
                    tag,
                    context: "replication server message",
                });
            }
        };
        Ok(msg)
    }

    /// Appends the payload (not the CopyData frame) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ReplicationServerMessage::XLogData(x) => {
                put_xlog_data(buf, x.wal_start, x.wal_end, x.send_time, &x.data)
            }
            ReplicationServerMessage::Keepalive(k) => {
                buf.put_u8(KEEPALIVE_TAG);
                buf.put_u64(k.wal_end.0);
                buf.put_i64(k.send_time);
                buf.put_u8(u8::from(k.reply_requested));
            }
        }
    }

    /// Appends the message as a complete CopyData frame.
    pub fn encode_frame(&self, buf: &mut BytesMut) {
        write_tagged(buf, COPY_DATA_TAG, |b| self.encode(b));
    }
}

fn put_xlog_data(buf: &mut BytesMut, wal_start: Lsn, wal_end: Lsn, send_time: i64, data: &[u8]) {
    buf.put_u8(XLOG_DATA_TAG);
    buf.put_u64(wal_start.0);
    buf.put_u64(wal_end.0);
    buf.put_i64(send_time);
    buf.put_slice(data);
}

/// Appends a complete CopyData frame carrying XLogData, copying `data` once, straight from
/// the caller's read buffer into the output buffer.
pub fn write_xlog_data_frame(
    buf: &mut BytesMut,
    wal_start: Lsn,
    wal_end: Lsn,
    send_time: i64,
    data: &[u8],
) {
    buf.reserve(5 + XLOG_DATA_HEADER_LEN + data.len());
    write_tagged(buf, COPY_DATA_TAG, |b| {
        put_xlog_data(b, wal_start, wal_end, send_time, data)
    });
}

impl ReplicationClientMessage {
    /// Decodes a whole CopyData payload.
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload, "replication reply");
        let msg = match r.u8("tag")? {
            STANDBY_STATUS_UPDATE_TAG => {
                let mut r = Reader::new(r.rest(), "StandbyStatusUpdate");
                let s = StandbyStatusUpdate {
                    write_lsn: Lsn(r.u64("write_lsn")?),
                    flush_lsn: Lsn(r.u64("flush_lsn")?),
                    apply_lsn: Lsn(r.u64("apply_lsn")?),
                    client_time: r.i64("client_time")?,
                    reply_requested: r.u8("reply_requested")? != 0,
                };
                r.finish()?;
                ReplicationClientMessage::StandbyStatusUpdate(s)
            }
            HOT_STANDBY_FEEDBACK_TAG => {
                let mut r = Reader::new(r.rest(), "HotStandbyFeedback");
                let h = StandbyHsFeedback {
                    ts: r.i64("timestamp")?,
                    xmin: r.u32("xmin")?,
                    xmin_epoch: r.u32("xmin_epoch")?,
                    catalog_xmin: r.u32("catalog_xmin")?,
                    catalog_xmin_epoch: r.u32("catalog_xmin_epoch")?,
                };
                r.finish()?;
                ReplicationClientMessage::HotStandbyFeedback(h)
            }
            PAGESERVER_FEEDBACK_TAG => {
                let mut r = Reader::new(r.rest(), "pageserver feedback reply");
                let len = r.u64("length")?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let body = r.bytes(len, "feedback")?;
                r.finish()?;
                ReplicationClientMessage::PageserverFeedback(PageserverFeedback::parse(body)?)
            }
            tag => {
                return Err(ProtocolError::UnknownTag {
                    tag,
                    context: "replication client message",
                });
            }
        };
        Ok(msg)
    }

    /// Appends the payload (not the CopyData frame) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ReplicationClientMessage::StandbyStatusUpdate(s) => {
                buf.put_u8(STANDBY_STATUS_UPDATE_TAG);
                buf.put_u64(s.write_lsn.0);
                buf.put_u64(s.flush_lsn.0);
                buf.put_u64(s.apply_lsn.0);
                buf.put_i64(s.client_time);
                buf.put_u8(u8::from(s.reply_requested));
            }
            ReplicationClientMessage::HotStandbyFeedback(h) => {
                buf.put_u8(HOT_STANDBY_FEEDBACK_TAG);
                buf.put_i64(h.ts);
                buf.put_u32(h.xmin);
                buf.put_u32(h.xmin_epoch);
                buf.put_u32(h.catalog_xmin);
                buf.put_u32(h.catalog_xmin_epoch);
            }
            ReplicationClientMessage::PageserverFeedback(f) => {
                buf.put_u8(PAGESERVER_FEEDBACK_TAG);
                let at = buf.len();
                buf.put_u64(0);
                f.write(buf);
                let len = (buf.len() - at - 8) as u64;
                buf[at..at + 8].copy_from_slice(&len.to_be_bytes());
            }
        }
    }

    /// Appends the message as a complete CopyData frame.
    pub fn encode_frame(&self, buf: &mut BytesMut) {
        write_tagged(buf, COPY_DATA_TAG, |b| self.encode(b));
    }
}

#[cfg(test)]
mod tests;
