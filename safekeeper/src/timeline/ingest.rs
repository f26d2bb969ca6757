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

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use pq_proto::proposer::{AcceptorMessage, Configuration, ProposerMessage};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Core, Timeline};
use crate::acceptor::{MembershipSwitch, Progress};
use crate::ingest::{ConnId, Sent, TimelineError};
use crate::storage::{FileFlush, PendingFlush};

/// How long the loop runs while other pool jobs wait before it requeues itself.
pub const YIELD_AFTER: Duration = Duration::from_millis(5);

/// Unflushed bytes from which a group commit runs its fdatasync on another thread, so
/// that writing goes on meanwhile. Below it the fdatasync runs right here: a small one is
/// over before a hand-off to another thread would pay for itself (this keeps the latency
/// of one small commit at one hand-off).
pub const ASYNC_FLUSH_MIN: u64 = 256 << 10;

/// Unflushed bytes at which a flush begins even though input is still queued (a
/// pipelining proposer's stream never leaves the inbox empty for long).
pub const EAGER_FLUSH: u64 = 4 << 20;

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
    /// The flush begun by the loop has run: its connections can be answered.
    FlushDone,
    /// Switch the membership configuration (the API); `done` gets the outcome once it is
    /// durable.
    Membership {
        /// The configuration asked for.
        to: Configuration,
        /// The outcome.
        done: oneshot::Sender<Result<MembershipSwitch, TimelineError>>,
    },
    /// Raise the term (the API); `done` gets the outcome once it is durable.
    TermBump {
        /// The term asked for (`None`: one above the current one).
        to: Option<utils::Term>,
        /// The outcome.
        done: oneshot::Sender<Result<crate::acceptor::TermBump, TimelineError>>,
    },
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

    /// Switches the membership configuration through the ingest loop (see
    /// [`crate::acceptor::Acceptor::switch_membership`]); returns once a switch is durable.
    pub async fn switch_membership(
        self: &Arc<Self>,
        to: Configuration,
    ) -> Result<MembershipSwitch, TimelineError> {
        let (done, rx) = oneshot::channel();
        self.submit(Input::Membership { to, done })?;
        rx.await
            .unwrap_or(Err(TimelineError::ShuttingDown(self.ttid)))
    }

    /// Raises the term through the ingest loop (see
    /// [`crate::acceptor::Acceptor::bump_term`]); returns once a raise is durable.
    pub async fn bump_term(
        self: &Arc<Self>,
        to: Option<utils::Term>,
    ) -> Result<crate::acceptor::TermBump, TimelineError> {
        let (done, rx) = oneshot::channel();
        self.submit(Input::TermBump { to, done })?;
        rx.await
            .unwrap_or(Err(TimelineError::ShuttingDown(self.ttid)))
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

    /// The loop; see the module documentation. Each pass runs until the inbox is empty
    /// with nothing owed (done), or until it hands a flush to run here, with no lock held,
    /// while another pass of the loop steps what arrives meanwhile.
    fn run_ingest(self: &Arc<Self>) {
        loop {
            let Some(flush) = self.ingest_pass() else {
                return;
            };
            // The fdatasync, outside every lock: inputs arriving now are stepped (written)
            // by another pass on another pool thread, overlapping with it.
            let t = Instant::now();
            flush.run();
            self.ctx
                .metrics
                .ingest_flush_seconds
                .observe(t.elapsed().as_secs_f64());
            let mut inbox = self.lock_inbox();
            inbox.queue.push_back(Input::FlushDone);
            if inbox.running {
                return; // the pass running now finishes it
            }
            inbox.running = true;
        }
    }

    /// One pass of the loop (see [`Timeline::run_ingest`]): `Some` with a flush to run,
    /// the loop marked not running (anyone may start it again meanwhile).
    fn ingest_pass(self: &Arc<Self>) -> Option<FileFlush> {
        let started = Instant::now();
        let mut core = self.lock_core();
        let mut batch = VecDeque::new();
        loop {
            {
                let mut inbox = self.lock_inbox();
                if inbox.queue.is_empty() {
                    if core.exec.flush_in_flight() || !core.exec.owes() {
                        // Idle, or waiting for the disk: the flush's completion comes back
                        // as an input and starts the loop again.
                        inbox.running = false;
                        drop(inbox);
                        if !core.exec.flush_in_flight() {
                            core.exec.storage_mut().release_if_over_budget();
                        }
                        return None;
                    }
                    if core.exec.unflushed() >= ASYNC_FLUSH_MIN {
                        // Group commit overlapping the next writes. (Not under the inbox
                        // lock: beginning writes out the batch.)
                        drop(inbox);
                        match self.hand_off_flush(core, &mut batch) {
                            ControlFlow::Break(flush) => return Some(flush),
                            ControlFlow::Continue(c) => core = c,
                        }
                        continue;
                    }
                } else {
                    std::mem::swap(&mut inbox.queue, &mut batch);
                }
            }
            if batch.is_empty() {
                // Group commit: the inbox is empty and someone is owed an answer.
                let r = self.group_commit(&mut core);
                self.deliver(&mut core, r, None);
                continue;
            }
            while let Some(input) = batch.pop_front() {
                self.step(&mut core, input);
                if core.exec.unflushed() >= EAGER_FLUSH && !core.exec.flush_in_flight() {
                    // A proposer that pipelines keeps the inbox from ever emptying: do
                    // not wait for it. Flush what is written now while the rest of the
                    // batch (and what follows) is written on another thread, so its
                    // commits flow instead of waiting for its window to fill.
                    match self.hand_off_flush(core, &mut batch) {
                        ControlFlow::Break(flush) => return Some(flush),
                        ControlFlow::Continue(c) => core = c,
                    }
                }
            }
            if started.elapsed() >= YIELD_AFTER && self.ctx.wal_pool.queued() > 0 {
                let r = self.group_commit(&mut core);
                self.deliver(&mut core, r, None);
                drop(core);
                // Still marked running: the requeued loop takes over.
                self.schedule();
                return None;
            }
        }
    }

    /// Begins a flush that overlaps the next writes and hands the loop on: `rest` (inputs
    /// taken but not stepped) goes back in front of the inbox, and if anything is queued,
    /// another pass steps it while this thread syncs; if nothing is, the loop is marked
    /// not running (the flush's completion starts it again). `Break` with the flush to
    /// run, the core released; `Continue` with the core when no flush began (nothing to
    /// flush, or beginning failed: that error is delivered).
    fn hand_off_flush<'a>(
        self: &Arc<Self>,
        mut core: MutexGuard<'a, Core>,
        rest: &mut VecDeque<Input>,
    ) -> ControlFlow<FileFlush, MutexGuard<'a, Core>> {
        let flush = match self.start_flush(&mut core) {
            Ok(Some(flush)) => flush,
            Ok(None) => return ControlFlow::Continue(core),
            Err(e) => {
                self.deliver(&mut core, Err(e), None);
                return ControlFlow::Continue(core);
            }
        };
        let mut inbox = self.lock_inbox();
        while let Some(input) = rest.pop_back() {
            inbox.queue.push_front(input);
        }
        if inbox.queue.is_empty() {
            inbox.running = false;
            return ControlFlow::Break(flush);
        }
        drop(inbox);
        drop(core);
        // Still marked running: the next pass takes over the inbox.
        self.schedule();
        ControlFlow::Break(flush)
    }

    /// Begins a flush that overlaps the next writes, counted in the metrics.
    fn start_flush(&self, core: &mut Core) -> Result<Option<FileFlush>, TimelineError> {
        let bytes = core.exec.unflushed();
        let flush = core.exec.start_flush()?;
        if flush.is_some() {
            let m = &self.ctx.metrics;
            m.ingest_flushes.inc();
            m.ingest_flush_bytes.observe(bytes as f64);
            m.ingest_flush_appends
                .observe(std::mem::take(&mut core.appends) as f64);
        }
        Ok(flush)
    }

    /// One flush here answering every owed connection, measured.
    fn group_commit(&self, core: &mut Core) -> Result<Vec<Sent>, TimelineError> {
        if !core.exec.owes() {
            return Ok(Vec::new());
        }
        let (bytes, t) = (core.exec.unflushed(), Instant::now());
        let r = core.exec.flush_owed();
        let m = &self.ctx.metrics;
        m.ingest_flushes.inc();
        m.ingest_flush_seconds.observe(t.elapsed().as_secs_f64());
        m.ingest_flush_bytes.observe(bytes as f64);
        m.ingest_flush_appends
            .observe(std::mem::take(&mut core.appends) as f64);
        r
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
                if matches!(msg, ProposerMessage::AppendRequest(_)) {
                    core.appends += 1;
                }
                let _cut = elected.then(|| self.cut.write().unwrap_or_else(|p| p.into_inner()));
                let r = core.exec.propose(conn, msg);
                drop(permit);
                self.deliver(core, r, Some(conn));
            }
            Input::Disconnect { conn, done } => {
                core.reply_to.remove(&conn);
                match core.exec.disconnect(conn) {
                    Ok(sent) => self.deliver(core, Ok(sent), None),
                    Err(e) => {
                        tracing::error!(ttid = %self.ttid, "checkpoint at disconnect failed: {e}");
                        self.fail_all(core);
                        self.publish(core);
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Input::Progress(p) => {
                let r = core.exec.update(p);
                self.deliver(core, r, None);
            }
            Input::Checkpoint => {
                let r = core.exec.checkpoint();
                self.deliver(core, r, None);
            }
            Input::FlushDone => {
                let r = core.exec.finish_flush();
                self.deliver(core, r, None);
            }
            Input::Membership { to, done } => match core.exec.switch_membership(to) {
                Ok((sent, switch)) => {
                    self.deliver(core, Ok(sent), None);
                    let _ = done.send(Ok(switch));
                }
                Err(TimelineError::Acceptor(e)) => {
                    let _ = done.send(Err(TimelineError::Acceptor(e)));
                }
                Err(e) => {
                    let _ = done.send(Err(TimelineError::Broken(self.ttid)));
                    self.deliver(core, Err(e), None);
                }
            },
            Input::TermBump { to, done } => match core.exec.bump_term(to) {
                Ok((sent, bump)) => {
                    self.deliver(core, Ok(sent), None);
                    let _ = done.send(Ok(bump));
                }
                Err(TimelineError::Acceptor(e)) => {
                    let _ = done.send(Err(TimelineError::Acceptor(e)));
                }
                Err(e) => {
                    let _ = done.send(Err(TimelineError::Broken(self.ttid)));
                    self.deliver(core, Err(e), None);
                }
            },
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
        // Broken first, then cancelled: a stream that ends on the cancellation reads the
        // status to say why (57P03 for a broken timeline, not 57P01 "shutting down").
        self.publish(core);
        self.cancel.cancel();
    }

    fn publish(&self, core: &Core) {
        let exec = &core.exec;
        self.status
            .send_if_modified(|st| st.refresh(exec.acceptor(), exec.is_broken()));
    }
}
