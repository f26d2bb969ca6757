//! `pull_timeline`: copying a timeline from the most advanced reachable peer onto this
//! safekeeper (`POST /v1/pull_timeline`; the donor side is `GET .../snapshot`).
//!
//! Steps: ask every peer for its position on the timeline and pick the most advanced by
//! (last_log_term, flush_lsn, term) — the proposer's donor rule, the term breaking ties —;
//! read its snapshot ([`format`], produced by [`donor`]): the header (control file, CRC
//! checked; positions checked), then the WAL, written by [`receive`] into the directory
//! under construction in `tmp/` while it arrives, with the trailer's CRC checked at the
//! end; the restart path then runs over it and must find the donor's flush_lsn; only then
//! is the control file written and the directory renamed into place and registered
//! (`Timelines::create_pulled`). A failure anywhere removes the directory; a crash leaves
//! it in `tmp/`, emptied at the next start. So the timeline exists whole or not at all.
//!
//! Owns: the choice of donor and the plumbing between the network and the writer.
//! Must never: register a timeline before its files are complete, checked and durable;
//! overwrite a timeline that exists (409).

pub mod client;
pub mod donor;
pub mod format;
pub mod receive;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::sync::mpsc;
use utils::TenantTimelineId;

use self::client::{PeerClient, PeerError, PeerPosition};
use self::format::{FormatError, Header, TRAILER_LEN, check_trailer};
use self::receive::Piece;
use crate::timeline::Timeline;
use crate::timelines::{RegistryError, Timelines};

/// Most peers asked (a quorum is a handful; this bounds the work a request can ask for).
pub const MAX_HOSTS: usize = 32;
/// The header is at most this long (the control file's cap and a few fields).
const MAX_HEADER: usize = (1 << 20) + 64;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The timeline exists here already.
    #[error("timeline {0} already exists on this safekeeper")]
    Exists(TenantTimelineId),
    /// No peer answered with the timeline's status.
    #[error("no peer could give timeline {ttid}: {why}")]
    NoDonor {
        /// The timeline.
        ttid: TenantTimelineId,
        /// Each peer's error.
        why: String,
    },
    /// The donor failed while sending.
    #[error("pulling from the donor failed: {0}")]
    Donor(#[from] PeerError),
    /// The snapshot is malformed or damaged.
    #[error("the donor's snapshot is invalid: {0}")]
    Format(#[from] FormatError),
    /// Creating it here failed (includes what the writer found wrong).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// A completed pull.
pub struct Pulled {
    /// The new timeline.
    pub timeline: Arc<Timeline>,
    /// The donor's URL.
    pub donor: String,
    /// WAL bytes copied.
    pub wal_bytes: u64,
    /// How long it took, in seconds.
    pub seconds: f64,
}

/// Pulls `ttid` from the most advanced of `hosts` (base URLs, `http://host:port`).
pub async fn pull_timeline(
    timelines: &Arc<Timelines>,
    token: Option<Arc<str>>,
    ttid: TenantTimelineId,
    hosts: &[String],
) -> Result<Pulled, PullError> {
    let started = Instant::now();
    if timelines.contains(&ttid) {
        return Err(PullError::Exists(ttid));
    }
    let client = PeerClient::new(token)?;
    let donor = choose_donor(&client, &ttid, hosts).await?;
    tracing::info!(%ttid, %donor, "pulling timeline");
    let mut body = client.snapshot(&donor, &ttid).await?;
    // The header, then whatever WAL came with its last piece.
    let mut buf = BytesMut::new();
    let header = loop {
        if let Some((h, n)) = Header::decode(&buf)? {
            buf.advance(n);
            break h;
        }
        if buf.len() > MAX_HEADER {
            return Err(FormatError::ControlTooLong(buf.len() as u32).into());
        }
        match body.chunk().await? {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                return Err(FormatError::Trailer("the stream ended in its header".into()).into());
            }
        }
    };
    if header.state.ttid != ttid {
        return Err(FormatError::Positions(format!(
            "the snapshot is of timeline {}, not {ttid}",
            header.state.ttid
        ))
        .into());
    }
    let wal_bytes = header.wal_len();
    let (tx, rx) = mpsc::channel(8);
    let fill = receive::fill(timelines.clone(), header.clone(), rx);
    let create = timelines.create_pulled(header.pulled_state(), fill);
    let feed = feed(body, buf, wal_bytes, tx);
    let (created, fed) = tokio::join!(create, feed);
    let timeline = match (created, fed) {
        (Ok(tl), Ok(())) => tl,
        // Created meanwhile by someone else: the writer never ran, the feed saw it go.
        (Err(RegistryError::Exists(t)), _) => return Err(PullError::Exists(t)),
        // The feed's error says why the stream failed; the registry's then only repeats it.
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e.into()),
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(%ttid, %donor, wal_bytes, seconds, "pulled timeline");
    Ok(Pulled {
        timeline,
        donor,
        wal_bytes,
        seconds,
    })
}

/// Asks every host for its position; the most advanced answer's host.
async fn choose_donor(
    client: &PeerClient,
    ttid: &TenantTimelineId,
    hosts: &[String],
) -> Result<String, PullError> {
    let asks = hosts
        .iter()
        .map(|h| async move { (h, client.position(h, ttid).await) });
    let answers = futures_util::future::join_all(asks).await;
    let mut best: Option<(PeerPosition, &String)> = None;
    let mut errors = Vec::new();
    for (host, a) in answers {
        match a {
            Ok(p) if best.as_ref().is_none_or(|(b, _)| p > *b) => best = Some((p, host)),
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    match best {
        Some((_, h)) => Ok(h.clone()),
        None => Err(PullError::NoDonor {
            ttid: *ttid,
            why: errors.join("; "),
        }),
    }
}

/// Hands the WAL (the first bytes in `buf`, then the body's pieces) to the writer, checks
/// the trailer, and says `End`; on any failure says `Abort` and returns the error.
async fn feed(
    mut body: client::SnapshotBody,
    mut buf: BytesMut,
    wal_len: u64,
    tx: mpsc::Sender<Piece>,
) -> Result<(), PullError> {
    let r = feed_inner(&mut body, &mut buf, wal_len, &tx).await;
    let last = match &r {
        Ok(()) => Piece::End,
        Err(e) => Piece::Abort(e.to_string()),
    };
    // The writer may have gone (it failed first: the registry reports why).
    let _ = tx.send(last).await;
    r
}

async fn feed_inner(
    body: &mut client::SnapshotBody,
    buf: &mut BytesMut,
    wal_len: u64,
    tx: &mpsc::Sender<Piece>,
) -> Result<(), PullError> {
    let mut left = wal_len;
    let mut crc = 0u32;
    let gone = || FormatError::Trailer("the writer stopped".into());
    loop {
        if left > 0 && !buf.is_empty() {
            let n = (buf.len() as u64).min(left) as usize;
            let wal = buf.split_to(n).freeze();
            crc = crc32c::crc32c_append(crc, &wal);
            left -= n as u64;
            tx.send(Piece::Wal(wal)).await.map_err(|_| gone())?;
        }
        if left == 0 && buf.len() >= TRAILER_LEN {
            if buf.len() > TRAILER_LEN {
                return Err(FormatError::Trailer("bytes after the trailer".into()).into());
            }
            check_trailer(buf, crc)?;
            // The body must end here too.
            return match body.chunk().await? {
                Some(c) if !c.is_empty() => {
                    Err(FormatError::Trailer("bytes after the trailer".into()).into())
                }
                _ => Ok(()),
            };
        }
        match body.chunk().await? {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                return Err(FormatError::Trailer(format!(
                    "the stream ended {left} WAL bytes short of its end, or without its trailer"
                ))
                .into());
            }
        }
    }
}
