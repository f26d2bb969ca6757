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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pq_client::{Conninfo, PgError, fetch_wal};
use pq_proto::backend::{BeMessage, SqlState};
use pq_proto::proposer::{AcceptorMessage, ProposerMessage, ProtocolVersion, write_proposer_frame};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use utils::token::{TokenError, client_token};
use utils::{Lsn, Term};

use crate::proposer::{Config, Input, Output, Proposer, SkId};

/// Messages queued per connection before the proposer stops producing WAL for it.
const SEND_QUEUE: usize = 64;
/// How often the proposer's clock ticks (heartbeats, reconnects).
const TICK: Duration = Duration::from_millis(50);

enum Event {
    Connected(SkId, u64),
    /// The connection ended; `true` if the safekeeper refused our authentication.
    Disconnected(SkId, u64, String, bool),
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
    /// Parameters added to every safekeeper connection string (`--safekeeper-conninfo`).
    extra: Conninfo,
    conns: Vec<Option<SkConn>>,
    next_epoch: u64,
    ev_tx: mpsc::Sender<Event>,
    ev_rx: mpsc::Receiver<Event>,
    start: Instant,
    tick: tokio::time::Interval,
    fetch: Option<JoinHandle<()>>,
    pending: VecDeque<Output>,
    token: Option<Arc<str>>,
    /// Per safekeeper: why it refused our authentication, until it answers again.
    refused: Vec<Option<String>>,
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
        Self::with_options(conf, addrs, None, Conninfo::default())
    }

    /// [`Driver::new`] sending `token` (a JWT) as the password on every safekeeper
    /// connection that asks for one (safekeepers with `--pg-auth-public-key-path`), and
    /// adding the parameters of `extra` to every safekeeper connection (e.g. `sslmode`,
    /// `sslrootcert`; see [`safekeeper_conninfo`]).
    pub fn with_options(
        conf: Config,
        addrs: Vec<String>,
        token: Option<Arc<str>>,
        extra: Conninfo,
    ) -> Self {
        assert_eq!(conf.n_safekeepers, addrs.len());
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut d = Driver {
            p: Proposer::new(conf),
            conns: (0..addrs.len()).map(|_| None).collect(),
            refused: vec![None; addrs.len()],
            addrs,
            extra,
            next_epoch: 1,
            ev_tx,
            ev_rx,
            start: Instant::now(),
            tick,
            fetch: None,
            pending: VecDeque::new(),
            token,
        };
        d.process_outputs();
        d
    }

    /// The connection string for safekeeper `sk` with `application_name` `app`, with the
    /// extra parameters and carrying the token if there is one.
    pub fn conninfo(&self, sk: SkId, app: &str) -> Conninfo {
        let conf = self.p.config();
        let mut ci = Conninfo::for_timeline(&self.addrs[sk], conf.tenant_id, conf.timeline_id, app);
        ci.extend(&self.extra);
        if let Some(t) = &self.token {
            ci.set("password", &**t);
        }
        ci
    }

    /// The state machine.
    pub fn proposer(&self) -> &Proposer {
        &self.p
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Waits for the next output the caller cares about: Elected, Committed, Synced,
    /// Reconfigure (after the driver restarted the proposer with the new configuration)
    /// or SteppedDown; an error once so many safekeepers refused our token (or its absence)
    /// that no quorum is left: retrying would not help. Cancel-safe.
    pub async fn next(&mut self) -> Result<Output, AuthRefused> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Ok(o);
            }
            self.check_refusals()?;
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
    pub async fn wait_elected(&mut self) -> Result<(Term, Lsn), ElectionError> {
        loop {
            match self.next().await? {
                Output::Elected {
                    term,
                    term_start_lsn,
                } => return Ok((term, term_start_lsn)),
                Output::SteppedDown { term, reason } => {
                    return Err(SteppedDown { term, reason }.into());
                }
                _ => {}
            }
        }
    }

    /// Fails when fewer safekeepers than a majority are left that did not refuse us.
    fn check_refusals(&self) -> Result<(), AuthRefused> {
        let n = self.refused.len();
        let refused = self.refused.iter().flatten().count();
        match self.refused.iter().flatten().next() {
            Some(why) if n - refused < n / 2 + 1 => Err(AuthRefused {
                refused,
                total: n,
                why: why.clone(),
            }),
            _ => Ok(()),
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
                self.refused[sk] = None;
                self.p.handle(now, Input::Message(sk, m));
            }
            Event::Disconnected(sk, epoch, why, refused) if current(&self.conns, sk, epoch) => {
                if refused {
                    tracing::warn!(safekeeper = %self.addrs[sk], "authentication refused: {why}");
                    self.refused[sk] = Some(why);
                } else {
                    tracing::info!(safekeeper = %self.addrs[sk], "disconnected: {why}");
                }
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
                    Output::Reconfigure(mconf) => {
                        // The old proposer's other outputs are moot.
                        self.reconfigure(mconf);
                        break;
                    }
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

    /// Replaces the proposer by one for `mconf` (a configuration a safekeeper holds, of
    /// a higher generation than ours) and the safekeepers it names, reached at the
    /// addresses it gives (`host:pg_port`): every connection is dropped and the new
    /// proposer campaigns afresh, as a compute's walproposer restarts with a new
    /// configuration. The caller is told with [`Output::Reconfigure`] (its WAL source must
    /// continue at the new proposer's [`Proposer::end_lsn`] once elected).
    fn reconfigure(&mut self, mconf: pq_proto::proposer::Configuration) {
        let sks = crate::members::from_configuration(&mconf);
        tracing::info!(
            generation = mconf.generation.0,
            safekeepers = %sks.addrs.join(","),
            "the safekeepers hold a newer membership configuration: restarting the proposer with it"
        );
        let mut conf = self.p.config().clone();
        conf.n_safekeepers = sks.addrs.len();
        conf.mconf = mconf.clone();
        conf.sk_ids = None;
        if let Some(f) = self.fetch.take() {
            f.abort();
        }
        self.conns = (0..sks.addrs.len()).map(|_| None).collect();
        self.refused = vec![None; sks.addrs.len()];
        self.addrs = sks.addrs;
        self.pending.clear();
        self.p = Proposer::new(conf);
        self.pending.push_back(Output::Reconfigure(mconf));
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
        let task = tokio::spawn(sk_task(
            sk,
            epoch,
            self.conninfo(sk, "walproposer"),
            self.p.config().protocol,
            rx,
            self.ev_tx.clone(),
        ));
        self.conns[sk] = Some(SkConn { epoch, tx, task });
    }

    fn start_fetch(&mut self, from: Lsn, to: Lsn, donor: SkId, term: Term) {
        if let Some(f) = self.fetch.take() {
            f.abort();
        }
        let ci = self.conninfo(donor, "wal_proposer_recovery");
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

/// The token for safekeeper connections: the file `--token-file` names, or
/// `SAFEKEEPER_TOKEN`; `None` if neither is given.
pub fn load_token(file: Option<&std::path::Path>) -> Result<Option<Arc<str>>, TokenError> {
    Ok(client_token(file, "--token-file", "SAFEKEEPER_TOKEN")?.map(Arc::from))
}

/// Parses `--safekeeper-conninfo`: libpq parameters added to every safekeeper
/// connection string (`sslmode=verify-full sslrootcert=/etc/ca.pem`, `user=…`). The
/// address, the timeline (`options`) and `application_name` are the proposer's own and
/// cannot be given.
pub fn safekeeper_conninfo(s: &str) -> Result<Conninfo, PgError> {
    let ci = Conninfo::parse(s)?;
    for (k, _) in ci.params() {
        if matches!(
            k,
            "host" | "hostaddr" | "port" | "options" | "application_name"
        ) {
            return Err(PgError::Conninfo(format!(
                "\"{k}\" cannot be set for safekeeper connections (it comes from --safekeepers and the timeline)"
            )));
        }
    }
    if let Some(m) = ci.get("sslmode") {
        m.parse::<pq_client::SslMode>()?;
    }
    Ok(ci)
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why the election could not be won.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// A higher term exists.
    #[error(transparent)]
    SteppedDown(#[from] SteppedDown),
    /// Too many safekeepers refused us.
    #[error(transparent)]
    Refused(#[from] AuthRefused),
}

/// So many safekeepers refused the proposer's token (or its absence) that no quorum is
/// left.
#[derive(Debug, thiserror::Error)]
#[error(
    "{refused} of {total} safekeepers refused authentication, no quorum is left: {why} \
     (give a token with --token-file or SAFEKEEPER_TOKEN)"
)]
pub struct AuthRefused {
    /// Safekeepers that refused.
    pub refused: usize,
    /// Safekeepers in all.
    pub total: usize,
    /// What one of them said.
    pub why: String,
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
    let (why, refused) = match res {
        Ok(()) => ("closed".to_string(), false),
        Err(e) => (e.to_string(), is_refusal(&e)),
    };
    let _ = ev.send(Event::Disconnected(sk, epoch, why, refused)).await;
}

/// Did the safekeeper refuse who we are (no token, a bad one, or one for another tenant)?
/// Such a connection is not retried into success.
fn is_refusal(e: &PgError) -> bool {
    match e {
        PgError::Auth(_) => true,
        PgError::Server(f) => [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ]
        .contains(&f.code),
        _ => false,
    }
}

#[cfg(test)]
mod conninfo_tests {
    use super::safekeeper_conninfo;

    #[test]
    fn safekeeper_conninfo_takes_tls_parameters_and_refuses_addressing() {
        let ci = safekeeper_conninfo("sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(ci.get("sslmode"), Some("verify-full"));
        assert_eq!(ci.get("sslrootcert"), Some("/etc/ca.pem"));
        assert_eq!(safekeeper_conninfo("").unwrap(), Default::default());
        for bad in [
            "host=x",
            "port=1",
            "hostaddr=1.2.3.4",
            "options='-c a=b'",
            "application_name=x",
            "sslmode=bogus",
            "sslmode",
        ] {
            assert!(safekeeper_conninfo(bad).is_err(), "{bad}");
        }
    }
}
