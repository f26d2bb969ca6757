//! The proposer/acceptor protocol (Neon's walproposer protocol): one typed set of messages
//! with two codecs, v3 (big-endian, tag byte, generations) in [`v3`] and the legacy v2
//! (little-endian packed C structs, u64 tags) in [`v2`].
//!
//! Every message travels as the payload of one CopyData frame; [`ProposerMessage::decode`]
//! and [`AcceptorMessage::decode`] take that payload whole. [`parse_proposer_frame`] and
//! [`parse_acceptor_frame`] work on a raw byte stream instead (`Ok(None)` = need more bytes).

use bytes::{Bytes, BytesMut};
use utils::{Lsn, NodeId, TenantId, Term, TimelineId};

use crate::ProtocolError;

mod frame;
mod shared;
pub mod v2;
pub mod v3;

pub use frame::{
    parse_acceptor_frame, parse_proposer_frame, write_acceptor_frame, write_proposer_frame,
};
pub use shared::{APPEND_TAG, ELECTED_TAG, GREETING_TAG, VOTE_TAG};

/// Most WAL bytes one AppendRequest may carry. The codec does not enforce it (a frame's
/// own length limit does); the server refuses larger requests.
pub const MAX_APPEND_SIZE: usize = crate::replication::MAX_SEND_SIZE;

/// Which codec a `START_WAL_PUSH` connection uses; fixed for the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Legacy: little-endian packed structs, no generations. The default when
    /// `START_WAL_PUSH` carries no options.
    V2,
    /// Current: big-endian, a tag byte, membership generation in every message.
    V3,
}

impl ProtocolVersion {
    /// The number used in `START_WAL_PUSH (proto_version 'N')`.
    pub fn number(self) -> u32 {
        match self {
            ProtocolVersion::V2 => 2,
            ProtocolVersion::V3 => 3,
        }
    }
}

/// Number of a membership configuration; 0 = none (legacy, and always in v2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u32);

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One safekeeper as named in a membership configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SafekeeperId {
    /// Its node id.
    pub id: NodeId,
    /// Host name or address of its Postgres-protocol listener.
    pub host: String,
    /// Port of that listener.
    pub pg_port: u16,
}

/// A membership configuration: the set of safekeepers whose majority decides, and during
/// a change (joint consensus) the new set as well.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Configuration {
    /// Its number; configurations only ever move to a higher generation.
    pub generation: Generation,
    /// The members.
    pub members: Vec<SafekeeperId>,
    /// The members being switched to, in a joint configuration.
    pub new_members: Option<Vec<SafekeeperId>>,
}

impl Configuration {
    /// The empty configuration of generation 0 (what computes send in their greeting).
    pub fn empty() -> Self {
        Self::default()
    }
}

pub use utils::term_history::{TermHistory, TermLsn};

/// Hot-standby feedback aggregated over a timeline's replicas and relayed to the compute.
/// Transaction ids are FullTransactionIds (`epoch << 32 | xid`); all zeros = none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HotStandbyFeedback {
    /// When it was sent (PostgreSQL timestamp: µs since 2000-01-01 UTC).
    pub ts: i64,
    /// Oldest xmin a standby still needs.
    pub xmin: u64,
    /// Oldest catalog xmin a standby still needs.
    pub catalog_xmin: u64,
}

/// What a pageserver reports about its progress (the `z` reply and the optional tail of an
/// AppendResponse). The same big-endian key/value encoding in v2 and v3.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageserverFeedback {
    /// `current_timeline_size`.
    pub current_timeline_size: u64,
    /// `ps_writelsn`: last WAL position received.
    pub last_received_lsn: Lsn,
    /// `ps_flushlsn`: last position made durable locally.
    pub disk_consistent_lsn: Lsn,
    /// `ps_applylsn`: last position made durable in remote storage.
    pub remote_consistent_lsn: Lsn,
    /// `ps_replytime`: PostgreSQL timestamp of the reply.
    pub replytime: i64,
    /// `shard_number`: written only when non-zero.
    pub shard_number: u32,
    /// `corruption_detected`: written only when true.
    pub corruption_detected: bool,
}

/// P→A: the first message of every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposerGreeting {
    /// Tenant of the timeline.
    pub tenant_id: TenantId,
    /// The timeline.
    pub timeline_id: TimelineId,
    /// The proposer's membership configuration (computes send the empty one).
    pub mconf: Configuration,
    /// PG_VERSION_NUM of the compute (e.g. 150004); 0 = unknown.
    pub pg_version: u32,
    /// The cluster's system identifier; 0 = unknown.
    pub system_id: u64,
    /// WAL segment size in bytes.
    pub wal_seg_size: u32,
}

/// A→P: answer to the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptorGreeting {
    /// The acceptor's node id.
    pub node_id: NodeId,
    /// The acceptor's current configuration (v2: not sent, empty on decode).
    pub mconf: Configuration,
    /// The acceptor's current term.
    pub term: Term,
}

/// P→A: asks for a vote in `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    /// Must equal the acceptor's generation (v2: 0).
    pub generation: Generation,
    /// The term being campaigned for.
    pub term: Term,
}

/// A→P: the vote, and what the acceptor holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    /// The acceptor's generation.
    pub generation: Generation,
    /// The acceptor's term after handling the request (the real term on a refusal).
    pub term: Term,
    /// Whether the vote was granted.
    pub vote_given: bool,
    /// End of the acceptor's durable WAL (a record boundary).
    pub flush_lsn: Lsn,
    /// The acceptor's peer horizon (oldest LSN some safekeeper may still need).
    pub truncate_lsn: Lsn,
    /// The acceptor's term history, cut at `flush_lsn`.
    pub term_history: TermHistory,
}

/// P→A: the proposer won; start taking its WAL at `start_streaming_at`. No reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposerElected {
    /// Must equal the acceptor's generation.
    pub generation: Generation,
    /// The elected term.
    pub term: Term,
    /// Highest common point of the two histories: where this acceptor's WAL continues.
    pub start_streaming_at: Lsn,
    /// The proposer's full term history (its last entry is `(term, term start LSN)`).
    pub term_history: TermHistory,
}

/// The fixed part of an AppendRequest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendRequestHeader {
    /// Must equal the acceptor's generation.
    pub generation: Generation,
    /// The proposer's term.
    pub term: Term,
    /// First LSN of the WAL carried.
    pub begin_lsn: Lsn,
    /// End LSN of the WAL carried; `end - begin` bytes follow (0 = heartbeat).
    pub end_lsn: Lsn,
    /// The proposer's commit LSN (quorum-flushed WAL).
    pub commit_lsn: Lsn,
    /// The proposer's truncate LSN (peer horizon).
    pub truncate_lsn: Lsn,
}

/// P→A: WAL to append (or a heartbeat).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// The header.
    pub h: AppendRequestHeader,
    /// Exactly `end_lsn - begin_lsn` bytes of WAL.
    pub wal_data: Bytes,
}

/// A→P: what the acceptor has made durable, and feedback from its readers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendResponse {
    /// The acceptor's generation.
    pub generation: Generation,
    /// The acceptor's term; above the proposer's means "step down".
    pub term: Term,
    /// End of durable WAL (a record boundary); 0 in a term-only response.
    pub flush_lsn: Lsn,
    /// The acceptor's commit LSN; 0 in a term-only response.
    pub commit_lsn: Lsn,
    /// Aggregated hot-standby feedback of the timeline's replicas.
    pub hs_feedback: HotStandbyFeedback,
    /// The latest pageserver feedback, when there is one to relay.
    pub pageserver_feedback: Option<PageserverFeedback>,
}

/// Everything a proposer sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposerMessage {
    /// `g`
    Greeting(ProposerGreeting),
    /// `v`
    VoteRequest(VoteRequest),
    /// `e`
    Elected(ProposerElected),
    /// `a`
    AppendRequest(AppendRequest),
}

/// Everything an acceptor sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcceptorMessage {
    /// `g`
    Greeting(AcceptorGreeting),
    /// `v`
    VoteResponse(VoteResponse),
    /// `a`
    AppendResponse(AppendResponse),
}

impl ProposerMessage {
    /// Decodes one message from a whole CopyData payload. Trailing bytes are an error.
    pub fn decode(payload: Bytes, version: ProtocolVersion) -> Result<Self, ProtocolError> {
        match version {
            ProtocolVersion::V2 => v2::decode_proposer(payload),
            ProtocolVersion::V3 => v3::decode_proposer(payload),
        }
    }

    /// Appends the encoded payload (not the CopyData frame) to `buf`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match version {
            ProtocolVersion::V2 => v2::encode_proposer(self, buf),
            ProtocolVersion::V3 => v3::encode_proposer(self, buf),
        }
    }
}

impl AcceptorMessage {
    /// Decodes one message from a whole CopyData payload. Trailing bytes are an error
    /// (except the optional pageserver feedback of an AppendResponse).
    pub fn decode(payload: Bytes, version: ProtocolVersion) -> Result<Self, ProtocolError> {
        match version {
            ProtocolVersion::V2 => v2::decode_acceptor(payload),
            ProtocolVersion::V3 => v3::decode_acceptor(payload),
        }
    }

    /// Appends the encoded payload (not the CopyData frame) to `buf`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match version {
            ProtocolVersion::V2 => v2::encode_acceptor(self, buf),
            ProtocolVersion::V3 => v3::encode_acceptor(self, buf),
        }
    }
}

#[cfg(test)]
mod tests;
