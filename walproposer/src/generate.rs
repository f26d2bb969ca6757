//! `walproposer generate`: a load generator that wins a term and pushes valid WAL
//! (logical-message records with correct page headers, CRCs and system id), measuring
//! throughput and commit latency.
//!
//! It continues a timeline that exists (the new term starts at the quorum's end, and the
//! first record's `xl_prev` points at the donor's last record so the WAL stays readable by
//! `pg_waldump`), or creates one starting at `--start-lsn`. Before it exits every
//! safekeeper it can reach has acknowledged the final commit_lsn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use pq_client::{Conninfo, fetch_wal};
use utils::Lsn;
use utils::xlog::{DecoderConfig, WalGenerator, WalStreamDecoder};

use crate::driver::Driver;
use crate::proposer::{Config, Output};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Total WAL bytes to push (approximately: whole records).
    pub bytes: u64,
    /// Stop after this many records even if `bytes` is not reached.
    pub max_records: Option<u64>,
    /// Payload of each record.
    pub record_size: usize,
    /// Bytes per second; `None` = as fast as the quorum takes them.
    pub rate: Option<u64>,
    /// WAL allowed in flight beyond the commit LSN.
    pub max_in_flight: u64,
    /// How records are offered to the quorum.
    pub pacing: Pacing,
    /// How long to wait for the last safekeepers to learn the final commit_lsn.
    pub final_wait: Duration,
    /// The password (a JWT) for safekeepers that ask for one.
    pub token: Option<Arc<str>>,
}

/// How the generator offers records to the quorum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// Pipelined: as much as `max_in_flight` (and `rate`) allow, records batched into
    /// AppendRequests of up to the proposer's `max_append` bytes.
    #[default]
    Pipelined,
    /// One record at a time: append it, wait until the quorum committed it, then the
    /// next. Measures the latency of an isolated commit (no batching can hide it).
    Sequential,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The term won.
    pub term: u64,
    /// Where this run's WAL started.
    pub start_lsn: Lsn,
    /// The final commit LSN.
    pub end_lsn: Lsn,
    /// WAL bytes pushed.
    pub bytes: u64,
    /// Records pushed.
    pub records: u64,
    /// From the election to the final commit.
    pub elapsed: Duration,
    /// Commit latency of each record (append → quorum commit), sorted.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// The `p`-th percentile (0..=100) of commit latency.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[idx.min(self.latencies.len() - 1)]
    }

    /// MB/s (10^6 bytes) over the run.
    pub fn throughput_mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "term:            {}", self.term)?;
        writeln!(f, "wal:             {} .. {}", self.start_lsn, self.end_lsn)?;
        writeln!(
            f,
            "pushed:          {} bytes in {} records, {:.3} s",
            self.bytes,
            self.records,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "throughput:      {:.1} MB/s", self.throughput_mb_s())?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "commit latency:  p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(99.9)),
            ms(self.latencies.last().copied().unwrap_or_default())
        )
    }
}

/// Runs the generator against `addrs`.
pub async fn run(
    conf: Config,
    addrs: Vec<String>,
    opts: GenerateOptions,
) -> anyhow::Result<Report> {
    run_with_conninfo(conf, addrs, opts, Conninfo::default()).await
}

/// [`run`], with `extra` added to every safekeeper connection string (see
/// [`crate::driver::safekeeper_conninfo`]).
pub async fn run_with_conninfo(
    conf: Config,
    addrs: Vec<String>,
    mut opts: GenerateOptions,
    extra: Conninfo,
) -> anyhow::Result<Report> {
    let pg_major = utils::xlog::pg_major(conf.pg_version);
    let conf_max_append = conf.max_append;
    let system_id = conf.system_id;
    let seg_size = conf.wal_seg_size;
    let mut d = Driver::with_options(conf.clone(), addrs.clone(), opts.token.clone(), extra);
    let (term, term_start) = d.wait_elected().await?;
    tracing::info!("elected in term {term}; WAL continues at {term_start}");
    let mut gen_ = WalGenerator::new(term_start, system_id, seg_size, pg_major)
        .context("starting the WAL generator")?;
    if term_start > conf.timeline_start_lsn {
        let donor = d.proposer().donor().context("elected without a donor")?;
        let ci = d.conninfo(donor, "wal_proposer_recovery");
        match last_record_start(&ci, term_start, term, &conf).await {
            Ok(Some(prev)) => gen_.set_prev_record_lsn(prev),
            Ok(None) => {}
            Err(e) => tracing::warn!("could not find the previous record (xl_prev will be 0): {e}"),
        }
    }
    let started = Instant::now();
    let payload = vec![b'w'; opts.record_size];
    let mut in_flight: VecDeque<(Lsn, Instant)> = VecDeque::new();
    let mut latencies = Vec::new();
    let (mut bytes, mut records) = (0u64, 0u64);
    // Generated WAL not yet handed to the proposer starts at `unsent`.
    let mut buf = BytesMut::new();
    let mut unsent = term_start;
    let append = conf_max_append.max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let commit = d.proposer().commit_lsn();
        let done_generating = bytes >= opts.bytes;
        if done_generating && commit >= gen_.position() {
            break;
        }
        let allowed_by_rate = opts.rate.is_none_or(|r| {
            bytes < (started.elapsed().as_secs_f64() * r as f64) as u64 + opts.record_size as u64
        });
        let room = match opts.pacing {
            Pacing::Pipelined => gen_.position().0.saturating_sub(commit.0) < opts.max_in_flight,
            Pacing::Sequential => in_flight.is_empty(),
        };
        if !done_generating && allowed_by_rate && room {
            // A batch of records, at least 128 KiB.
            while buf.len() < pq_proto::replication::MAX_SEND_SIZE.max(append) && bytes < opts.bytes
            {
                let r = gen_.append_logical_message("generate", &payload, &mut buf)?;
                bytes = r.end_lsn.0 - term_start.0;
                records += 1;
                in_flight.push_back((r.end_lsn, Instant::now()));
                if opts.max_records.is_some_and(|m| records >= m) {
                    // Generation stops here: nothing more is appended after this batch.
                    opts.bytes = bytes;
                }
                if opts.rate.is_some() || opts.pacing == Pacing::Sequential {
                    break;
                }
            }
            // Handed over in whole AppendRequests (`max_append` bytes each), so that the
            // proposer sends slices of one chunk instead of copying across chunks; the
            // rest waits for the next batch, unless generation ends or goes one record at
            // a time.
            let one_at_a_time = opts.rate.is_some() || opts.pacing == Pacing::Sequential;
            let whole = if one_at_a_time || bytes >= opts.bytes {
                buf.len()
            } else {
                buf.len() / append * append
            };
            if whole > 0 {
                d.append_wal(unsent, buf.split_to(whole).freeze())?;
                unsent = Lsn(unsent.0 + whole as u64);
            }
        }
        let idle = done_generating || !room || !allowed_by_rate;
        let out = if idle {
            tokio::select! {
                o = d.next() => Some(o?),
                _ = tick.tick(), if opts.rate.is_some() && !done_generating => None,
            }
        } else {
            // Keep the loop responsive without starving the driver.
            tokio::select! {
                biased;
                o = d.next() => Some(o?),
                _ = std::future::ready(()) => None,
            }
        };
        match out {
            Some(Output::Committed(lsn)) => {
                let now = Instant::now();
                while in_flight.front().is_some_and(|(end, _)| *end <= lsn) {
                    let (_, t) = in_flight.pop_front().expect("checked");
                    latencies.push(now - t);
                }
            }
            Some(Output::SteppedDown { term, reason }) => {
                bail!("stepped down (a higher term {term} exists): {reason}")
            }
            Some(Output::Reconfigure(mconf)) => {
                bail!(
                    "the membership changed while generating (now generation {}): WAL not yet \
                     committed may be lost; run generate again to continue",
                    mconf.generation.0
                )
            }
            _ => {}
        }
    }
    let end = gen_.position();
    let elapsed = started.elapsed();
    // Let every safekeeper learn the final commit_lsn; one that stays unreachable holds
    // the exit up for at most `final_wait`.
    let deadline = Instant::now() + opts.final_wait;
    while !d.proposer().all_committed(end) && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), d.next()).await;
    }
    latencies.sort_unstable();
    Ok(Report {
        term: term.0,
        start_lsn: term_start,
        end_lsn: end,
        bytes,
        records,
        elapsed,
        latencies,
    })
}

/// Start of the last record before `end` in the donor's WAL, read in term mode from the
/// beginning of the segment holding `end - 1`. A record spanning into that segment is
/// skipped by the segment-start decoder, so when no record starts in it (the segment is
/// the tail of one long record) the search starts a segment earlier, and so on, as far
/// back as the largest record PostgreSQL writes (1 GiB) or the timeline's first segment;
/// `None` only if no record starts in that range.
async fn last_record_start(
    ci: &Conninfo,
    end: Lsn,
    term: utils::Term,
    conf: &Config,
) -> anyhow::Result<Option<Lsn>> {
    /// PostgreSQL's largest record (XLogRecordMaxSize, 1020 MiB) fits in this much WAL.
    const MAX_RECORD: u64 = 1 << 30;
    let seg = u64::from(conf.wal_seg_size);
    let first = conf.timeline_start_lsn.segment_lsn(conf.wal_seg_size);
    let cfg = DecoderConfig::new(conf.pg_version, conf.wal_seg_size, conf.system_id);
    let mut seg_start = Lsn(end.0 - 1).segment_lsn(conf.wal_seg_size).max(first);
    loop {
        let bytes = fetch_wal(ci, seg_start, end, term).await?;
        let mut dec = WalStreamDecoder::new_at_segment_start(seg_start, cfg);
        dec.feed(&bytes);
        let mut last = None;
        while let Ok(Some(r)) = dec.next_record() {
            last = Some(r.start_lsn);
        }
        if last.is_some() || seg_start <= first || end.0 - seg_start.0 > MAX_RECORD {
            return Ok(last);
        }
        seg_start = Lsn(seg_start.0 - seg);
    }
}
