//! What a run found, and how it is written: rows of (figure, ours, baseline, ratio,
//! target, command), the series the plots need, and `benchmarks.md`.
//!
//! Owns: the report's format. Must never: compute a figure (the sections do).

use std::fmt::Write as _;
use std::time::Duration;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section heading it belongs to.
    pub section: &'static str,
    /// What is measured.
    pub figure: String,
    /// Our figure, formatted.
    pub ours: String,
    /// The baseline's figure, formatted ("—" if none).
    pub baseline: String,
    /// ours / baseline where that means something.
    pub ratio: Option<f64>,
    /// The target and whether it is met, e.g. "≥ 0.9: met".
    pub target: String,
    /// The command(s) that produced our figure.
    pub command: String,
}

/// Ingest throughput at one append size (medians).
#[derive(Clone, Debug, Default)]
pub struct IngestPoint {
    /// AppendRequest size in KiB.
    pub kib: u64,
    /// Disk: sequential write + fdatasync, MB/s.
    pub disk: f64,
    /// Into one safekeeper, MB/s of WAL.
    pub one: f64,
    /// Into three safekeepers on the same disk, MB/s of WAL (each writes it).
    pub three: f64,
}

/// Commit latency percentiles (p50, p90, p99, p99.9, max) of one series.
#[derive(Clone, Debug)]
pub struct LatencySeries {
    /// Legend.
    pub name: String,
    /// (percentile label, value).
    pub points: Vec<(&'static str, Duration)>,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Report {
    /// Table rows in order.
    pub rows: Vec<Row>,
    /// Ingest series for the throughput plot.
    pub ingest: Vec<IngestPoint>,
    /// Latency series for the percentile plot.
    pub latency: Vec<LatencySeries>,
    /// Notes written under the table (what a figure means, what went wrong).
    pub notes: Vec<String>,
}

/// `12.3 MB/s`.
pub fn mb_s(v: f64) -> String {
    format!("{v:.0} MB/s")
}

/// `0.123 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `12.3 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// "≥ 0.90: **met**" / "**missed**".
pub fn target_ge(ratio: f64, want: f64) -> String {
    met(ratio >= want, &format!("≥ {want:.2}"))
}

/// "≤ 1.50: **met**" / "**missed**".
pub fn target_le(ratio: f64, want: f64) -> String {
    met(ratio <= want, &format!("≤ {want:.2}"))
}

/// "<target>: **met**" / "<target>: **missed**".
pub fn met(ok: bool, target: &str) -> String {
    format!("{target}: {}", if ok { "**met**" } else { "**missed**" })
}

impl Report {
    /// Adds a row.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        section: &'static str,
        figure: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        command: impl Into<String>,
    ) {
        self.rows.push(Row {
            section,
            figure: figure.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            command: command.into(),
        });
    }

    /// The table, one block per section, sections in order of their names (rows keep
    /// the order they were added in).
    pub fn table(&self) -> String {
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.section);
        let mut s = String::new();
        let mut section = "";
        for r in rows {
            if r.section != section {
                section = r.section;
                let _ = writeln!(s, "\n### {section}\n");
                let _ = writeln!(s, "| figure | ours | baseline | ratio | target | command |");
                let _ = writeln!(s, "|---|---|---|---|---|---|");
            }
            let ratio = r.ratio.map_or("—".to_string(), |x| format!("{x:.2}"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | `{}` |",
                r.figure,
                r.ours,
                r.baseline,
                ratio,
                if r.target.is_empty() {
                    "—"
                } else {
                    &r.target
                },
                r.command.replace('|', "\\|")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_groups_rows_by_section() {
        let mut r = Report::default();
        r.row(
            "A",
            "x",
            "1",
            "2",
            Some(0.5),
            target_ge(0.5, 0.9),
            "cmd a|b",
        );
        r.row("A", "y", "1", "—", None, "", "cmd");
        r.row("B", "z", "1", "1", Some(1.0), target_le(1.0, 1.5), "cmd");
        r.row("A", "w", "1", "—", None, "", "cmd");
        let t = r.table();
        assert_eq!(t.matches("### ").count(), 2);
        assert!(t.find("| w |").unwrap() < t.find("### B").unwrap());
        assert!(t.contains("| x | 1 | 2 | 0.50 | ≥ 0.90: **missed** | `cmd a\\|b` |"));
        assert!(t.contains("| y | 1 | — | — | — | `cmd` |"));
        assert!(t.contains("≤ 1.50: **met**"));
    }
}
