//! Item 5's crowd: N proposers connected to one safekeeper at the same time, one new
//! timeline each. Every one is elected (greeting, vote, ProposerElected) and stays
//! connected; only when all are elected do they append, a few small AppendRequests each,
//! waiting for each answer, until every one has its WAL flushed. Meanwhile the
//! safekeeper's threads and RSS are sampled from `/proc`.
//!
//! The proposers are written here on `pq_client` and `pq_proto`, not with the proposer
//! library's driver: a driver ticks every 50 ms and reconnects after 10 s of silence, so
//! 10,000 of them would spend the CPUs the safekeeper needs and turn a proposer the
//! safekeeper never answers into a reconnection. Here each message is sent once and a
//! proposer that gets no answer is counted as such.
//!
//! Owns: those connections and the samples. Must never: retry, or let one proposer's
//! failure stop the others.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use pq_client::{Conninfo, PgConn};
use pq_proto::backend::BeMessage;
use pq_proto::proposer::{
    AcceptorMessage, AppendRequest, AppendRequestHeader, Configuration, Generation,
    ProposerElected, ProposerGreeting, ProposerMessage, ProtocolVersion, VoteRequest,
    write_proposer_frame,
};
use tokio::sync::{Semaphore, watch};
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, Term, TermHistory, TermLsn, TimelineId};

use crate::new_ids;
use crate::procs::{rss_kib, thread_count};

const PG_VERSION: u32 = 150000;
const SYSTEM_ID: u64 = 0x5eed_c0de_0000_0001;
const SEG: u32 = 16 << 20;
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);
const TERM: Term = Term(1);
const VERSION: ProtocolVersion = ProtocolVersion::V3;
/// AppendRequests per proposer, each answered before the next is sent.
pub const ROUNDS: usize = 3;
/// Logical messages per AppendRequest.
pub const RECORDS_PER_ROUND: usize = 2;
/// Payload of each.
pub const RECORD_SIZE: usize = 4096;
/// Connections being set up at once. All N stay connected; this only keeps the connect
/// storm below the listen backlog (1,024), where dropped SYNs would add the kernel's
/// 1 s, 3 s, … retries to the figure.
pub const HANDSHAKES_AT_ONCE: usize = 256;
/// How often threads and RSS are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What one crowd did.
#[derive(Clone, Debug, Default)]
pub struct Crowd {
    /// Elected before the appends began.
    pub elected: usize,
    /// With every byte of their WAL reported flushed.
    pub flushed: usize,
    /// Ended with an error (the others that did not finish were never answered).
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
    /// From the first connect until every proposer was elected (or gave up).
    pub elect_time: Duration,
    /// From the start of the appends until every proposer had its answer.
    pub append_time: Duration,
    /// Peak `Threads:` while all were connected and appending.
    pub peak_threads: u64,
    /// Peak `VmRSS` (KiB) while all were connected and appending.
    pub peak_rss_kib: u64,
    /// Open files of the safekeeper with all connected.
    pub open_files: usize,
}

/// How far the proposers got.
#[derive(Default)]
struct Tally {
    elected: AtomicUsize,
    flushed: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 5 {
            errors.push(format!("{e:#}"));
        }
    }

    fn answered(&self) -> usize {
        self.flushed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// The same WAL for every timeline (each is its own timeline, so that is valid), one
/// `Bytes` per AppendRequest; returns them with their start LSNs.
fn rounds() -> anyhow::Result<Vec<(Lsn, Bytes)>> {
    let mut g = WalGenerator::new(START, SYSTEM_ID, SEG, utils::xlog::pg_major(PG_VERSION))?;
    let payload = vec![b'c'; RECORD_SIZE];
    let mut out = Vec::new();
    for _ in 0..ROUNDS {
        let start = g.position();
        let mut buf = BytesMut::new();
        for _ in 0..RECORDS_PER_ROUND {
            g.append_logical_message("sk-bench-crowd", &payload, &mut buf)?;
        }
        out.push((start, buf.freeze()));
    }
    Ok(out)
}

async fn send(conn: &mut PgConn, m: &ProposerMessage) -> anyhow::Result<()> {
    write_proposer_frame(m, VERSION, conn.write_buf());
    conn.flush().await?;
    Ok(())
}

async fn recv(conn: &mut PgConn) -> anyhow::Result<AcceptorMessage> {
    match pq_client::read(conn).await? {
        BeMessage::CopyData(p) => Ok(AcceptorMessage::decode(p, VERSION)?),
        other => bail!("unexpected {other:?}"),
    }
}

/// Connects, creates the timeline, wins term 1 and sends ProposerElected.
async fn elect(addr: &str) -> anyhow::Result<PgConn> {
    let (t, tl) = new_ids();
    let (tenant_id, timeline_id): (TenantId, TimelineId) = (t.parse()?, tl.parse()?);
    let ci = Conninfo::for_timeline(addr, tenant_id, timeline_id, "sk-bench-crowd");
    let mut conn = pq_client::connect(&ci).await?;
    pq_client::start_copy(
        &mut conn,
        "START_WAL_PUSH (proto_version '3', allow_timeline_creation 'true')",
    )
    .await?;
    let greeting = ProposerGreeting {
        tenant_id,
        timeline_id,
        mconf: Configuration::empty(),
        pg_version: PG_VERSION,
        system_id: SYSTEM_ID,
        wal_seg_size: SEG,
    };
    send(&mut conn, &ProposerMessage::Greeting(greeting)).await?;
    let AcceptorMessage::Greeting(_) = recv(&mut conn).await? else {
        bail!("expected AcceptorGreeting");
    };
    let vote = VoteRequest {
        generation: Generation(0),
        term: TERM,
    };
    send(&mut conn, &ProposerMessage::VoteRequest(vote)).await?;
    match recv(&mut conn).await? {
        AcceptorMessage::VoteResponse(v) if v.vote_given => {}
        other => bail!("vote not given: {other:?}"),
    }
    let elected = ProposerElected {
        generation: Generation(0),
        term: TERM,
        start_streaming_at: START,
        term_history: TermHistory(vec![TermLsn {
            term: TERM,
            lsn: START,
        }]),
    };
    send(&mut conn, &ProposerMessage::Elected(elected)).await?;
    Ok(conn)
}

/// Sends each round as one AppendRequest and waits until its end is reported flushed.
async fn append(conn: &mut PgConn, wal: &[(Lsn, Bytes)]) -> anyhow::Result<()> {
    let mut flushed = Lsn::INVALID;
    for (begin, data) in wal {
        let end = Lsn(begin.0 + data.len() as u64);
        let req = AppendRequest {
            h: AppendRequestHeader {
                generation: Generation(0),
                term: TERM,
                begin_lsn: *begin,
                end_lsn: end,
                // This is the only acceptor: what it flushed is committed.
                commit_lsn: flushed,
                truncate_lsn: Lsn::INVALID,
            },
            wal_data: data.clone(),
        };
        send(conn, &ProposerMessage::AppendRequest(req)).await?;
        while flushed < end {
            match recv(conn).await? {
                AcceptorMessage::AppendResponse(r) if r.term == TERM => flushed = r.flush_lsn,
                other => bail!("expected an AppendResponse in term 1, got {other:?}"),
            }
        }
    }
    Ok(())
}

/// One proposer: elected, then (after `go`) its appends; connected until `release`.
async fn proposer(
    addr: String,
    wal: Arc<Vec<(Lsn, Bytes)>>,
    handshakes: Arc<Semaphore>,
    mut go: watch::Receiver<bool>,
    mut release: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let permit = handshakes.acquire().await;
    let conn = elect(&addr).await.context("election");
    drop(permit);
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return tally.fail(e),
    };
    tally.elected.fetch_add(1, Ordering::Relaxed);
    if go.wait_for(|g| *g).await.is_err() {
        return;
    }
    match append(&mut conn, &wal).await.context("appends") {
        Ok(()) => {
            tally.flushed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => return tally.fail(e),
    }
    let _ = release.wait_for(|r| *r).await;
}

/// Threads and RSS of the safekeeper, sampled on a thread of their own from the moment
/// `streaming` is set.
#[derive(Default)]
struct Samples {
    streaming: AtomicBool,
    stop: AtomicBool,
    threads: AtomicU64,
    rss_kib: AtomicU64,
}

impl Samples {
    fn take(&self, pid: u32) {
        if self.streaming.load(Ordering::Relaxed) {
            self.threads.fetch_max(thread_count(pid), Ordering::Relaxed);
            self.rss_kib.fetch_max(rss_kib(pid), Ordering::Relaxed);
        }
    }
}

/// Waits (polling) until `done()` or `deadline`.
async fn until(deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `n` proposers against the safekeeper at `addr` (process `pid`); each phase
/// (electing all, appending) gives up after `phase_timeout`, and whoever has not answered
/// by then counts as not answered.
pub fn run(addr: &str, pid: u32, n: usize, phase_timeout: Duration) -> anyhow::Result<Crowd> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wal = Arc::new(rounds()?);
    let samples = Arc::new(Samples::default());
    let sampler = {
        let samples = samples.clone();
        std::thread::spawn(move || {
            while !samples.stop.load(Ordering::Relaxed) {
                samples.take(pid);
                std::thread::sleep(SAMPLE_EVERY);
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let crowd = rt.block_on(async {
        let (go_tx, go_rx) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
        let mut tasks = tokio::task::JoinSet::new();
        let started = Instant::now();
        for _ in 0..n {
            tasks.spawn(proposer(
                addr.to_string(),
                wal.clone(),
                handshakes.clone(),
                go_rx.clone(),
                release_rx.clone(),
                tally.clone(),
            ));
        }
        until(started + phase_timeout, || {
            tally.elected.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed) >= n
        })
        .await;
        let elect_time = started.elapsed();
        let elected = tally.elected.load(Ordering::Relaxed);
        samples.streaming.store(true, Ordering::Relaxed);
        samples.take(pid);
        let appending = Instant::now();
        let _ = go_tx.send(true);
        until(appending + phase_timeout, || tally.answered() >= n).await;
        let append_time = appending.elapsed();
        samples.take(pid);
        let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        let _ = release_tx.send(true);
        // Whoever is still waiting for an answer is cut off here.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
        Crowd {
            elected,
            flushed: tally.flushed.load(Ordering::Relaxed),
            failed: tally.failed.load(Ordering::Relaxed),
            errors: std::mem::take(&mut *tally.errors.lock().unwrap_or_else(|p| p.into_inner())),
            elect_time,
            append_time,
            peak_threads: 0,
            peak_rss_kib: 0,
            open_files,
        }
    });
    samples.stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Ok(Crowd {
        peak_threads: samples.threads.load(Ordering::Relaxed),
        peak_rss_kib: samples.rss_kib.load(Ordering::Relaxed),
        ..crowd
    })
}
