//! SIGKILL of a safekeeper (real fsync) in the middle of a WAL stream, restart, and a new
//! election: no acknowledged byte is lost, the vote was persisted, and the next term
//! continues from the acceptor's end of WAL (the highest common point) to the end, leaving
//! WAL byte-identical to the primary's.
//!
//! Each round kills at a random point of real PostgreSQL WAL, with 1 to 3 AppendRequests
//! in flight. `SK_KILL_LOOPS` sets the number of rounds (default 20), `SK_KILL_SEED` replays
//! a run (the seed is printed).

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::real_wal::{RealWal, read_wal_range};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{TestProposer, history};
use pq_proto::proposer::{AcceptorMessage, ProtocolVersion};
use pq_proto::replication::MAX_SEND_SIZE;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

/// SplitMix64: a seeded generator, enough to pick kill points reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `assert_eq!` that returns an error instead of panicking.
macro_rules! ensure_eq {
    ($a:expr, $b:expr $(,)?) => {
        ensure_eq!($a, $b, "mismatch")
    };
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        ensure!(
            a == b,
            "{}: {} = {:?}, expected {:?}",
            format!($($msg)+),
            stringify!($a),
            a,
            b
        );
    }};
}

/// What the proposer of term 1 saw before the safekeeper died.
struct Killed {
    /// Highest flush_lsn acknowledged (0 if none was).
    acked: Lsn,
    /// End of the WAL sent.
    sent: Lsn,
}

/// Term 1: streams in lockstep until `kill_at` is passed, sends `in_flight - 1` more
/// requests without waiting, waits `delay`, SIGKILLs the safekeeper, then reads whatever
/// responses it managed to send (those are acknowledgements too).
#[allow(clippy::too_many_arguments)]
async fn stream_and_kill(
    sk: &mut Safekeeper,
    real: &RealWal,
    ttid: TenantTimelineId,
    version: ProtocolVersion,
    kill_at: Lsn,
    in_flight: u64,
    delay: Duration,
) -> anyhow::Result<Killed> {
    let end = Lsn(real.start.0 + real.wal.len() as u64);
    let (mut p, _) = TestProposer::elected(
        &sk.addr(),
        ttid,
        version,
        real.cluster,
        Term(1),
        history(&[(1, real.start)]),
        real.start,
    )
    .await?;
    let mut acked = Lsn::INVALID;
    let mut sent = real.start;
    let mut extra = 0;
    let check = |f: Lsn, acked: Lsn, sent: Lsn| -> anyhow::Result<()> {
        ensure!(
            real.is_record_boundary(f),
            "flush_lsn {f} is not a record boundary"
        );
        ensure!(f >= acked, "flush_lsn went back from {acked} to {f}");
        ensure!(f <= sent, "flush_lsn {f} is beyond the WAL sent ({sent})");
        Ok(())
    };
    while sent < end {
        let n = ((end.0 - sent.0) as usize).min(MAX_SEND_SIZE);
        let off = (sent.0 - real.start.0) as usize;
        p.append(Term(1), sent, real.wal.slice(off..off + n), acked)
            .await?;
        sent = Lsn(sent.0 + n as u64);
        if sent > kill_at {
            extra += 1;
            if extra >= in_flight {
                break;
            }
            continue;
        }
        let r = p.append_response().await?;
        check(r.flush_lsn, acked, sent)?;
        acked = r.flush_lsn;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    sk.kill()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), p.recv()).await {
            Ok(Ok(AcceptorMessage::AppendResponse(r))) => {
                check(r.flush_lsn, acked, sent)?;
                acked = r.flush_lsn;
            }
            Ok(Ok(other)) => bail!("unexpected {other:?}"),
            Ok(Err(_)) => break, // connection gone: the process is dead
            Err(_) => bail!("connection still open 10 s after SIGKILL"),
        }
    }
    Ok(Killed { acked, sent })
}

/// After the restart: term 2 is voted, checked against what term 1 had acknowledged,
/// elected from the acceptor's end of WAL, and streams the rest.
async fn recover_and_finish(
    sk: &Safekeeper,
    real: &RealWal,
    ttid: TenantTimelineId,
    version: ProtocolVersion,
    killed: &Killed,
) -> anyhow::Result<()> {
    let mut p = TestProposer::connect(&sk.addr(), ttid, version, true).await?;
    let g = p.greet(real.cluster).await?;
    ensure_eq!(g.term, Term(1), "the vote for term 1 was not persisted");
    let v = p.vote(Term(2)).await?;
    ensure!(v.vote_given, "vote for term 2 refused: {v:?}");
    ensure_eq!(v.term, Term(2));
    let flush = v.flush_lsn;
    ensure!(
        flush >= killed.acked,
        "acknowledged WAL lost: flush_lsn {flush} after the restart, {} was acknowledged",
        killed.acked
    );
    // Beyond what was sent only through the padding of an XLOG_SWITCH: its record was
    // sent whole, and the zeros that follow it up to the segment end are already on disk
    // in the preallocated segment, so the restart scan counts them (as Neon's does).
    ensure!(
        flush <= killed.sent || real.bytes(killed.sent, flush).iter().all(|&b| b == 0),
        "flush_lsn {flush} beyond what was sent ({})",
        killed.sent
    );
    let (hist, start) = if flush.is_valid() {
        // The term-1 proposer's ProposerElected was durable: WAL from the timeline start.
        ensure!(
            real.is_record_boundary(flush),
            "flush_lsn {flush} after the restart is not a record boundary"
        );
        ensure_eq!(v.term_history, history(&[(1, real.start)]));
        let ours = read_wal_range(&sk.timeline_dir(&ttid), real.start, flush)?;
        ensure!(
            ours == real.bytes(real.start, flush),
            "WAL below flush_lsn {flush} differs from the primary's after the restart"
        );
        // The donor's history plus the new term starting at its flush_lsn; the highest
        // common point is then the acceptor's flush_lsn.
        (history(&[(1, real.start), (2, flush)]), flush)
    } else {
        // Killed before ProposerElected was processed: nothing was acknowledged and the
        // timeline has no WAL; term 2 starts the timeline.
        ensure!(v.term_history.0.is_empty(), "{v:?}");
        (history(&[(2, real.start)]), real.start)
    };
    p.elect(Term(2), hist, start).await?;
    let off = (start.0 - real.start.0) as usize;
    let flushes = p.push(Term(2), start, &real.wal.slice(off..)).await?;
    for f in &flushes {
        ensure!(
            real.is_record_boundary(*f),
            "term 2: flush_lsn {f} is not a record boundary"
        );
    }
    // (Nothing to push if the kill came after the last byte was made durable.)
    ensure_eq!(
        flushes.last().copied().unwrap_or(start),
        real.end_of_records
    );
    // With nothing left to push, ProposerElected (which has no answer) may still be on its
    // way through the timeline's inbox when we look: wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = sk.timeline_status(&ttid)?;
        if status.last_log_term == Term(2) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure_eq!(status.flush_lsn, real.end_of_records);
    ensure_eq!((status.term, status.last_log_term), (Term(2), Term(2)));
    let ours = read_wal_range(&sk.timeline_dir(&ttid), real.start, real.end_of_records)?;
    ensure!(
        ours == real.bytes(real.start, real.end_of_records),
        "stored WAL differs from the primary's"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_wal() -> anyhow::Result<()> {
    let rounds = env_u64("SK_KILL_LOOPS").unwrap_or(20);
    let seed = env_u64("SK_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("SK_KILL_SEED={seed} SK_KILL_LOOPS={rounds}");
    let real = RealWal::generate(2)?;
    let mut rng = Rng(seed);
    let last_record = *real.record_starts.last().context("no records")?;
    let kill_range = (last_record.0 + 256 * 1024 - real.start.0).min(real.wal.len() as u64);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    for round in 0..rounds {
        let version = if rng.below(2) == 0 {
            ProtocolVersion::V3
        } else {
            ProtocolVersion::V2
        };
        // Anywhere up to a little past the last record's start: beyond that the WAL is the
        // padding of the final XLOG_SWITCH, where one round in a few is enough.
        let kill_at = Lsn(real.start.0 + rng.below(kill_range));
        let in_flight = 1 + rng.below(3);
        let delay = Duration::from_micros(rng.below(3) * rng.below(1500));
        let what = format!(
            "round {round} (SK_KILL_SEED={seed}): {version:?}, kill after {kill_at} with \
             {in_flight} request(s) in flight, {delay:?} later"
        );
        println!("{what}");
        let sk_dir = dir.path().join(format!("round{round}"));
        let mut sk = Safekeeper::start(1, &sk_dir, true)?;
        let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
        let killed = stream_and_kill(&mut sk, &real, ttid, version, kill_at, in_flight, delay)
            .await
            .with_context(|| format!("{what}: term 1"))?;
        println!("  acknowledged {}, sent {}", killed.acked, killed.sent);
        sk.restart().with_context(|| what.clone())?;
        if let Err(e) = recover_and_finish(&sk, &real, ttid, version, &killed).await {
            panic!("{what}: {e:#}\nsafekeeper log:\n{}", sk.log());
        }
        sk.assert_no_panics();
        drop(sk);
        std::fs::remove_dir_all(&sk_dir)?;
    }
    println!("{rounds} rounds in {:?}", started.elapsed());
    Ok(())
}
