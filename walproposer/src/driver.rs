//! Runs the [`Proposer`] state machine against real safekeepers over TCP.
//!
//! One task per safekeeper connection (a writer loop fed by a bounded channel, and a
//! reader sub-task that turns CopyData into events), one task per donor fetch, and the
//! caller's loop around [`Driver::next`], which feeds events and ticks to the proposer,
//! performs its outputs, and returns the ones the caller cares about. WAL-carrying
//! messages are pulled from the proposer only while a connection's channel has room:
//! that is the backpressure from a slow safekeeper.
//!
//! Must never: block the caller's loop on one safekeeper (sends use `try_send`; a full
//! channel for a control message means that connection is dropped and retried).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pq_client::{Conninfo, PgError, fetch_wal};
use pq_proto::backend::BeMessage;
use pq_proto::proposer::{AcceptorMessage, ProposerMessage, ProtocolVersion, write_proposer_frame};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use utils::{Lsn, Term};

use crate::proposer::{Config, Input, Output, Proposer, SkId};

/// Messages queued per connection before the proposer stops producing WAL for it.
const SEND_QUEUE: usize = 64;
/// How often the proposer's clock ticks (heartbeats, reconnects).
const TICK: Duration = Duration::from_millis(50);

enum Event {
    Connected(SkId, u64),
    Disconnected(SkId, u64, String),
    Message(SkId, u64, AcceptorMessage),
    Fetched(Lsn, Result<Bytes, String>),
}

struct SkConn {
    epoch: u64,
    tx: mpsc::Sender<ProposerMessage>,
    task: JoinHandle<()>,
}

impl Drop for SkConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proposer and its connections.
pub struct Driver {
    p: Proposer,
    addrs: Vec<String>,
    conns: Vec<Option<SkConn>>,
    next_epoch: u64,
    ev_tx: mpsc::Sender<Event>,
    ev_rx: mpsc::Receiver<Event>,
    start: Instant,
    tick: tokio::time::Interval,
    fetch: Option<JoinHandle<()>>,
    pending: VecDeque<Output>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(f) = self.fetch.take() {
            f.abort();
        }
    }
}

impl Driver {
    /// A driver for `addrs` (`host:port` of each safekeeper, in the proposer's order).
    pub fn new(conf: Config, addrs: Vec<String>) -> Self {
        assert_eq!(conf.n_safekeepers, addrs.len());
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut d = Driver {
            p: Proposer::new(conf),
            conns: (0..addrs.len()).map(|_| None).collect(),
            addrs,
            next_epoch: 1,
            ev_tx,
            ev_rx,
            start: Instant::now(),
            tick,
            fetch: None,
            pending: VecDeque::new(),
        };
        d.process_outputs();
        d
    }

    /// The state machine.
    pub fn proposer(&self) -> &Proposer {
        &self.p
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Waits for the next output the caller cares about: Elected, Committed, Synced or
    /// SteppedDown. Cancel-safe.
    pub async fn next(&mut self) -> Output {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return o;
            }
            tokio::select! {
                ev = self.ev_rx.recv() => {
                    if let Some(ev) = ev {
                        self.on_event(ev);
                    }
                }
                _ = self.tick.tick() => {
                    let now = self.now();
                    self.p.handle(now, Input::Tick);
                }
            }
            self.process_outputs();
            self.pump();
        }
    }

    /// Waits for the election: `(term, term start LSN)`, or an error if another proposer
    /// holds a higher term.
    pub async fn wait_elected(&mut self) -> Result<(Term, Lsn), SteppedDown> {
        loop {
            match self.next().await {
                Output::Elected {
                    term,
                    term_start_lsn,
                } => return Ok((term, term_start_lsn)),
                Output::SteppedDown { term, reason } => return Err(SteppedDown { term, reason }),
                _ => {}
            }
        }
    }

    /// Hands new WAL to the proposer (at its end) and sends what can be sent.
    pub fn append_wal(&mut self, lsn: Lsn, data: Bytes) -> Result<(), crate::window::WindowError> {
        self.p.append_wal(lsn, data)?;
        self.pump();
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.now();
        let current = |conns: &Vec<Option<SkConn>>, sk: SkId, epoch: u64| {
            conns[sk].as_ref().is_some_and(|c| c.epoch == epoch)
        };
        match ev {
            Event::Connected(sk, epoch) if current(&self.conns, sk, epoch) => {
                self.p.handle(now, Input::Connected(sk));
            }
            Event::Message(sk, epoch, m) if current(&self.conns, sk, epoch) => {
                self.p.handle(now, Input::Message(sk, m));
            }
            Event::Disconnected(sk, epoch, why) if current(&self.conns, sk, epoch) => {
                tracing::info!(safekeeper = %self.addrs[sk], "disconnected: {why}");
                self.conns[sk] = None;
                self.p.handle(now, Input::Disconnected(sk));
            }
            Event::Fetched(from, res) => {
                self.fetch = None;
                match res {
                    Ok(data) => {
                        if let Err(e) = self.p.provide_wal(from, data) {
                            tracing::warn!("fetched WAL does not fit: {e}");
                            self.p.fetch_failed();
                        }
                    }
                    Err(e) => {
                        tracing::warn!("fetching WAL from a donor failed: {e}");
                        self.p.fetch_failed();
                    }
                }
            }
            _ => {} // an event of a connection already replaced
        }
    }

    fn process_outputs(&mut self) {
        loop {
            let outs = self.p.drain_outputs();
            if outs.is_empty() {
                return;
            }
            for o in outs {
                match o {
                    Output::Connect(sk) => self.connect(sk),
                    Output::Disconnect(sk, why) => {
                        tracing::warn!(safekeeper = %self.addrs[sk], "dropping connection: {why}");
                        self.conns[sk] = None;
                    }
                    Output::Send(sk, m) => {
                        let ok = self.conns[sk]
                            .as_ref()
                            .is_some_and(|c| c.tx.try_send(m).is_ok());
                        if !ok && self.conns[sk].is_some() {
                            self.conns[sk] = None;
                            let now = self.now();
                            self.p.handle(now, Input::Disconnected(sk));
                        }
                    }
                    Output::NeedWal {
                        from,
                        to,
                        donor,
                        term,
                    } => self.start_fetch(from, to, donor, term),
                    other => self.pending.push_back(other),
                }
            }
        }
    }

    fn pump(&mut self) {
        let now = self.now();
        for sk in 0..self.conns.len() {
            while let Some(c) = &self.conns[sk] {
                if c.tx.capacity() == 0 {
                    break;
                }
                let Some(m) = self.p.poll_send(sk, now) else {
                    break;
                };
                let _ = c.tx.try_send(m);
            }
        }
        self.process_outputs();
    }

    fn connect(&mut self, sk: SkId) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let conf = self.p.config();
        let task = tokio::spawn(sk_task(
            sk,
            epoch,
            Conninfo::for_timeline(
                &self.addrs[sk],
                conf.tenant_id,
                conf.timeline_id,
                "walproposer",
            ),
            conf.protocol,
            rx,
            self.ev_tx.clone(),
        ));
        self.conns[sk] = Some(SkConn { epoch, tx, task });
    }

    fn start_fetch(&mut self, from: Lsn, to: Lsn, donor: SkId, term: Term) {
        if let Some(f) = self.fetch.take() {
            f.abort();
        }
        let conf = self.p.config();
        let ci = Conninfo::for_timeline(
            &self.addrs[donor],
            conf.tenant_id,
            conf.timeline_id,
            "wal_proposer_recovery",
        );
        let tx = self.ev_tx.clone();
        tracing::info!(donor = %self.addrs[donor], "fetching WAL {from}..{to} of term {term}");
        self.fetch = Some(tokio::spawn(async move {
            let res = fetch_wal(&ci, from, to, term)
                .await
                .map_err(|e| e.to_string());
            let _ = tx.send(Event::Fetched(from, res)).await;
        }));
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The election was lost: a higher term exists.
#[derive(Debug, thiserror::Error)]
#[error("another proposer holds term {term}: {reason}")]
pub struct SteppedDown {
    /// The higher term.
    pub term: Term,
    /// Why the proposer stepped down.
    pub reason: String,
}

async fn sk_task(
    sk: SkId,
    epoch: u64,
    ci: Conninfo,
    version: ProtocolVersion,
    mut rx: mpsc::Receiver<ProposerMessage>,
    ev: mpsc::Sender<Event>,
) {
    let res: Result<(), PgError> = async {
        let mut conn = pq_client::connect(&ci).await?;
        pq_client::start_copy(
            &mut conn,
            &format!(
                "START_WAL_PUSH (proto_version '{}', allow_timeline_creation 'true')",
                version.number()
            ),
        )
        .await?;
        let _ = ev.send(Event::Connected(sk, epoch)).await;
        let (mut r, mut w) = conn.split();
        let ev2 = ev.clone();
        // Aborted with this task (the driver aborts a connection's task when it drops
        // it): otherwise the reader would keep the socket, and the safekeeper's side of
        // the stream, open after the connection was given up.
        let mut reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                match r.read_be_message().await? {
                    Some(BeMessage::CopyData(p)) => {
                        let m = AcceptorMessage::decode(p, version)
                            .map_err(|e| PgError::Unexpected(e.to_string()))?;
                        if ev2.send(Event::Message(sk, epoch, m)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Some(BeMessage::ErrorResponse(e)) => return Err(PgError::Server(e)),
                    Some(other) => return Err(PgError::Unexpected(format!("{other:?}"))),
                    None => return Err(PgError::Closed),
                }
            }
        }));
        loop {
            tokio::select! {
                r = &mut reader.0 => {
                    return r.unwrap_or(Err(PgError::Closed));
                }
                m = rx.recv() => {
                    let Some(m) = m else {
                        return Ok(());
                    };
                    write_proposer_frame(&m, version, w.write_buf());
                    while w.write_buf().len() < 1 << 20 {
                        match rx.try_recv() {
                            Ok(m) => write_proposer_frame(&m, version, w.write_buf()),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = w.flush().await {
                        return Err(e.into());
                    }
                }
            }
        }
    }
    .await;
    let why = match res {
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = ev.send(Event::Disconnected(sk, epoch, why)).await;
}
