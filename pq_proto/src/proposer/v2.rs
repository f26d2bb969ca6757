//! Protocol v2 codec (legacy): the walproposer's C structs sent as-is, little-endian, with
//! the tag as a u64 (ref §2.4). No generations (always 0) and no membership configuration;
//! the pageserver feedback that may end an AppendResponse is big-endian even here.
//!
//! Owns: the v2 byte layouts, including the fields v2 carries but this project ignores
//! (proposer UUIDs, pg_timeline, epoch_start_lsn, timeline_start_lsn). Must never: accept a
//! greeting of another protocol version, or trailing bytes (except that feedback).

use bytes::{BufMut, Bytes, BytesMut};
use utils::{Lsn, NodeId, TenantId, Term, TimelineId};

use super::shared::{
    APPEND_TAG, ELECTED_TAG, Endian, GREETING_TAG, VOTE_TAG, check_append,
    read_pageserver_feedback, read_term_history, write_term_history,
};
use super::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, HotStandbyFeedback, ProposerElected, ProposerGreeting,
    ProposerMessage, VoteRequest, VoteResponse,
};
use crate::ProtocolError;
use crate::codec::Reader;

/// The protocol version a v2 ProposerGreeting carries.
pub const PROTOCOL_VERSION: u32 = 2;
/// Size of a v2 ProposerGreeting.
pub const PROPOSER_GREETING_LEN: usize = 80;
/// Size of a v2 AppendRequest before its WAL.
pub const APPEND_REQUEST_HEADER_LEN: usize = 72;
/// Size of a v2 AppendResponse without pageserver feedback.
pub const APPEND_RESPONSE_FIXED_LEN: usize = 56;

/// Reads the u64 tag; tags are ASCII codes, so anything above 0xff is invalid.
fn read_tag(r: &mut Reader) -> Result<u8, ProtocolError> {
    let tag = r.u64_le("tag")?;
    u8::try_from(tag).map_err(|_| ProtocolError::invalid(r.message(), "tag", format!("{tag:#x}")))
}

fn unknown(tag: u8, context: &'static str) -> ProtocolError {
    ProtocolError::UnknownTag { tag, context }
}

/// Decodes a v2 proposer message from a whole CopyData payload.
pub fn decode_proposer(payload: Bytes) -> Result<ProposerMessage, ProtocolError> {
    let mut r = Reader::new(payload, "proposer message");
    let tag = read_tag(&mut r)?;
    let body = r.rest();
    let msg = match tag {
        GREETING_TAG => {
            let mut r = Reader::new(body, "ProposerGreeting");
            let version = r.u32_le("protocol_version")?;
            if version != PROTOCOL_VERSION {
                return Err(ProtocolError::invalid(
                    "ProposerGreeting",
                    "protocol_version",
                    format!("{version} in a v2 stream"),
                ));
            }
            let pg_version = r.u32_le("pg_version")?;
            r.array::<16>("proposer_id")?;
            let system_id = r.u64_le("system_id")?;
            let timeline_id = TimelineId(r.array("timeline_id")?);
            let tenant_id = TenantId(r.array("tenant_id")?);
            r.u32_le("pg_timeline")?;
            let wal_seg_size = r.u32_le("wal_seg_size")?;
            r.finish()?;
            ProposerMessage::Greeting(ProposerGreeting {
                tenant_id,
                timeline_id,
                mconf: Configuration::empty(),
                pg_version,
                system_id,
                wal_seg_size,
            })
        }
        VOTE_TAG => {
            let mut r = Reader::new(body, "VoteRequest");
            let term = Term(r.u64_le("term")?);
            r.array::<16>("proposer_id")?;
            r.finish()?;
            ProposerMessage::VoteRequest(VoteRequest {
                generation: Generation(0),
                term,
            })
        }
        ELECTED_TAG => {
            let mut r = Reader::new(body, "ProposerElected");
            let e = ProposerElected {
                generation: Generation(0),
                term: Term(r.u64_le("term")?),
                start_streaming_at: Lsn(r.u64_le("start_streaming_at")?),
                term_history: read_term_history(&mut r, Endian::Little)?,
            };
            r.u64_le("timeline_start_lsn")?;
            r.finish()?;
            ProposerMessage::Elected(e)
        }
        APPEND_TAG => {
            let mut r = Reader::new(body, "AppendRequest");
            let term = Term(r.u64_le("term")?);
            r.u64_le("epoch_start_lsn")?;
            let h = AppendRequestHeader {
                generation: Generation(0),
                term,
                begin_lsn: Lsn(r.u64_le("begin_lsn")?),
                end_lsn: Lsn(r.u64_le("end_lsn")?),
                commit_lsn: Lsn(r.u64_le("commit_lsn")?),
                truncate_lsn: Lsn(r.u64_le("truncate_lsn")?),
            };
            r.array::<16>("proposer_id")?;
            let wal_data = r.rest();
            check_append(&h, &wal_data, "AppendRequest")?;
            ProposerMessage::AppendRequest(AppendRequest { h, wal_data })
        }
        tag => return Err(unknown(tag, "v2 proposer message")),
    };
    Ok(msg)
}

/// Appends the v2 encoding of `msg` (the CopyData payload) to `buf`. Generations and
/// membership configurations are not part of v2 and are dropped.
pub fn encode_proposer(msg: &ProposerMessage, buf: &mut BytesMut) {
    match msg {
        ProposerMessage::Greeting(g) => {
            buf.put_u64_le(u64::from(GREETING_TAG));
            buf.put_u32_le(PROTOCOL_VERSION);
            buf.put_u32_le(g.pg_version);
            buf.put_bytes(0, 16);
            buf.put_u64_le(g.system_id);
            buf.put_slice(g.timeline_id.as_bytes());
            buf.put_slice(g.tenant_id.as_bytes());
            buf.put_u32_le(1);
            buf.put_u32_le(g.wal_seg_size);
        }
        ProposerMessage::VoteRequest(v) => {
            buf.put_u64_le(u64::from(VOTE_TAG));
            buf.put_u64_le(v.term.0);
            buf.put_bytes(0, 16);
        }
        ProposerMessage::Elected(e) => {
            buf.put_u64_le(u64::from(ELECTED_TAG));
            buf.put_u64_le(e.term.0);
            buf.put_u64_le(e.start_streaming_at.0);
            write_term_history(buf, &e.term_history, Endian::Little);
            let timeline_start = e.term_history.0.first().map_or(0, |t| t.lsn.0);
            buf.put_u64_le(timeline_start);
        }
        ProposerMessage::AppendRequest(a) => {
            buf.reserve(APPEND_REQUEST_HEADER_LEN + a.wal_data.len());
            buf.put_u64_le(u64::from(APPEND_TAG));
            buf.put_u64_le(a.h.term.0);
            buf.put_u64_le(0);
            buf.put_u64_le(a.h.begin_lsn.0);
            buf.put_u64_le(a.h.end_lsn.0);
            buf.put_u64_le(a.h.commit_lsn.0);
            buf.put_u64_le(a.h.truncate_lsn.0);
            buf.put_bytes(0, 16);
            buf.put_slice(&a.wal_data);
        }
    }
}

/// Decodes a v2 acceptor message from a whole CopyData payload.
pub fn decode_acceptor(payload: Bytes) -> Result<AcceptorMessage, ProtocolError> {
    let mut r = Reader::new(payload, "acceptor message");
    let tag = read_tag(&mut r)?;
    let body = r.rest();
    let msg = match tag {
        GREETING_TAG => {
            let mut r = Reader::new(body, "AcceptorGreeting");
            let term = Term(r.u64_le("term")?);
            let node_id = NodeId(r.u64_le("node_id")?);
            r.finish()?;
            AcceptorMessage::Greeting(AcceptorGreeting {
                node_id,
                mconf: Configuration::empty(),
                term,
            })
        }
        VOTE_TAG => {
            let mut r = Reader::new(body, "VoteResponse");
            let v = VoteResponse {
                generation: Generation(0),
                term: Term(r.u64_le("term")?),
                vote_given: r.u64_le("vote_given")? != 0,
                flush_lsn: Lsn(r.u64_le("flush_lsn")?),
                truncate_lsn: Lsn(r.u64_le("truncate_lsn")?),
                term_history: read_term_history(&mut r, Endian::Little)?,
            };
            r.u64_le("timeline_start_lsn")?;
            r.finish()?;
            AcceptorMessage::VoteResponse(v)
        }
        APPEND_TAG => {
            let mut r = Reader::new(body, "AppendResponse");
            let mut a = AppendResponse {
                generation: Generation(0),
                term: Term(r.u64_le("term")?),
                flush_lsn: Lsn(r.u64_le("flush_lsn")?),
                commit_lsn: Lsn(r.u64_le("commit_lsn")?),
                hs_feedback: HotStandbyFeedback {
                    ts: r.i64_le("hs_ts")?,
                    xmin: r.u64_le("hs_xmin")?,
                    catalog_xmin: r.u64_le("hs_catalog_xmin")?,
                },
                pageserver_feedback: None,
            };
            if r.remaining() > 0 {
                a.pageserver_feedback = Some(read_pageserver_feedback(&mut r)?);
            }
            r.finish()?;
            AcceptorMessage::AppendResponse(a)
        }
        tag => return Err(unknown(tag, "v2 acceptor message")),
    };
    Ok(msg)
}

/// Appends the v2 encoding of `msg` (the CopyData payload) to `buf`. The generation and
/// membership configuration are not part of v2 and are dropped.
pub fn encode_acceptor(msg: &AcceptorMessage, buf: &mut BytesMut) {
    match msg {
        AcceptorMessage::Greeting(g) => {
            buf.put_u64_le(u64::from(GREETING_TAG));
            buf.put_u64_le(g.term.0);
            buf.put_u64_le(g.node_id.0);
        }
        AcceptorMessage::VoteResponse(v) => {
            buf.put_u64_le(u64::from(VOTE_TAG));
            buf.put_u64_le(v.term.0);
            buf.put_u64_le(u64::from(v.vote_given));
            buf.put_u64_le(v.flush_lsn.0);
            buf.put_u64_le(v.truncate_lsn.0);
            write_term_history(buf, &v.term_history, Endian::Little);
            buf.put_u64_le(0);
        }
        AcceptorMessage::AppendResponse(a) => {
            buf.put_u64_le(u64::from(APPEND_TAG));
            buf.put_u64_le(a.term.0);
            buf.put_u64_le(a.flush_lsn.0);
            buf.put_u64_le(a.commit_lsn.0);
            buf.put_i64_le(a.hs_feedback.ts);
            buf.put_u64_le(a.hs_feedback.xmin);
            buf.put_u64_le(a.hs_feedback.catalog_xmin);
            if let Some(f) = &a.pageserver_feedback {
                f.write(buf);
            }
        }
    }
}
