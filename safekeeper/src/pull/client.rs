//! The HTTP client `pull_timeline` uses to ask peers for a timeline's status and for its
//! snapshot (reqwest, already here for the object stores), with this safekeeper's peer
//! token as `Authorization: Bearer`.
//!
//! Owns: URLs, timeouts and bounded reads of peers' answers. Must never: read a JSON
//! answer of unbounded size, or put the token in an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use utils::{Lsn, TenantTimelineId, Term};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest JSON answer read (a timeline status is a few KiB).
const MAX_JSON: usize = 1 << 20;

/// A peer that could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request failed (connection, timeout, a body cut short).
    #[error("{host}: {msg}")]
    Http {
        /// The peer.
        host: String,
        /// What happened.
        msg: String,
    },
    /// The peer answered with an error status.
    #[error("{host} answered {status}: {msg}")]
    Status {
        /// The peer.
        host: String,
        /// Its status.
        status: u16,
        /// Its `msg`, or the body's start.
        msg: String,
    },
    /// The answer is not what was asked for.
    #[error("{host}: {msg}")]
    Malformed {
        /// The peer.
        host: String,
        /// Why.
        msg: String,
    },
}

/// A peer's position on a timeline, as its status route shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerPosition {
    /// Term of its last WAL.
    pub last_log_term: Term,
    /// End of its WAL.
    pub flush_lsn: Lsn,
    /// Its term.
    pub term: Term,
}

/// The client.
pub struct PeerClient {
    http: reqwest::Client,
    token: Option<Arc<str>>,
}

/// A snapshot's body being read.
pub struct SnapshotBody {
    host: String,
    resp: reqwest::Response,
}

impl PeerClient {
    /// A client sending `token` (if any) to every peer.
    pub fn new(token: Option<Arc<str>>) -> Result<Self, PeerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| PeerError::Http {
                host: String::new(),
                msg: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(PeerClient { http, token })
    }

    async fn get(&self, host: &str, path: &str) -> Result<reqwest::Response, PeerError> {
        let url = format!("{}{path}", host.trim_end_matches('/'));
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(&**t);
        }
        let http_err = |e: reqwest::Error| PeerError::Http {
            host: host.to_string(),
            msg: e.without_url().to_string(),
        };
        let mut resp = req.send().await.map_err(http_err)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = read_capped(&mut resp, 4096).await.unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(PeerError::Status {
                host: host.to_string(),
                status,
                msg,
            });
        }
        Ok(resp)
    }

    /// The peer's position on `ttid` (its `GET /v1/tenant/{t}/timeline/{tl}`).
    pub async fn position(
        &self,
        host: &str,
        ttid: &TenantTimelineId,
    ) -> Result<PeerPosition, PeerError> {
        let path = format!(
            "/v1/tenant/{}/timeline/{}",
            ttid.tenant_id, ttid.timeline_id
        );
        let mut resp = self.get(host, &path).await?;
        let malformed = |msg: String| PeerError::Malformed {
            host: host.to_string(),
            msg,
        };
        let body = read_capped(&mut resp, MAX_JSON)
            .await
            .map_err(|e| PeerError::Http {
                host: host.to_string(),
                msg: e,
            })?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("timeline status is not JSON: {e}")))?;
        let term = |k: &str| v.get(k).and_then(|t| t.as_u64()).map(Term);
        let flush = v
            .get("flush_lsn")
            .and_then(|f| f.as_str())
            .and_then(|f| f.parse::<Lsn>().ok());
        match (term("last_log_term"), flush, term("term")) {
            (Some(last_log_term), Some(flush_lsn), Some(term)) => Ok(PeerPosition {
                last_log_term,
                flush_lsn,
                term,
            }),
            _ => Err(malformed(
                "timeline status lacks term, last_log_term or flush_lsn".into(),
            )),
        }
    }

    /// Starts reading the peer's snapshot of `ttid`.
    pub async fn snapshot(
        &self,
        host: &str,
        ttid: &TenantTimelineId,
    ) -> Result<SnapshotBody, PeerError> {
        let path = format!(
            "/v1/tenant/{}/timeline/{}/snapshot",
            ttid.tenant_id, ttid.timeline_id
        );
        let resp = self.get(host, &path).await?;
        Ok(SnapshotBody {
            host: host.to_string(),
            resp,
        })
    }
}

impl SnapshotBody {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        self.resp.chunk().await.map_err(|e| PeerError::Http {
            host: self.host.clone(),
            msg: format!("reading the snapshot: {}", e.without_url()),
        })
    }
}

/// The whole body, if it is at most `cap` bytes.
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = BytesMut::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if out.len() + c.len() > cap {
            return Err(format!("answer longer than {cap} bytes"));
        }
        out.extend_from_slice(&c);
    }
    Ok(out.to_vec())
}
