//! A simulated compute: the real [`Proposer`] (stream mode, three safekeepers), its
//! connections, the WAL source it is fed from once elected, and its donor fetch.
//!
//! Owns: one incarnation of a compute (a crash or a step-down replaces the proposer by a
//! fresh one with a new incarnation number), and the source: a [`WalGenerator`] started
//! at the term start that emits valid logical-message records (and now and then an
//! XLOG_SWITCH) whose payload names the term, so WAL of different terms never matches by
//! chance. Must never: touch a safekeeper; the world moves everything between nodes.

use bytes::{Bytes, BytesMut};
use utils::xlog::{SIZE_OF_XLOG_RECORD, WalGenerator, XLOG_BLCKSZ};
use utils::{Lsn, Term};
use walproposer::proposer::{Config, Mode, Proposer};

use super::acceptor_node::ttid;
use super::config::{N_ACCEPTORS, PG_MAJOR, PG_VERSION, SEG_SIZE, SYSTEM_ID, SimConfig, SimRng};
use super::network::ConnId;

/// The source of WAL of one won term.
#[derive(Debug)]
pub struct Source {
    /// The term.
    pub term: Term,
    start: Lsn,
    generator: WalGenerator,
    records: u64,
    /// Byte ranges inside record bodies (no page header within), ascending.
    spans: Vec<(Lsn, Lsn)>,
}

impl Source {
    /// A source continuing the WAL at `term_start` (a record boundary).
    pub fn new(term: Term, term_start: Lsn) -> Result<Self, String> {
        let generator =
            WalGenerator::new(term_start, SYSTEM_ID, SEG_SIZE, PG_MAJOR).map_err(|e| {
                format!("term {term} starts at {term_start}, not a record boundary: {e}")
            })?;
        Ok(Source {
            term,
            start: term_start,
            generator,
            records: 0,
            spans: Vec::new(),
        })
    }

    /// Where the term's WAL starts.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Byte ranges inside record bodies, covered by the record CRC, ascending.
    pub fn spans(&self) -> &[(Lsn, Lsn)] {
        &self.spans
    }

    /// Where the next record goes.
    pub fn position(&self) -> Lsn {
        self.generator.position()
    }

    /// A batch of a few records of random sizes, at most about `room` bytes: where it
    /// starts and its bytes.
    pub fn generate(
        &mut self,
        rng: &mut SimRng,
        cfg: &SimConfig,
        room: u64,
    ) -> Result<(Lsn, Bytes), String> {
        let begin = self.generator.position();
        let mut out = BytesMut::new();
        for _ in 0..rng.range(1, 4) {
            let size = if rng.chance(cfg.huge_record) {
                rng.range(100 << 10, 400 << 10)
            } else if rng.chance(cfg.big_record) {
                rng.range(8 << 10, 40 << 10)
            } else {
                rng.range(0, 600)
            };
            // Page headers and alignment add at most 1/256 and a few bytes per record.
            let left = (room * 9 / 10).saturating_sub(out.len() as u64 + 256);
            let size = size.min(left) as usize;
            if size == 0 && !out.is_empty() {
                break;
            }
            self.records += 1;
            let mut msg = format!("term {} record {} ", self.term, self.records).into_bytes();
            let fill = (self.term.0 as u8)
                .wrapping_mul(31)
                .wrapping_add(self.records as u8);
            msg.resize(size.max(msg.len()), fill);
            let rec = self
                .generator
                .append_logical_message("sim", &msg, &mut out)
                .map_err(|e| format!("generating WAL: {e}"))?;
            // The body bytes up to the end of the record's first page.
            let body = Lsn(rec.start_lsn.0 + SIZE_OF_XLOG_RECORD as u64);
            let page_end = Lsn(rec.start_lsn.page_lsn().0 + XLOG_BLCKSZ as u64);
            let end = Lsn(rec.start_lsn.0 + u64::from(rec.total_len)).min(page_end);
            if body < end {
                self.spans.push((body, end));
            }
        }
        let to_segment_end = self.generator.position().remaining_in_segment(SEG_SIZE);
        if rng.chance(cfg.switch_record) && out.len() as u64 + to_segment_end + 256 <= room {
            self.generator
                .append_switch(&mut out)
                .map_err(|e| format!("generating XLOG_SWITCH: {e}"))?;
        }
        Ok((begin, out.freeze()))
    }
}

/// A donor read in progress.
#[derive(Clone, Copy, Debug)]
pub struct Fetch {
    /// First byte.
    pub from: Lsn,
    /// End.
    pub to: Lsn,
    /// The safekeeper to read from.
    pub donor: usize,
    /// The term it must still be in.
    pub term: Term,
    /// When the read completes.
    pub ready_at: u64,
}

/// One compute.
#[derive(Debug)]
pub struct ProposerNode {
    /// Index.
    pub id: usize,
    /// Incremented at each restart.
    pub incarnation: u64,
    /// The state machine; `None` while down.
    pub proposer: Option<Proposer>,
    /// The current connection to each safekeeper.
    pub conns: Vec<Option<ConnId>>,
    /// The WAL source, once elected.
    pub source: Option<Source>,
    /// The donor read in progress.
    pub fetch: Option<Fetch>,
    /// When a down node restarts.
    pub restart_at: u64,
    /// How far this incarnation's committed log was compared with the reference.
    pub commit_verified: Lsn,
    /// The membership configuration the next incarnation starts with: the initial one,
    /// or the newest a safekeeper greeted a former incarnation with.
    pub mconf: pq_proto::proposer::Configuration,
}

impl ProposerNode {
    /// A compute that is down until `restart_at`.
    pub fn new(id: usize, restart_at: u64) -> Self {
        ProposerNode {
            id,
            incarnation: 0,
            proposer: None,
            conns: vec![None; N_ACCEPTORS],
            source: None,
            fetch: None,
            restart_at,
            commit_verified: Lsn::INVALID,
            mconf: crate::sim::world::initial_configuration(),
        }
    }

    /// A name for logs: `p0.3` is proposer 0, incarnation 3.
    pub fn name(&self) -> String {
        format!("p{}.{}", self.id, self.incarnation)
    }

    /// Starts a fresh proposer (a restarted compute).
    pub fn start(&mut self, cfg: &SimConfig, now: u64) {
        let t = ttid();
        let mut conf = Config::new(t.tenant_id, t.timeline_id, N_ACCEPTORS);
        conf.pg_version = PG_VERSION;
        conf.system_id = SYSTEM_ID;
        conf.wal_seg_size = SEG_SIZE;
        conf.timeline_start_lsn = cfg.timeline_start;
        conf.mode = Mode::Stream;
        conf.max_append = cfg.max_append;
        conf.max_window = cfg.max_window;
        conf.heartbeat_ms = cfg.heartbeat_ms;
        conf.min_backoff_ms = cfg.backoff_ms.0;
        conf.max_backoff_ms = cfg.backoff_ms.1;
        // Every safekeeper is on the list, members or not (the index is the acceptor's);
        // the configuration says which count.
        conf.mconf = self.mconf.clone();
        conf.sk_ids = Some(
            (0..N_ACCEPTORS)
                .map(super::acceptor_node::node_id)
                .collect(),
        );
        let mut p = Proposer::new(conf);
        p.handle(now, walproposer::proposer::Input::Tick);
        self.incarnation += 1;
        self.proposer = Some(p);
        self.conns = vec![None; N_ACCEPTORS];
        self.source = None;
        self.fetch = None;
        self.commit_verified = cfg.timeline_start;
    }

    /// True if running.
    pub fn is_up(&self) -> bool {
        self.proposer.is_some()
    }
}
