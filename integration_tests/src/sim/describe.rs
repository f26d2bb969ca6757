//! One-line descriptions of protocol messages and effects for the verbose event log.
//!
//! Owns: formatting only. Must never: print WAL bytes (a message can carry 128 KiB).

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use safekeeper::acceptor::Effect;

/// A proposer message in one line.
pub fn proposer_msg(m: &ProposerMessage) -> String {
    match m {
        ProposerMessage::Greeting(_) => "Greeting".into(),
        ProposerMessage::VoteRequest(v) => format!("VoteRequest(term {})", v.term),
        ProposerMessage::Elected(e) => format!(
            "Elected(term {}, start {}, history {})",
            e.term,
            e.start_streaming_at,
            history(&e.term_history)
        ),
        ProposerMessage::AppendRequest(a) => format!(
            "Append(term {}, {}..{}, commit {})",
            a.h.term, a.h.begin_lsn, a.h.end_lsn, a.h.commit_lsn
        ),
    }
}

/// An acceptor message in one line.
pub fn acceptor_msg(m: &AcceptorMessage) -> String {
    match m {
        AcceptorMessage::Greeting(g) => format!("AcceptorGreeting(term {})", g.term),
        AcceptorMessage::VoteResponse(v) => format!(
            "VoteResponse(term {}, given {}, flush {}, history {})",
            v.term,
            v.vote_given,
            v.flush_lsn,
            history(&v.term_history)
        ),
        AcceptorMessage::AppendResponse(r) => format!(
            "AppendResponse(term {}, flush {}, commit {})",
            r.term, r.flush_lsn, r.commit_lsn
        ),
    }
}

/// An effect in one line.
pub fn effect(e: &Effect) -> String {
    match e {
        Effect::InitWal { start, .. } => format!("InitWal({start})"),
        Effect::WriteWal { lsn, data } => format!("WriteWal({lsn}+{})", data.len()),
        Effect::FlushWal => "FlushWal".into(),
        Effect::TruncateWal { end } => format!("TruncateWal({end})"),
        Effect::PersistControl(s) => format!(
            "PersistControl(term {}, commit {}, history {})",
            s.term,
            s.commit_lsn,
            history(&s.term_history)
        ),
    }
}

/// A term history as `[t@lsn, ...]`.
pub fn history(h: &utils::TermHistory) -> String {
    let items: Vec<String> =
        h.0.iter()
            .map(|e| format!("{}@{}", e.term, e.lsn))
            .collect();
    format!("[{}]", items.join(", "))
}
