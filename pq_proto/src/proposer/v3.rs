//! Protocol v3 codec: a one-byte tag, then the fields in order, big-endian, no padding
//! (ref §2.3). Membership configurations in the greetings, a generation in every other
//! message.
//!
//! Owns: the v3 byte layouts. Must never: validate values that are the server's to judge
//! (pg_version, terms, generations), or accept trailing bytes (except the optional
//! pageserver feedback that may end an AppendResponse).

use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use utils::{Lsn, NodeId, TenantId, Term, TimelineId};

use super::shared::{
    APPEND_TAG, ELECTED_TAG, Endian, GREETING_TAG, VOTE_TAG, check_append, read_mconf,
    read_pageserver_feedback, read_term_history, write_mconf, write_term_history,
};
use super::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Generation, HotStandbyFeedback, ProposerElected, ProposerGreeting, ProposerMessage,
    VoteRequest, VoteResponse,
};
use crate::ProtocolError;
use crate::codec::{Reader, put_cstr};

/// Size of a v3 AppendRequest before its WAL, tag included.
pub const APPEND_REQUEST_HEADER_LEN: usize = 1 + 4 + 8 * 5;
/// Size of a v3 AppendResponse without pageserver feedback, tag included.
pub const APPEND_RESPONSE_FIXED_LEN: usize = 1 + 4 + 8 * 6;

fn unknown(tag: u8, context: &'static str) -> ProtocolError {
    ProtocolError::UnknownTag { tag, context }
}

/// A tenant or timeline id sent as 32 hex characters.
fn read_id<T: FromStr<Err = utils::IdParseError>>(
    r: &mut Reader,
    field: &'static str,
) -> Result<T, ProtocolError> {
    let s = r.cstring(field)?;
    s.parse()
        .map_err(|e: utils::IdParseError| ProtocolError::invalid(r.message(), field, e.to_string()))
}

/// Decodes a v3 proposer message from a whole CopyData payload.
pub fn decode_proposer(payload: Bytes) -> Result<ProposerMessage, ProtocolError> {
    let mut r = Reader::new(payload, "proposer message");
    let tag = r.u8("tag")?;
    let body = r.rest();
    let msg = match tag {
        GREETING_TAG => {
            let mut r = Reader::new(body, "ProposerGreeting");
            let g = ProposerGreeting {
                tenant_id: read_id::<TenantId>(&mut r, "tenant_id")?,
                timeline_id: read_id::<TimelineId>(&mut r, "timeline_id")?,
                mconf: read_mconf(&mut r)?,
                pg_version: r.u32("pg_version")?,
                system_id: r.u64("system_id")?,
                wal_seg_size: r.u32("wal_seg_size")?,
            };
            r.finish()?;
            ProposerMessage::Greeting(g)
        }
        VOTE_TAG => {
            let mut r = Reader::new(body, "VoteRequest");
            let v = VoteRequest {
                generation: Generation(r.u32("generation")?),
                term: Term(r.u64("term")?),
            };
            r.finish()?;
            ProposerMessage::VoteRequest(v)
        }
        ELECTED_TAG => {
            let mut r = Reader::new(body, "ProposerElected");
            let e = ProposerElected {
                generation: Generation(r.u32("generation")?),
                term: Term(r.u64("term")?),
                start_streaming_at: Lsn(r.u64("start_streaming_at")?),
                term_history: read_term_history(&mut r, Endian::Big)?,
            };
            r.finish()?;
            ProposerMessage::Elected(e)
        }
        APPEND_TAG => {
            let mut r = Reader::new(body, "AppendRequest");
            let h = AppendRequestHeader {
                generation: Generation(r.u32("generation")?),
                term: Term(r.u64("term")?),
                begin_lsn: Lsn(r.u64("begin_lsn")?),
                end_lsn: Lsn(r.u64("end_lsn")?),
                commit_lsn: Lsn(r.u64("commit_lsn")?),
                truncate_lsn: Lsn(r.u64("truncate_lsn")?),
            };
            let wal_data = r.rest();
            check_append(&h, &wal_data, "AppendRequest")?;
            ProposerMessage::AppendRequest(AppendRequest { h, wal_data })
        }
        tag => return Err(unknown(tag, "v3 proposer message")),
    };
    Ok(msg)
}

/// Appends the v3 encoding of `msg` (the CopyData payload) to `buf`.
pub fn encode_proposer(msg: &ProposerMessage, buf: &mut BytesMut) {
    match msg {
        ProposerMessage::Greeting(g) => {
            buf.put_u8(GREETING_TAG);
            put_cstr(buf, g.tenant_id.to_string().as_bytes());
            put_cstr(buf, g.timeline_id.to_string().as_bytes());
            write_mconf(buf, &g.mconf);
            buf.put_u32(g.pg_version);
            buf.put_u64(g.system_id);
            buf.put_u32(g.wal_seg_size);
        }
        ProposerMessage::VoteRequest(v) => {
            buf.put_u8(VOTE_TAG);
            buf.put_u32(v.generation.0);
            buf.put_u64(v.term.0);
        }
        ProposerMessage::Elected(e) => {
            buf.put_u8(ELECTED_TAG);
            buf.put_u32(e.generation.0);
            buf.put_u64(e.term.0);
            buf.put_u64(e.start_streaming_at.0);
            write_term_history(buf, &e.term_history, Endian::Big);
        }
        ProposerMessage::AppendRequest(a) => {
            buf.reserve(APPEND_REQUEST_HEADER_LEN + a.wal_data.len());
            buf.put_u8(APPEND_TAG);
            buf.put_u32(a.h.generation.0);
            buf.put_u64(a.h.term.0);
            buf.put_u64(a.h.begin_lsn.0);
            buf.put_u64(a.h.end_lsn.0);
            buf.put_u64(a.h.commit_lsn.0);
            buf.put_u64(a.h.truncate_lsn.0);
            buf.put_slice(&a.wal_data);
        }
    }
}

/// Decodes a v3 acceptor message from a whole CopyData payload.
pub fn decode_acceptor(payload: Bytes) -> Result<AcceptorMessage, ProtocolError> {
    let mut r = Reader::new(payload, "acceptor message");
    let tag = r.u8("tag")?;
    let body = r.rest();
    let msg = match tag {
        GREETING_TAG => {
            let mut r = Reader::new(body, "AcceptorGreeting");
            let g = AcceptorGreeting {
                node_id: NodeId(r.u64("node_id")?),
                mconf: read_mconf(&mut r)?,
                term: Term(r.u64("term")?),
            };
            r.finish()?;
            AcceptorMessage::Greeting(g)
        }
        VOTE_TAG => {
            let mut r = Reader::new(body, "VoteResponse");
            let v = VoteResponse {
                generation: Generation(r.u32("generation")?),
                term: Term(r.u64("term")?),
                vote_given: r.u8("vote_given")? != 0,
                flush_lsn: Lsn(r.u64("flush_lsn")?),
                truncate_lsn: Lsn(r.u64("truncate_lsn")?),
                term_history: read_term_history(&mut r, Endian::Big)?,
            };
            r.finish()?;
            AcceptorMessage::VoteResponse(v)
        }
        APPEND_TAG => {
            let mut r = Reader::new(body, "AppendResponse");
            let mut a = AppendResponse {
                generation: Generation(r.u32("generation")?),
                term: Term(r.u64("term")?),
                flush_lsn: Lsn(r.u64("flush_lsn")?),
                commit_lsn: Lsn(r.u64("commit_lsn")?),
                hs_feedback: HotStandbyFeedback {
                    ts: r.i64("hs_ts")?,
                    xmin: r.u64("hs_xmin")?,
                    catalog_xmin: r.u64("hs_catalog_xmin")?,
                },
                pageserver_feedback: None,
            };
            if r.remaining() > 0 {
                a.pageserver_feedback = Some(read_pageserver_feedback(&mut r)?);
            }
            r.finish()?;
            AcceptorMessage::AppendResponse(a)
        }
        tag => return Err(unknown(tag, "v3 acceptor message")),
    };
    Ok(msg)
}

/// Appends the v3 encoding of `msg` (the CopyData payload) to `buf`.
pub fn encode_acceptor(msg: &AcceptorMessage, buf: &mut BytesMut) {
    match msg {
        AcceptorMessage::Greeting(g) => {
            buf.put_u8(GREETING_TAG);
            buf.put_u64(g.node_id.0);
            write_mconf(buf, &g.mconf);
            buf.put_u64(g.term.0);
        }
        AcceptorMessage::VoteResponse(v) => {
            buf.put_u8(VOTE_TAG);
            buf.put_u32(v.generation.0);
            buf.put_u64(v.term.0);
            buf.put_u8(u8::from(v.vote_given));
            buf.put_u64(v.flush_lsn.0);
            buf.put_u64(v.truncate_lsn.0);
            write_term_history(buf, &v.term_history, Endian::Big);
        }
        AcceptorMessage::AppendResponse(a) => {
            buf.put_u8(APPEND_TAG);
            buf.put_u32(a.generation.0);
            buf.put_u64(a.term.0);
            buf.put_u64(a.flush_lsn.0);
            buf.put_u64(a.commit_lsn.0);
            buf.put_i64(a.hs_feedback.ts);
            buf.put_u64(a.hs_feedback.xmin);
            buf.put_u64(a.hs_feedback.catalog_xmin);
            if let Some(f) = &a.pageserver_feedback {
                f.write(buf);
            }
        }
    }
}
