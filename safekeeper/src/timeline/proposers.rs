//! The proposer connections of one timeline as the status API shows them (Neon calls them
//! `walreceivers`): per connection its id, application name and where it is in the
//! protocol.
//!
//! Owns: [`Proposers`], one entry per live `START_WAL_PUSH` stream, removed when its
//! [`super::ComputeGuard`] drops. Must never: grow beyond one entry per live connection, or
//! be written on the hot path more than once per protocol phase change.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use pq_proto::proposer::ProposerMessage;
use serde::Serialize;

use crate::ingest::ConnId;

/// Where a proposer connection is in the protocol: the last kind of message it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposerPhase {
    /// Greeted, no vote asked yet.
    Greeted,
    /// Asked for a vote.
    Voting,
    /// Elected (ProposerElected sent), or streaming AppendRequests.
    Streaming,
}

impl ProposerPhase {
    fn of(msg: &ProposerMessage) -> Self {
        match msg {
            ProposerMessage::Greeting(_) => ProposerPhase::Greeted,
            ProposerMessage::VoteRequest(_) => ProposerPhase::Voting,
            ProposerMessage::Elected(_) | ProposerMessage::AppendRequest(_) => {
                ProposerPhase::Streaming
            }
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => ProposerPhase::Greeted,
            1 => ProposerPhase::Voting,
            _ => ProposerPhase::Streaming,
        }
    }
}

/// One proposer connection, as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProposerInfo {
    /// The connection's id (unique per timeline and server run).
    pub conn_id: ConnId,
    /// Its `application_name`.
    pub app_name: String,
    /// Where it is in the protocol.
    pub state: ProposerPhase,
}

struct Entry {
    app_name: String,
    phase: AtomicU8,
}

/// The proposer connections of a timeline.
#[derive(Default)]
pub struct Proposers {
    map: Mutex<BTreeMap<ConnId, Entry>>,
}

impl Proposers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConnId, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, conn: ConnId, app_name: &str) {
        self.lock().insert(
            conn,
            Entry {
                app_name: app_name.to_string(),
                phase: AtomicU8::new(ProposerPhase::Greeted as u8),
            },
        );
    }

    pub(super) fn remove(&self, conn: ConnId) {
        self.lock().remove(&conn);
    }

    /// Records the phase `msg` puts connection `conn` in (a lock only when it changes).
    pub(super) fn observe(&self, conn: ConnId, last: &mut ProposerPhase, msg: &ProposerMessage) {
        let phase = ProposerPhase::of(msg);
        if phase == *last {
            return;
        }
        *last = phase;
        if let Some(e) = self.lock().get(&conn) {
            e.phase.store(phase as u8, Ordering::Relaxed);
        }
    }

    /// Every live proposer connection.
    pub fn list(&self) -> Vec<ProposerInfo> {
        self.lock()
            .iter()
            .map(|(&conn_id, e)| ProposerInfo {
                conn_id,
                app_name: e.app_name.clone(),
                state: ProposerPhase::from_u8(e.phase.load(Ordering::Relaxed)),
            })
            .collect()
    }
}
