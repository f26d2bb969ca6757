//! The ingest loop of a timeline: inputs queued in the inbox, stepped by one disk-pool
//! thread at a time, replies sent straight from that thread.
//!
//! Any thread queues an input with [`Timeline::submit`]; if the loop is not running, it is
//! queued on the WAL pool. The loop takes everything queued, steps each input through the
//! executor (writes as they come), publishes the status after every step, and, once the
//! inbox is empty, makes one flush answer every connection owed an AppendResponse (group
//! commit, no timer). Replies go to each connection's [`ReplyTo`], which writes to the
//! socket directly when it can: a commit costs one hand-off (network task → pool thread).
//! After running [`YIELD_AFTER`] while other jobs wait, the loop flushes and requeues
//! itself, so a busy timeline cannot starve the others of threads.
//!
//! Owns: [`Input`], [`ReplyTo`], the loop. Must never: run twice at once for a timeline,
//! or leave a connection owed an answer when the inbox is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pq_proto::proposer::{AcceptorMessage, ProposerMessage};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Core, Timeline};
use crate::acceptor::Progress;
use crate::ingest::{ConnId, Sent, TimelineError};

/// How long the loop runs while other pool jobs wait before it requeues itself.
pub const YIELD_AFTER: Duration = Duration::from_millis(5);

/// Where the ingest loop sends a connection's replies. Called from pool threads.
pub trait ReplyTo: Send + Sync + 'static {
    /// Sends a reply (replies of one connection arrive in order).
    fn reply(&self, msg: &AcceptorMessage);
    /// The connection's input was refused: nothing more will be sent or accepted.
    fn refuse(&self, e: TimelineError);
}

/// Something for the ingest loop.
pub enum Input {
    /// A proposer connection starts: its replies go to `reply_to`.
    Connect {
        /// The connection.
        conn: ConnId,
        /// Its replies' destination.
        reply_to: Arc<dyn ReplyTo>,
    },
    /// A message of a proposer connection. The permit (the connection's backpressure) is
    /// released once the message is stepped.
    Propose {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ProposerMessage,
        /// Held until the message is stepped.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// A proposer connection ended: written WAL is made durable and lazily kept state
    /// persisted; `done` is signalled afterwards.
    Disconnect {
        /// The connection.
        conn: ConnId,
        /// Signalled when done.
        done: Option<oneshot::Sender<()>>,
    },
    /// A position reported by someone other than the proposer.
    Progress(Progress),
    /// Persist lazily kept state that moved (the periodic checkpoint).
    Checkpoint,
}

impl Timeline {
    /// Queues `input` for the ingest loop, starting the loop if it is not running. Refused
    /// once the timeline is shutting down (a disconnect is still taken, so a connection
    /// can always say it is gone).
    pub fn submit(self: &Arc<Self>, input: Input) -> Result<(), TimelineError> {
        if self.cancel.is_cancelled() && !matches!(input, Input::Disconnect { .. }) {
            return Err(TimelineError::ShuttingDown(self.ttid));
        }
        let mut inbox = self.lock_inbox();
        inbox.queue.push_back(input);
        if inbox.running {
            return Ok(());
        }
        inbox.running = true;
        drop(inbox);
        self.schedule();
        Ok(())
    }

    /// Queues the loop on the WAL pool; it counts as a task of the timeline.
    fn schedule(self: &Arc<Self>) {
        let tl = self.clone();
        let token = self.tasks.token();
        let queued = self.ctx.wal_pool.spawn(move || {
            let _token = token;
            tl.run_ingest();
        });
        if queued.is_err() {
            // Only after the server's pools stopped, i.e. after every timeline shut down.
            let mut inbox = self.lock_inbox();
            tracing::error!(ttid = %self.ttid, "ingest loop not run: {} inputs dropped", inbox.queue.len());
            inbox.queue.clear();
            inbox.running = false;
        }
    }

    /// The loop; see the module documentation.
    fn run_ingest(self: &Arc<Self>) {
        let started = Instant::now();
        let mut core = self.lock_core();
        let mut batch = std::collections::VecDeque::new();
        loop {
            {
                let mut inbox = self.lock_inbox();
                if inbox.queue.is_empty() {
                    if !core.exec.owes() {
                        inbox.running = false;
                        drop(inbox);
                        core.exec.storage_mut().release_if_over_budget();
                        return;
                    }
                } else {
                    std::mem::swap(&mut inbox.queue, &mut batch);
                }
            }
            if batch.is_empty() {
                // Group commit: the inbox is empty and someone is owed an answer.
                let r = core.exec.flush_owed();
                self.deliver(&mut core, r, None);
                continue;
            }
            for input in batch.drain(..) {
                self.step(&mut core, input);
            }
            if started.elapsed() >= YIELD_AFTER && self.ctx.wal_pool.queued() > 0 {
                let r = core.exec.flush_owed();
                self.deliver(&mut core, r, None);
                drop(core);
                // Still marked running: the requeued loop takes over.
                self.schedule();
                return;
            }
        }
    }

    fn step(&self, core: &mut Core, input: Input) {
        match input {
            Input::Connect { conn, reply_to } => {
                core.reply_to.insert(conn, reply_to);
            }
            Input::Propose { conn, msg, permit } => {
                if !core.reply_to.contains_key(&conn) {
                    return; // refused earlier; the rest of its input is dropped
                }
                // A ProposerElected may cut or replace WAL: term-mode readers must not
                // read while it does, nor before its status (the new end) is published.
                let elected = matches!(msg, ProposerMessage::Elected(_));
                let _cut = elected.then(|| self.cut.write().unwrap_or_else(|p| p.into_inner()));
                let r = core.exec.propose(conn, msg);
                drop(permit);
                self.deliver(core, r, Some(conn));
            }
            Input::Disconnect { conn, done } => {
                core.reply_to.remove(&conn);
                if let Err(e) = core.exec.disconnect(conn) {
                    tracing::error!(ttid = %self.ttid, "checkpoint at disconnect failed: {e}");
                    self.fail_all(core);
                }
                self.publish(core);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Input::Progress(p) => {
                let r = core.exec.update(p).map(|()| Vec::new());
                self.deliver(core, r, None);
            }
            Input::Checkpoint => {
                let r = core.exec.checkpoint().map(|()| Vec::new());
                self.deliver(core, r, None);
            }
        }
    }

    /// Sends a step's replies and publishes the status. An acceptor error ends only the
    /// connection `from`; a storage error ends every connection (the timeline is broken).
    fn deliver(&self, core: &mut Core, r: Result<Vec<Sent>, TimelineError>, from: Option<ConnId>) {
        match r {
            Ok(sent) => {
                for mut s in sent {
                    if let AcceptorMessage::AppendResponse(resp) = &mut s.msg {
                        resp.hs_feedback = self.feedback.hot_standby();
                        resp.pageserver_feedback = self.feedback.pageserver();
                    }
                    if let Some(to) = core.reply_to.get(&s.conn) {
                        to.reply(&s.msg);
                    }
                }
            }
            Err(TimelineError::Acceptor(e)) => {
                tracing::warn!(ttid = %self.ttid, "proposer message refused: {e}");
                if let Some(to) = from.and_then(|c| core.reply_to.remove(&c)) {
                    to.refuse(TimelineError::Acceptor(e));
                }
            }
            Err(e) => {
                if let Some(to) = from.and_then(|c| core.reply_to.remove(&c)) {
                    to.refuse(e);
                }
                self.fail_all(core);
            }
        }
        self.publish(core);
    }

    /// After a storage error: every connection ends, and so does every stream of the
    /// timeline (readers reconnect and find the reloaded timeline).
    fn fail_all(&self, core: &mut Core) {
        for (_, to) in core.reply_to.drain() {
            to.refuse(TimelineError::Broken(self.ttid));
        }
        self.cancel.cancel();
    }

    fn publish(&self, core: &Core) {
        let exec = &core.exec;
        self.status
            .send_if_modified(|st| st.refresh(exec.acceptor(), exec.is_broken()));
    }
}
