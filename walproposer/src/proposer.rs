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

use std::collections::VecDeque;

use bytes::Bytes;
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, ProposerElected, ProposerGreeting, ProposerMessage, ProtocolVersion,
    VoteRequest, VoteResponse,
};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::{Lsn, TenantId, Term, TermHistory, TermLsn, TimelineId};

use crate::window::WalWindow;

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
            timeline_start_lsn: Lsn::INVALID,
            mode: Mode::Stream,
            max_append: MAX_SEND_SIZE,
            max_window: 256 * 1024 * 1024,
            heartbeat_ms: 1000,
            min_backoff_ms: 100,
            max_backoff_ms: 5000,
        }
    }

    /// Votes (and acknowledgements) needed: a majority.
    pub fn quorum(&self) -> usize {
        self.n_safekeepers / 2 + 1
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
    /// An AppendRequest is due right away (just elected: learn its flush_lsn).
    probe: bool,
}

/// The proposer.
#[derive(Debug)]
pub struct Proposer {
    conf: Config,
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
    commit_lsn: Lsn,
    truncate_lsn: Lsn,
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
                probe: false,
            })
            .collect();
        let mut p = Proposer {
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
            commit_lsn: Lsn::INVALID,
            truncate_lsn: Lsn::INVALID,
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
        let mut streaming = 0;
        for s in &self.sks {
            match s.phase {
                Phase::Offline { .. } => {}
                Phase::Streaming if s.commit_lsn >= lsn => streaming += 1,
                _ => return false,
            }
        }
        streaming >= self.conf.quorum()
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
            Input::Message(sk, m) => self.on_message(sk, m),
            Input::Tick => {}
        }
        self.reconnect_due();
    }

    fn on_connected(&mut self, sk: SkId) {
        if self.sks[sk].phase != Phase::Connecting {
            return;
        }
        self.sks[sk].phase = Phase::Greeting;
        let g = ProposerGreeting {
            tenant_id: self.conf.tenant_id,
            timeline_id: self.conf.timeline_id,
            mconf: Configuration::empty(),
            pg_version: self.conf.pg_version,
            system_id: self.conf.system_id,
            wal_seg_size: self.conf.wal_seg_size,
        };
        self.send(sk, ProposerMessage::Greeting(g));
    }

    fn on_disconnected(&mut self, sk: SkId) {
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

    fn reconnect_due(&mut self) {
        for (i, s) in self.sks.iter_mut().enumerate() {
            if let Phase::Offline { retry_at } = s.phase
                && retry_at <= self.now_ms
            {
                s.phase = Phase::Connecting;
                self.outputs.push_back(Output::Connect(i));
            }
        }
    }

    fn send(&mut self, sk: SkId, m: ProposerMessage) {
        self.sks[sk].last_sent_ms = self.now_ms;
        self.outputs.push_back(Output::Send(sk, m));
    }

    fn fail(&mut self, sk: SkId, why: String) {
        self.outputs.push_back(Output::Disconnect(sk, why));
        self.sks[sk].phase = Phase::Connecting; // so on_disconnected applies the backoff
        self.on_disconnected(sk);
    }

    fn step_down(&mut self, term: Term, reason: String) {
        self.done = true;
        self.outputs.push_back(Output::SteppedDown { term, reason });
    }

    fn generation(&self) -> Generation {
        Generation(0)
    }

    fn on_message(&mut self, sk: SkId, m: AcceptorMessage) {
        let phase = self.sks[sk].phase.clone();
        match (phase, m) {
            (Phase::Greeting, AcceptorMessage::Greeting(g)) => self.on_greeting(sk, g),
            (Phase::Voting, AcceptorMessage::VoteResponse(v)) => self.on_vote(sk, v),
            (Phase::Streaming, AcceptorMessage::AppendResponse(r)) => {
                self.on_append_response(sk, r)
            }
            (Phase::Offline { .. } | Phase::Connecting, _) => {} // from a connection already given up
            (p, m) => self.fail(sk, format!("unexpected {m:?} in state {p:?}")),
        }
    }

    fn on_greeting(&mut self, sk: SkId, g: AcceptorGreeting) {
        self.max_term_seen = self.max_term_seen.max(g.term);
        self.sks[sk].phase = Phase::Greeted;
        if self.elected.is_some() || self.campaigning {
            if g.term > self.term {
                // Someone else campaigns in a later term.
                return self.step_down(
                    g.term,
                    format!(
                        "safekeeper {sk} is at term {}, ours is {}",
                        g.term, self.term
                    ),
                );
            }
            self.request_vote(sk);
            return;
        }
        let greeted = self
            .sks
            .iter()
            .filter(|s| s.phase == Phase::Greeted)
            .count();
        if greeted >= self.conf.quorum() {
            self.campaigning = true;
            self.term = Term(self.max_term_seen.0 + 1);
            for i in 0..self.sks.len() {
                if self.sks[i].phase == Phase::Greeted {
                    self.request_vote(i);
                }
            }
        }
    }

    fn request_vote(&mut self, sk: SkId) {
        self.sks[sk].phase = Phase::Voting;
        let v = VoteRequest {
            generation: self.generation(),
            term: self.term,
        };
        self.send(sk, ProposerMessage::VoteRequest(v));
    }

    fn on_vote(&mut self, sk: SkId, v: VoteResponse) {
        if v.term > self.term {
            return self.step_down(v.term, format!("safekeeper {sk} is at term {}", v.term));
        }
        self.sks[sk].last_flush_lsn = v.flush_lsn;
        if self.elected.is_some() {
            // A safekeeper (re)joining after the election: granted now, or it had
            // already voted for us; either way it gets our history.
            return self.start_streaming(sk, &v);
        }
        if !v.vote_given {
            return self.step_down(
                v.term,
                format!("safekeeper {sk} refused the vote for term {}", self.term),
            );
        }
        self.sks[sk].phase = Phase::Voted(v);
        let votes: Vec<(SkId, VoteResponse)> = self
            .sks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.phase {
                Phase::Voted(v) => Some((i, v.clone())),
                _ => None,
            })
            .collect();
        if votes.len() >= self.conf.quorum() {
            self.become_elected(votes);
        }
    }

    fn become_elected(&mut self, votes: Vec<(SkId, VoteResponse)>) {
        // The donor holds the most advanced WAL: highest (last_log_term, flush_lsn).
        let (donor, dv) = votes
            .iter()
            .max_by_key(|(_, v)| (v.term_history.last_log_term(v.flush_lsn), v.flush_lsn))
            .cloned()
            .expect("a quorum is not empty");
        let mut term_start = dv.flush_lsn;
        if !term_start.is_valid() {
            term_start = self.conf.timeline_start_lsn;
        }
        let mut history = dv.term_history.up_to(dv.flush_lsn);
        history.0.push(TermLsn {
            term: self.term,
            lsn: term_start,
        });
        self.truncate_lsn = votes
            .iter()
            .map(|(_, v)| v.truncate_lsn)
            .max()
            .unwrap_or_default();
        self.campaigning = false;
        self.elected = Some(ElectedState {
            term_start_lsn: term_start,
            history,
            donor,
        });
        self.window = WalWindow::new(term_start);
        self.outputs.push_back(Output::Elected {
            term: self.term,
            term_start_lsn: term_start,
        });
        if self.conf.mode == Mode::Sync && !term_start.is_valid() {
            // A timeline without WAL: nothing to synchronize.
            self.synced = true;
            self.done = true;
            self.outputs.push_back(Output::Synced(Lsn::INVALID));
            return;
        }
        for (sk, v) in votes {
            self.start_streaming(sk, &v);
        }
    }

    fn start_streaming(&mut self, sk: SkId, v: &VoteResponse) {
        let el = self.elected.as_ref().expect("elected");
        let hcp = match v
            .term_history
            .highest_common_point(&el.history, v.flush_lsn)
        {
            Ok(p) => p.lsn,
            Err(e) => return self.fail(sk, format!("histories do not reconcile: {e}")),
        };
        let msg = ProposerElected {
            generation: self.generation(),
            term: self.term,
            start_streaming_at: hcp,
            term_history: el.history.clone(),
        };
        let s = &mut self.sks[sk];
        s.phase = Phase::Streaming;
        s.start_lsn = hcp;
        s.next_lsn = hcp;
        s.probe = true;
        s.flush_lsn = Lsn::INVALID;
        s.sent_commit = Lsn::INVALID;
        self.send(sk, ProposerMessage::Elected(msg));
    }

    fn on_append_response(&mut self, sk: SkId, r: AppendResponse) {
        if r.term > self.term {
            return self.step_down(r.term, format!("safekeeper {sk} moved to term {}", r.term));
        }
        let s = &mut self.sks[sk];
        s.flush_lsn = s.flush_lsn.max(r.flush_lsn);
        s.last_flush_lsn = s.last_flush_lsn.max(r.flush_lsn);
        s.commit_lsn = s.commit_lsn.max(r.commit_lsn);
        self.update_commit();
        self.trim_window();
        self.check_synced();
    }

    /// The quorum's flush: the `quorum`-th highest acknowledged flush, where acks below
    /// the term start count as 0 (WAL of older terms is committed only together with
    /// WAL of this term — Raft's rule against committing from older terms).
    fn update_commit(&mut self) {
        let Some(el) = &self.elected else { return };
        let mut acks: Vec<Lsn> = self
            .sks
            .iter()
            .map(|s| {
                if s.phase == Phase::Streaming && s.flush_lsn >= el.term_start_lsn {
                    s.flush_lsn
                } else {
                    Lsn::INVALID
                }
            })
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let q = acks[self.conf.quorum() - 1];
        if q > self.commit_lsn {
            self.commit_lsn = q;
            self.outputs.push_back(Output::Committed(q));
        }
        let min_flush = self
            .sks
            .iter()
            .map(|s| s.last_flush_lsn)
            .min()
            .unwrap_or_default();
        self.truncate_lsn = self.truncate_lsn.max(min_flush.min(self.commit_lsn));
    }

    fn check_synced(&mut self) {
        let Some(el) = &self.elected else { return };
        let start = el.term_start_lsn;
        if self.conf.mode == Mode::Sync
            && !self.synced
            && self.commit_lsn >= start
            && self.all_streaming_committed(start)
        {
            self.synced = true;
            self.done = true;
            self.outputs.push_back(Output::Synced(start));
        }
    }

    /// Drops WAL every streaming safekeeper has, and WAL beyond the memory budget.
    fn trim_window(&mut self) {
        let needed = self
            .sks
            .iter()
            .filter(|s| s.phase == Phase::Streaming)
            .map(|s| s.flush_lsn.max(s.start_lsn))
            .min()
            .unwrap_or(self.window.end());
        let budget = Lsn(self.window.end().0.saturating_sub(self.conf.max_window));
        self.window.trim(needed.max(budget));
    }

    /// New WAL from the source, at the end of what the proposer holds.
    pub fn append_wal(&mut self, lsn: Lsn, data: Bytes) -> Result<(), crate::window::WindowError> {
        self.window.append(lsn, data)?;
        self.trim_window();
        Ok(())
    }

    /// WAL fetched from a donor, ending at the window's base.
    pub fn provide_wal(&mut self, lsn: Lsn, data: Bytes) -> Result<(), crate::window::WindowError> {
        self.window.prepend(lsn, data)?;
        if let Some((from, _)) = self.fetching
            && self.window.base() <= from
        {
            self.fetching = None;
        }
        Ok(())
    }

    /// The fetch asked for by [`Output::NeedWal`] failed; it will be asked again.
    pub fn fetch_failed(&mut self) {
        self.fetching = None;
    }

    /// The next message for `sk`, if one is due: WAL it has not been sent, or an empty
    /// AppendRequest carrying a new commit_lsn or keeping the connection alive. Call
    /// whenever the connection can take more; `None` = nothing to send now.
    pub fn poll_send(&mut self, sk: SkId, now_ms: u64) -> Option<ProposerMessage> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.done && !self.synced {
            return None;
        }
        self.elected.as_ref()?;
        if self.sks[sk].phase != Phase::Streaming {
            return None;
        }
        let next = self.sks[sk].next_lsn;
        let mut data = Bytes::new();
        if next < self.window.end() {
            if next < self.window.base() {
                self.request_fetch(sk, next);
            } else if let Some(d) = self.window.read(next, self.conf.max_append) {
                data = d;
            }
        }
        let s = &self.sks[sk];
        let heartbeat_due = s.probe || self.now_ms >= s.last_sent_ms + self.conf.heartbeat_ms;
        if data.is_empty() && s.sent_commit >= self.commit_lsn && !heartbeat_due {
            return None;
        }
        let end = Lsn(next.0 + data.len() as u64);
        let h = AppendRequestHeader {
            generation: self.generation(),
            term: self.term,
            begin_lsn: next,
            end_lsn: end,
            commit_lsn: self.commit_lsn,
            truncate_lsn: self.truncate_lsn,
        };
        let s = &mut self.sks[sk];
        s.next_lsn = end;
        s.sent_commit = self.commit_lsn;
        s.last_sent_ms = self.now_ms;
        s.probe = false;
        Some(ProposerMessage::AppendRequest(AppendRequest {
            h,
            wal_data: data,
        }))
    }

    fn request_fetch(&mut self, sk: SkId, from: Lsn) {
        let to = self.window.base();
        // Fetch a bounded amount at a time; the rest is asked for once this arrived.
        let from = Lsn(from.0.max(to.0.saturating_sub(self.conf.max_window / 2)));
        if let Some((f, t)) = self.fetching
            && f <= from
            && t == to
        {
            return;
        }
        let Some(el) = &self.elected else { return };
        // A donor must hold [from, to) in our term: streaming, and flushed to at least `to`.
        let donor = std::iter::once(el.donor)
            .chain(0..self.sks.len())
            .filter(|&d| d != sk)
            .find(|&d| {
                let s = &self.sks[d];
                // Up to its start point its WAL is ours already (the common point).
                s.phase == Phase::Streaming && s.flush_lsn.max(s.start_lsn) >= to
            });
        let Some(donor) = donor else { return };
        self.fetching = Some((from, to));
        self.outputs.push_back(Output::NeedWal {
            from,
            to,
            donor,
            term: self.term,
        });
    }
}
