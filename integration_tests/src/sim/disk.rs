//! The simulated safekeeper's disk behind the server's storage seam
//! ([`safekeeper::storage::Storage`]): the real executor (steps, effects, group commit,
//! restart path) runs over it, and it injects the crashes.
//!
//! Owns: [`SimDisk`]: the WAL ([`MemStorage`]) and the durable control file, a crash armed
//! to strike before the k-th mutating operation of the next executor call, the cuts the
//! checker must hear of, contract breaks of the executor (a truncation past the written
//! end), and the storage-level [`Mutation`]s (a disk that ignores fdatasync; one that
//! drops the control-file write of a vote). Must never: change a durable byte except
//! through an operation, or let an operation through after a crash.

use std::io;

use bytes::Bytes;
use safekeeper::control_file::ControlFileError;
use safekeeper::state::TimelineState;
use safekeeper::storage::{PendingFlush, Storage, WriteOutcome};
use utils::Lsn;

use super::config::{Mutation, SEG_SIZE};
use super::storage::{self, MemStorage};

/// The disk of one simulated safekeeper.
#[derive(Clone, Debug)]
pub struct SimDisk {
    /// The WAL.
    pub mem: MemStorage,
    /// The control file as last persisted.
    pub control: TimelineState,
    mutation: Mutation,
    /// Mutating operations left before the armed crash (`None`: none armed).
    crash_in: Option<usize>,
    /// The armed crash struck: every operation fails until the node restarts.
    crashed: bool,
    /// True while the restart path runs (its cleanup cut is not an effect).
    restarting: bool,
    /// Report truncations past the written end as contract breaks.
    strict: bool,
    /// WAL cuts (truncations, new first segments) not yet told to the checker.
    cuts: Vec<Lsn>,
    /// A contract the executor broke, not yet reported.
    contract: Option<String>,
    /// The end a begun flush makes durable once it is awaited.
    pending_flush: Option<Lsn>,
}

/// A flush begun on the simulated disk: running it does nothing; what it covered becomes
/// durable when the executor awaits it (the world decides when that happens, and a crash
/// before it loses what it covered).
pub struct SimFlush;

impl PendingFlush for SimFlush {
    fn run(self) {}
}

impl SimDisk {
    /// A disk holding `control` and no WAL.
    pub fn new(control: TimelineState, mutation: Mutation, strict: bool) -> Self {
        SimDisk {
            mem: MemStorage::new(SEG_SIZE),
            control,
            mutation,
            crash_in: None,
            crashed: false,
            restarting: false,
            strict,
            cuts: Vec::new(),
            contract: None,
            pending_flush: None,
        }
    }

    /// Arms a crash before the `k`-th mutating operation from now (0 = the next one).
    pub fn arm_crash(&mut self, k: usize) {
        self.crash_in = Some(k);
    }

    /// Disarms an armed crash that did not strike.
    pub fn disarm(&mut self) {
        self.crash_in = None;
    }

    /// True if the armed crash struck.
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// The machine went down: volatile bytes are lost except `keep(volatile)` of them;
    /// the crash flag is cleared for the restart. Returns the volatile byte count.
    pub fn power_loss(&mut self, keep: impl FnOnce(u64) -> u64) -> u64 {
        self.crashed = false;
        self.crash_in = None;
        self.pending_flush = None;
        self.mem.crash(keep)
    }

    /// Marks the restart path running (or done).
    pub fn set_restarting(&mut self, on: bool) {
        self.restarting = on;
        if !on {
            // The restart's cleanup cut is checked by the restart check, not as a cut.
            self.cuts.clear();
        }
    }

    /// Takes the cuts made since the last call.
    pub fn take_cuts(&mut self) -> Vec<Lsn> {
        std::mem::take(&mut self.cuts)
    }

    /// Takes a contract break, if one happened.
    pub fn take_contract_break(&mut self) -> Option<String> {
        self.contract.take()
    }

    /// Counts a mutating operation against an armed crash.
    fn op(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(io::Error::other("simulated crash: the node is down"));
        }
        match self.crash_in {
            Some(0) => {
                self.crashed = true;
                self.crash_in = None;
                Err(io::Error::other("simulated crash"))
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Storage for SimDisk {
    fn load_control(&mut self) -> Result<TimelineState, ControlFileError> {
        Ok(self.control.clone())
    }

    fn persist_control(&mut self, state: &TimelineState) -> io::Result<()> {
        self.op()?;
        let vote_only =
            state.term > self.control.term && state.term_history == self.control.term_history;
        if self.mutation == Mutation::DropVotePersist && vote_only {
            return Ok(()); // the broken disk: a vote "persisted" that is not
        }
        self.control = state.clone();
        Ok(())
    }

    fn init_wal(&mut self, start: Lsn, image: &[u8]) -> io::Result<()> {
        self.op()?;
        self.cuts.push(start);
        self.mem
            .init(start, Bytes::copy_from_slice(image))
            .map_err(io::Error::other)
    }

    fn write_wal(&mut self, lsn: Lsn, data: Bytes) -> io::Result<WriteOutcome> {
        self.op()?;
        match self.mem.write(lsn, data).map_err(io::Error::other)? {
            storage::WriteOutcome::SegmentCompleted => Ok(WriteOutcome::SegmentCompleted),
            storage::WriteOutcome::Written => Ok(WriteOutcome::Written),
        }
    }

    fn flush_wal(&mut self) -> io::Result<()> {
        self.op()?;
        if self.mutation != Mutation::DropFlush {
            self.mem.flush();
        }
        Ok(())
    }

    type Flush = SimFlush;

    fn begin_flush(&mut self) -> io::Result<SimFlush> {
        self.op()?;
        self.pending_flush = Some(self.mem.end());
        Ok(SimFlush)
    }

    fn await_flush(&mut self) -> io::Result<()> {
        if let Some(end) = self.pending_flush.take() {
            self.op()?;
            if self.mutation != Mutation::DropFlush {
                self.mem.flush_to(end);
            }
        }
        Ok(())
    }

    fn truncate_wal(&mut self, end: Lsn) -> io::Result<()> {
        if self.restarting {
            // The restart's cleanup: whatever lies past the end found is cut; with no WAL
            // found, everything goes.
            self.mem.reset(end.is_valid().then_some(end));
            return Ok(());
        }
        self.op()?;
        self.cuts.push(end);
        if let Err(e) = self.mem.truncate(end)
            && self.strict
        {
            self.contract.get_or_insert(e);
        }
        Ok(())
    }

    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let wal = self.mem.wal();
        if lsn < wal.start() || lsn >= wal.end() {
            return Ok(0);
        }
        // Never across a segment boundary, as the real files are read.
        let n = (buf.len() as u64)
            .min(wal.end().0 - lsn.0)
            .min(lsn.remaining_in_segment(SEG_SIZE)) as usize;
        let mut at = 0;
        wal.visit(lsn, Lsn(lsn.0 + n as u64), |_, s| {
            buf[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        });
        Ok(n)
    }
}
