//! What a timeline's readers report: positions (`r`), hot-standby feedback (`h`) and
//! pageserver feedback (`z`), kept per reader and aggregated for the compute.
//!
//! Owns: the per-reader table and the aggregation rules (min of non-zero xmins, max
//! timestamp). Must never: block for long (a std mutex held for a few field updates) or
//! grow without bound (one entry per live reader, removed when its stream ends).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use pq_proto::proposer::{HotStandbyFeedback, PageserverFeedback};
use utils::Lsn;

/// What one reader last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderInfo {
    /// Reader id, unique per timeline and server run.
    pub id: u64,
    /// Its `application_name`.
    pub app_name: String,
    /// Where its stream is now.
    pub sent_lsn: Lsn,
    /// Last `write` position it reported.
    pub write_lsn: Lsn,
    /// Last `flush` position it reported.
    pub flush_lsn: Lsn,
    /// Last `apply` position it reported.
    pub apply_lsn: Lsn,
    /// Its clock at the last report (PostgreSQL timestamp).
    pub reply_time: i64,
    /// Its last hot-standby feedback.
    pub hs: HotStandbyFeedback,
}

/// The feedback table of one timeline.
#[derive(Default)]
pub struct Feedback {
    readers: Mutex<BTreeMap<u64, ReaderInfo>>,
    pageserver: Mutex<Option<PageserverFeedback>>,
    /// The last reader id handed out (ids are unique per timeline and server run).
    last_id: AtomicU64,
}

impl Feedback {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ReaderInfo>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a reader; it is removed when the returned guard is dropped.
    pub fn register(&self, app_name: &str) -> ReaderGuard<'_> {
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(
            id,
            ReaderInfo {
                id,
                app_name: app_name.to_string(),
                ..Default::default()
            },
        );
        ReaderGuard { feedback: self, id }
    }

    /// Updates one reader's entry.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ReaderInfo)) {
        if let Some(r) = self.lock().get_mut(&id) {
            f(r);
        }
    }

    /// Every live reader's entry.
    pub fn readers(&self) -> Vec<ReaderInfo> {
        self.lock().values().cloned().collect()
    }

    /// Records a pageserver's feedback; true if its remote_consistent_lsn moved forward.
    /// remote_consistent_lsn never goes back (as in Neon): a pageserver that restarted
    /// from older remote state does not make WAL that another one already uploaded count
    /// as missing again.
    pub fn set_pageserver(&self, mut fb: PageserverFeedback) -> bool {
        let mut cur = self.pageserver.lock().unwrap_or_else(|p| p.into_inner());
        let prev = cur.as_ref().map(|p| p.remote_consistent_lsn);
        if let Some(prev) = prev {
            fb.remote_consistent_lsn = fb.remote_consistent_lsn.max(prev);
        }
        let moved = prev.is_none_or(|p| fb.remote_consistent_lsn > p);
        *cur = Some(fb);
        moved
    }

    /// The latest pageserver feedback, if any.
    pub fn pageserver(&self) -> Option<PageserverFeedback> {
        self.pageserver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The aggregate relayed to the compute: the oldest non-zero xmin and catalog xmin any
    /// replica still needs, and the newest timestamp. All zeros when no replica sent any.
    pub fn hot_standby(&self) -> HotStandbyFeedback {
        aggregate(self.lock().values().map(|r| r.hs))
    }
}

/// Min of non-zero xmins, min of non-zero catalog xmins, max timestamp.
pub fn aggregate(items: impl Iterator<Item = HotStandbyFeedback>) -> HotStandbyFeedback {
    let min_nonzero = |a: u64, b: u64| match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    items.fold(HotStandbyFeedback::default(), |acc, hs| {
        HotStandbyFeedback {
            ts: acc.ts.max(hs.ts),
            xmin: min_nonzero(acc.xmin, hs.xmin),
            catalog_xmin: min_nonzero(acc.catalog_xmin, hs.catalog_xmin),
        }
    })
}

/// Removes its reader from the table when dropped.
pub struct ReaderGuard<'a> {
    feedback: &'a Feedback,
    /// The reader's id.
    pub id: u64,
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        self.feedback.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_takes_min_nonzero_and_max_ts() {
        let fb = Feedback::default();
        let a = fb.register("a");
        let b = fb.register("b");
        let _c = fb.register("c"); // never reports: must not pull xmin to 0
        fb.update(a.id, |r| {
            r.hs = HotStandbyFeedback {
                ts: 5,
                xmin: 100,
                catalog_xmin: 0,
            }
        });
        fb.update(b.id, |r| {
            r.hs = HotStandbyFeedback {
                ts: 9,
                xmin: 70,
                catalog_xmin: 60,
            }
        });
        assert_eq!(
            fb.hot_standby(),
            HotStandbyFeedback {
                ts: 9,
                xmin: 70,
                catalog_xmin: 60
            }
        );
        drop(b);
        assert_eq!(fb.hot_standby().xmin, 100);
        assert_eq!(fb.readers().len(), 2);
    }

    #[test]
    fn pageserver_remote_consistent_lsn_never_goes_back() {
        let fb = Feedback::default();
        let ps = |remote: u64, last: u64| PageserverFeedback {
            remote_consistent_lsn: Lsn(remote),
            last_received_lsn: Lsn(last),
            ..Default::default()
        };
        fb.set_pageserver(ps(100, 200));
        fb.set_pageserver(ps(50, 300));
        let got = fb.pageserver().unwrap();
        assert_eq!(
            (got.remote_consistent_lsn, got.last_received_lsn),
            (Lsn(100), Lsn(300))
        );
    }
}
