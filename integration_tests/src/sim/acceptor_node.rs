//! A simulated safekeeper: the server's own ingest executor
//! ([`safekeeper::ingest::Executor`]) over a [`SimDisk`], with crash and restart as the
//! server performs them (the restart is the executor's own restart path).
//!
//! Owns: the node's up/down state (its disk outlives a crash), arming the disk's crash
//! for an executor call, and the reply-level [`Mutation`] (a safekeeper that grants every
//! vote). Must never: step the acceptor or perform an effect itself: the executor does,
//! exactly as in the server.

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use safekeeper::acceptor::Acceptor;
use safekeeper::ingest::{Executor, OpenError, Sent, TimelineError};
use safekeeper::state::{ServerInfo, TimelineState};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, TimelineId};

use super::config::{Mutation, PG_VERSION, SEG_SIZE, SYSTEM_ID};
use super::disk::SimDisk;
use super::network::ConnId;
use super::storage::MemStorage;

/// The simulated timeline.
pub fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId([0x5a; 16]), TimelineId([0xa5; 16]))
}

/// The server facts of the simulated timeline.
pub fn server_info() -> ServerInfo {
    ServerInfo {
        pg_version: PG_VERSION,
        system_id: SYSTEM_ID,
        wal_seg_size: SEG_SIZE,
    }
}

/// What an executor call did.
pub enum Outcome {
    /// Replies to send.
    Sent(Vec<Sent>),
    /// The message was refused (its connection ends).
    Refused(TimelineError),
    /// The armed crash struck in the middle of the call.
    Crashed,
    /// The executor broke a storage contract (or failed without a crash).
    Broken(String),
}

/// One safekeeper.
#[derive(Debug)]
pub struct AcceptorNode {
    /// Index (the proposer's `SkId`).
    pub id: usize,
    /// The executor while the node is up.
    exec: Option<Executor<SimDisk>>,
    /// The disk while the node is down.
    down: Option<SimDisk>,
    /// When a down node may restart (virtual ms).
    pub restart_at: u64,
    mutation: Mutation,
}

impl AcceptorNode {
    /// A node whose timeline was just created (no term, no WAL), up. `strict`: truncations
    /// past the written end are contract breaks.
    pub fn new(id: usize, mutation: Mutation, strict: bool) -> Self {
        let mut control = TimelineState::new(ttid(), server_info());
        control.mconf = crate::sim::world::initial_configuration();
        let disk = SimDisk::new(control.clone(), mutation, strict);
        AcceptorNode {
            id,
            exec: Some(Executor::new(disk, node_id(id), control, Lsn::INVALID)),
            down: None,
            restart_at: 0,
            mutation,
        }
    }

    /// True if up.
    pub fn is_up(&self) -> bool {
        self.exec.is_some()
    }

    /// The acceptor, while up.
    pub fn acceptor(&self) -> Option<&Acceptor> {
        self.exec.as_ref().map(Executor::acceptor)
    }

    /// True if up and some connection is owed an AppendResponse.
    pub fn owes(&self) -> bool {
        self.exec.as_ref().is_some_and(Executor::owes)
    }

    /// The disk.
    pub fn disk(&self) -> &SimDisk {
        match &self.exec {
            Some(e) => e.storage(),
            None => self.down.as_ref().expect("a down node keeps its disk"),
        }
    }

    /// The disk, mutably.
    pub fn disk_mut(&mut self) -> &mut SimDisk {
        match &mut self.exec {
            Some(e) => e.storage_mut(),
            None => self.down.as_mut().expect("a down node keeps its disk"),
        }
    }

    /// The WAL on disk.
    pub fn storage(&self) -> &MemStorage {
        &self.disk().mem
    }

    /// The control file on disk.
    pub fn control(&self) -> &TimelineState {
        &self.disk().control
    }

    /// Where the durable WAL ends, for what replies may claim: the durable bytes, or the
    /// local start of WAL if the bytes before it (the synthetic segment image, which
    /// need not be durable) are all that is missing.
    pub fn durable_wal_end(&self) -> Lsn {
        let local_start = self.acceptor().map_or(self.control().local_start_lsn, |a| {
            a.state().local_start_lsn
        });
        self.storage().durable_end().max(local_start)
    }

    /// Steps a message of connection `conn` through the executor, with a crash armed
    /// before its `crash_at`-th storage operation if given (the node must be up).
    pub fn propose(
        &mut self,
        conn: ConnId,
        msg: ProposerMessage,
        crash_at: Option<usize>,
    ) -> Outcome {
        self.call(crash_at, |e| e.propose(conn, msg))
    }

    /// Group commit: one flush answering every owed connection.
    pub fn flush(&mut self, crash_at: Option<usize>) -> Outcome {
        self.call(crash_at, Executor::flush_owed)
    }

    /// Group commit overlapping the next writes: begins a flush (the world finishes it
    /// later with [`AcceptorNode::finish_flush`]).
    pub fn start_flush(&mut self, crash_at: Option<usize>) -> Outcome {
        self.call(crash_at, |e| {
            // Running it does nothing on this disk; the durability comes when it is
            // awaited, in `finish_flush`.
            e.start_flush().map(|f| {
                if let Some(f) = f {
                    safekeeper::storage::PendingFlush::run(f);
                }
                Vec::new()
            })
        })
    }

    /// The flush in flight completes: the connections it was begun for are answered.
    pub fn finish_flush(&mut self, crash_at: Option<usize>) -> Outcome {
        self.call(crash_at, Executor::finish_flush)
    }

    /// True if up with a flush in flight.
    pub fn flush_in_flight(&self) -> bool {
        self.exec.as_ref().is_some_and(Executor::flush_in_flight)
    }

    /// Switches the membership configuration (the server's `PUT …/membership`): durable
    /// when it returns; the answers are those of a flush in flight, which finishes first.
    pub fn switch_membership(
        &mut self,
        to: pq_proto::proposer::Configuration,
        crash_at: Option<usize>,
    ) -> Outcome {
        self.call(crash_at, |e| e.switch_membership(to).map(|(sent, _)| sent))
    }

    /// Raises the term (the server's `POST …/term_bump`): durable when it returns.
    pub fn bump_term(&mut self, to: utils::Term, crash_at: Option<usize>) -> Outcome {
        self.call(crash_at, |e| e.bump_term(Some(to)).map(|(sent, _)| sent))
    }

    /// Connection `conn` ended: the server's disconnect (flush and checkpoint).
    pub fn disconnect(&mut self, conn: ConnId) -> Outcome {
        self.call(None, |e| e.disconnect(conn))
    }

    fn call(
        &mut self,
        crash_at: Option<usize>,
        f: impl FnOnce(&mut Executor<SimDisk>) -> Result<Vec<Sent>, TimelineError>,
    ) -> Outcome {
        let Some(exec) = self.exec.as_mut() else {
            return Outcome::Refused(TimelineError::ShuttingDown(ttid()));
        };
        if let Some(k) = crash_at {
            exec.storage_mut().arm_crash(k);
        }
        let r = f(exec);
        exec.storage_mut().disarm();
        if exec.storage().crashed() {
            return Outcome::Crashed;
        }
        if let Some(e) = exec.storage_mut().take_contract_break() {
            return Outcome::Broken(e);
        }
        match r {
            Ok(mut sent) => {
                if self.mutation == Mutation::GrantEveryVote {
                    for s in &mut sent {
                        if let AcceptorMessage::VoteResponse(v) = &mut s.msg {
                            v.vote_given = true;
                        }
                    }
                }
                Outcome::Sent(sent)
            }
            Err(e @ TimelineError::Acceptor(_)) => Outcome::Refused(e),
            Err(e) => Outcome::Broken(e.to_string()),
        }
    }

    /// Kills the node: the in-memory state and the unflushed bytes are gone, except
    /// `keep(volatile)` bytes the page cache had written back.
    pub fn crash(&mut self, restart_at: u64, keep: impl FnOnce(u64) -> u64) -> u64 {
        let mut disk = match self.exec.take() {
            Some(e) => e.into_storage(),
            None => self.down.take().expect("a down node keeps its disk"),
        };
        self.restart_at = restart_at;
        let volatile = disk.power_loss(keep);
        self.down = Some(disk);
        volatile
    }

    /// Replaces this node's timeline by a copy of `donor`'s durable state, as a
    /// `DELETE` of the timeline and a `pull_timeline` from that donor do: its control
    /// file and its durable WAL, opened through the restart path (the node is up
    /// afterwards). The caller closes the node's connections (deleting ends them).
    pub fn replace_with_copy_of(&mut self, donor: &SimDisk) -> Result<Lsn, OpenError> {
        let mut disk = donor.clone();
        disk.power_loss(|_| 0);
        disk.take_cuts();
        disk.take_contract_break();
        self.exec = None;
        self.down = Some(disk);
        self.restart()
    }

    /// Starts the node from disk through the server's restart path. Returns the
    /// flush_lsn found, or why the restart path refused the timeline (acknowledged WAL
    /// damaged: the node stays down).
    pub fn restart(&mut self) -> Result<Lsn, OpenError> {
        let mut disk = self.down.take().expect("only a down node restarts");
        disk.set_restarting(true);
        // The restart path reads the disk only through the storage seam, and hands it back
        // on success; on a refusal the disk is gone with the executor, so open a copy.
        let copy = disk.clone();
        match Executor::open(disk, ttid(), node_id(self.id)) {
            Ok(mut exec) => {
                exec.storage_mut().set_restarting(false);
                let flush = exec.acceptor().flush_lsn();
                self.exec = Some(exec);
                Ok(flush)
            }
            Err(e) => {
                let mut disk = copy;
                disk.set_restarting(false);
                self.down = Some(disk);
                Err(e)
            }
        }
    }
}

/// The node id of safekeeper `id`.
pub fn node_id(id: usize) -> NodeId {
    NodeId(id as u64 + 1)
}
