//! The PostgreSQL version of an existing timeline, for `walproposer sync`: a proposer
//! greets with its PG_VERSION_NUM, and safekeepers may refuse 0 ("unknown"), so sync must
//! send the timeline's real one. This safekeeper reports it in `TIMELINE_STATUS` (column 9,
//! `pg_version`); safekeepers whose status has only `flush_lsn` and `commit_lsn` do not,
//! and then `--pg-version` must say it.
//!
//! Owns: [`timeline_pg_version`]. Must never: wait on a safekeeper longer than
//! [`ASK_TIMEOUT`], or take a version two safekeepers disagree on.

use std::time::Duration;

use pq_client::Conninfo;

/// How long one safekeeper may take to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Index of `pg_version` in this safekeeper's `TIMELINE_STATUS` row.
const PG_VERSION_COLUMN: usize = 8;

/// What the safekeepers say about the timeline's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Every safekeeper that knows it says this.
    Version(u32),
    /// None that answered knows it (the timeline is new, or they do not report it).
    Unknown,
    /// Two safekeepers disagree.
    Conflict(u32, u32),
}

/// Asks every safekeeper (`conninfos`, one per safekeeper, all at once) for the
/// timeline's status and combines the versions they report. Safekeepers that cannot be
/// reached or do not answer in time count as not knowing.
pub async fn timeline_pg_version(conninfos: &[Conninfo]) -> Known {
    let mut asks = tokio::task::JoinSet::new();
    for ci in conninfos {
        let ci = ci.clone();
        asks.spawn(async move {
            let ask = async {
                let mut c = pq_client::connect(&ci).await.ok()?;
                let rows = pq_client::simple_query(&mut c, "TIMELINE_STATUS")
                    .await
                    .ok()?;
                version_of(&rows)
            };
            tokio::time::timeout(ASK_TIMEOUT, ask).await.ok().flatten()
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = asks.join_next().await {
        answers.push(r.ok().flatten());
    }
    combine(answers)
}

/// The version in a `TIMELINE_STATUS` answer, if it has one (0 = unknown).
fn version_of(rows: &pq_client::Rows) -> Option<u32> {
    let v: u32 = rows
        .first()?
        .get(PG_VERSION_COLUMN)?
        .as_deref()?
        .parse()
        .ok()?;
    (v != 0).then_some(v)
}

fn combine(answers: Vec<Option<u32>>) -> Known {
    let mut found: Option<u32> = None;
    for v in answers.into_iter().flatten() {
        match found {
            Some(f) if f != v => return Known::Conflict(f, v),
            _ => found = Some(v),
        }
    }
    found.map_or(Known::Unknown, Known::Version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[&str]) -> pq_client::Rows {
        vec![cols.iter().map(|c| Some(c.to_string())).collect()]
    }

    #[test]
    fn versions_are_read_from_our_status_only() {
        let ours = row(&[
            "0/2000000",
            "0/2000000",
            "3",
            "3",
            "0/1000028",
            "0/1000028",
            "0/1000028",
            "7",
            "150004",
            "0/0",
            "0/0",
        ]);
        assert_eq!(version_of(&ours), Some(150004));
        // Two columns (flush, commit): no version there.
        assert_eq!(version_of(&row(&["0/2000000", "0/2000000"])), None);
        // No row: the timeline does not exist there.
        assert_eq!(version_of(&Vec::new()), None);
        let mut zero = ours.clone();
        zero[0][8] = Some("0".into());
        assert_eq!(version_of(&zero), None);
    }

    #[test]
    fn answers_combine() {
        assert_eq!(combine(vec![None, None]), Known::Unknown);
        assert_eq!(
            combine(vec![None, Some(150004), Some(150004)]),
            Known::Version(150004)
        );
        assert_eq!(
            combine(vec![Some(150004), Some(160002)]),
            Known::Conflict(150004, 160002)
        );
    }
}
