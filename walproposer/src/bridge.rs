//! `walproposer bridge`: runs an unmodified PostgreSQL on the safekeeper quorum.
//!
//! The bridge is the primary's synchronous standby (`application_name`, default
//! `walproposer`): it streams the primary's WAL over physical replication from a slot it
//! owns, pushes it into the quorum as the elected proposer, and reports to the primary
//! `write = flush = apply = the quorum's commit_lsn` — never what it merely received, or
//! `synchronous_commit = remote_write` would acknowledge commits held only in its memory.
//!
//! A new timeline starts at the first record boundary of the segment holding the slot's
//! restart LSN; an existing one continues at the quorum's end, which the bridge asks the
//! primary to stream from (the slot keeps that WAL on the primary until the quorum has
//! it). The primary going away is survived by reconnecting; safekeepers going away are
//! survived by the proposer's reconnects; a membership change (the safekeepers answer
//! with a configuration of a higher generation) by a new election under the new
//! configuration, after which the primary is streamed again from the quorum's end.
//!
//! Must never: report a position above the quorum's commit_lsn.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use pq_client::{Conninfo, PgConn, PgError, Rows};
use pq_proto::backend::BeMessage;
use pq_proto::proposer::ProtocolVersion;
use pq_proto::replication::{
    ReplicationClientMessage, ReplicationServerMessage, StandbyStatusUpdate, pg_timestamp_now,
};
use utils::xlog::{DecoderConfig, WalStreamDecoder};
use utils::{Lsn, TenantId, TimelineId};

use crate::driver::Driver;
use crate::members;
use crate::proposer::{Config, Output};

/// Flags of `walproposer bridge`.
#[derive(Args, Debug, Clone)]
pub struct BridgeArgs {
    /// The primary, as a libpq connection string ("host=… port=… user=…"); the bridge
    /// connects in physical replication mode.
    #[arg(long, value_name = "CONNINFO")]
    pub primary: String,
    /// The safekeepers, `host:port` or `ID@host:port` separated by commas.
    ///
    /// With ids (all or none; distinct and positive, e.g. `1@sk1:5454,2@sk2:5454,3@sk3:5454`),
    /// the proposer sends a membership configuration of generation 1: the safekeepers then
    /// know their peers, which WAL offload needs to choose one offloader. Ids need
    /// `--protocol 3`.
    #[arg(
        long,
        value_name = "[ID@]H:P,...",
        value_delimiter = ',',
        required = true
    )]
    pub safekeepers: Vec<String>,
    /// Tenant id; default: derived from the primary's system identifier.
    #[arg(long, value_name = "HEX")]
    pub tenant_id: Option<TenantId>,
    /// Timeline id; default: derived from the primary's system identifier.
    #[arg(long, value_name = "HEX")]
    pub timeline_id: Option<TimelineId>,
    /// Physical replication slot on the primary (created if missing) that keeps the WAL
    /// the quorum has not committed yet.
    #[arg(long, default_value = "walproposer")]
    pub slot: String,
    /// The name the primary sees; list it in `synchronous_standby_names`.
    #[arg(long, default_value = "walproposer")]
    pub application_name: String,
    /// Proposer protocol version (3, or 2 for old safekeepers).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=3))]
    pub protocol: u32,
    /// WAL held in memory beyond the quorum's commit before reading from the primary
    /// pauses (suffix-free bytes).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_in_flight: u64,
    /// A file holding the JWT sent as the password to safekeepers started with
    /// --pg-auth-public-key-path; or set SAFEKEEPER_TOKEN (not both).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// libpq parameters added to every safekeeper connection, e.g. TLS:
    /// "sslmode=verify-full sslrootcert=/etc/safekeeper/ca.pem". PGSSLMODE and
    /// PGSSLROOTCERT apply when not given here (and to --primary too, as in libpq);
    /// without either, connections are plain.
    #[arg(long, value_name = "CONNINFO", default_value = "")]
    pub safekeeper_conninfo: String,
}

/// What the primary told about itself.
#[derive(Debug, Clone, Copy)]
struct Primary {
    system_id: u64,
    pg_version: u32,
    seg_size: u32,
    flush_lsn: Lsn,
}

/// Ids derived stably from the system identifier, so a restarted bridge finds its
/// timeline again without being told.
pub fn derived_ids(system_id: u64) -> (TenantId, TimelineId) {
    let mix = |salt: u64| -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut v = system_id ^ salt;
        for chunk in out.chunks_mut(8) {
            // splitmix64
            v = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = v;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        out
    };
    (TenantId(mix(0x007e_4a47)), TimelineId(mix(0x713e_114e)))
}

fn replication_conninfo(a: &BridgeArgs) -> anyhow::Result<Conninfo> {
    let mut ci = Conninfo::parse(&a.primary)?;
    ci.set("replication", "true")
        .set("application_name", a.application_name.clone());
    Ok(ci)
}

/// Connects to the primary, retrying until it answers (it may be starting).
async fn connect_primary(ci: &Conninfo) -> PgConn {
    let mut backoff = Duration::from_millis(100);
    loop {
        match pq_client::connect(ci).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(
                    "cannot connect to the primary at {}: {e}; retrying",
                    ci.addr()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn cell(rows: &Rows, col: usize, what: &str) -> anyhow::Result<String> {
    rows.first()
        .and_then(|r| r.get(col))
        .cloned()
        .flatten()
        .with_context(|| format!("the primary returned no {what}"))
}

async fn identify(conn: &mut PgConn) -> anyhow::Result<Primary> {
    let rows = pq_client::simple_query(conn, "IDENTIFY_SYSTEM").await?;
    let system_id: u64 = cell(&rows, 0, "system id")?.parse()?;
    let tli: u32 = cell(&rows, 1, "timeline")?.parse()?;
    if tli != 1 {
        bail!("the primary is on PostgreSQL timeline {tli}; the bridge supports timeline 1 only");
    }
    let flush_lsn: Lsn = cell(&rows, 2, "xlogpos")?.parse()?;
    let rows = pq_client::simple_query(conn, "SHOW server_version_num").await?;
    let pg_version: u32 = cell(&rows, 0, "server_version_num")?.parse()?;
    let rows = pq_client::simple_query(conn, "SHOW wal_segment_size").await?;
    let seg = cell(&rows, 0, "wal_segment_size")?;
    let seg_size = parse_pg_size(&seg).with_context(|| format!("wal_segment_size {seg:?}"))?;
    Ok(Primary {
        system_id,
        pg_version,
        seg_size,
        flush_lsn,
    })
}

/// "16MB" → 16777216.
fn parse_pg_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u32 = digits.parse().ok()?;
    let mult = match &s[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The slot's restart LSN, creating the slot if it does not exist.
async fn ensure_slot(conn: &mut PgConn, slot: &str) -> anyhow::Result<Lsn> {
    let quoted = format!("\"{}\"", slot.replace('"', "\"\""));
    let rows = pq_client::simple_query(conn, &format!("READ_REPLICATION_SLOT {quoted}")).await?;
    if let Some(lsn) = rows.first().and_then(|r| r.get(1)).cloned().flatten() {
        return Ok(lsn.parse()?);
    }
    tracing::info!("creating physical replication slot {slot} on the primary");
    pq_client::simple_query(
        conn,
        &format!("CREATE_REPLICATION_SLOT {quoted} PHYSICAL RESERVE_WAL"),
    )
    .await?;
    let rows = pq_client::simple_query(conn, &format!("READ_REPLICATION_SLOT {quoted}")).await?;
    Ok(cell(&rows, 1, "slot restart_lsn")?.parse()?)
}

/// The first record boundary at or after the start of the segment holding `lsn`, read
/// from the primary.
async fn first_record_boundary(ci: &Conninfo, p: &Primary, lsn: Lsn) -> anyhow::Result<Lsn> {
    let seg_start = lsn.segment_lsn(p.seg_size);
    let mut conn = pq_client::connect(ci).await?;
    pq_client::start_copy(
        &mut conn,
        &format!("START_REPLICATION PHYSICAL {seg_start} TIMELINE 1"),
    )
    .await?;
    let cfg = DecoderConfig::new(p.pg_version, p.seg_size, p.system_id);
    let mut dec = WalStreamDecoder::new_at_segment_start(seg_start, cfg);
    loop {
        match pq_client::read(&mut conn).await? {
            BeMessage::CopyData(payload) => {
                if let ReplicationServerMessage::XLogData(x) =
                    ReplicationServerMessage::decode(payload)?
                {
                    dec.feed(&x.data);
                    if let Err(e) = dec.next_record() {
                        bail!("the primary's WAL at {seg_start} does not decode: {e}");
                    }
                    if let Some(first) = dec.first_record_lsn() {
                        return Ok(first);
                    }
                }
            }
            other => bail!("unexpected {other:?} while reading the primary's WAL"),
        }
    }
}

/// Runs the bridge until it is stopped or loses its term.
pub async fn run(a: BridgeArgs) -> anyhow::Result<()> {
    // The safekeeper list first: a bad one is refused before anything connects.
    let sks = members::parse_safekeepers(&a.safekeepers).context("invalid --safekeepers")?;
    let extra = crate::driver::safekeeper_conninfo(&a.safekeeper_conninfo)
        .context("invalid --safekeeper-conninfo")?;
    let protocol = if a.protocol == 2 {
        ProtocolVersion::V2
    } else {
        ProtocolVersion::V3
    };
    members::check_protocol(&sks.mconf, protocol)?;
    let ci = replication_conninfo(&a)?;
    let mut conn = connect_primary(&ci).await;
    let primary = identify(&mut conn).await?;
    let (derived_tenant, derived_timeline) = derived_ids(primary.system_id);
    let tenant_id = a.tenant_id.unwrap_or(derived_tenant);
    let timeline_id = a.timeline_id.unwrap_or(derived_timeline);
    println!(
        "bridge: primary system id {}, PostgreSQL {}, tenant_id {tenant_id}, timeline_id {timeline_id}",
        primary.system_id, primary.pg_version
    );
    let restart_lsn = ensure_slot(&mut conn, &a.slot).await?;
    drop(conn);
    let timeline_start = first_record_boundary(&ci, &primary, restart_lsn).await?;
    let mut conf = Config::new(tenant_id, timeline_id, sks.addrs.len());
    conf.pg_version = primary.pg_version;
    conf.system_id = primary.system_id;
    conf.wal_seg_size = primary.seg_size;
    conf.timeline_start_lsn = timeline_start;
    conf.protocol = protocol;
    conf.mconf = sks.mconf;
    let token = crate::driver::load_token(a.token_file.as_deref())?;
    let mut d = Driver::with_options(conf, sks.addrs, token, extra);
    let (term, term_start) = d.wait_elected().await?;
    println!("bridge: elected in term {term}; the quorum's WAL continues at {term_start}");
    if term_start > primary.flush_lsn {
        bail!(
            "the safekeepers hold WAL up to {term_start}, beyond the primary's {}: \
             is this the primary they belong to?",
            primary.flush_lsn
        );
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = stream_primary(&ci, &a, &mut d);
        tokio::select! {
            _ = &mut shutdown => {
                println!("bridge: stopping; quorum commit_lsn {}", d.proposer().commit_lsn());
                return Ok(());
            }
            r = session => match r {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(SessionError::Fatal(e)) => return Err(e),
                Err(SessionError::Primary(e)) => {
                    tracing::warn!("primary connection lost: {e}; reconnecting");
                }
                Err(SessionError::Reconfigured(generation)) => {
                    // The driver restarted the proposer with the new configuration: once
                    // it is elected, stream from its end at once.
                    let (term, start) = d.wait_elected().await?;
                    println!(
                        "bridge: membership generation {generation}: elected in term {term}; \
                         the quorum's WAL continues at {start}"
                    );
                    backoff = Duration::from_millis(100);
                    continue;
                }
            },
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum SessionError {
    /// The primary went away: reconnect.
    Primary(PgError),
    /// The bridge must stop (lost the term, WAL does not fit).
    Fatal(anyhow::Error),
    /// The membership changed (to this generation): the proposer was restarted with the
    /// new configuration and campaigns again; the primary is streamed anew from its end.
    Reconfigured(u32),
}

impl From<PgError> for SessionError {
    fn from(e: PgError) -> Self {
        SessionError::Primary(e)
    }
}

async fn send_status(w: &mut PgConn, lsn: Lsn) -> Result<(), PgError> {
    ReplicationClientMessage::StandbyStatusUpdate(StandbyStatusUpdate {
        write_lsn: lsn,
        flush_lsn: lsn,
        apply_lsn: lsn,
        client_time: pg_timestamp_now(),
        reply_requested: false,
    })
    .encode_frame(w.write_buf());
    w.flush().await?;
    Ok(())
}

/// One replication session with the primary: stream from the end of what the proposer
/// holds, push into the quorum, report the quorum's commit back.
async fn stream_primary(ci: &Conninfo, a: &BridgeArgs, d: &mut Driver) -> Result<(), SessionError> {
    let mut conn = pq_client::connect(ci).await?;
    let pos = d.proposer().end_lsn();
    let slot = format!("\"{}\"", a.slot.replace('"', "\"\""));
    pq_client::start_copy(
        &mut conn,
        &format!("START_REPLICATION SLOT {slot} PHYSICAL {pos} TIMELINE 1"),
    )
    .await?;
    tracing::info!("streaming from the primary at {pos}");
    let mut reported = Lsn::INVALID;
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let p = d.proposer();
        let room = p.end_lsn().0.saturating_sub(p.commit_lsn().0) < a.max_in_flight;
        tokio::select! {
            m = conn.read_be_message(), if room => {
                match m.map_err(PgError::from)? {
                    Some(BeMessage::CopyData(payload)) => {
                        match ReplicationServerMessage::decode(payload)
                            .map_err(|e| SessionError::Primary(PgError::Unexpected(e.to_string())))?
                        {
                            ReplicationServerMessage::XLogData(x) => {
                                append(d, x.wal_start, x.data)?;
                            }
                            ReplicationServerMessage::Keepalive(k) => {
                                if k.reply_requested {
                                    send_status(&mut conn, d.proposer().commit_lsn()).await?;
                                }
                            }
                        }
                    }
                    Some(BeMessage::ErrorResponse(e)) => return Err(PgError::Server(e).into()),
                    Some(BeMessage::CopyDone) | None => return Err(PgError::Closed.into()),
                    Some(_) => {}
                }
            }
            o = d.next() => match o.map_err(|e| SessionError::Fatal(e.into()))? {
                Output::Committed(lsn)
                    if lsn > reported => {
                        send_status(&mut conn, lsn).await?;
                        reported = lsn;
                    }
                Output::Reconfigure(mconf) => {
                    return Err(SessionError::Reconfigured(mconf.generation.0));
                }
                Output::SteppedDown { term, reason } => {
                    return Err(SessionError::Fatal(anyhow::anyhow!(
                        "stepped down: another proposer holds term {term}: {reason}"
                    )));
                }
                _ => {}
            },
            _ = status_tick.tick() => {
                send_status(&mut conn, d.proposer().commit_lsn()).await?;
            }
        }
    }
}

fn append(d: &mut Driver, lsn: Lsn, data: Bytes) -> Result<(), SessionError> {
    let end = d.proposer().end_lsn();
    // After a reconnect the primary may resend bytes the proposer already holds.
    if lsn < end {
        let skip = (end.0 - lsn.0) as usize;
        if skip >= data.len() {
            return Ok(());
        }
        return append(d, end, data.slice(skip..));
    }
    d.append_wal(lsn, data).map_err(|e| {
        SessionError::Fatal(anyhow::anyhow!(
            "WAL from the primary does not continue the quorum's: {e}"
        ))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let (t1, l1) = derived_ids(7_000_000_000_000);
        let (t2, l2) = derived_ids(7_000_000_000_000);
        assert_eq!((t1, l1), (t2, l2));
        assert_ne!(t1.0, l1.0);
        assert_ne!(derived_ids(1).0, t1);
    }

    #[test]
    fn pg_sizes() {
        assert_eq!(parse_pg_size("16MB"), Some(16 << 20));
        assert_eq!(parse_pg_size("1GB"), Some(1 << 30));
        assert_eq!(parse_pg_size("x"), None);
    }
}
