//! `safekeeper archive list`: which timelines the store holds, each one's first and last
//! segment, its size, and the gaps between (complete segments missing in the middle).
//!
//! Owns: the summary of a timeline's objects (pure, unit-tested) and its table.

use std::fmt::Write as _;

use utils::xlog::xlog_file_name;
use utils::{SegNo, TenantTimelineId};

use super::ArchiveError;
use crate::remote::{RemoteStorage, StoredSegment};

/// What the store holds of one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineSummary {
    /// The timeline.
    pub ttid: TenantTimelineId,
    /// The first and last complete segment.
    pub first_last: Option<(SegNo, SegNo)>,
    /// Complete segments stored.
    pub segments: u64,
    /// Bytes of all its objects (as stored).
    pub bytes: u64,
    /// Runs of complete segments missing between the first and the last (inclusive).
    pub gaps: Vec<(SegNo, SegNo)>,
    /// The segment of a partial object after the last complete one, if any.
    pub partial: Option<SegNo>,
}

/// Summarizes a timeline's listed objects.
pub fn summarize(ttid: TenantTimelineId, objects: &[StoredSegment]) -> TimelineSummary {
    let mut complete: Vec<SegNo> = objects
        .iter()
        .filter(|o| !o.partial)
        .map(|o| o.segno)
        .collect();
    complete.sort();
    complete.dedup();
    let mut gaps = Vec::new();
    for w in complete.windows(2) {
        if w[1] > w[0] + 1 {
            gaps.push((w[0] + 1, w[1] - 1));
        }
    }
    let first_last = complete.first().zip(complete.last()).map(|(a, b)| (*a, *b));
    let partial = objects
        .iter()
        .filter(|o| o.partial && first_last.is_none_or(|(_, l)| o.segno > l))
        .map(|o| o.segno)
        .max();
    TimelineSummary {
        ttid,
        first_last,
        segments: complete.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
        gaps,
        partial,
    }
}

/// Lists the timelines of the store (or the ones asked for) with their summaries.
pub async fn list(
    remote: &RemoteStorage,
    only: impl Fn(&TenantTimelineId) -> bool,
    seg_size: u32,
) -> Result<Vec<TimelineSummary>, ArchiveError> {
    let mut out = Vec::new();
    for ttid in remote.list_timelines().await? {
        if !only(&ttid) {
            continue;
        }
        let objects = remote.list_segments(&ttid, seg_size).await?;
        out.push(summarize(ttid, &objects));
    }
    Ok(out)
}

/// The table `archive list` prints.
pub fn render(summaries: &[TimelineSummary], seg_size: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32}  {:<32}  {:<24}  {:<24}  {:>8}  {:>10}  gaps",
        "tenant_id", "timeline_id", "first_segment", "last_segment", "segments", "MB"
    );
    for t in summaries {
        let (first, last) = match t.first_last {
            Some((a, b)) => (
                xlog_file_name(1, a, seg_size),
                xlog_file_name(1, b, seg_size),
            ),
            None => ("-".into(), "-".into()),
        };
        let mut gaps = if t.gaps.is_empty() {
            "none".to_string()
        } else {
            t.gaps
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        format!("MISSING {}", xlog_file_name(1, *a, seg_size))
                    } else {
                        format!(
                            "MISSING {}..{}",
                            xlog_file_name(1, *a, seg_size),
                            xlog_file_name(1, *b, seg_size)
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(p) = t.partial {
            let _ = write!(gaps, "; partial {}", xlog_file_name(1, p, seg_size));
        }
        let _ = writeln!(
            s,
            "{:<32}  {:<32}  {first:<24}  {last:<24}  {:>8}  {:>10.1}  {gaps}",
            t.ttid.tenant_id.to_string(),
            t.ttid.timeline_id.to_string(),
            t.segments,
            t.bytes as f64 / 1e6,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use utils::{TenantId, TimelineId};

    use super::*;

    fn seg(segno: SegNo, partial: bool) -> StoredSegment {
        StoredSegment {
            segno,
            partial,
            compressed: true,
            size: 10,
        }
    }

    #[test]
    fn gaps_and_the_partial_tail_are_found() {
        let ttid = TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]));
        let objs = [
            seg(1, false),
            seg(2, false),
            seg(5, false),
            seg(7, false),
            seg(8, true),
        ];
        let s = summarize(ttid, &objs);
        assert_eq!(s.first_last, Some((1, 7)));
        assert_eq!(s.segments, 4);
        assert_eq!(s.bytes, 50);
        assert_eq!(s.gaps, vec![(3, 4), (6, 6)]);
        assert_eq!(s.partial, Some(8));
        let table = render(&[s], 16 << 20);
        assert!(
            table.contains("MISSING 000000010000000000000003..000000010000000000000004"),
            "{table}"
        );
        assert!(
            table.contains("MISSING 000000010000000000000006;"),
            "{table}"
        );
        assert!(
            table.contains("partial 000000010000000000000008"),
            "{table}"
        );
    }

    #[test]
    fn an_empty_timeline_has_no_range() {
        let ttid = TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]));
        let s = summarize(ttid, &[seg(3, true)]);
        assert_eq!(s.first_last, None);
        assert_eq!(s.partial, Some(3));
        assert!(render(&[s], 16 << 20).contains(" -  "));
    }
}
