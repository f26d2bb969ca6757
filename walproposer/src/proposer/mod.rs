//! The proposer as a synchronous state machine (ref §2.7): greetings from every
//! safekeeper, an election for a new term once a quorum has greeted, the donor choice,
//! per-safekeeper start points, AppendRequests, commit_lsn from the quorum's
//! acknowledged flush, heartbeats, reconnects with backoff, and stepping down when a
//! higher term shows up.
//!
//! Owns: every decision of the proposer. Must never: do I/O or read a clock. The driver
//! feeds [`Input`]s with the current time in milliseconds, performs the [`Output`]s, and
//! pulls WAL-carrying messages with [`Proposer::poll_send`] whenever it can send to a
//! safekeeper (its backpressure).
//!
//! The election lives in [`election`], streaming and commit in [`streaming`].

use std::collections::VecDeque;

use pq_proto::proposer::{
    AcceptorMessage, Configuration, Generation, ProposerGreeting, ProposerMessage, ProtocolVersion,
    VoteResponse,
};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::{Lsn, TenantId, Term, TermHistory, TimelineId};

use crate::window::WalWindow;
pub use quorum::{Quorums, list_ids};

mod election;
mod quorum;
mod streaming;
#[cfg(test)]
mod tests;

/// Index of a safekeeper in the configured list.
pub type SkId = usize;

/// What the proposer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Win a term and stream WAL that the driver appends.
    Stream,
    /// Win a term, bring a quorum to one end, report it ([`Output::Synced`]).
    Sync,
}

/// Settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Tenant of the timeline.
    pub tenant_id: TenantId,
    /// The timeline.
    pub timeline_id: TimelineId,
    /// PG_VERSION_NUM of the WAL (0 = unknown).
    pub pg_version: u32,
    /// System id of the cluster (0 = unknown).
    pub system_id: u64,
    /// WAL segment size.
    pub wal_seg_size: u32,
    /// Proposer protocol version.
    pub protocol: ProtocolVersion,
    /// Number of safekeepers.
    pub n_safekeepers: usize,
    /// The membership configuration sent in every greeting; its generation is carried by
    /// every v3 message. Either empty (generation 0: safekeepers check no membership; a
    /// majority of the list decides) or naming the `n_safekeepers` safekeepers in
    /// [`list_ids`] order (majorities of its members, and of its new members when joint,
    /// decide: [`Quorums`]). v2 carries none: keep it empty there (see
    /// [`crate::members::check_protocol`]).
    pub mconf: Configuration,
    /// The node id of each safekeeper of the list, when the list is not the
    /// configuration's own ([`list_ids`] order): e.g. every safekeeper a membership change
    /// may involve, members or not. `None`: the configuration's order.
    pub sk_ids: Option<Vec<utils::NodeId>>,
    /// Where a brand-new timeline starts (a record boundary of the source's WAL).
    pub timeline_start_lsn: Lsn,
    /// Stream or sync.
    pub mode: Mode,
    /// Largest WAL payload of one AppendRequest.
    pub max_append: usize,
    /// WAL kept in memory beyond what every streaming safekeeper acknowledged; older WAL
    /// a lagging safekeeper needs is fetched from a donor.
    pub max_window: u64,
    /// Idle time before an empty AppendRequest is sent.
    pub heartbeat_ms: u64,
    /// First reconnect delay; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    /// Longest reconnect delay.
    pub max_backoff_ms: u64,
    /// A connection silent this long while a reply is due (or while connecting) is
    /// dropped and retried.
    pub response_timeout_ms: u64,
}

impl Config {
    /// Defaults for a timeline.
    pub fn new(tenant_id: TenantId, timeline_id: TimelineId, n_safekeepers: usize) -> Self {
        Config {
            tenant_id,
            timeline_id,
            pg_version: 0,
            system_id: 0,
            wal_seg_size: 16 * 1024 * 1024,
            protocol: ProtocolVersion::V3,
            n_safekeepers,
            mconf: Configuration::empty(),
            sk_ids: None,
            timeline_start_lsn: Lsn::INVALID,
            mode: Mode::Stream,
            max_append: MAX_SEND_SIZE,
            max_window: 256 * 1024 * 1024,
            heartbeat_ms: 1000,
            min_backoff_ms: 100,
            max_backoff_ms: 5000,
            response_timeout_ms: 10_000,
        }
    }
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The connection to a safekeeper is up and in CopyBoth (START_WAL_PUSH accepted).
    Connected(SkId),
    /// The connection is gone (error, EOF, or the driver gave up on it).
    Disconnected(SkId),
    /// A message from a safekeeper.
    Message(SkId, AcceptorMessage),
    /// Time passed (heartbeats, reconnects).
    Tick,
}

/// Something to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a connection and send `START_WAL_PUSH`; report [`Input::Connected`] or
    /// [`Input::Disconnected`].
    Connect(SkId),
    /// Close the connection (a protocol violation by the safekeeper); no Disconnected
    /// needs to be reported for it.
    Disconnect(SkId, String),
    /// Send a control message.
    Send(SkId, ProposerMessage),
    /// The term is won: WAL of the source is expected from `term_start_lsn` on.
    Elected {
        /// The term.
        term: Term,
        /// Where this term's WAL starts.
        term_start_lsn: Lsn,
    },
    /// WAL `[from, to)` is needed but not held: read it from `donor` with
    /// `START_REPLICATION … (term='term')` and hand it over with
    /// [`Proposer::provide_wal`] (or report [`Proposer::fetch_failed`]).
    NeedWal {
        /// First byte needed.
        from: Lsn,
        /// End of the bytes needed (the window's base).
        to: Lsn,
        /// A safekeeper holding them in this term.
        donor: SkId,
        /// The term to ask for.
        term: Term,
    },
    /// The quorum commit LSN moved.
    Committed(Lsn),
    /// Sync mode: a quorum holds WAL up to this LSN and every live safekeeper knows it.
    Synced(Lsn),
    /// A safekeeper holds a configuration of a higher generation (an operator changed
    /// the membership): this proposer is done; a new one with that configuration (and the
    /// safekeepers it names) takes over, as a compute restarts its walproposer.
    Reconfigure(Configuration),
    /// A higher term exists: this proposer is done.
    SteppedDown {
        /// The term seen.
        term: Term,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Offline {
        retry_at: u64,
    },
    Connecting,
    /// Greeting sent.
    Greeting,
    /// Greeted; waiting for the campaign.
    Greeted,
    /// VoteRequest sent.
    Voting,
    /// Voted for us, before the election completed.
    Voted(VoteResponse),
    /// ProposerElected sent; streaming.
    Streaming,
}

#[derive(Clone, Debug)]
struct Sk {
    phase: Phase,
    backoff_ms: u64,
    /// Highest flush_lsn acknowledged in this term (0 if none).
    flush_lsn: Lsn,
    /// Last flush_lsn known (any term), for truncate_lsn.
    last_flush_lsn: Lsn,
    /// commit_lsn it last reported.
    commit_lsn: Lsn,
    /// Where streaming to it started (the highest common point).
    start_lsn: Lsn,
    /// Next byte to send.
    next_lsn: Lsn,
    /// commit_lsn last sent to it.
    sent_commit: Lsn,
    /// When anything was last sent.
    last_sent_ms: u64,
    /// When the connection was started or last delivered a message.
    last_heard_ms: u64,
    /// An AppendRequest is due right away (just elected: learn its flush_lsn).
    probe: bool,
}

/// The proposer.
#[derive(Debug)]
pub struct Proposer {
    conf: Config,
    quorums: Quorums,
    sks: Vec<Sk>,
    now_ms: u64,
    /// The term being campaigned for / won.
    term: Term,
    /// Highest term seen in greetings.
    max_term_seen: Term,
    campaigning: bool,
    elected: Option<ElectedState>,
    done: bool,
    window: WalWindow,
    fetching: Option<(Lsn, Lsn)>,
    /// WAL fetched for a safekeeper further behind than the window reaches: `[lsn,
    /// lsn + len)`, below the window's base and not adjacent to it (at most half the
    /// window's budget), sent from here until that safekeeper reaches the window.
    side: Option<(Lsn, bytes::Bytes)>,
    commit_lsn: Lsn,
    truncate_lsn: Lsn,
    /// Highest flush_lsn any safekeeper acknowledged in this term: WAL below it can be
    /// fetched back from a donor, so the window may drop it.
    max_acked_flush: Lsn,
    synced: bool,
    outputs: VecDeque<Output>,
}

#[derive(Debug, Clone)]
struct ElectedState {
    term_start_lsn: Lsn,
    history: TermHistory,
    donor: SkId,
}

impl Proposer {
    /// A proposer that will connect to every safekeeper.
    pub fn new(conf: Config) -> Self {
        let sks = (0..conf.n_safekeepers)
            .map(|_| Sk {
                phase: Phase::Offline { retry_at: 0 },
                backoff_ms: conf.min_backoff_ms,
                flush_lsn: Lsn::INVALID,
                last_flush_lsn: Lsn::INVALID,
                commit_lsn: Lsn::INVALID,
                start_lsn: Lsn::INVALID,
                next_lsn: Lsn::INVALID,
                sent_commit: Lsn::INVALID,
                last_sent_ms: 0,
                last_heard_ms: 0,
                probe: false,
            })
            .collect();
        let mut p = Proposer {
            quorums: Quorums::new(conf.n_safekeepers, &conf.mconf, conf.sk_ids.as_deref()),
            conf,
            sks,
            now_ms: 0,
            term: Term(0),
            max_term_seen: Term(0),
            campaigning: false,
            elected: None,
            done: false,
            window: WalWindow::new(Lsn::INVALID),
            fetching: None,
            side: None,
            commit_lsn: Lsn::INVALID,
            truncate_lsn: Lsn::INVALID,
            max_acked_flush: Lsn::INVALID,
            synced: false,
            outputs: VecDeque::new(),
        };
        p.reconnect_due();
        p
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.conf
    }

    /// The term campaigned for or won.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Where the won term's WAL starts.
    pub fn term_start_lsn(&self) -> Option<Lsn> {
        self.elected.as_ref().map(|e| e.term_start_lsn)
    }

    /// The safekeeper whose WAL the election chose as the most advanced (after the
    /// election): it holds everything below the term start.
    pub fn donor(&self) -> Option<SkId> {
        self.elected.as_ref().map(|e| e.donor)
    }

    /// The history this proposer imposes (after the election).
    pub fn history(&self) -> Option<&TermHistory> {
        self.elected.as_ref().map(|e| &e.history)
    }

    /// The quorum commit LSN.
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }

    /// End of the WAL the proposer holds (where the source appends next).
    pub fn end_lsn(&self) -> Lsn {
        self.window.end()
    }

    /// True once stepped down (or synced, in sync mode).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True if the safekeeper is connected and streaming in our term.
    pub fn is_streaming(&self, sk: SkId) -> bool {
        self.sks[sk].phase == Phase::Streaming
    }

    /// True if every configured safekeeper streams and reported commit_lsn ≥ `lsn`.
    pub fn all_committed(&self, lsn: Lsn) -> bool {
        self.sks
            .iter()
            .all(|s| s.phase == Phase::Streaming && s.commit_lsn >= lsn)
    }

    /// True if every safekeeper that is not offline streams and reported commit_lsn ≥
    /// `lsn`, and at least a quorum does.
    pub fn all_streaming_committed(&self, lsn: Lsn) -> bool {
        let done = |s: &Sk| s.phase == Phase::Streaming && s.commit_lsn >= lsn;
        self.sks
            .iter()
            .all(|s| matches!(s.phase, Phase::Offline { .. }) || done(s))
            && self.quorums.reached(|sk| done(&self.sks[sk]))
    }

    /// Takes the outputs produced so far.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        self.outputs.drain(..).collect()
    }

    /// Handles one input at time `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.done {
            return;
        }
        match input {
            Input::Connected(sk) => self.on_connected(sk),
            Input::Disconnected(sk) => self.on_disconnected(sk),
            Input::Message(sk, m) => {
                self.sks[sk].last_heard_ms = self.now_ms;
                self.on_message(sk, m)
            }
            Input::Tick => {}
        }
        self.drop_silent();
        self.reconnect_due();
    }

    /// Drops connections that owe a reply (or are still connecting) and have been silent
    /// for `response_timeout_ms`: a blackholed peer never closes its end.
    fn drop_silent(&mut self) {
        for sk in 0..self.sks.len() {
            let s = &self.sks[sk];
            let waiting = matches!(
                s.phase,
                Phase::Connecting | Phase::Greeting | Phase::Voting | Phase::Streaming
            );
            if waiting && self.now_ms >= s.last_heard_ms + self.conf.response_timeout_ms {
                let silent = self.now_ms - s.last_heard_ms;
                self.fail(sk, format!("no answer for {silent} ms"));
            }
        }
    }

    pub(super) fn on_connected(&mut self, sk: SkId) {
        if self.sks[sk].phase != Phase::Connecting {
            return;
        }
        self.sks[sk].phase = Phase::Greeting;
        self.sks[sk].last_heard_ms = self.now_ms;
        let g = ProposerGreeting {
            tenant_id: self.conf.tenant_id,
            timeline_id: self.conf.timeline_id,
            mconf: self.conf.mconf.clone(),
            pg_version: self.conf.pg_version,
            system_id: self.conf.system_id,
            wal_seg_size: self.conf.wal_seg_size,
        };
        self.send(sk, ProposerMessage::Greeting(g));
    }

    pub(super) fn on_disconnected(&mut self, sk: SkId) {
        let s = &mut self.sks[sk];
        if matches!(s.phase, Phase::Offline { .. }) {
            return;
        }
        // A connection that got as far as streaming resets the backoff.
        if s.phase == Phase::Streaming {
            s.backoff_ms = self.conf.min_backoff_ms;
        }
        s.phase = Phase::Offline {
            retry_at: self.now_ms + s.backoff_ms,
        };
        s.backoff_ms = (s.backoff_ms * 2).min(self.conf.max_backoff_ms);
        s.flush_lsn = Lsn::INVALID;
        s.commit_lsn = Lsn::INVALID;
    }

    pub(super) fn reconnect_due(&mut self) {
        for (i, s) in self.sks.iter_mut().enumerate() {
            if let Phase::Offline { retry_at } = s.phase
                && retry_at <= self.now_ms
            {
                s.phase = Phase::Connecting;
                s.last_heard_ms = self.now_ms;
                self.outputs.push_back(Output::Connect(i));
            }
        }
    }

    pub(super) fn send(&mut self, sk: SkId, m: ProposerMessage) {
        self.sks[sk].last_sent_ms = self.now_ms;
        self.outputs.push_back(Output::Send(sk, m));
    }

    pub(super) fn fail(&mut self, sk: SkId, why: String) {
        self.outputs.push_back(Output::Disconnect(sk, why));
        self.sks[sk].phase = Phase::Connecting; // so on_disconnected applies the backoff
        self.on_disconnected(sk);
    }

    pub(super) fn step_down(&mut self, term: Term, reason: String) {
        self.done = true;
        self.outputs.push_back(Output::SteppedDown { term, reason });
    }

    /// The generation every v3 message carries: the configured one (a safekeeper refuses
    /// messages of a generation other than its own).
    pub(super) fn generation(&self) -> Generation {
        self.conf.mconf.generation
    }
}
