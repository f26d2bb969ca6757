//! Encodings both proposer protocol versions share: message tags, term histories (in
//! either byte order), the v3 membership configuration, the big-endian pageserver feedback
//! (which v2 frames carry unchanged), and the AppendRequest length rule.
//!
//! Owns: those layouts. Must never: pre-allocate from a count before checking that the
//! bytes for that many entries are present, or accept a configuration the protocol forbids
//! (members missing from a numbered generation, duplicate node ids).

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use utils::{Lsn, NodeId, Term};

use super::{
    AppendRequestHeader, Configuration, Generation, PageserverFeedback, SafekeeperId, TermHistory,
    TermLsn,
};
use crate::ProtocolError;
use crate::codec::{Reader, len_i32, put_cstr};

/// Tag of the greetings (both directions).
pub const GREETING_TAG: u8 = b'g';
/// Tag of VoteRequest and VoteResponse.
pub const VOTE_TAG: u8 = b'v';
/// Tag of ProposerElected.
pub const ELECTED_TAG: u8 = b'e';
/// Tag of AppendRequest and AppendResponse.
pub const APPEND_TAG: u8 = b'a';

/// Byte order of a term history: big-endian in v3, little-endian in v2.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endian {
    Big,
    Little,
}

/// Bytes of one term history entry.
const TERM_LSN_LEN: usize = 16;

pub(crate) fn read_term_history(r: &mut Reader, e: Endian) -> Result<TermHistory, ProtocolError> {
    let n = match e {
        Endian::Big => r.u32("term history length")?,
        Endian::Little => r.u32_le("term history length")?,
    } as usize;
    r.check_count(n, TERM_LSN_LEN, "term history length")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let (term, lsn) = match e {
            Endian::Big => (r.u64("term history term")?, r.u64("term history lsn")?),
            Endian::Little => (
                r.u64_le("term history term")?,
                r.u64_le("term history lsn")?,
            ),
        };
        entries.push(TermLsn {
            term: Term(term),
            lsn: Lsn(lsn),
        });
    }
    Ok(TermHistory(entries))
}

pub(crate) fn write_term_history(buf: &mut BytesMut, h: &TermHistory, e: Endian) {
    let n = u32::try_from(h.0.len()).unwrap_or_else(|_| panic!("term history too long"));
    match e {
        Endian::Big => buf.put_u32(n),
        Endian::Little => buf.put_u32_le(n),
    }
    for entry in &h.0 {
        match e {
            Endian::Big => {
                buf.put_u64(entry.term.0);
                buf.put_u64(entry.lsn.0);
            }
            Endian::Little => {
                buf.put_u64_le(entry.term.0);
                buf.put_u64_le(entry.lsn.0);
            }
        }
    }
}

/// Smallest member entry: node id, empty host, port.
const MIN_MEMBER_LEN: usize = 8 + 1 + 2;

fn read_members(r: &mut Reader, field: &'static str) -> Result<Vec<SafekeeperId>, ProtocolError> {
    let n = r.u32(field)? as usize;
    r.check_count(n, MIN_MEMBER_LEN, field)?;
    let mut members = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for _ in 0..n {
        let id = NodeId(r.u64("member node id")?);
        if !seen.insert(id) {
            return Err(ProtocolError::invalid(
                r.message(),
                field,
                format!("duplicate safekeeper id {id}"),
            ));
        }
        members.push(SafekeeperId {
            id,
            host: r.cstring("member host")?,
            pg_port: r.u16("member port")?,
        });
    }
    Ok(members)
}

fn write_members(buf: &mut BytesMut, members: &[SafekeeperId]) {
    let n = u32::try_from(members.len()).unwrap_or_else(|_| panic!("too many members"));
    buf.put_u32(n);
    for m in members {
        buf.put_u64(m.id.0);
        put_cstr(buf, m.host.as_bytes());
        buf.put_u16(m.pg_port);
    }
}

/// Reads a v3 MembershipConfiguration. A zero-length new member set means "not joint".
pub(crate) fn read_mconf(r: &mut Reader) -> Result<Configuration, ProtocolError> {
    let generation = Generation(r.u32("generation")?);
    let members = read_members(r, "members")?;
    let new_members = read_members(r, "new_members")?;
    if generation.0 != 0 && members.is_empty() {
        return Err(ProtocolError::invalid(
            r.message(),
            "members",
            format!("generation {generation} has no members"),
        ));
    }
    Ok(Configuration {
        generation,
        members,
        new_members: (!new_members.is_empty()).then_some(new_members),
    })
}

/// Writes a v3 MembershipConfiguration (`new_members: Some(empty)` is written as not
/// joint, the only way the wire can say it).
pub(crate) fn write_mconf(buf: &mut BytesMut, c: &Configuration) {
    buf.put_u32(c.generation.0);
    write_members(buf, &c.members);
    write_members(buf, c.new_members.as_deref().unwrap_or_default());
}

/// Checks the AppendRequest length rule: `end_lsn - begin_lsn` must equal the number of
/// WAL bytes carried. (The 128 KiB cap, [`super::MAX_APPEND_SIZE`], is the server's check.)
pub(crate) fn check_append(
    h: &AppendRequestHeader,
    wal: &Bytes,
    message: &'static str,
) -> Result<(), ProtocolError> {
    match h.end_lsn.distance_from(h.begin_lsn) {
        Some(n) if n == wal.len() as u64 => Ok(()),
        Some(n) => Err(ProtocolError::invalid(
            message,
            "end_lsn",
            format!(
                "end_lsn - begin_lsn = {n} ({}..{}) but {} WAL bytes follow",
                h.begin_lsn,
                h.end_lsn,
                wal.len()
            ),
        )),
        None => Err(ProtocolError::invalid(
            message,
            "end_lsn",
            format!("end_lsn {} is below begin_lsn {}", h.end_lsn, h.begin_lsn),
        )),
    }
}

const KEY_TIMELINE_SIZE: &[u8] = b"current_timeline_size";
const KEY_WRITE_LSN: &[u8] = b"ps_writelsn";
const KEY_FLUSH_LSN: &[u8] = b"ps_flushlsn";
const KEY_APPLY_LSN: &[u8] = b"ps_applylsn";
const KEY_REPLY_TIME: &[u8] = b"ps_replytime";
const KEY_SHARD_NUMBER: &[u8] = b"shard_number";
const KEY_CORRUPTION: &[u8] = b"corruption_detected";

impl PageserverFeedback {
    /// Parses the whole of `data` as the key/value encoding (u8 key count, then per key a
    /// cstring name, an i32 value length and the value; all big-endian). Unknown keys are
    /// skipped; known keys must have their exact size; trailing bytes are an error.
    pub fn parse(data: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(data, "PageserverFeedback");
        let f = read_pageserver_feedback(&mut r)?;
        r.finish()?;
        Ok(f)
    }

    /// Appends the key/value encoding to `buf`. `shard_number` is written only when
    /// non-zero and `corruption_detected` only when true, as the pageserver does.
    pub fn write(&self, buf: &mut BytesMut) {
        let nkeys = 5 + u8::from(self.shard_number != 0) + u8::from(self.corruption_detected);
        buf.put_u8(nkeys);
        let mut kv = |key: &[u8], value: &[u8]| {
            put_cstr(buf, key);
            buf.put_i32(len_i32(value.len()));
            buf.put_slice(value);
        };
        kv(KEY_TIMELINE_SIZE, &self.current_timeline_size.to_be_bytes());
        kv(KEY_WRITE_LSN, &self.last_received_lsn.0.to_be_bytes());
        kv(KEY_FLUSH_LSN, &self.disk_consistent_lsn.0.to_be_bytes());
        kv(KEY_APPLY_LSN, &self.remote_consistent_lsn.0.to_be_bytes());
        kv(KEY_REPLY_TIME, &self.replytime.to_be_bytes());
        if self.shard_number != 0 {
            kv(KEY_SHARD_NUMBER, &self.shard_number.to_be_bytes());
        }
        if self.corruption_detected {
            kv(KEY_CORRUPTION, &[1]);
        }
    }
}

/// Reads a PageserverFeedback from the reader's current position (the caller checks what
/// follows).
pub(crate) fn read_pageserver_feedback(
    r: &mut Reader,
) -> Result<PageserverFeedback, ProtocolError> {
    let nkeys = r.u8("key count")? as usize;
    let mut f = PageserverFeedback::default();
    for _ in 0..nkeys {
        let key = r.cstr_bytes("key")?;
        let len = r.i32("value length")?;
        let len = usize::try_from(len)
            .map_err(|_| ProtocolError::invalid(r.message(), "value length", format!("{len}")))?;
        let value = r.bytes(len, "value")?;
        let mut v = Reader::new(value, "PageserverFeedback");
        match key.as_ref() {
            KEY_TIMELINE_SIZE => f.current_timeline_size = v.u64("current_timeline_size")?,
            KEY_WRITE_LSN | b"last_received_lsn" => {
                f.last_received_lsn = Lsn(v.u64("ps_writelsn")?)
            }
            KEY_FLUSH_LSN | b"disk_consistent_lsn" => {
                f.disk_consistent_lsn = Lsn(v.u64("ps_flushlsn")?)
            }
            KEY_APPLY_LSN | b"remote_consistent_lsn" => {
                f.remote_consistent_lsn = Lsn(v.u64("ps_applylsn")?)
            }
            KEY_REPLY_TIME | b"replytime" => f.replytime = v.i64("ps_replytime")?,
            KEY_SHARD_NUMBER => f.shard_number = v.u32("shard_number")?,
            KEY_CORRUPTION => f.corruption_detected = v.u8("corruption_detected")? != 0,
            _ => continue,
        }
        v.finish()?;
    }
    Ok(f)
}
