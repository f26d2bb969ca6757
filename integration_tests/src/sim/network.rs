//! The simulated network: proposer↔safekeeper connections as two FIFO queues of timed
//! packets, and the faults that can hit them.
//!
//! Owns: connection state at both ends (open/closed, seen from each side), delivery times
//! (each packet arrives after a random delay, never before the one sent before it: TCP
//! keeps order), and the faults: a connection that breaks (both ends learn it, the
//! proposer after a delay), and — behind a flag — a stream that lies (a message silently
//! dropped, duplicated, swapped with the next, or its WAL corrupted). Must never: decide
//! anything about the protocol; it moves typed messages only.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use utils::Lsn;

use super::config::SimRng;
use super::describe;

/// A connection's id (one per proposer↔safekeeper pair per attempt).
pub type ConnId = u64;

/// What travels to a safekeeper.
#[derive(Clone, Debug)]
pub enum ToAcceptor {
    /// A protocol message.
    Msg(ProposerMessage),
    /// The proposer closed its end.
    Eof,
}

/// What travels to a proposer.
#[derive(Clone, Debug)]
pub enum ToProposer {
    /// The connection is up (START_WAL_PUSH accepted).
    Connected,
    /// A protocol message.
    Msg(AcceptorMessage),
    /// The connection failed or was closed by the safekeeper.
    Closed,
}

/// A packet and its arrival time.
#[derive(Clone, Debug)]
pub struct Packet<T> {
    /// Virtual ms at which it may be delivered.
    pub at: u64,
    /// The payload.
    pub body: T,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// Its id.
    pub id: ConnId,
    /// The proposer end: proposer index.
    pub proposer: usize,
    /// The proposer's incarnation that opened it.
    pub incarnation: u64,
    /// The safekeeper end.
    pub sk: usize,
    /// In flight to the safekeeper.
    pub to_acceptor: VecDeque<Packet<ToAcceptor>>,
    /// In flight to the proposer.
    pub to_proposer: VecDeque<Packet<ToProposer>>,
    /// The proposer end is open.
    pub proposer_open: bool,
    /// The safekeeper end is open.
    pub acceptor_open: bool,
    /// The safekeeper has received the greeting.
    pub greeted: bool,
}

/// Which way a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Proposer → safekeeper.
    ToAcceptor,
    /// Safekeeper → proposer.
    ToProposer,
}

/// A fault inside a connection that TCP would not produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SilentFault {
    /// A message vanishes.
    Drop,
    /// A message arrives twice.
    Duplicate,
    /// Two consecutive messages swap.
    Reorder,
}

/// All connections.
#[derive(Debug, Default)]
pub struct Network {
    conns: BTreeMap<ConnId, Conn>,
    next_id: ConnId,
}

fn push<T>(q: &mut VecDeque<Packet<T>>, at: u64, body: T) {
    let at = q.back().map_or(at, |p| p.at.max(at));
    q.push_back(Packet { at, body });
}

impl Network {
    /// Opens a connection; `accepted` says whether the safekeeper takes it. The proposer
    /// learns the outcome after `delay`.
    pub fn connect(
        &mut self,
        proposer: usize,
        incarnation: u64,
        sk: usize,
        accepted: bool,
        at: u64,
    ) -> ConnId {
        self.next_id += 1;
        let id = self.next_id;
        let mut c = Conn {
            id,
            proposer,
            incarnation,
            sk,
            to_acceptor: VecDeque::new(),
            to_proposer: VecDeque::new(),
            proposer_open: true,
            acceptor_open: accepted,
            greeted: false,
        };
        let body = if accepted {
            ToProposer::Connected
        } else {
            ToProposer::Closed
        };
        push(&mut c.to_proposer, at, body);
        self.conns.insert(id, c);
        id
    }

    /// The connection, if it still exists.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    /// The connection, mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// All connections, in id order.
    pub fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// Ids of all connections, in order.
    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Packets in flight to the safekeeper on `id`.
    pub fn in_flight_to_acceptor(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.to_acceptor.len())
    }

    /// The proposer sends `msg`; lost if the safekeeper end is gone (a reset).
    pub fn send_to_acceptor(&mut self, id: ConnId, msg: ProposerMessage, at: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.proposer_open
            && c.acceptor_open
        {
            push(&mut c.to_acceptor, at, ToAcceptor::Msg(msg));
        }
    }

    /// The safekeeper sends `msg`; lost if the proposer end is gone.
    pub fn send_to_proposer(&mut self, id: ConnId, msg: AcceptorMessage, at: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.proposer_open
            && c.acceptor_open
        {
            push(&mut c.to_proposer, at, ToProposer::Msg(msg));
        }
    }

    /// The proposer closes its end (or dies): what it sent still arrives, then EOF.
    pub fn close_by_proposer(&mut self, id: ConnId, at: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.proposer_open
        {
            c.proposer_open = false;
            c.to_proposer.clear();
            if c.acceptor_open {
                push(&mut c.to_acceptor, at, ToAcceptor::Eof);
            }
        }
        self.gc(id);
    }

    /// The safekeeper closes its end (an error, or it died): what it sent still
    /// arrives, then the proposer sees the close. Returns true if the end was open.
    pub fn close_by_acceptor(&mut self, id: ConnId, at: u64) -> bool {
        let mut was_open = false;
        if let Some(c) = self.conns.get_mut(&id)
            && c.acceptor_open
        {
            was_open = true;
            c.acceptor_open = false;
            c.to_acceptor.clear();
            if c.proposer_open {
                push(&mut c.to_proposer, at, ToProposer::Closed);
            }
        }
        self.gc(id);
        was_open
    }

    /// The connection breaks: everything in flight is lost, the safekeeper end closes
    /// now, the proposer learns it at `at`. Returns true if the safekeeper end was open.
    pub fn break_conn(&mut self, id: ConnId, at: u64) -> bool {
        let mut was_open = false;
        if let Some(c) = self.conns.get_mut(&id) {
            was_open = c.acceptor_open;
            c.acceptor_open = false;
            c.to_acceptor.clear();
            c.to_proposer.clear();
            if c.proposer_open {
                push(&mut c.to_proposer, at, ToProposer::Closed);
            }
        }
        self.gc(id);
        was_open
    }

    /// Removes a connection both ends are done with.
    pub fn gc(&mut self, id: ConnId) {
        if self
            .conns
            .get(&id)
            .is_some_and(|c| !c.proposer_open && !c.acceptor_open)
        {
            self.conns.remove(&id);
        }
    }

    /// Takes the first packet to the safekeeper if it is due.
    pub fn pop_to_acceptor(&mut self, id: ConnId, now: u64) -> Option<ToAcceptor> {
        let c = self.conns.get_mut(&id)?;
        if c.to_acceptor.front().is_some_and(|p| p.at <= now) {
            c.to_acceptor.pop_front().map(|p| p.body)
        } else {
            None
        }
    }

    /// Takes the first packet to the proposer if it is due.
    pub fn pop_to_proposer(&mut self, id: ConnId, now: u64) -> Option<ToProposer> {
        let c = self.conns.get_mut(&id)?;
        if c.to_proposer.front().is_some_and(|p| p.at <= now) {
            c.to_proposer.pop_front().map(|p| p.body)
        } else {
            None
        }
    }

    /// The earliest time a packet becomes due, if any is in flight.
    pub fn next_due(&self) -> Option<u64> {
        self.conns
            .values()
            .flat_map(|c| {
                let a = c.to_acceptor.front().map(|p| p.at);
                let b = c.to_proposer.front().map(|p| p.at);
                a.into_iter().chain(b)
            })
            .min()
    }

    /// Applies a silent fault to a random message in one direction of `id`; returns a
    /// description if something was done.
    pub fn silent_fault(
        &mut self,
        id: ConnId,
        dir: Dir,
        fault: SilentFault,
        rng: &mut SimRng,
    ) -> Option<String> {
        let c = self.conns.get_mut(&id)?;
        match dir {
            Dir::ToAcceptor => mangle(&mut c.to_acceptor, fault, rng, |b| {
                matches!(b, ToAcceptor::Msg(_))
            }),
            Dir::ToProposer => mangle(&mut c.to_proposer, fault, rng, |b| {
                matches!(b, ToProposer::Msg(_))
            }),
        }
    }

    /// Flips one bit of the WAL of an AppendRequest in flight on `id`, at a byte inside
    /// one of `spans` (record bodies, which the record CRC covers: a flip elsewhere, in
    /// alignment padding, would be a proposer sending different WAL to different
    /// safekeepers, which no consensus protocol survives).
    pub fn corrupt(
        &mut self,
        id: ConnId,
        spans: &[(Lsn, Lsn)],
        rng: &mut SimRng,
    ) -> Option<String> {
        let c = self.conns.get_mut(&id)?;
        // (packet index, first byte, end) of every corruptible range in flight.
        let mut targets = Vec::new();
        for (i, p) in c.to_acceptor.iter().enumerate() {
            let ToAcceptor::Msg(ProposerMessage::AppendRequest(a)) = &p.body else {
                continue;
            };
            let (begin, end) = (a.h.begin_lsn, a.h.end_lsn);
            let first = spans.partition_point(|s| s.1 <= begin);
            for s in spans[first..].iter().take_while(|s| s.0 < end) {
                let (from, to) = (s.0.max(begin), s.1.min(end));
                if from < to {
                    targets.push((i, from, to));
                }
            }
        }
        if targets.is_empty() {
            return None;
        }
        let (i, from, to) = targets[rng.index(targets.len())];
        let at = Lsn(rng.range(from.0, to.0 - 1));
        let ToAcceptor::Msg(ProposerMessage::AppendRequest(a)) = &mut c.to_acceptor[i].body else {
            return None;
        };
        let mut data = a.wal_data.to_vec();
        data[(at.0 - a.h.begin_lsn.0) as usize] ^= 1 << rng.range(0, 7);
        a.wal_data = Bytes::from(data);
        Some(format!(
            "corrupted the byte at {at} of the AppendRequest at {}",
            a.h.begin_lsn
        ))
    }
}

fn mangle<T: Clone + Describe>(
    q: &mut VecDeque<Packet<T>>,
    fault: SilentFault,
    rng: &mut SimRng,
    is_msg: impl Fn(&T) -> bool,
) -> Option<String> {
    let msgs: Vec<usize> = (0..q.len()).filter(|&i| is_msg(&q[i].body)).collect();
    if msgs.is_empty() {
        return None;
    }
    let i = rng.pick(&msgs);
    match fault {
        SilentFault::Drop => {
            let p = q.remove(i)?;
            Some(format!("dropped {}", short(&p.body)))
        }
        SilentFault::Duplicate => {
            let p = q[i].clone();
            let desc = format!("duplicated {}", short(&p.body));
            q.insert(i + 1, p);
            Some(desc)
        }
        SilentFault::Reorder => {
            let j = i + 1;
            if j >= q.len() || !is_msg(&q[j].body) {
                return None;
            }
            let a = q[i].body.clone();
            q[i].body = q[j].body.clone();
            q[j].body = a;
            Some(format!(
                "swapped {} with the next message",
                short(&q[j].body)
            ))
        }
    }
}

fn short<T: Describe>(body: &T) -> String {
    body.describe()
}

/// A packet body in one line.
trait Describe {
    fn describe(&self) -> String;
}

impl Describe for ToAcceptor {
    fn describe(&self) -> String {
        match self {
            ToAcceptor::Msg(m) => describe::proposer_msg(m),
            ToAcceptor::Eof => "EOF".into(),
        }
    }
}

impl Describe for ToProposer {
    fn describe(&self) -> String {
        match self {
            ToProposer::Msg(m) => describe::acceptor_msg(m),
            ToProposer::Connected => "Connected".into(),
            ToProposer::Closed => "Closed".into(),
        }
    }
}
